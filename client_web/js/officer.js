// Officer radio page (/): sign in, pick a talkgroup, hold to talk.

import { api, bootSignIn, getToken, renew, signOut } from './auth.js';
import { meterFraction } from './audio.js';
import { $, h, setText, show, toast } from './dom.js';
import { attachMessaging } from './messaging.js';
import { OfflineLog, renderReplay } from './replay.js';
import { CHANGE_EVENT, t } from './i18n.js';
import { bindHoldToTalk } from './ptt-button.js';
import {
  bindMediaSession, captureKey, keepScreenOn, keyName, latchMode, pttKey, registerServiceWorker,
  setLatchMode, setPttKey, vibrate,
} from './pwa.js';
import { PRIVATE_CALL_PREFIX, PttClient, listNames } from './ptt-client.js';
import { OfficerCommand } from './officer-command.js';
import { PrivateCall } from './private-call.js';
import { ScanList, renderScan, scanPlan } from './scan.js';

const TG_KEY = 'ptt.officer.talkgroup';
// Catalogue keys (i18n.js): the text is looked up at each render, in the chosen language.
const CONN_TEXT = {
  connecting: 'conn.connecting', connected: 'conn.connected', reconnecting: 'conn.reconnecting', offline: 'conn.offline',
};
const ARM_MS = 4000;

const el = {
  conn: $('#conn'), connText: $('#conn .conn-text'), who: $('#who'), whoAlias: $('#who-alias'),
  signout: $('#signout'), signin: $('#signin'), radio: $('#radio'), select: $('#tg-select'),
  banner: $('#emergency-banner'), patchBanner: $('#patch-banner'), unlock: $('#audio-unlock'), unlockBtn: $('#audio-unlock-btn'),
  display: $('#display'), talkerLabel: $('#talker-label'), talkerName: $('#talker-name'),
  meter: $('#meter'), txInfo: $('#tx-info'), members: $('#members'), memberCount: $('#member-count'),
  ptt: $('#talk-button'), pttState: $('#ptt-state'), emergency: $('#emergency'), emergencyLabel: $('#emergency-label'),
  linkStatus: $('#link-status'), emergencyStatus: $('#emergency-status'),
};

let client = null;
let selected = null;
let talkgroups = []; // [{id, name, kind, access}]
let armedUntil = 0;
let armTimer = null;
let scan = null; // ScanList: the talkgroups listened to besides the selected one
let call = null; // PrivateCall
let plan = { listening: new Set(), audible: new Set(), current: null, preempting: null };

/** Where Talk transmits: the private call while one is in progress, else the selection. */
function txTg() {
  return (call && call.talkgroup) || selected;
}

function ownTalkgroups() {
  const own = talkgroups.filter((t) => t.access === 'member');
  return own.length ? own : talkgroups;
}

function normaliseTalkgroups(body) {
  const list = Array.isArray(body) ? body : (body && (body.talkgroups || body.items)) || [];
  return list.map((t) => (typeof t === 'string' ? { id: t, name: t, access: 'member' } : {
    id: t.id || t.talkgroup || t.name, name: t.name || t.id, kind: t.kind || 'normal',
    access: t.access || 'member',
  })).filter((t) => t.id);
}

async function loadTalkgroups(claims) {
  try {
    talkgroups = normaliseTalkgroups(await api('/api/talkgroups'));
  } catch (err) {
    if (err.status === 401) { expired(); return; }
    talkgroups = (claims.talkgroups || []).map((id) => ({ id, name: id, access: 'member' }));
  }
  // Officers talk on their own talkgroups: the selector lists those they may transmit on.
  const list = ownTalkgroups();
  scan.restrictTo(list.map((t) => t.id));
  el.select.replaceChildren(...list.map((t) => h('option', { value: t.id },
    t.name && t.name !== t.id ? `${t.name} (${t.id})` : t.id)));
  const saved = localStorage.getItem(TG_KEY);
  const pick = list.find((t) => t.id === saved) || list[0];
  if (pick) selectTalkgroup(pick.id);
  else toast(t('officer.no_talkgroups'), 'error', 8000);
}

