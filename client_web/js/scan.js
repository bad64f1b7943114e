// Scan: an officer listens to several of their talkgroups at once, as a TETRA/P25 radio does.
//
// One talkgroup is selected for transmit (the selector); the scan list adds others to listen
// to. One of them may be the priority talkgroup: while someone talks there, every other
// talkgroup's audio is held back (the priority pre-empts playback, not the floor: floor rules
// stay per talkgroup on the server). Any scanned talkgroup can be muted. A private call in
// progress outranks everything. The display names the talkgroup of the current talker.
//
// `scanPlan` is the rule, pure; `ScanList` keeps the officer's choices (per user, on this
// device) and draws the list.

import { h, setText } from './dom.js';
import { t } from './i18n.js';

const STORE_PREFIX = 'ptt.officer.scan.';

function talking(g) {
  return !!(g && g.joined && g.floor.state === 'taken' && !g.floor.mine);
}

/**
 * What to listen to and whom to show.
 *
 * @param groups    Map talkgroup -> group state (PttClient.groups)
 * @param selected  the transmit talkgroup
 * @param scan      {on, list: [tg], priority: tg|null, muted: [tg]}
 * @param callTg    the talkgroup of a private call in progress, or null
 * @returns {listening: Set, audible: Set, current: tg|null, preempting: tg|null}
 *   listening: joined because of the selection, the scan list or the call;
 *   audible:   played now (not muted, not held back by the priority talkgroup or the call);
 *   current:   the talkgroup whose talker the display shows;
 *   preempting: the talkgroup (call or priority) holding the others back, if any.
 */
export function scanPlan(groups, selected, scan, callTg = null) {
  const listening = new Set();
  if (selected) listening.add(selected);
  if (scan.on) for (const tg of scan.list) listening.add(tg);
  if (callTg) listening.add(callTg);
  const priority = scan.on && scan.priority && listening.has(scan.priority) ? scan.priority : null;
  const muted = new Set(scan.on ? scan.muted : []);
  // The selected talkgroup and the call are never muted: an officer always hears where they talk.
  muted.delete(selected);
  if (callTg) muted.delete(callTg);

  let preempting = null;
  if (callTg && talking(groups.get(callTg))) preempting = callTg;
  else if (priority && !muted.has(priority) && talking(groups.get(priority))) preempting = priority;

  const audible = new Set();
  for (const tg of listening) {
    if (muted.has(tg)) continue;
    if (preempting && tg !== preempting) continue;
    audible.add(tg);
  }
  // Whom to show: the pre-empting talker, else the selected talkgroup's, else the scanned
  // talker who started first (the one being heard longest).
  let current = preempting;
  if (!current && talking(groups.get(selected))) current = selected;
  if (!current) {
    let since = Infinity;
    for (const tg of audible) {
      const g = groups.get(tg);
      if (talking(g) && g.floor.since < since) { current = tg; since = g.floor.since; }
    }
  }
  return { listening, audible, current, preempting };
}

/** The officer's scan settings, kept per user on this device. */
export class ScanList {
  constructor(user) {
    this.key = STORE_PREFIX + user;
    this.on = false;
    this.list = [];
    this.priority = null;
    this.muted = [];
    try {
      const saved = JSON.parse(localStorage.getItem(this.key) || 'null');
      if (saved && typeof saved === 'object') {
        this.on = !!saved.on;
        this.list = Array.isArray(saved.list) ? saved.list.map(String) : [];
        this.priority = typeof saved.priority === 'string' ? saved.priority : null;
        this.muted = Array.isArray(saved.muted) ? saved.muted.map(String) : [];
      }
    } catch { /* unreadable: start empty */ }
  }

  /** Forget talkgroups this officer no longer has. */
  restrictTo(ids) {
    const known = new Set(ids);
    this.list = this.list.filter((tg) => known.has(tg));
    this.muted = this.muted.filter((tg) => known.has(tg));
    if (this.priority && !known.has(this.priority)) this.priority = null;
  }

  save() {
    try {
      localStorage.setItem(this.key, JSON.stringify({
        on: this.on, list: this.list, priority: this.priority, muted: this.muted,
      }));
    } catch { /* not remembered on this device; still applied */ }
  }

  setOn(on) { this.on = !!on; this.save(); }

