// Supervisor console (/console.html): monitor several talkgroups, talk on the own ones or on
// several at once (all-call), patch talkgroups together, force a stuck talker off, see
// emergencies and who is where.

import { api, bootSignIn, getToken, renew, signOut } from './auth.js';
import { meterFraction } from './audio.js';
import { $, fmtDuration, fmtTime, h, setText, show, toast } from './dom.js';
import { attachMessaging } from './messaging.js';
import { bindHoldToTalk } from './ptt-button.js';
import { PttClient, codeText, listNames } from './ptt-client.js';
import { CommandCentre } from './command-centre.js';
import { endReasonText } from './command-text.js';
import { CHANGE_EVENT, t } from './i18n.js';
import { PrivateCall } from './private-call.js';

const LISTEN_KEY = 'ptt.console.listen';
const TX_KEY = 'ptt.console.tx';
const VOL_KEY = 'ptt.console.volume';
// Catalogue keys (i18n.js): the text is looked up at each render, in the chosen language.
const CONN_TEXT = {
  connecting: 'conn.connecting', connected: 'conn.connected', reconnecting: 'conn.reconnecting', offline: 'conn.offline',
};

const ROLES = ['supervisor', 'dispatcher', 'admin'];
const ROLE_NAMES = { supervisor: 'console.role_supervisor', dispatcher: 'console.role_dispatcher', admin: 'console.role_admin' };
let role = '';

const el = {
  conn: $('#conn'), connText: $('#conn .conn-text'), who: $('#who'), whoAlias: $('#who-alias'),
  whoRole: $('#who-role'), signout: $('#signout'), signin: $('#signin'), console: $('#console'),
  channels: $('#channels'), presence: $('#presence'), presenceCount: $('#presence-count'),
  alerts: $('#alerts'), unlock: $('#audio-unlock'), unlockBtn: $('#audio-unlock-btn'),
  txSelect: $('#tx-tg'), ptt: $('#talk-button'), pttState: $('#ptt-state'), txInfo: $('#tx-info'),
  panels: $('#panels'), txModeOne: $('#tx-mode-one'), txModeAll: $('#tx-mode-all'),
  txOne: $('#tx-one'), txAll: $('#tx-all'), allCallTgs: $('#allcall-tgs'),
  patchList: $('#patch-list'), patchCount: $('#patch-count'), patchForm: $('#patch-form'),
  patchTgs: $('#patch-tgs'), patchCreate: $('#patch-create'), patchMsg: $('#patch-msg'),
  linkStatus: $('#link-status'),
};

let client = null;
let command = null; // the map, acknowledgements, talk on any panel (command-centre.js)
// A private call with a unit (private-call.js): its talkgroup gets a panel of its own, with
// that panel's Talk, like any other.
let call = null;
let talkgroups = []; // [{id, name, kind, access}]
let txTarget = null;
let txMode = 'one'; // 'one' (the selected talkgroup) or 'all' (all-call)
const allCallPick = new Set(); // talkgroups ticked for the all-call
const patchPick = new Set(); // talkgroups ticked for a new patch
let patchMsgTimer = null;
const panels = new Map(); // tg -> {root, parts...}
let volumes = {};

function normaliseTalkgroups(body) {
  const list = Array.isArray(body) ? body : (body && body.talkgroups) || [];
  return list.map((x) => ({
    id: x.id || x.talkgroup, name: x.name || x.id, kind: x.kind || 'normal', access: x.access || 'monitor',
  })).filter((x) => x.id);
}

function tgInfo(id) {
  return talkgroups.find((x) => x.id === id) || { id, name: id, kind: 'normal', access: 'monitor' };
}

function tgName(id) {
  const g = client && client.groups.get(id);
  return (g && g.joined && g.name) || tgInfo(id).name || id;
}

/** The alias of a unit if someone by that unit is in view ("you" for ourselves). */
function unitName(unit) {
  if (!unit) return null;
  if (client.me && client.me.unit === unit) return t('console.you');
  for (const g of client.groups.values()) {
    const m = g.members.find((x) => x.unit === unit);
    if (m) return m.alias || unit;
  }
  return unit;
}

function joinedIds() {
  return Array.from(client.groups.values()).filter((g) => g.joined).map((g) => g.id)
    .sort((a, b) => a.localeCompare(b));
}