function selectTalkgroup(tg) {
  if (tg === selected) return;
  if (selected && client.tx.tg === selected) client.release();
  selected = tg;
  el.select.value = tg;
  localStorage.setItem(TG_KEY, tg);
  applyScan(); // joins the new selection; leaves the old one unless it is scanned
  render();
}

/** Join what the selection, the scan list and a call need, leave the rest, and hold back
 * the audio the priority talkgroup (or the call) pre-empts (scan.js). */
function applyScan() {
  if (!client) return;
  plan = scanPlan(client.groups, selected, scan, call ? call.talkgroup : null);
  for (const tg of plan.listening) {
    if (!client.wanted.has(tg)) client.join(tg, 'member');
  }
  for (const tg of Array.from(client.wanted.keys())) {
    if (!plan.listening.has(tg) && !tg.startsWith(PRIVATE_CALL_PREFIX)) client.leave(tg);
  }
  for (const tg of client.groups.keys()) client.setHeld(tg, !plan.audible.has(tg));
}

function expired() {
  signOut();
  if (client) client.stop();
  location.replace(location.pathname + '?expired=1');
}

function start(token, claims) {
  show(el.signin, false);
  show(el.radio, true);
  show(el.who, true);
  show(el.conn, true);
  setText(el.whoAlias, claims.alias || claims.sub || '');
  scan = new ScanList(claims.sub || '');
  client = new PttClient({ getToken, renewToken: renew });
  call = new PrivateCall(client, { bar: $('#call-bar'), sheet: $('#call-sheet') });
  call.addEventListener('change', render);
  client.addEventListener('change', render);
  client.addEventListener('levels', renderLevel);
  client.addEventListener('notice', (ev) => toast(ev.detail.text, ev.detail.kind));
  client.addEventListener('fatal', expired);
  // Location sharing (opt-in) and "Control acknowledged" (officer-command.js).
  const command = new OfficerCommand(client, {
    share: $('#share-location'), shareStatus: $('#share-location-status'), ackBanner: $('#ack-banner'),
  });
  // Statuses and texts on the selected talkgroup; a talkgroup given or taken (an incident)
  // shows up in the selector at once (messaging.js).
  window.pttMessages = attachMessaging(client, {
    root: $('#messaging'), target: () => (selected ? { talkgroup: selected } : null),
    onTalkgroupAdded: () => loadTalkgroups(claims), onTalkgroupRemoved: () => loadTalkgroups(claims),
  });
  // Missed-call replay: what the channel said while this phone was in a tunnel or a lift is
  // marked "missed" and can be played back (replay.js); refreshed as transmissions end.
  const offlineLog = new OfflineLog();
  let wasOffline = false;
  let replayDue = null;
  const refreshReplay = () => {
    clearTimeout(replayDue);
    // A moment after the change: the recording is finished and indexed by then.
    replayDue = setTimeout(() => {
      // The talkgroups listened to (the selection and the scan list), not a private call's.
      const tgs = [...plan.listening].filter((tg) => !tg.startsWith(PRIVATE_CALL_PREFIX));
      if (tgs.length) renderReplay($('#replay-list'), $('#replay-player'), tgs, offlineLog, tgName)
        .catch(() => {});
    }, 1500);
  };
  client.addEventListener('change', () => {
    if (client.offline && !wasOffline) offlineLog.wentOffline();
    if (!client.offline && wasOffline) { offlineLog.cameOnline(); refreshReplay(); }
    wasOffline = client.offline;
  });
  client.sig.addEventListener('message', (ev) => {
    const type = ev.detail && ev.detail.msg && ev.detail.msg.type;
    if (type === 'floor_idle' || type === 'joined') refreshReplay();
  });
  client.start();
  client.unlockAudio(); // still inside the sign-in gesture's activation window, if there was one
  loadTalkgroups(claims);
  talk = bindHoldToTalk(el.ptt, {
    onPress: () => client.press(txTg()),
    onRelease: () => client.release(),
    key: pttKey, latch: latchMode,
  });
  // A headset's play/pause button toggles talking (latched: it cannot be held).
  bindMediaSession(() => talk.toggle());
  keepScreenOn(); // a radio whose screen sleeps cannot be talked on without an unlock
  bindSettings();
  window.ptt = {
    client,
    state: () => ({
      ...client.snapshot(), talkgroup: selected, talker: client.talker(selected),
      patch: client.patchOf(selected), txTalkgroup: txTg(),
      scan: { ...scan.snapshot(), listening: [...plan.listening], audible: [...plan.audible],
        current: plan.current, preempting: plan.preempting },
      call: call.state(),
    }),
    resetLevels: () => client.resetLevels(),
    outputSpectrum: (freqs) => client.engine.outputSpectrum(freqs),
    selectTalkgroup,
    callUnit: (unit) => call.request(unit),
    command: () => command.state(),
  };
  setInterval(render, 500); // countdowns and expiring busy states
  render();
}

