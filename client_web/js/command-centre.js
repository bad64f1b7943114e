// The console's command-centre features, beside console.js: the unit map, emergency
// acknowledgement (and the alarm that keeps sounding until someone acknowledges), talk on any
// panel with a key per panel, and the warning of whom a transmission would cut off.
//
// It listens to the same signaling as the rest of the page (unit_location,
// emergency_acknowledged, emergency, emergency_cleared) and fetches what happened before it
// connected from GET /api/command-map, again after every reconnection.

import { api } from './auth.js';
import { CONSOLE_TEXT as T } from './command-text.js';
import { fmtTime, h, setText } from './dom.js';
import { bindHoldToTalk } from './ptt-button.js';
import { listNames } from './ptt-client.js';
import { UnitMap } from './unit-map.js';

const ALARM_EVERY_MS = 3000; // the emergency warble lasts 2.4 s: one after the other
// Who may talk on a talkgroup they only monitor (the server's core/access.py agrees).
const MONITOR_TALK_ROLES = ['supervisor', 'dispatcher'];
const TEXT_INPUT = /^(INPUT|TEXTAREA|SELECT)$/;

function typing(el) {
  if (!el) return false;
  if (el.isContentEditable) return true;
  return TEXT_INPUT.test(el.tagName) && !['checkbox', 'radio', 'range', 'button'].includes(el.type);
}

export class CommandCentre {
  /**
   * @param client  the page's PttClient
   * @param els     {map, mapNote, mapCount, txWarning}
   * @param names   {tgName(id), unitName(unit)}
   */
  constructor(client, els, names) {
    this.client = client;
    this.els = els;
    this.names = names;
    this.units = new Map(); // unit -> its last unit_location
    this.acks = new Map(); // talkgroup -> emergency_acknowledged
    this.skew = 0; // server clock minus ours, seconds (for "seen … ago")
    this.map = new UnitMap(els.map, els.mapNote);
    this.keys = new Map(); // '1'..'9' -> talkgroup, in the panels' order
    this._heldKey = null;
    this._started = false;
    this.alarms = 0; // alarm sounds played (tests)
    client.sig.addEventListener('message', (ev) => this._onMessage(ev.detail.msg));
    client.sig.addEventListener('welcome', () => { if (this._started) this.refresh(); });
    client.addEventListener('alert', (ev) => this._onAlert(ev.detail.msg));
    this._alarmTimer = setInterval(() => this._soundAlarm(), ALARM_EVERY_MS);
    window.addEventListener('keydown', (ev) => this._keyDown(ev));
    window.addEventListener('keyup', (ev) => this._keyUp(ev));
    window.addEventListener('blur', () => this._keyUp(null));
  }

  async start() {
    const data = await this._fetch();
    await this.map.init(data || {});
    this._started = true;
    if (data) this._apply(data);
  }

  async refresh() {
    const data = await this._fetch();
    if (data) this._apply(data);
  }

  async _fetch() {
    try {
      return await api('/api/command-map');
    } catch {
      return null; // no map settings: a grid, and units appear as they report
    }
  }

  _apply(data) {
    if (typeof data.now === 'number') this.skew = data.now - Date.now() / 1000;
    for (const u of data.units || []) {
      const known = this.units.get(u.unit);
      if (!known || known.received < u.received) this.units.set(u.unit, u);
    }
    for (const e of data.emergencies || []) {
      if (!this.client.alerts.has(e.talkgroup)) {
        this.client.alerts.set(e.talkgroup, {
          type: 'emergency', talkgroup: e.talkgroup, unit: e.unit, alias: e.alias,
          location: e.location, ts: e.ts, repeat: 0,
        });
      }
      if (e.acknowledged) {
        this.acks.set(e.talkgroup, {
          type: 'emergency_acknowledged', talkgroup: e.talkgroup, unit: e.unit,
          by: e.acknowledged.by, alias: e.acknowledged.alias, ts: e.acknowledged.ts,
        });
      }
    }
    const first = (data.emergencies || []).find((e) => !e.acknowledged && e.location);
    if (first) this.map.focus(first.location.lat, first.location.lon);
    this.client.dispatchEvent(new Event('change'));
  }

  _onMessage(msg) {
    switch (msg.type) {
      case 'unit_location':
        this.units.set(msg.unit, msg);
        break;
      case 'emergency_acknowledged':
        this.acks.set(msg.talkgroup, msg);
        break;
      case 'emergency': {
        // A new alarm (raised after the acknowledgement we know of) needs a new one; a
        // repeat of the acknowledged alarm that crossed the acknowledgement does not.
        const ack = this.acks.get(msg.talkgroup);
        if (ack && msg.ts > ack.ts) this.acks.delete(msg.talkgroup);
        break;
      }
      case 'emergency_cleared':
        this.acks.delete(msg.talkgroup);
        break;
      default:
        return;
    }
    this.client.dispatchEvent(new Event('change'));
  }