  setListening(tg, yes) {
    this.list = this.list.filter((x) => x !== tg);
    if (yes) this.list.push(tg);
    else if (this.priority === tg) this.priority = null;
    this.save();
  }

  setPriority(tg) {
    this.priority = tg || null;
    if (tg && !this.list.includes(tg)) this.list.push(tg);
    this.save();
  }

  setMuted(tg, yes) {
    this.muted = this.muted.filter((x) => x !== tg);
    if (yes) this.muted.push(tg);
    this.save();
  }

  snapshot() {
    return { on: this.on, list: this.list.slice(), priority: this.priority, muted: this.muted.slice() };
  }
}

/**
 * Draw the scan list into `root` (a <ul>): one row per talkgroup the officer may listen to,
 * with Listen, Priority and Mute, and what is happening there now. `onChange` runs after any
 * choice. Rows are rebuilt only when their content changes (screen readers, focus).
 */
export function renderScan(root, { talkgroups, selected, scan, plan, groups, onChange }) {
  const rows = talkgroups.map((tg) => {
    const g = groups.get(tg.id);
    const isSelected = tg.id === selected;
    const listening = isSelected || (scan.on && scan.list.includes(tg.id));
    const muted = !isSelected && scan.muted.includes(tg.id);
    const talker = g && g.joined && g.floor.state === 'taken' ? (g.floor.alias || g.floor.unit) : null;
    let status = '';
    if (isSelected) status = t('scan.transmit');
    if (talker) {
      status = plan.audible.has(tg.id) ? t('scan.talking', { who: talker })
        : t(muted ? 'scan.talking_muted' : 'scan.talking_held', { who: talker });
    }
    return { tg, isSelected, listening, muted, priority: scan.priority === tg.id, status };
  });
  const key = JSON.stringify([scan.on, rows.map((r) => [r.tg.id, r.tg.name, r.isSelected, r.listening,
    r.muted, r.priority])]);
  if (root.dataset.key !== key) {
    root.dataset.key = key;
    root.replaceChildren(...rows.map((r) => scanRow(r, scan, onChange)));
  }
  // Status texts change often (talkers come and go): updated in place.
  for (const r of rows) {
    const li = root.querySelector(`li[data-tg="${CSS.escape(r.tg.id)}"]`);
    if (!li) continue;
    setText(li.querySelector('.scan-status'), r.status);
    li.classList.toggle('is-talking', !!r.status && r.status !== t('scan.transmit'));
    li.classList.toggle('is-held', r.listening && !plan.audible.has(r.tg.id));
  }
}

function scanRow(r, scan, onChange) {
  const id = `scan-${r.tg.id}`;
  const name = r.tg.name || r.tg.id;
  const listen = h('input', {
    type: 'checkbox', id: `${id}-listen`, class: 'scan-listen', checked: r.listening,
    disabled: r.isSelected || !scan.on,
    onchange: (ev) => { scan.setListening(r.tg.id, ev.target.checked); onChange(); },
  });
  const priority = h('input', {
    type: 'radio', name: 'scan-priority', id: `${id}-priority`, class: 'scan-priority',
    checked: r.priority, disabled: !scan.on,
    onchange: () => { scan.setPriority(r.tg.id); onChange(); },
  });
  const mute = h('button', {
    type: 'button', class: 'btn btn-small scan-mute', 'aria-pressed': r.muted ? 'true' : 'false',
    disabled: r.isSelected || !scan.on || !r.listening,
    'aria-label': t(r.muted ? 'scan.unmute_tg' : 'scan.mute_tg', { tg: name }),
    onclick: () => { scan.setMuted(r.tg.id, !r.muted); onChange(); },
  }, t(r.muted ? 'scan.unmute' : 'scan.mute'));
  return h('li', { class: `scan-row${r.isSelected ? ' is-selected' : ''}`, dataset: { tg: r.tg.id } },
    h('span', { class: 'scan-name' },
      listen, h('label', { for: `${id}-listen` }, name)),
    h('span', { class: 'scan-status', 'aria-live': 'polite' }),
    h('span', { class: 'scan-controls' },
      h('span', { class: 'scan-prio' }, priority,
        h('label', { for: `${id}-priority` }, t('scan.priority'))),
      mute));
}