// -- rendering ------------------------------------------------------------------------------
function render() {
  if (!client) return;
  const conn = client.connection;
  el.conn.className = `conn conn-${conn}`;
  setText(el.connText, CONN_TEXT[conn] ? t(CONN_TEXT[conn]) : conn);

  applyScan();
  const target = txTg();
  const g = client.groups.get(target);
  const tx = client.tx;
  const me = client.me;
  const mine = tx.tg === target ? tx : null;
  const granted = mine && mine.phase === 'granted';
  const busy = client.isBusy(target);
  // The talker shown: on the talkgroup we transmit on, or a scanned one (named then).
  const shownTg = granted ? target : (plan.current || target);
  const shownGroup = client.groups.get(shownTg);
  const floor = shownGroup ? shownGroup.floor : { state: 'idle' };
  const elsewhere = shownTg !== target;
  const receiving = floor.state === 'taken' && !floor.mine && !granted;
  // Emergencies and patches are the selected talkgroup's (a private call has neither).
  const sel = client.groups.get(selected);
  const emergency = (sel && sel.emergency) || client.alerts.get(selected) || null;
  const offline = client.offline;

  // Talker display (role=status, aria-live): who is on the air.
  el.display.classList.toggle('is-receiving', receiving);
  el.display.classList.toggle('is-sending', !!granted);
  el.display.classList.toggle('is-emergency', !!emergency);
  el.display.classList.toggle('is-offline', offline);
  if (offline) {
    // Whoever was talking may have stopped long ago: say nothing we cannot know.
    setText(el.talkerLabel, t('talker.no_connection'));
    setText(el.talkerName, '');
  } else if (granted) {
    setText(el.talkerLabel, t(mine.emergency ? 'talker.you_emergency' : 'talker.you'));
    setText(el.talkerName, (me && me.alias) || t('talker.you_name'));
  } else if (floor.state === 'taken') {
    const where = { tg: tgName(shownTg) };
    setText(el.talkerLabel, elsewhere
      ? t(floor.emergency ? 'scan.emergency_on' : 'scan.talking_on', where)
      : t(floor.emergency ? 'talker.emergency' : 'talker.talking'));
    setText(el.talkerName, floor.alias || floor.unit || '');
  } else {
    setText(el.talkerLabel, t(g && g.joined ? 'talker.clear' : (g ? 'talker.joining' : 'talker.no_talkgroup')));
    setText(el.talkerName, '');
  }

  // The button and the line under the display. Offline, the reason lies over the button.
  setText(el.linkStatus, client.linkStatus || '');
  const phase = mine ? mine.phase : 'idle';
  el.ptt.disabled = !(g && g.joined && client.sig.connected);
  el.ptt.classList.toggle('is-offline', offline);
  el.ptt.classList.toggle('is-requesting', phase === 'requesting');
  el.ptt.classList.toggle('is-granted', !!granted);
  el.ptt.classList.toggle('is-busy', busy || phase === 'queued');
  el.ptt.classList.toggle('is-receiving', receiving);
  let stateText = t(latchMode() ? 'ptt.tap' : 'ptt.hold');
  let info = '';
  let infoClass = '';
  if (offline) {
    stateText = t('ptt.offline');
    // One line, like the text it replaces: the Talk button below must not move.
    info = client.offlineReason || t('info.offline');
    infoClass = 'is-busy';
  } else if (granted) {
    stateText = t(mine.pressing ? 'ptt.on_air' : 'ptt.open_mic');
    const left = mine.maxDuration ? Math.max(0, mine.maxDuration - (Date.now() - mine.since) / 1000) : null;
    info = left !== null ? t('info.talking_left', { s: Math.ceil(left) }) : t('info.talking');
    if (!mine.pressing || (talk && talk.latched)) info += t('info.tap_to_stop');
    infoClass = mine.warning ? 'is-busy' : 'is-sending';
    if (mine.warning) info = t('info.time_up', { s: left !== null ? Math.ceil(left) : 0 });
  } else if (phase === 'requesting') {
    stateText = t('ptt.wait');
    info = t(mine.emergency ? 'info.sending_emergency' : 'info.requesting');
  } else if (phase === 'queued') {
    const n = mine.position || 1;
    stateText = t('ptt.busy_queue', { n });
    const holder = client.busy && client.busy.holder;
    info = holder ? t('info.queued_holder', { holder, n }) : t('info.queued', { n });
    infoClass = 'is-busy';
  } else if (busy) {
    stateText = t('ptt.busy');
    const b = client.busy;
    info = b.holder ? t('info.busy_holder', { holder: b.holder }) : t('info.busy');
    infoClass = 'is-busy';
  } else if (client.micError) {
    info = client.micError;
    infoClass = 'is-busy';
  } else if (receiving) {
    stateText = t('ptt.listen');
  }
  // A latch the server ended (time limit, revoked, refused) is not left showing as pressed.
  if (talk && phase === 'idle') talk.ended();
  feel(phase, busy, emergency ? `${selected}:${emergency.unit || emergency.alias || ''}` : null);
  setText(el.pttState, stateText);
  setText(el.txInfo, info);
  el.txInfo.className = `tx-info ${infoClass}`;

  renderEmergency(sel, emergency);
  renderPatch(sel);
  renderMembers(client.groups.get(selected));
  renderScan($('#scan-list'), {
    talkgroups: ownTalkgroups(), selected, scan, plan, groups: client.groups, onChange: render,
  });
  $('#scan-on').checked = scan.on;
  const noPriority = $('#scan-no-priority');
  noPriority.checked = !scan.priority;
  noPriority.disabled = !scan.on;
  el.display.dataset.talkgroup = shownTg || '';
  show(el.unlock, conn === 'connected' && client.audioLocked);
}