/** Where the console may write: each talkgroup it is in, and each unit seen in them. */
function messageTargets() {
  const out = joinedIds().map((tg) => ({ value: `tg:${tg}`, label: tgName(tg), talkgroup: tg }));
  const units = new Map();
  for (const g of client.groups.values()) {
    for (const m of g.members) if (!client.me || m.unit !== client.me.unit) units.set(m.unit, m.alias || m.unit);
  }
  for (const [unit, alias] of Array.from(units).sort((a, b) => a[1].localeCompare(b[1]))) {
    out.push({ value: `unit:${unit}`, label: `${alias} (${unit})`, to: unit });
  }
  return out;
}

/** The talkgroups the all-call would go to now: ticked and joined. */
function allCallTargets() {
  return joinedIds().filter((tg) => allCallPick.has(tg));
}

/** Which talkgroups to listen to: ?monitor=A,B (a console shortcut), else the saved choice,
 * else every talkgroup. Own (member) talkgroups are on unless switched off. */
function initialListen() {
  const params = new URLSearchParams(location.search);
  const members = talkgroups.filter((x) => x.access === 'member').map((x) => x.id);
  if (params.has('monitor')) {
    const wanted = params.get('monitor').split(',').map((s) => s.trim()).filter(Boolean);
    return new Set([...members, ...wanted]);
  }
  try {
    const saved = JSON.parse(localStorage.getItem(LISTEN_KEY) || 'null');
    if (Array.isArray(saved)) return new Set(saved);
  } catch { /* ignore */ }
  return new Set(talkgroups.map((x) => x.id));
}

function saveListen() {
  localStorage.setItem(LISTEN_KEY, JSON.stringify(Array.from(client.wanted.keys())));
}

async function loadTalkgroups(claims) {
  try {
    talkgroups = normaliseTalkgroups(await api('/api/talkgroups'));
  } catch (err) {
    if (err.status === 401) { expired(); return; }
    toast(t('console.tg_load_failed', { reason: codeText(err.code) }), 'error', 8000);
    talkgroups = (claims.talkgroups || []).map((id) => ({ id, name: id, access: 'member' }));
  }
  const listen = initialListen();
  for (const x of talkgroups) {
    if (listen.has(x.id)) joinTalkgroup(x.id);
  }
  const members = talkgroups.filter((x) => x.access === 'member');
  el.txSelect.replaceChildren(...members.map((x) => h('option', { value: x.id },
    x.name && x.name !== x.id ? `${x.name} (${x.id})` : x.id)));
  const savedTx = localStorage.getItem(TX_KEY);
  txTarget = (members.find((x) => x.id === savedTx) || members[0] || {}).id || null;
  if (txTarget) el.txSelect.value = txTarget;
  el.txSelect.disabled = !members.length;
  renderChannels();
  render();
}

function expired() {
  signOut();
  if (client) client.stop();
  location.replace(location.pathname + '?expired=1');
}

