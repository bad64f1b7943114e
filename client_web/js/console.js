// Supervisor console (/console.html): monitor several talkgroups, talk on the own ones or on
// several at once (all-call), patch talkgroups together, force a stuck talker off, see
// emergencies and who is where.

import { api, bootSignIn, getToken, renew, signOut } from './auth.js';
import { meterFraction } from './audio.js';
import { $, fmtDuration, fmtTime, h, setText, show, toast } from './dom.js';
import { attachMessaging } from './messaging.js';
import { bindHoldToTalk } from './ptt-button.js';
import { PttClient, listNames } from './ptt-client.js';
import { CommandCentre } from './command-centre.js';

const LISTEN_KEY = 'ptt.console.listen';
const TX_KEY = 'ptt.console.tx';
const VOL_KEY = 'ptt.console.volume';
const CONN_TEXT = {
  connecting: 'Connecting…', connected: 'Connected', reconnecting: 'Reconnecting…', offline: 'Offline',
};
const ROLES = ['supervisor', 'dispatcher', 'admin'];

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
  return list.map((t) => ({
    id: t.id || t.talkgroup, name: t.name || t.id, kind: t.kind || 'normal', access: t.access || 'monitor',
  })).filter((t) => t.id);
}

function tgInfo(id) {
  return talkgroups.find((t) => t.id === id) || { id, name: id, kind: 'normal', access: 'monitor' };
}

function tgName(id) {
  const g = client && client.groups.get(id);
  return (g && g.joined && g.name) || tgInfo(id).name || id;
}

/** The alias of a unit if someone by that unit is in view ("you" for ourselves). */
function unitName(unit) {
  if (!unit) return null;
  if (client.me && client.me.unit === unit) return 'you';
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
  const members = talkgroups.filter((t) => t.access === 'member').map((t) => t.id);
  if (params.has('monitor')) {
    const wanted = params.get('monitor').split(',').map((s) => s.trim()).filter(Boolean);
    return new Set([...members, ...wanted]);
  }
  try {
    const saved = JSON.parse(localStorage.getItem(LISTEN_KEY) || 'null');
    if (Array.isArray(saved)) return new Set(saved);
  } catch { /* ignore */ }
  return new Set(talkgroups.map((t) => t.id));
}

function saveListen() {
  localStorage.setItem(LISTEN_KEY, JSON.stringify(Array.from(client.wanted.keys())));
}