function renderLevel() {
  if (!client) return;
  // The meter follows the talker shown (a scanned talkgroup's, too).
  const g = client.groups.get(el.display.dataset.talkgroup || selected);
  const level = g ? g.level : 0;
  el.meter.style.width = `${Math.round(meterFraction(level) * 100)}%`;
  const mic = $('#mic-meter');
  if (mic) mic.style.width = `${Math.round(meterFraction(micLevel()) * 100)}%`;
}

// The talker's own level, from an AnalyserNode on the mic track: an officer can see that the
// radio hears them (a muted headset, a covered mic) before anyone has to ask.
let micTap = null;
function micLevel() {
  const track = client.mic;
  const tx = client.tx;
  if (!track || track.readyState !== 'live' || !(tx.tg === txTg() && tx.phase === 'granted')) return 0;
  if (!micTap || micTap.track !== track) {
    const ctx = new AudioContext();
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 512;
    ctx.createMediaStreamSource(new MediaStream([track])).connect(analyser);
    if (micTap) micTap.ctx.close().catch(() => {});
    micTap = { track, ctx, analyser, buf: new Float32Array(analyser.fftSize) };
  }
  micTap.analyser.getFloatTimeDomainData(micTap.buf);
  let sum = 0;
  for (const v of micTap.buf) sum += v * v;
  return Math.sqrt(sum / micTap.buf.length);
}