  _onAlert(msg) {
    if (msg.repeat) return; // the operator may have moved the map since the first alert
    const loc = msg.location || this.units.get(msg.unit);
    if (loc) this.map.focus(loc.lat, loc.lon);
  }

  /** Alarms nobody has acknowledged (not our own). */
  unacknowledged() {
    const me = this.client.me && this.client.me.unit;
    return Array.from(this.client.alerts.values()).filter((a) => !this.acks.has(a.talkgroup) && a.unit !== me);
  }

  _soundAlarm() {
    if (this.unacknowledged().length) {
      this.alarms += 1;
      this.client.tones.emergency();
    }
  }

  acknowledge(tg) {
    this.client.unlockAudio();
    this.client.sig.send({ type: 'emergency_ack', talkgroup: tg });
  }

  // -- emergency cards --------------------------------------------------------------------------
  alertKey(a) {
    const ack = this.acks.get(a.talkgroup);
    return [a.talkgroup, a.unit, a.ts, ack ? ack.by : null, !!a.location].join('|');
  }

  locationText(a) {
    const loc = a.location || null;
    if (!loc) return this.units.has(a.unit) ? T.onMap('') : T.noLocation;
    return T.onMap(loc.accuracy ? T.accuracy(Math.round(loc.accuracy)) : '');
  }

  /** What an emergency card offers besides Clear: Acknowledge (or who did), Show on map. */
  alertParts(a) {
    const ack = this.acks.get(a.talkgroup);
    const who = a.alias || a.unit;
    const parts = [];
    if (ack) {
      parts.push(h('span', { class: 'alert-ack' }, T.acknowledged(ack.alias || ack.by, ack.ts ? fmtTime(ack.ts) : '')));
    } else {
      parts.push(h('button', {
        class: 'btn btn-small btn-ack', type: 'button', 'aria-label': T.acknowledgeLabel(who),
        onclick: () => this.acknowledge(a.talkgroup),
      }, T.acknowledge));
    }
    const loc = a.location || this.units.get(a.unit);
    if (loc && this.map.available) {
      parts.push(h('button', {
        class: 'btn btn-small', type: 'button', onclick: () => this.map.focus(loc.lat, loc.lon),
      }, T.showOnMap));
    }
    return parts;
  }

  // -- the map ----------------------------------------------------------------------------------
  _talking(unit) {
    for (const g of this.client.groups.values()) {
      if (g.floor.state === 'taken' && g.floor.unit === unit) return true;
      if (g.members.some((m) => m.unit === unit && m.state === 'talking')) return true;
    }
    return false;
  }

  renderMap() {
    const now = Date.now() / 1000 + this.skew;
    const alerts = Array.from(this.client.alerts.values());
    const list = Array.from(this.units.values()).map((u) => ({
      ...u, talking: this._talking(u.unit), emergency: alerts.some((a) => a.unit === u.unit),
    }));
    this.map.update(list, now);
    const shown = this.unacknowledged().find((a) => a.location) || alerts.find((a) => a.location) || null;
    this.map.showEmergency(shown);
    if (this.els.mapCount) setText(this.els.mapCount, list.length ? T.mapUnits(list.length) : T.mapEmpty);
  }

  // -- talk on any panel ------------------------------------------------------------------------
  canTalkOn(tg) {
    const g = this.client.groups.get(tg);
    const role = this.client.me && this.client.me.role;
    return !!g && g.joined && (g.mode === 'member' || MONITOR_TALK_ROLES.includes(role));
  }

  /** Who a transmission on `tg` would cut off now: {text, cuts: [names], refused}. */
  cutOff(tg) {
    const g = this.client.groups.get(tg);
    const f = g && g.floor;
    if (!f || f.state !== 'taken' || f.mine || this.client.transmittingOn(tg)) return null;
    const name = f.alias || f.unit || '?';
    const mine = this.client.me ? this.client.me.priority : null;
    // The floor's rule (core/floor.py): a request pre-empts a holder of strictly lower
    // priority; an emergency transmission is never pre-empted.
    if (f.emergency) return { text: T.willQueue(name), cuts: [], refused: name };
    if (typeof f.priority !== 'number' || typeof mine !== 'number') {
      return { text: T.mayCutOff(name), cuts: [name], refused: null };
    }
    if (mine > f.priority) return { text: T.cutsOff(name), cuts: [name], refused: null };
    return { text: T.willQueue(name), cuts: [], refused: name };
  }