function start(token, claims) {
  show(el.signin, false);
  show(el.console, true);
  show(el.who, true);
  show(el.conn, true);
  setText(el.whoAlias, claims.alias || claims.sub || '');
  role = claims.role || '';
  setText(el.whoRole, ROLE_NAMES[role] ? t(ROLE_NAMES[role]) : role);
  try { volumes = JSON.parse(localStorage.getItem(VOL_KEY) || '{}') || {}; } catch { volumes = {}; }
  client = new PttClient({ getToken, renewToken: renew });
  client.addEventListener('change', render);
  client.addEventListener('levels', renderLevels);
  // The radio's notices (ptt-client.js) are in the page's language already, server errors
  // said by their code.
  client.addEventListener('notice', (ev) => {
    toast(ev.detail.text, ev.detail.kind, ev.detail.kind === 'error' ? 7000 : 4000);
    if (ev.detail.scope === 'patch') patchMessage(ev.detail.text, ev.detail.kind);
  });
  client.addEventListener('patch', (ev) => {
    const msg = ev.detail.msg;
    const names = listNames((msg.talkgroups || []).map(tgName));
    const by = unitName(msg.by);
    const made = msg.type === 'patched';
    const text = by ? t(made ? 'console.patched_by' : 'console.unpatched_by', { names, by })
      : t(made ? 'console.patched' : 'console.unpatched', { names });
    toast(text, 'info');
    patchMessage(text, 'info');
    if (msg.type === 'patched') for (const tg of msg.talkgroups || []) patchPick.delete(tg);
  });
  client.addEventListener('fatal', expired);
  call = new PrivateCall(client, { bar: $('#call-bar'), sheet: $('#call-sheet') });
  call.addEventListener('change', render);
  command = new CommandCentre(client, {
    map: $('#unit-map'), mapNote: $('#unit-map-note'), mapCount: $('#unit-map-count'),
    txWarning: $('#tx-cutoff'),
  }, { tgName, unitName });
  // Statuses and texts to a talkgroup or a unit; an incident talkgroup joins the list when it
  // is opened and leaves it when it is closed (messaging.js).
  window.pttMessages = attachMessaging(client, {
    root: $('#messaging'), targets: messageTargets,
    onTalkgroupAdded: (msg) => {
      if (!talkgroups.some((x) => x.id === msg.talkgroup)) {
        talkgroups.push({ id: msg.talkgroup, name: msg.name, kind: msg.kind, access: msg.access });
      }
      renderChannels();
    },
    onTalkgroupRemoved: (msg) => {
      if (msg.reason === 'closed') talkgroups = talkgroups.filter((x) => x.id !== msg.talkgroup);
      renderChannels();
    },
  });
  client.start();
  client.unlockAudio(); // still inside the sign-in gesture's activation window, if there was one
  loadTalkgroups(claims);
  command.start();
  bindHoldToTalk(el.ptt, {
    onPress: () => (txMode === 'all' ? client.pressAllCall(allCallTargets()) : client.press(txTarget)),
    onRelease: () => client.release(),
  });
  window.ptt = {
    client,
    state: () => ({
      ...client.snapshot(), talkgroup: txTarget, talker: client.talker(txTarget), txMode,
      allCallTargets: allCallTargets(),
    }),
    resetLevels: () => client.resetLevels(),
    outputSpectrum: (freqs) => client.engine.outputSpectrum(freqs),
    listen: (tg, on) => setListening(tg, on),
    command: () => command.state(),
    call: () => call.state(),
    callUnit: (unit) => call.request(unit),
  };
  setInterval(render, 500);
  render();
}

function joinTalkgroup(tg) {
  client.join(tg, tgInfo(tg).access === 'member' ? 'member' : 'monitor');
  const v = volumes[tg];
  if (v && typeof v.volume === 'number') client.setVolume(tg, v.volume);
  if (v && v.muted) client.setMuted(tg, true);
}

function setListening(tg, on) {
  if (on) joinTalkgroup(tg);
  else client.leave(tg);
  saveListen();
  renderChannels();
  render();
}

function saveVolume(tg) {
  const g = client.groups.get(tg);
  if (!g) return;
  volumes[tg] = { volume: g.volume, muted: g.muted };
  localStorage.setItem(VOL_KEY, JSON.stringify(volumes));
}

// -- rendering ------------------------------------------------------------------------------
function render() {
  if (!client) return;
  const conn = client.connection;
  el.conn.className = `conn conn-${conn}`;
  setText(el.connText, CONN_TEXT[conn] ? t(CONN_TEXT[conn]) : conn);
  show(el.unlock, conn === 'connected' && client.audioLocked);
  setText(el.linkStatus, client.linkStatus || '');
  renderTxChoices();
  renderTx();
  renderPatches();
  renderPanels();
  renderAlerts();
  renderPresence();
  renderChannelStates();
  command.renderMap();
  command.renderTxWarning(txMode, txMode === 'all' ? allCallTargets() : [txTarget]);
}

function renderTxChoices() {
  show(el.txOne, txMode === 'one');
  show(el.txAll, txMode === 'all');
  const ids = joinedIds();
  const key = JSON.stringify(ids.map((tg) => [tg, tgName(tg)]));
  if (el.allCallTgs.dataset.key !== key) {
    el.allCallTgs.dataset.key = key;
    el.allCallTgs.replaceChildren(...(ids.length ? ids.map((tg) => {
      const box = h('input', { type: 'checkbox', id: `allcall-${tg}`, value: tg });
      box.addEventListener('change', () => {
        if (box.checked) allCallPick.add(tg);
        else allCallPick.delete(tg);
        render();
      });
      return h('span', { class: 'check' }, box, h('label', { for: `allcall-${tg}` }, tgName(tg)));
    }) : [h('span', { class: 'empty' }, t('console.none_joined'))]));
  }
  for (const box of el.allCallTgs.querySelectorAll('input')) {
    box.checked = allCallPick.has(box.value);
    box.disabled = client.tx.phase !== 'idle';
  }
}