function renderEmergency(g, emergency) {
  const mineActive = client.myEmergency === selected;
  const others = Array.from(client.alerts.values()).filter((a) => a.talkgroup !== selected);
  const shown = emergency || others[0] || null;
  if (shown) {
    const where = shown.location ? ` · ${shown.location.lat.toFixed(5)}, ${shown.location.lon.toFixed(5)}` : '';
    const tgName = (client.groups.get(shown.talkgroup) || {}).name || shown.talkgroup;
    const who = shown.alias || shown.unit || t('emergency.a_unit');
    const text = t('emergency.who_on', { who, tg: tgName }) + where;
    if (el.banner.dataset.text !== text) {
      el.banner.dataset.text = text;
      el.banner.replaceChildren(h('strong', {}, t('emergency.title')), h('span', {}, text));
    }
  }
  show(el.banner, !!shown);
  // The button: two taps to send (no accidental alarms), one tap to cancel.
  const armed = armedUntil > Date.now();
  el.emergency.classList.toggle('is-armed', armed && !mineActive);
  el.emergency.classList.toggle('is-active', mineActive);
  setText(el.emergencyLabel, t(mineActive ? 'emergency.cancel' : armed ? 'emergency.arm' : 'emergency.button'));
  // Offline too: an emergency pressed now is kept and sent when the connection is back.
  el.emergency.disabled = !g;
  const note = client.emergencyNote;
  setText(el.emergencyStatus, note ? note.text : '');
  el.emergencyStatus.className = `emergency-status${note ? ` is-${note.kind}` : ''}`;
}

function tgName(id) {
  const g = client.groups.get(id);
  if (g && g.joined && g.name) return g.name;
  const t = talkgroups.find((x) => x.id === id);
  return (t && t.name) || id;
}

/** While the talkgroup is patched with others, say so: what we say is heard there too. */
function renderPatch(g) {
  const patch = g && g.joined ? client.patchOf(selected) : null;
  const others = patch ? patch.talkgroups.filter((t) => t !== selected).map(tgName) : [];
  const title = others.length ? t('patch.with', { names: listNames(others) }) : '';
  const hears = t(others.length === 1 ? 'patch.hears_both' : 'patch.hears_all');
  const text = others.length ? title + hears : '';
  if (el.patchBanner.dataset.text !== text) {
    el.patchBanner.dataset.text = text;
    el.patchBanner.replaceChildren(...(text ? [h('span', {}, h('strong', {}, title), hears)] : []));
  }
  show(el.patchBanner, !!text);
}

function renderMembers(g) {
  const members = g ? g.members.slice() : [];
  members.sort((a, b) => (a.state === 'talking' ? -1 : 0) - (b.state === 'talking' ? -1 : 0) ||
    String(a.alias || a.unit).localeCompare(String(b.alias || b.unit)));
  const me = client.me && client.me.unit;
  const calling = !!(call && call.call);
  const key = JSON.stringify([calling, members.map((m) => [m.unit, m.alias, m.state, m.mode, m.session])]);
  if (el.members.dataset.key === key) return;
  el.members.dataset.key = key;
  setText(el.memberCount, members.length ? `(${members.length})` : '');
  if (!members.length) {
    el.members.replaceChildren(h('li', { class: 'empty' }, g && g.joined ? t('members.nobody') : '–'));
    return;
  }
  el.members.replaceChildren(...members.map((m) => h('li', {
    class: `member${m.state === 'talking' ? ' is-talking' : ''}`,
  },
  h('span', { class: 'dot', 'aria-hidden': 'true' }),
  h('span', { class: 'name' }, m.alias || m.unit),
  h('span', { class: 'unit' }, m.unit),
  h('span', { class: 'tags' },
    m.unit === me ? h('span', { class: 'tag tag-me' }, t('members.you')) : null,
    m.mode === 'monitor' ? h('span', { class: 'tag' }, t('members.monitor')) : null,
    m.role && m.role !== 'officer' ? h('span', { class: 'tag' }, m.role) : null,
    m.state === 'talking' ? h('span', { class: 'tag tag-talking' }, t('members.talking')) : h('span', { class: 'visually-hidden' }, t('members.online'))),
  m.unit === me ? null : h('button', {
    type: 'button', class: 'btn btn-small member-call', disabled: calling,
    'aria-label': t('call.call_who', { who: m.alias || m.unit }),
    onclick: () => call.request(m.unit, m.alias),
  }, t('call.call')))));
}