async function loadTalkgroups(claims) {
  try {
    talkgroups = normaliseTalkgroups(await api('/api/talkgroups'));
  } catch (err) {
    if (err.status === 401) { expired(); return; }
    toast(`Talkgroups could not be loaded: ${err.message}`, 'error', 8000);
    talkgroups = (claims.talkgroups || []).map((id) => ({ id, name: id, access: 'member' }));
  }
  const listen = initialListen();
  for (const t of talkgroups) {
    if (listen.has(t.id)) joinTalkgroup(t.id);
  }
  const members = talkgroups.filter((t) => t.access === 'member');
  el.txSelect.replaceChildren(...members.map((t) => h('option', { value: t.id },
    t.name && t.name !== t.id ? `${t.name} (${t.id})` : t.id)));
  const savedTx = localStorage.getItem(TX_KEY);
  txTarget = (members.find((t) => t.id === savedTx) || members[0] || {}).id || null;
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
  setText(el.whoRole, claims.role || '');
  try { volumes = JSON.parse(localStorage.getItem(VOL_KEY) || '{}') || {}; } catch { volumes = {}; }
  client = new PttClient({ getToken, renewToken: renew });
  client.addEventListener('change', render);
  client.addEventListener('levels', renderLevels);
  client.addEventListener('notice', (ev) => {
    toast(ev.detail.text, ev.detail.kind, ev.detail.kind === 'error' ? 7000 : 4000);
    if (ev.detail.scope === 'patch') patchMessage(ev.detail.text, ev.detail.kind);
  });
  client.addEventListener('patch', (ev) => {
    const msg = ev.detail.msg;
    const names = listNames((msg.talkgroups || []).map(tgName));
    const by = unitName(msg.by);
    const text = msg.type === 'patched' ? `Patched: ${names}${by ? ` (by ${by})` : ''}.`
      : `Unpatched: ${names}${by ? ` (by ${by})` : ''}.`;
    toast(text, 'info');
    patchMessage(text, 'info');
    if (msg.type === 'patched') for (const tg of msg.talkgroups || []) patchPick.delete(tg);
  });
  client.addEventListener('fatal', expired);
  command = new CommandCentre(client, {
    map: $('#unit-map'), mapNote: $('#unit-map-note'), mapCount: $('#unit-map-count'),
    txWarning: $('#tx-cutoff'),
  }, { tgName, unitName });
  // Statuses and texts to a talkgroup or a unit; an incident talkgroup joins the list when it
  // is opened and leaves it when it is closed (messaging.js).
  window.pttMessages = attachMessaging(client, {
    root: $('#messaging'), targets: messageTargets,
    onTalkgroupAdded: (msg) => {
      if (!talkgroups.some((t) => t.id === msg.talkgroup)) {
        talkgroups.push({ id: msg.talkgroup, name: msg.name, kind: msg.kind, access: msg.access });
      }
      renderChannels();
    },
    onTalkgroupRemoved: (msg) => {
      if (msg.reason === 'closed') talkgroups = talkgroups.filter((t) => t.id !== msg.talkgroup);
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
    listen: (tg, on) => setListening(tg, on),
    command: () => command.state(),
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
  setText(el.connText, CONN_TEXT[conn] || conn);
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
    }) : [h('span', { class: 'empty' }, 'No talkgroups joined.')]));
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
  let stateText = 'All-call';
  let info = 'Hold the button or the Space key to talk on every ticked talkgroup.';
  let cls = '';
  if (client.offline) {
    stateText = 'Offline';
    info = offlineInfo();
    cls = 'is-busy';
  } else if (granted) {
    stateText = 'On air';
    const left = mine.maxDuration ? Math.max(0, mine.maxDuration - (Date.now() - mine.since) / 1000) : null;
    info = `All-call on ${listNames(mine.covers.map(tgName))}${left !== null ? ` – ${Math.ceil(left)} s left` : ''}`;
    cls = mine.warning ? 'is-busy' : 'is-sending';
  } else if (mine) {
    stateText = 'Wait';
    info = `Calling ${listNames(mine.covers.map(tgName))}…`;
  } else if (busy) {
    stateText = 'Busy';
    const b = client.busy;
    info = b.holder ? `${b.reason.replace(/\.$/, '')} – ${b.holder} is talking.` : b.reason;
    cls = 'is-busy';
  } else if (!targets.length) {
    info = 'Tick the talkgroups to call.';
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
  let stateText = 'Hold';
  let info = 'Hold the button or the Space key to talk.';
  let cls = '';
  const name = g ? g.name : txTarget;
  if (!txTarget) {
    info = 'You have no talkgroup to transmit on.';
  } else if (client.offline) {
    stateText = 'Offline';
    info = offlineInfo();
    cls = 'is-busy';
  } else if (granted) {
    stateText = 'On air';
    const left = mine.maxDuration ? Math.max(0, mine.maxDuration - (Date.now() - mine.since) / 1000) : null;
    const patch = client.patchOf(txTarget);
    const also = patch ? patch.talkgroups.filter((t) => t !== txTarget).map(tgName) : [];
    info = `Talking on ${name}${also.length ? ` (patched with ${listNames(also)})` : ''}${left !== null ? ` – ${Math.ceil(left)} s left` : ''}`;
    cls = mine.warning ? 'is-busy' : 'is-sending';
  } else if (mine && mine.phase === 'requesting') {
    stateText = 'Wait';
    info = `Requesting ${name}…`;
  } else if (mine && mine.phase === 'queued') {
    stateText = `Busy · #${mine.position || 1}`;
    info = `${name} is busy${client.busy && client.busy.holder ? ` – ${client.busy.holder} is talking` : ''}. Queued as number ${mine.position || 1}.`;
    cls = 'is-busy';
  } else if (busy) {
    stateText = 'Busy';
    const b = client.busy;
    info = b.holder ? `${b.reason.replace(/\.$/, '')} – ${b.holder} is talking.` : b.reason;
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
  return `${reason ? `${reason} ` : ''}Talk is off until the connection is back.`;
}

function renderChannels() {
  el.channels.replaceChildren(...talkgroups.map((t) => {
    const id = `listen-${t.id}`;
    const box = h('input', { type: 'checkbox', id, checked: client.wanted.has(t.id) });
    box.addEventListener('change', () => setListening(t.id, box.checked));
    return h('li', { class: 'channel', dataset: { tg: t.id } },
      box,
      h('label', { for: id }, h('span', { class: 'tg-name' }, t.name, h('span', { class: 'tg-id' }, t.id))),
      h('span', { class: `tag ${t.access === 'member' ? 'tag-member' : ''}` }, t.access === 'member' ? 'Member' : 'Monitor'));
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
  parts.txTag = h('span', { class: 'tag tag-tx', hidden: true }, 'TX');
  parts.emergTag = h('span', { class: 'tag tag-emergency', hidden: true }, 'Emergency');
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
  parts.mute = h('button', { class: 'btn btn-small', type: 'button', 'aria-pressed': String(g.muted) }, 'Mute');
  parts.mute.setAttribute('aria-label', `Mute ${g.name}`);
  parts.mute.addEventListener('click', () => {
    client.setMuted(tg, !client.groups.get(tg).muted);
    saveVolume(tg);
    render();
  });
  parts.revoke = h('button', { class: 'btn btn-small btn-danger', type: 'button' }, 'Force release');
  parts.revoke.setAttribute('aria-label', `Force release ${g.name}`);
  parts.revoke.addEventListener('click', () => {
    const f = client.groups.get(tg).floor;
    client.revoke(tg);
    toast(`Releasing ${f.alias || 'the talker'} on ${g.name}`, 'warn');
  });
  parts.patch = h('p', { class: 'patch-badge', hidden: true });
  parts.members = h('p', { class: 'panel-members' });
  parts.log = h('ol', { class: 'log', 'aria-label': `Recent transmissions on ${g.name}` });
  parts.root = h('section', { class: 'panel', 'aria-labelledby': titleId, dataset: { tg } },
    h('div', { class: 'panel-head' }, parts.name, h('span', { class: 'tg-id' }, tg),
      h('span', { class: 'tags' }, parts.emergTag, parts.txTag, parts.mode)),
    parts.patch,
    h('div', { class: 'panel-talker' }, parts.status, parts.revoke),
    (parts.talk = command.makePanelTalk(tg)).root,
    h('div', { class: 'meter', 'aria-hidden': 'true' }, parts.meter),
    h('div', { class: 'panel-controls' },
      h('label', { class: 'vol', for: volId }, 'Volume', parts.volume),
      parts.mute),
    parts.members,
    h('h3', {}, 'Recent transmissions'),
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
    if (!el.panels.querySelector('.empty')) el.panels.append(h('p', { class: 'empty' }, 'Choose talkgroups to listen to on the left.'));
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
  if (p.revoke.getAttribute('aria-label') !== `Force release ${g.name}`) {
    p.revoke.setAttribute('aria-label', `Force release ${g.name}`);
    p.mute.setAttribute('aria-label', `Mute ${g.name}`);
    p.log.setAttribute('aria-label', `Recent transmissions on ${g.name}`);
  }
  setText(p.mode, g.joined ? (g.mode === 'member' ? 'Member' : 'Monitor') : 'Joining…');
  p.mode.className = `tag ${g.mode === 'member' ? 'tag-member' : ''}`;
  p.txTag.hidden = !target;
  const patch = client.patchOf(tg);
  const others = patch ? patch.talkgroups.filter((t) => t !== tg).map(tgName) : [];
  setText(p.patch, others.length ? `Patched with ${listNames(others)}` : '');
  p.patch.hidden = !others.length;
  p.emergTag.hidden = !emergency;
  if (sending) {
    setText(p.who, 'You');
    setText(p.what, client.tx.allCall ? 'are talking (all-call)' : 'are talking');
    setText(p.elapsed, fmtDuration((Date.now() - client.tx.since) / 1000));
  } else if (f.state === 'taken') {
    setText(p.who, f.alias || f.unit || '?');
    setText(p.what, f.emergency ? 'EMERGENCY – talking' : 'talking');
    setText(p.elapsed, f.since ? fmtDuration((Date.now() - f.since) / 1000) : '');
  } else {
    setText(p.who, '');
    // Offline the floor is unknown (the stale talker was cleared): say so rather than 'Idle'.
    setText(p.what, client.offline ? 'No connection' : g.joined ? 'Idle' : 'Joining…');
    setText(p.elapsed, '');
  }
  p.status.classList.toggle('is-offline', client.offline);
  p.revoke.disabled = f.state !== 'taken' || !g.joined;
  p.mute.setAttribute('aria-pressed', String(g.muted));
  setText(p.mute, 'Mute');
  if (document.activeElement !== p.volume) p.volume.value = String(Math.round(g.volume * 100));
  const online = g.members.length;
  setText(p.members, `${online} online${online ? ': ' + g.members.map((m) => m.alias || m.unit).join(', ') : ''}`);
  const key = g.log.map((e) => e.tid).join(',');
  if (p.log.dataset.key !== key) {
    p.log.dataset.key = key;
    p.log.replaceChildren(...(g.log.length ? g.log.slice(0, 20).map((e) => h('li', {},
      h('time', { datetime: new Date(e.start * 1000).toISOString() }, fmtTime(e.start)),
      h('span', { class: e.emergency ? 'emerg' : '' }, `${e.alias || e.unit}${e.emergency ? ' (emergency)' : ''}${e.reason && e.reason !== 'released' ? ` · ${e.reason}` : ''}`),
      h('span', { class: 'dur' }, fmtDuration(e.duration)))) : [h('li', { class: 'empty' }, 'Nothing yet.')]));
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
      const unpatch = h('button', { class: 'btn btn-small', type: 'button', 'aria-label': `Unpatch ${names}` }, 'Unpatch');
      unpatch.addEventListener('click', () => client.patchRemove(p.id));
      return h('li', { class: 'patch-item', dataset: { patch: p.id } },
        h('span', { class: 'patch-names' }, p.talkgroups.map(tgName).join(' + ')),
        by ? h('span', { class: 'patch-by' }, `by ${by}`) : null,
        unpatch);
    }) : [h('li', { class: 'empty' }, 'No patches.')]));
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
        h('label', { for: `patch-${tg}` }, tgName(tg), patched ? h('span', { class: 'muted' }, ' (patched)') : null));
    }) : [h('span', { class: 'empty' }, 'Listen to talkgroups to patch them.')]));
  }
  for (const box of el.patchTgs.querySelectorAll('input')) box.checked = patchPick.has(box.value);
  el.patchCreate.disabled = patchPick.size < 2 || !client.sig.connected;
  const label = patchPick.size >= 2 ? `Patch ${listNames(Array.from(patchPick).sort().map(tgName))}` : 'Patch';
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
      actions.append(h('button', { class: 'btn btn-small', type: 'button', onclick: () => setListening(a.talkgroup, true) }, `Listen to ${info.name}`));
    } else {
      actions.append(h('button', { class: 'btn btn-small', type: 'button', onclick: () => client.emergencyCancel(a.talkgroup) }, 'Clear emergency'));
    }
    return h('div', { class: `alert-card${command.acks.has(a.talkgroup) ? ' is-acknowledged' : ''}`, dataset: { talkgroup: a.talkgroup } },
      h('span', { class: 'alert-title' }, 'EMERGENCY'),
      h('span', { class: 'alert-text' }, `${a.alias || a.unit} (${a.unit}) on ${info.name}`),
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
  const key = JSON.stringify(list);
  if (el.presence.dataset.key === key) return;
  el.presence.dataset.key = key;
  setText(el.presenceCount, list.length ? `(${list.length})` : '');
  const me = client.me && client.me.unit;
  el.presence.replaceChildren(...(list.length ? list.map((u) => h('li', { class: `member${u.talking.length ? ' is-talking' : ''}` },
    h('span', { class: 'dot', 'aria-hidden': 'true' }),
    h('span', { class: 'name' }, u.alias || u.unit),
    h('span', { class: 'unit' }, u.unit),
    h('span', { class: 'tags' },
      u.unit === me ? h('span', { class: 'tag tag-me' }, 'You') : null,
      u.talking.length ? h('span', { class: 'tag tag-talking' }, `Talking ${u.talking.join(', ')}`) : null),
    h('span', { class: 'where' }, u.groups.join(' · ')))) : [h('li', { class: 'empty' }, 'Nobody online.')]));
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
  if (client.patchCreate(ids)) patchMessage(`Patching ${listNames(ids.map(tgName))}…`, 'info');
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

bootSignIn({
  signInPanel: el.signin, onSignedIn: start, roles: ROLES,
  roleMessage: 'The console is for supervisors and dispatchers. Officers use the radio page.',
});