function renderAllCallTx() {
  const tx = client.tx;
  const mine = tx.allCall ? tx : null;
  const targets = allCallTargets();
  const granted = mine && mine.phase === 'granted';
  const busy = client.isBusy(null);
  el.ptt.disabled = !mine && !(targets.length && client.sig.connected);
  el.ptt.classList.toggle('is-requesting', !!mine && mine.phase === 'requesting');
  el.ptt.classList.toggle('is-granted', !!granted);
  el.ptt.classList.toggle('is-busy', !mine && busy);
  let stateText = t('console.allcall');
  let info = t('console.allcall_hint');
  let cls = '';
  if (client.offline) {
    stateText = t('ptt.offline');
    info = offlineInfo();
    cls = 'is-busy';
  } else if (granted) {
    stateText = t('ptt.on_air');
    const left = mine.maxDuration ? Math.max(0, mine.maxDuration - (Date.now() - mine.since) / 1000) : null;
    info = t('console.allcall_on', { names: listNames(mine.covers.map(tgName)) }) + timeLeft(left);
    cls = mine.warning ? 'is-busy' : 'is-sending';
  } else if (mine) {
    stateText = t('ptt.wait');
    info = t('console.calling', { names: listNames(mine.covers.map(tgName)) });
  } else if (busy) {
    stateText = t('ptt.busy');
    info = busyText(client.busy);
    cls = 'is-busy';
  } else if (!targets.length) {
    info = t('console.allcall_pick');
  } else if (client.micError) {
    info = client.micError;
    cls = 'is-busy';
  }
  setText(el.pttState, stateText);
  setText($('#ptt-hint'), info);
  el.txInfo.className = `tx-info ${cls}`;
}

function renderTx() {
  if (txMode === 'all') {
    renderAllCallTx();
    return;
  }
  const tx = client.tx;
  const mine = tx.tg === txTarget ? tx : null;
  const g = client.groups.get(txTarget);
  const granted = mine && mine.phase === 'granted';
  const busy = client.isBusy(txTarget);
  el.ptt.disabled = !(g && g.joined && g.mode === 'member' && client.sig.connected);
  el.ptt.classList.toggle('is-requesting', !!mine && mine.phase === 'requesting');
  el.ptt.classList.toggle('is-granted', !!granted);
  el.ptt.classList.toggle('is-busy', busy || (!!mine && mine.phase === 'queued'));
  let stateText = t('ptt.hold');
  let info = t('console.hint');
  let cls = '';
  const name = g ? g.name : txTarget;
  if (!txTarget) {
    info = t('console.no_tx_talkgroup');
  } else if (client.offline) {
    stateText = t('ptt.offline');
    info = offlineInfo();
    cls = 'is-busy';
  } else if (granted) {
    stateText = t('ptt.on_air');
    const left = mine.maxDuration ? Math.max(0, mine.maxDuration - (Date.now() - mine.since) / 1000) : null;
    const patch = client.patchOf(txTarget);
    const also = patch ? patch.talkgroups.filter((x) => x !== txTarget).map(tgName) : [];
    info = (also.length ? t('console.talking_on_patched', { tg: name, names: listNames(also) })
      : t('console.talking_on', { tg: name })) + timeLeft(left);
    cls = mine.warning ? 'is-busy' : 'is-sending';
  } else if (mine && mine.phase === 'requesting') {
    stateText = t('ptt.wait');
    info = t('console.requesting', { tg: name });
  } else if (mine && mine.phase === 'queued') {
    const n = mine.position || 1;
    stateText = t('ptt.busy_queue', { n });
    const holder = client.busy && client.busy.holder;
    info = holder ? t('console.queued_holder', { tg: name, holder, n }) : t('console.queued', { tg: name, n });
    cls = 'is-busy';
  } else if (busy) {
    stateText = t('ptt.busy');
    info = busyText(client.busy);
    cls = 'is-busy';
  } else if (client.micError) {
    info = client.micError;
    cls = 'is-busy';
  }
  setText(el.pttState, stateText);
  const hint = $('#ptt-hint');
  setText(hint, info);
  el.txInfo.className = `tx-info ${cls}`;
}

function offlineInfo() {
  const reason = client.offlineReason;
  return `${reason ? `${reason} ` : ''}${t('console.offline_info')}`;
}

function timeLeft(left) {
  return left !== null ? t('console.time_left', { s: Math.ceil(left) }) : '';
}

/** Why the floor is busy for us (ptt-client's reason, in the page's language) and who talks. */
function busyText(b) {
  return b.holder ? t('console.busy_holder', { reason: b.reason.replace(/\.$/, ''), holder: b.holder }) : b.reason;
}