// -- controls -------------------------------------------------------------------------------
el.select.addEventListener('change', () => selectTalkgroup(el.select.value));
$('#scan-on').addEventListener('change', (ev) => { if (scan) { scan.setOn(ev.target.checked); render(); } });
$('#scan-no-priority').addEventListener('change', () => { if (scan) { scan.setPriority(null); render(); } });
el.signout.addEventListener('click', () => {
  if (client) client.stop();
  signOut();
  location.replace(location.pathname);
});
el.unlockBtn.addEventListener('click', () => client && client.unlockAudio());
el.emergency.addEventListener('click', () => {
  if (!client || !selected) return;
  client.unlockAudio();
  if (client.myEmergency === selected) {
    client.emergencyCancel(selected);
    armedUntil = 0;
  } else if (armedUntil > Date.now()) {
    armedUntil = 0;
    client.emergencyStart(selected);
  } else {
    armedUntil = Date.now() + ARM_MS;
    clearTimeout(armTimer);
    armTimer = setTimeout(render, ARM_MS + 50);
  }
  render();
});
// Mobile autoplay: the first tap or key anywhere starts audio output.
for (const type of ['pointerdown', 'keydown', 'touchend']) {
  document.addEventListener(type, () => client && client.unlockAudio(), { capture: true, passive: true });
}

// -- settings: latch mode and the PTT key ------------------------------------------------------
let talk = null;
let lastPhase = 'idle';
let lastAlert = null;

function renderHint() {
  const key = keyName(pttKey());
  setText($('#ptt-hint'), t(latchMode() ? 'officer.hint_latch' : 'officer.hint', { key }));
  setText($('#ptt-key'), t('officer.ptt_key', { key }));
}

function bindSettings() {
  const latch = $('#latch-mode');
  latch.checked = latchMode();
  latch.addEventListener('change', () => {
    if (talk && talk.latched) talk.toggle(); // switching modes never leaves the mic open
    setLatchMode(latch.checked);
    renderHint();
    render();
  });
  const keyButton = $('#ptt-key');
  keyButton.addEventListener('click', async (ev) => {
    if (ev.detail === 0 && keyButton.dataset.capturing) return;
    keyButton.dataset.capturing = '1';
    setText(keyButton, t('officer.ptt_key_press'));
    const code = await captureKey();
    delete keyButton.dataset.capturing;
    if (code) setPttKey(code);
    renderHint();
  });
  renderHint();
}

/** Felt as well as heard: vibrate when the channel is given, refused, or an emergency arrives. */
function feel(phase, busy, alert) {
  if (phase === 'granted' && lastPhase !== 'granted') vibrate('permit');
  else if ((phase === 'queued' || busy) && lastPhase === 'requesting') vibrate('busy');
  if (alert && alert !== lastAlert) vibrate('emergency');
  lastPhase = phase;
  lastAlert = alert;
}

window.addEventListener(CHANGE_EVENT, () => {
  el.members.dataset.key = ''; // rebuilt in the new language
  el.banner.dataset.text = '';
  $('#scan-list').dataset.key = '';
  $('#call-sheet').dataset.id = '';
  $('#call-bar').dataset.key = '';
  if (talk) renderHint();
  render();
});
registerServiceWorker();

bootSignIn({ signInPanel: el.signin, onSignedIn: start });