  /** The line under the transmit bar: who the transmission (or all-call) cuts off. */
  renderTxWarning(mode, targets) {
    const el = this.els.txWarning;
    if (!el) return;
    let text = '';
    if (this.client.tx.phase === 'idle') {
      if (mode === 'all') {
        const cuts = [];
        const refused = [];
        for (const tg of targets) {
          const c = this.cutOff(tg);
          if (c && c.cuts.length) cuts.push(T.talkerOn(c.cuts[0], this.names.tgName(tg)));
          if (c && c.refused) refused.push(T.talkerOn(c.refused, this.names.tgName(tg)));
        }
        text = [cuts.length ? T.allCallCutsOff(listNames(cuts)) : '',
          refused.length ? T.allCallRefused(listNames(refused)) : ''].filter(Boolean).join(' ');
      } else if (targets[0]) {
        const c = this.cutOff(targets[0]);
        text = c ? c.text : '';
      }
    }
    setText(el, text);
    el.hidden = !text;
  }

  makePanelTalk(tg) {
    const parts = {};
    parts.state = h('span', { class: 'panel-ptt-state' }, T.panelTalk);
    parts.key = h('kbd', { class: 'panel-ptt-key' });
    parts.button = h('button', { class: 'panel-ptt', type: 'button' }, parts.state, parts.key);
    parts.warn = h('p', { class: 'panel-cutoff', role: 'status', 'aria-live': 'polite', hidden: true });
    parts.root = h('div', { class: 'panel-talk' }, parts.button, parts.warn);
    bindHoldToTalk(parts.button, {
      onPress: () => this.client.press(tg),
      onRelease: () => this.client.release(),
      space: false,
    });
    return parts;
  }

  /** Refresh one panel's talk button; `index` is the panel's place (keys 1..9). */
  updatePanelTalk(tg, parts, index) {
    const key = index < 9 ? String(index + 1) : null;
    if (key) this.keys.set(key, tg);
    const name = this.names.tgName(tg);
    const can = this.canTalkOn(tg);
    const tx = this.client.tx;
    const mine = tx.tg === tg && !tx.allCall ? tx : null;
    parts.button.disabled = !can || !this.client.sig.connected || this.client.offline;
    parts.button.classList.toggle('is-granted', !!mine && mine.phase === 'granted');
    parts.button.classList.toggle('is-requesting', !!mine && mine.phase === 'requesting');
    parts.button.classList.toggle('is-queued', !!mine && mine.phase === 'queued');
    const label = `${T.panelTalkLabel(name)}${key ? ` (${T.panelTalkKey(key)})` : ''}`;
    if (parts.button.getAttribute('aria-label') !== label) parts.button.setAttribute('aria-label', label);
    let state = can ? T.panelTalk : T.panelListenOnly;
    if (mine && mine.phase === 'granted') state = T.panelOnAir;
    else if (mine && mine.phase === 'requesting') state = T.panelWait;
    else if (mine && mine.phase === 'queued') state = T.panelQueued(mine.position || 1);
    setText(parts.state, state);
    setText(parts.key, key || '');
    parts.key.hidden = !key;
    const c = can ? this.cutOff(tg) : null;
    setText(parts.warn, c ? c.text : '');
    parts.warn.hidden = !c;
    parts.warn.classList.toggle('is-cut', !!(c && c.cuts.length));
  }

  _keyDown(ev) {
    if (ev.repeat || ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev.target)) return;
    const tg = this.keys.get(ev.key);
    if (!tg || this._heldKey) return;
    if (!this.canTalkOn(tg)) return;
    ev.preventDefault();
    this._heldKey = ev.key;
    this.client.press(tg);
  }

  _keyUp(ev) {
    if (!this._heldKey || (ev && ev.key !== this._heldKey)) return;
    this._heldKey = null;
    this.client.release();
  }

  /** After a language switch: the map's note and labels in the new language. */
  relabel() {
    this.map.relabel();
  }

  /** For tests and diagnostics (window.ptt.command()). */
  state() {
    const cutoffs = {};
    for (const tg of this.client.groups.keys()) {
      const c = this.cutOff(tg);
      if (c) cutoffs[tg] = c.text;
    }
    return {
      map: this.map.state(),
      units: Array.from(this.units.values()).map((u) => ({ unit: u.unit, lat: u.lat, lon: u.lon, received: u.received })),
      acknowledged: Object.fromEntries(Array.from(this.acks.entries()).map(([tg, a]) => [tg, a.by])),
      unacknowledged: this.unacknowledged().map((a) => a.talkgroup),
      alarms: this.alarms,
      cutoffs,
      keys: Object.fromEntries(this.keys),
      txWarning: this.els.txWarning ? this.els.txWarning.textContent : '',
    };
  }
}