function renderChannels() {
  el.channels.replaceChildren(...talkgroups.map((tg) => {
    const id = `listen-${tg.id}`;
    const box = h('input', { type: 'checkbox', id, checked: client.wanted.has(tg.id) });
    box.addEventListener('change', () => setListening(tg.id, box.checked));
    return h('li', { class: 'channel', dataset: { tg: tg.id } },
      box,
      h('label', { for: id }, h('span', { class: 'tg-name' }, tg.name, h('span', { class: 'tg-id' }, tg.id))),
      h('span', { class: `tag ${tg.access === 'member' ? 'tag-member' : ''}` }, t(tg.access === 'member' ? 'console.member' : 'members.monitor')));
  }));
}

function renderChannelStates() {
  for (const li of el.channels.children) {
    const g = client.groups.get(li.dataset.tg);
    li.classList.toggle('is-live', !!g && g.floor.state === 'taken');
    li.classList.toggle('is-emergency', client.alerts.has(li.dataset.tg));
    const box = li.querySelector('input');
    if (box) box.checked = client.wanted.has(li.dataset.tg);
  }
}

function makePanel(tg) {
  const g = client.groups.get(tg);
  const titleId = `panel-${tg}-title`;
  const parts = {};
  parts.name = h('h2', { id: titleId }, g.name);
  parts.mode = h('span', { class: 'tag' });
  parts.txTag = h('span', { class: 'tag tag-tx', hidden: true }, t('console.tx_tag'));
  parts.emergTag = h('span', { class: 'tag tag-emergency', hidden: true }, t('emergency.button'));
  parts.who = h('p', { class: 'who' });
  parts.what = h('span', { class: 'what' });
  parts.elapsed = h('span', { class: 'elapsed' });
  parts.status = h('div', { class: 'panel-status', role: 'status', 'aria-live': 'polite', 'aria-atomic': 'true' },
    parts.who, parts.what, parts.elapsed);
  parts.meter = h('div', { class: 'meter-fill' });
  const volId = `vol-${tg}`;
  parts.volume = h('input', { type: 'range', id: volId, min: '0', max: '100', step: '5', value: String(Math.round(g.volume * 100)) });
  parts.volume.addEventListener('input', () => {
    client.setVolume(tg, Number(parts.volume.value) / 100);
    saveVolume(tg);
  });
  parts.mute = h('button', { class: 'btn btn-small', type: 'button', 'aria-pressed': String(g.muted) }, t('console.mute'));
  parts.mute.addEventListener('click', () => {
    client.setMuted(tg, !client.groups.get(tg).muted);
    saveVolume(tg);
    render();
  });
  parts.revoke = h('button', { class: 'btn btn-small btn-danger', type: 'button' }, t('console.force_release'));
  parts.revoke.addEventListener('click', () => {
    const f = client.groups.get(tg).floor;
    client.revoke(tg);
    toast(t('console.releasing', { who: f.alias || t('console.the_talker'), tg: g.name }), 'warn');
  });
  parts.patch = h('p', { class: 'patch-badge', hidden: true });
  parts.members = h('p', { class: 'panel-members' });
  parts.log = h('ol', { class: 'log' });
  parts.root = h('section', { class: 'panel', 'aria-labelledby': titleId, dataset: { tg } },
    h('div', { class: 'panel-head' }, parts.name, h('span', { class: 'tg-id' }, tg),
      h('span', { class: 'tags' }, parts.emergTag, parts.txTag, parts.mode)),
    parts.patch,
    h('div', { class: 'panel-talker' }, parts.status, parts.revoke),
    (parts.talk = command.makePanelTalk(tg)).root,
    h('div', { class: 'meter', 'aria-hidden': 'true' }, parts.meter),
    h('div', { class: 'panel-controls' },
      h('label', { class: 'vol', for: volId }, t('console.volume'), parts.volume),
      parts.mute),
    parts.members,
    h('h3', {}, t('replay.title')),
    parts.log);
  return parts;
}

function renderPanels() {
  const ids = Array.from(client.groups.keys()).sort((a, b) => {
    const ma = tgInfo(a).access === 'member' ? 0 : 1;
    const mb = tgInfo(b).access === 'member' ? 0 : 1;
    return ma - mb || a.localeCompare(b);
  });
  for (const [tg, p] of panels) {
    if (!client.groups.has(tg)) {
      p.root.remove();
      panels.delete(tg);
    }
  }
  ids.forEach((tg, i) => {
    let p = panels.get(tg);
    if (!p) {
      p = makePanel(tg);
      panels.set(tg, p);
    }
    if (el.panels.children[i] !== p.root) el.panels.insertBefore(p.root, el.panels.children[i] || null);
    updatePanel(tg, p);
    command.updatePanelTalk(tg, p.talk, i);
  });
  if (!ids.length) {
    if (!el.panels.querySelector('.empty')) el.panels.append(h('p', { class: 'empty' }, t('console.choose_listen')));
  } else {
    const e = el.panels.querySelector('.empty');
    if (e) e.remove();
  }
}

function updatePanel(tg, p) {
  const g = client.groups.get(tg);
  const f = g.floor;
  const sending = client.transmittingOn(tg);
  const target = txMode === 'all' ? client.allCallCovers(allCallTargets()).includes(tg) : tg === txTarget;
  const receiving = f.state === 'taken' && !sending;
  const emergency = client.alerts.get(tg) || g.emergency;
  p.root.classList.toggle('is-receiving', receiving);
  p.root.classList.toggle('is-sending', sending);
  p.root.classList.toggle('is-emergency', !!emergency);
  p.root.classList.toggle('is-tx-target', target);
  p.root.classList.toggle('is-patched', !!client.patchOf(tg));
  setText(p.name, g.name);
  const revokeLabel = t('console.force_release_label', { tg: g.name });
  if (p.revoke.getAttribute('aria-label') !== revokeLabel) {
    p.revoke.setAttribute('aria-label', revokeLabel);
    p.mute.setAttribute('aria-label', t('console.mute_label', { tg: g.name }));
    p.log.setAttribute('aria-label', t('console.log_label', { tg: g.name }));
  }
  setText(p.mode, t(g.joined ? (g.mode === 'member' ? 'console.member' : 'members.monitor') : 'talker.joining'));
  p.mode.className = `tag ${g.mode === 'member' ? 'tag-member' : ''}`;
  p.txTag.hidden = !target;
  const patch = client.patchOf(tg);
  const others = patch ? patch.talkgroups.filter((x) => x !== tg).map(tgName) : [];
  setText(p.patch, others.length ? t('patch.with', { names: listNames(others) }) : '');
  p.patch.hidden = !others.length;
  p.emergTag.hidden = !emergency;
  if (sending) {
    setText(p.who, t('members.you'));
    setText(p.what, t(client.tx.allCall ? 'console.you_talking_allcall' : 'console.you_talking'));
    setText(p.elapsed, fmtDuration((Date.now() - client.tx.since) / 1000));
  } else if (f.state === 'taken') {
    setText(p.who, f.alias || f.unit || '?');
    setText(p.what, t(f.emergency ? 'console.emergency_talking' : 'console.talking'));
    setText(p.elapsed, f.since ? fmtDuration((Date.now() - f.since) / 1000) : '');
  } else {
    setText(p.who, '');
    // Offline the floor is unknown (the stale talker was cleared): say so rather than 'Idle'.
    setText(p.what, t(client.offline ? 'talker.no_connection' : g.joined ? 'console.idle' : 'talker.joining'));
    setText(p.elapsed, '');
  }
  p.status.classList.toggle('is-offline', client.offline);
  p.revoke.disabled = f.state !== 'taken' || !g.joined;
  p.mute.setAttribute('aria-pressed', String(g.muted));
  setText(p.mute, t('console.mute'));
  if (document.activeElement !== p.volume) p.volume.value = String(Math.round(g.volume * 100));
  const online = g.members.length;
  setText(p.members, online ? t('console.online_names', { n: online, names: g.members.map((m) => m.alias || m.unit).join(', ') })
    : t('console.online', { n: online }));
  const key = g.log.map((e) => e.tid).join(',');
  if (p.log.dataset.key !== key) {
    p.log.dataset.key = key;
    p.log.replaceChildren(...(g.log.length ? g.log.slice(0, 20).map((e) => h('li', {},
      h('time', { datetime: new Date(e.start * 1000).toISOString() }, fmtTime(e.start)),
      h('span', { class: e.emergency ? 'emerg' : '' }, `${e.alias || e.unit}${e.emergency ? ` (${t('console.log_emergency')})` : ''}${e.reason && e.reason !== 'released' ? ` · ${endReasonText(e.reason)}` : ''}`),
      h('span', { class: 'dur' }, fmtDuration(e.duration)))) : [h('li', { class: 'empty' }, t('console.nothing_yet'))]));
  }
}

function patchMessage(text, kind) {
  setText(el.patchMsg, text);
  el.patchMsg.className = `patch-msg patch-msg-${kind}`;
  clearTimeout(patchMsgTimer);
  patchMsgTimer = setTimeout(() => setText(el.patchMsg, ''), kind === 'error' ? 10000 : 5000);
}

function renderPatches() {
  const patches = Array.from(client.patches.values());
  // Active patches, each with its Unpatch button.
  const listKey = JSON.stringify(patches.map((p) => [p.id, p.talkgroups.map(tgName), p.by]));
  if (el.patchList.dataset.key !== listKey) {
    el.patchList.dataset.key = listKey;
    setText(el.patchCount, patches.length ? `(${patches.length})` : '');
    el.patchList.replaceChildren(...(patches.length ? patches.map((p) => {
      const names = listNames(p.talkgroups.map(tgName));
      const by = unitName(p.by);
      const unpatch = h('button', { class: 'btn btn-small', type: 'button', 'aria-label': t('console.unpatch_label', { names }) }, t('console.unpatch'));
      unpatch.addEventListener('click', () => client.patchRemove(p.id));
      return h('li', { class: 'patch-item', dataset: { patch: p.id } },
        h('span', { class: 'patch-names' }, p.talkgroups.map(tgName).join(' + ')),
        by ? h('span', { class: 'patch-by' }, t('console.by', { who: by })) : null,
        unpatch);
    }) : [h('li', { class: 'empty' }, t('console.no_patches'))]));
  }
  // The talkgroups a new patch can link: those joined here, not already in a patch.
  const ids = joinedIds();
  for (const tg of Array.from(patchPick)) {
    if (!ids.includes(tg) || client.patchOf(tg)) patchPick.delete(tg);
  }
  const key = JSON.stringify(ids.map((tg) => [tg, tgName(tg), client.patchOf(tg) ? 1 : 0]));
  if (el.patchTgs.dataset.key !== key) {
    el.patchTgs.dataset.key = key;
    el.patchTgs.replaceChildren(...(ids.length ? ids.map((tg) => {
      const patched = !!client.patchOf(tg);
      const box = h('input', { type: 'checkbox', id: `patch-${tg}`, value: tg, disabled: patched });
      box.addEventListener('change', () => {
        if (box.checked) patchPick.add(tg);
        else patchPick.delete(tg);
        render();
      });
      return h('span', { class: 'check' }, box,
        h('label', { for: `patch-${tg}` }, tgName(tg), patched ? h('span', { class: 'muted' }, ` (${t('console.patched_mark')})`) : null));
    }) : [h('span', { class: 'empty' }, t('console.patch_need'))]));
  }
  for (const box of el.patchTgs.querySelectorAll('input')) box.checked = patchPick.has(box.value);
  el.patchCreate.disabled = patchPick.size < 2 || !client.sig.connected;
  const label = patchPick.size >= 2 ? t('console.patch_names', { names: listNames(Array.from(patchPick).sort().map(tgName)) }) : t('console.patch');
  setText(el.patchCreate, label);
}

function renderLevels() {
  if (!client) return;
  for (const [tg, p] of panels) {
    const g = client.groups.get(tg);
    p.meter.style.width = `${Math.round(meterFraction(g ? g.level : 0) * 100)}%`;
  }
}

function renderAlerts() {
  const alerts = Array.from(client.alerts.values());
  const key = JSON.stringify(alerts.map((a) => [a.talkgroup, a.unit, a.ts, client.groups.has(a.talkgroup), command.alertKey(a)]));
  if (el.alerts.dataset.key === key) return;
  el.alerts.dataset.key = key;
  show(el.alerts, alerts.length > 0);
  el.alerts.replaceChildren(...alerts.map((a) => {
    const info = tgInfo(a.talkgroup);
    const g = client.groups.get(a.talkgroup);
    const loc = command.locationText(a); // the place itself is on the map, not in digits
    const actions = h('div', { class: 'actions' }, ...command.alertParts(a));
    if (!g) {
      actions.append(h('button', { class: 'btn btn-small', type: 'button', onclick: () => setListening(a.talkgroup, true) }, t('console.listen_to', { tg: info.name })));
    } else {
      actions.append(h('button', { class: 'btn btn-small', type: 'button', onclick: () => client.emergencyCancel(a.talkgroup) }, t('console.clear_emergency')));
    }
    return h('div', { class: `alert-card${command.acks.has(a.talkgroup) ? ' is-acknowledged' : ''}`, dataset: { talkgroup: a.talkgroup } },
      h('span', { class: 'alert-title' }, t('emergency.title')),
      h('span', { class: 'alert-text' }, t('console.alert_who', { who: a.alias || a.unit, unit: a.unit, tg: info.name })),
      h('span', { class: 'alert-meta' }, `${a.ts ? fmtTime(a.ts) : ''} · ${loc}`),
      actions);
  }));
}

function renderPresence() {
  const units = new Map();
  for (const g of client.groups.values()) {
    for (const m of g.members) {
      let u = units.get(m.unit);
      if (!u) {
        u = { unit: m.unit, alias: m.alias, role: m.role, groups: [], talking: [] };
        units.set(m.unit, u);
      }
      if (!u.groups.includes(g.id)) u.groups.push(g.id);
      if (m.state === 'talking') u.talking.push(g.id);
    }
  }
  const list = Array.from(units.values()).sort((a, b) =>
    (b.talking.length - a.talking.length) || String(a.alias).localeCompare(String(b.alias)));
  const calling = !!(call && call.call);
  const key = JSON.stringify([calling, list]);
  if (el.presence.dataset.key === key) return;
  el.presence.dataset.key = key;
  setText(el.presenceCount, list.length ? `(${list.length})` : '');
  const me = client.me && client.me.unit;
  el.presence.replaceChildren(...(list.length ? list.map((u) => h('li', { class: `member${u.talking.length ? ' is-talking' : ''}` },
    h('span', { class: 'dot', 'aria-hidden': 'true' }),
    h('span', { class: 'name' }, u.alias || u.unit),
    h('span', { class: 'unit' }, u.unit),
    h('span', { class: 'tags' },
      u.unit === me ? h('span', { class: 'tag tag-me' }, t('members.you')) : null,
      u.talking.length ? h('span', { class: 'tag tag-talking' }, t('console.talking_tgs', { tgs: u.talking.join(', ') })) : null),
    h('span', { class: 'where' }, u.groups.map(tgName).join(' · ')),
    u.unit === me ? null : h('button', {
      type: 'button', class: 'btn btn-small member-call', disabled: calling,
      'aria-label': t('call.call_who', { who: u.alias || u.unit }),
      onclick: () => call.request(u.unit, u.alias),
    }, t('call.call')))) : [h('li', { class: 'empty' }, t('console.nobody'))]));
}

// -- controls -------------------------------------------------------------------------------
function setTxMode(mode) {
  if (mode === txMode) return;
  if (client) client.release();
  txMode = mode;
  if (client) render();
}
el.txModeOne.addEventListener('change', () => { if (el.txModeOne.checked) setTxMode('one'); });
el.txModeAll.addEventListener('change', () => { if (el.txModeAll.checked) setTxMode('all'); });
el.patchForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  if (!client) return;
  const ids = Array.from(patchPick).sort();
  if (client.patchCreate(ids)) patchMessage(t('console.patching', { names: listNames(ids.map(tgName)) }), 'info');
});
el.txSelect.addEventListener('change', () => {
  if (client) client.release();
  txTarget = el.txSelect.value;
  localStorage.setItem(TX_KEY, txTarget);
  render();
});
el.signout.addEventListener('click', () => {
  if (client) client.stop();
  signOut();
  location.replace(location.pathname);
});
el.unlockBtn.addEventListener('click', () => client && client.unlockAudio());
for (const type of ['pointerdown', 'keydown']) {
  document.addEventListener(type, () => client && client.unlockAudio(), { capture: true, passive: true });
}

// Another language: the markup is done by i18n.js; what this script wrote is built again.
window.addEventListener(CHANGE_EVENT, () => {
  if (!client) return;
  for (const p of panels.values()) p.root.remove();
  panels.clear();
  for (const node of [el.patchList, el.patchTgs, el.allCallTgs, el.alerts, el.presence]) node.dataset.key = '';
  const empty = el.panels.querySelector('.empty');
  if (empty) empty.remove();
  command.relabel();
  $('#call-sheet').dataset.id = '';
  $('#call-bar').dataset.key = '';
  if (call) call.render();
  setText(el.whoRole, ROLE_NAMES[role] ? t(ROLE_NAMES[role]) : role);
  renderChannels();
  render();
});

bootSignIn({
  signInPanel: el.signin, onSignedIn: start, roles: ROLES, roleMessage: 'console.wrong_role',
});
