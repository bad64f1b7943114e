// The radio: signaling + media + talkgroups + floor control, shared by the officer page and
// the supervisor console. Pages render from its state and call press()/release()/join()...
//
// Events: 'change' (state changed: re-render), 'levels' (meter tick), 'notice' {text, kind,
// scope}, 'alert' {msg} (an emergency arrived), 'patch' {msg} (a patch was made or removed),
// 'fatal' {code} (the token was refused: sign in again).
//
// A lost connection (a dead spot, a network change, a server restart) is an outage, not an
// end: the talkgroups stay wanted, the socket reconnects at once and resumes the session
// (the server replays what we missed, then each talkgroup's state); the peer connection is
// kept if it still carries media, else replaced. During the outage the radio says so, plays
// the out-of-service tone once, forgets the talker it can no longer follow, and keeps an
// emergency pressed meanwhile to send it as soon as it can.
//
// Dispatchers and supervisors also have the all-call (pressAllCall(): one transmission on the
// floor of several talkgroups at once) and patches (patchCreate()/patchRemove(): talkgroups
// sharing one floor; this.patches and patchOf() tell which are patched).
//
// Every text it produces for people is from the catalogues (i18n.js, keys `client.*`), in
// the page's language at the moment it is produced; what stays on screen (busy reasons, the
// emergency note, microphone and link status) is looked up again each time it is read, so a
// language switch re-renders it. A server error is said by its stable code (`error.<code>`),
// never by the server's own message (English, technical): that goes to the console log.
// A notice's detail also carries `key` (the catalogue key it was said with) and, for a
// server error, `code`.

import { AudioEngine } from './audio.js';
import { errorText, t } from './i18n.js';
import { Media } from './rtc.js';
import { Signaling } from './signaling.js';
import { Tones } from './tones.js';

const BUSY_SHOW_MS = 2500;
// Who may talk on a talkgroup joined to monitor it (the server's core/access.py agrees).
const MONITOR_TALK_ROLES = ['supervisor', 'dispatcher'];
const LOG_MAX = 50;
const GEO_WAIT_MS = 2500;

const PATCH_OP_MS = 10000; // an error this soon after a patch request is about that request

// Private calls run on a temporary talkgroup of this prefix (docs/protocol.md).
export const PRIVATE_CALL_PREFIX = 'pc-';
/** What the officer sees about Talk while the connection is lost. */
export function offlineText() {
  return t('client.offline');
}
const EMERGENCY_SENT_SHOW_MS = 15000;
// A peer connection that lost its path ('disconnected') often finds it again by itself; one
// that has not after this long, or 'failed', is replaced (offer with restart).
const MEDIA_GRACE_MS = 2000;
// ...except just after a resume: the network has just changed under us, and ICE (which
// notices a dead path after a few seconds, later than our pings) will not find a path the
// old candidates do not have. Replace it at once.
const AFTER_RESUME_MS = 10000;
const MEDIA_RETRY_MAX_MS = 30000;
const OUTAGES_KEPT = 20;

// Why our transmission was taken (floor_revoked's reason, and a lost connection).
const REVOKE_KEYS = {
  timeout: 'client.revoked_timeout',
  revoked: 'client.revoked_revoked',
  preempted: 'client.revoked_preempted',
  disconnected: 'client.revoked_disconnected',
};
const revokeKey = (reason) => REVOKE_KEYS[reason] || 'client.revoked_other';

/** Words for a server error code (the server's own message is never shown). */
export function codeText(code) {
  return errorText(code, 'client.error_failed');
}

/** The busy state's `reason`, said in the current language whenever it is read. */
function busyState(tg, holder, say, until) {
  return { tg, holder, until, get reason() { return say(); } };
}

/** The note under Emergency: its `text` said in the current language whenever it is read. */
function emergencyNote(key, params, kind, until, extra = {}) {
  return { key, kind, until, ...extra, get text() { return t(key, params); } };
}

/** HH:MM:SS of a Date.now() value, in local time. */
export function clockTime(ms) {
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, '0');
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** The out-of-service tone: three short falling beeps, quieter than the alerts. */
function outOfServiceTone(ctx) {
  if (!ctx) return;
  if (ctx.state !== 'running') ctx.resume().catch(() => {});
  const t = ctx.currentTime + 0.01;
  [880, 700, 520].forEach((freq, i) => {
    const start = t + i * 0.13;
    const osc = ctx.createOscillator();
    const g = ctx.createGain();
    osc.type = 'square';
    osc.frequency.setValueAtTime(freq, start);
    g.gain.setValueAtTime(0.0001, start);
    g.gain.exponentialRampToValueAtTime(0.1, start + 0.008);
    g.gain.setValueAtTime(0.1, start + 0.085);
    g.gain.exponentialRampToValueAtTime(0.0001, start + 0.1);
    osc.connect(g).connect(ctx.destination);
    osc.start(start);
    osc.stop(start + 0.12);
  });
}

function idleTx() {
  return {
    tg: null, phase: 'idle', pressing: false, emergency: false, tid: null, since: 0,
    maxDuration: null, position: null,
    // An all-call: `allCall` the talkgroups asked for, `covers` those it is heard on (patched
    // partners included), `tids` talkgroup -> transmission id from the grants.
    allCall: null, covers: null, tids: null, allCallId: null,
  };
}

/** "Alpha", "Alpha and Bravo", "Alpha, Bravo and Command" (in Bahasa Indonesia "Alpha dan
 * Bravo", "Alpha, Bravo, dan Command"). */
export function listNames(names) {
  if (names.length <= 1) return names.join('');
  const last = names[names.length - 1];
  if (names.length === 2) return t('client.list_two', { first: names[0], last });
  return t('client.list_many', { rest: names.slice(0, -1).join(', '), last });
}

function floorFrom(f, now = Date.now()) {
  if (!f || f.state !== 'taken') return { state: 'idle', unit: null, alias: null, tid: null, emergency: !!(f && f.emergency), since: 0 };
  return {
    state: 'taken', unit: f.unit, alias: f.alias || f.unit, tid: f.transmission_id,
    emergency: !!f.emergency, since: now,
    // The holder's priority (floor_taken has it, joined does not): whether our request would
    // cut them off (the console warns before it does).
    priority: typeof f.priority === 'number' ? f.priority : null,
  };
}

// A talkgroup's member list, as the server numbers it: the whole list in `joined` and
// `presence`, then only what changed (`presence_delta`), revision after revision. In the
// server's order (unit, then session), so a list kept up by deltas reads like a fresh one.
function byUnit(a, b) {
  if (a.unit !== b.unit) return a.unit < b.unit ? -1 : 1;
  if (a.session === b.session) return 0;
  return a.session < b.session ? -1 : 1;
}

function applyDelta(members, msg) {
  const gone = new Set(Array.isArray(msg.removed) ? msg.removed : []);
  const changed = new Map((Array.isArray(msg.changed) ? msg.changed : []).map((m) => [m.session, m]));
  const kept = members.filter((m) => !gone.has(m.session) && !changed.has(m.session));
  return kept.concat(Array.from(changed.values())).sort(byUnit);
}

/** The device's position if the user allows it, else null; never waits long. */
export function currentLocation(waitMs = GEO_WAIT_MS) {
  return new Promise((resolve) => {
    if (!('geolocation' in navigator) || !window.isSecureContext) {
      resolve(null);
      return;
    }
    const timer = setTimeout(() => resolve(null), waitMs);
    try {
      navigator.geolocation.getCurrentPosition(
        (pos) => {
          clearTimeout(timer);
          resolve({
            lat: pos.coords.latitude, lon: pos.coords.longitude,
            accuracy: Math.round(pos.coords.accuracy || 0),
          });
        },
        () => { clearTimeout(timer); resolve(null); },
        { enableHighAccuracy: true, timeout: waitMs, maximumAge: 60000 },
      );
    } catch {
      clearTimeout(timer);
      resolve(null);
    }
  });
}

export class PttClient extends EventTarget {
  /**
   * @param getToken    () => JWT or null
   * @param renewToken  () => Promise of a fresh JWT or null (an outage can outlast a token)
   * @param transmit    whether this client has a microphone uplink
   */
  constructor({ getToken, renewToken = null, transmit = true }) {
    super();
    this.engine = new AudioEngine();
    this.tones = new Tones(this.engine);
    this.sig = new Signaling(getToken, undefined, renewToken);
    this.transmitCapable = transmit;
    this.media = null;
    this.mic = null; // the microphone track (kept across reconnects)
    this._micErrorKey = null; // micError, as a catalogue key
    this._micPromise = null;
    this.me = null; // the welcome message
    this.groups = new Map(); // talkgroup -> group state
    this.wanted = new Map(); // talkgroup -> mode: joined again after every reconnect
    this.tx = idleTx();
    this.busy = null; // {tg, holder, reason, until}
    this.alerts = new Map(); // talkgroup -> emergency message (active alerts)
    this.myEmergency = null; // talkgroup of our own emergency
    this.patches = new Map(); // patch id -> {id, talkgroups, by}
    this._patchOp = null; // the patch request awaiting its answer: {kind, talkgroups, id, at}
    this.mediaState = 'new';
    this._hadMedia = false;
    this._pendingJoins = new Set();
    this._changeQueued = false;
    // The current outage: {since, reason, serverStopping}; null while connected.
    this.outage = null;
    this.outages = []; // the last few: {since, reason, back, resumed} (diagnostics, tests)
    this.outOfServiceTones = 0;
    this.resumed = false; // whether the current session was taken back after an outage
    // An emergency pressed and not yet confirmed by the server: {tg, pressedAt, location
    // (undefined while it is being found), sent (on this connection), queued (had to wait)}.
    this.pendingEmergency = null;
    this.emergencyNote = null; // {text, kind, until}: what the page shows under Emergency (emergencyNote())
    this._mediaTimer = null;
    this._mediaRestarts = 0; // consecutive, for the backoff
    this.mediaRestartCount = 0; // peer connections replaced (restart offers) so far
    this._serverStopping = false;
    this._resumedAt = 0;

    this.sig.addEventListener('state', () => this._changed());
    this.sig.addEventListener('welcome', (ev) => this._onWelcome(ev.detail.msg, ev.detail.resumed));
    this.sig.addEventListener('message', (ev) => this._onMessage(ev.detail.msg));
    this.sig.addEventListener('lost', (ev) => this._onLost(ev.detail.reason));
    this.sig.addEventListener('stopping', () => {
      if (this.outage) this.outage.serverStopping = true;
      this._serverStopping = true;
      this._changed();
    });
    this.sig.addEventListener('fatal', (ev) => {
      this._resetSessionState();
      this.mediaState = 'closed';
      this._changed();
      this.dispatchEvent(new CustomEvent('fatal', { detail: ev.detail }));
    });
    this.engine.onlevels = (tg, level) => {
      const g = this.groups.get(tg);
      if (!g) return;
      g.level = level;
      if (level > g.maxLevel) g.maxLevel = level;
    };
    this._levelTimer = setInterval(() => this.dispatchEvent(new Event('levels')), 100);
    this.engine.onstatechange = () => this._changed();
  }

  // -- lifecycle ------------------------------------------------------------------------------
  start() {
    this.sig.start();
    if (this.transmitCapable) this._microphone();
  }

  stop() {
    this.sig.stop();
    clearTimeout(this._mediaTimer);
    this._resetSessionState();
    this.mediaState = 'closed';
    if (this.media) this.media.close();
    this.media = null;
    if (this.mic) this.mic.stop();
    this.mic = null;
    this._micPromise = null;
    clearInterval(this._levelTimer);
  }

  /** Call inside a user gesture: starts audio output on mobile browsers. */
  unlockAudio() {
    this.engine.unlock();
  }

  get audioLocked() {
    return !this.engine.running;
  }

  /** 'connecting' | 'connected' | 'reconnecting' | 'offline' */
  get connection() {
    const s = this.sig.state;
    if (s === 'closed' || s === 'idle') return 'offline';
    if (s === 'connected') {
      if (this.mediaState === 'connected') return 'connected';
      return this.sig._everConnected && this._hadMedia ? 'reconnecting' : 'connecting';
    }
    return s;
  }

  /** Whether a connection we had is lost and being re-established (or the first one keeps
   * failing): the radio cannot send or receive signaling now. */
  get offline() {
    const s = this.sig.state;
    return s === 'reconnecting' || (s === 'connecting' && this.sig.attempt > 1);
  }

  /** Why we are offline, in a few words for the page (null when it is not known). */
  get offlineReason() {
    if (!this.offline) return null;
    if (this._serverStopping) return t('client.server_restarting');
    if (navigator.onLine === false) return t('client.no_network');
    return null;
  }

  /** What the officer should know about Talk being unavailable, or null. */
  get linkStatus() {
    return this.offline ? offlineText() : null;
  }

  /** Why this device cannot transmit (the microphone), in a sentence; null when it can. */
  get micError() {
    return this._micErrorKey ? t(this._micErrorKey) : null;
  }

  _microphone() {
    if (!this.transmitCapable) return Promise.resolve(null);
    if (this.mic && this.mic.readyState === 'live') return Promise.resolve(this.mic);
    if (this._micPromise) return this._micPromise;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      this._micErrorKey = 'client.mic_insecure';
      return Promise.resolve(null);
    }
    this._micPromise = navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
      video: false,
    }).then((stream) => {
      const track = stream.getAudioTracks()[0];
      track.enabled = false; // silent until the floor is granted
      track.addEventListener('ended', () => {
        this.mic = null;
        this._micPromise = null;
        this._micErrorKey = 'client.mic_stopped';
        this._changed();
      });
      this.mic = track;
      this._micErrorKey = null;
      this._changed();
      return track;
    }).catch((err) => {
      this._micPromise = null;
      this._micErrorKey = err && err.name === 'NotAllowedError' ? 'client.mic_refused' : 'client.mic_missing';
      this._changed();
      return null;
    });
    return this._micPromise;
  }

  _onWelcome(msg, resumed) {
    this.me = msg;
    this.resumed = !!resumed;
    this._serverStopping = false;
    const outage = this.outage;
    this.outage = null;
    if (outage) {
      this.outages.push({ since: outage.since, reason: outage.reason, back: Date.now(), resumed: !!resumed });
      if (this.outages.length > OUTAGES_KEPT) this.outages.shift();
    }
    this._resumedAt = resumed ? Date.now() : 0;
    if (resumed) {
      // The same session: memberships, floors and queue were kept or are replayed, and a
      // `joined` per talkgroup follows with the state as it is now. A join sent just before
      // the loss may never have arrived: send those again (already_joined is harmless).
      for (const [tg, mode] of this.wanted) {
        const g = this.groups.get(tg);
        if (!g || !g.joined) this._sendJoin(tg, mode);
      }
      // Media that survived the outage (its own path, or the network came back in time) is
      // kept: not a moment of audio lost to renegotiation. Otherwise a new peer connection.
      if (!(this.media && this.media.connected)) this._restartMedia();
    } else {
      // A new session (the server restarted, or the grace ran out): start as the first time.
      this._resetSessionState();
      for (const [tg, mode] of this.wanted) this._sendJoin(tg, mode);
      this._startMedia(false);
    }
    this._changed();
  }

  _newMedia() {
    const media = new Media((m) => this.sig.send(m), this.engine);
    this.media = media;
    this.mediaState = 'connecting';
    media.addEventListener('state', (ev) => {
      if (media !== this.media) return;
      const { state, ice } = ev.detail;
      this.mediaState = state;
      if (state === 'connected') {
        this._hadMedia = true;
        this._mediaRestarts = 0;
        clearTimeout(this._mediaTimer);
        this._mediaTimer = null;
      }
      const broken = (s) => s === 'disconnected' || s === 'failed';
      if (broken(state) || broken(ice)) {
        // The media path broke: often the whole network changed under us. Check the socket
        // now rather than at its next ping, and replace the peer connection if it stays down.
        this.sig.probe();
        const now = state === 'failed' || ice === 'failed' ||
          (this._resumedAt && Date.now() - this._resumedAt < AFTER_RESUME_MS);
        this._restartMediaSoon(now ? 0 : MEDIA_GRACE_MS);
      }
      this._changed();
    });
    media.addEventListener('error', () => {
      if (media !== this.media || !this.sig.connected) return;
      this._notice('client.audio_retry', {}, 'error');
      this._restartMediaSoon(MEDIA_GRACE_MS);
    });
    return media;
  }

  async _startMedia(restart) {
    const media = this._newMedia();
    const track = await this._microphone();
    if (media !== this.media || !this.sig.connected) return;
    media.start(track, { restart });
    if (this.tx.phase === 'granted') media.setTransmit(true);
  }

  /** Replace the peer connection (the server closes its old one when it sees `restart`). */
  _restartMedia() {
    clearTimeout(this._mediaTimer);
    this._mediaTimer = null;
    if (this.media) this.media.close();
    this.media = null;
    this._mediaRestarts += 1;
    this.mediaRestartCount += 1;
    this._startMedia(true);
  }

  _restartMediaSoon(ms) {
    if (this._mediaTimer) return;
    // Consecutive failures back off: a network that blocks media must not be flooded.
    const wait = Math.min(MEDIA_RETRY_MAX_MS, ms + (this._mediaRestarts ? 1000 * 2 ** (this._mediaRestarts - 1) : 0));
    const media = this.media;
    this._mediaTimer = setTimeout(() => {
      this._mediaTimer = null;
      // Offline: the next welcome decides. A newer peer connection: not ours to replace.
      if (!this.sig.connected || media !== this.media || (media && media.connected)) return;
      this._restartMedia();
    }, wait);
  }

  _resetSessionState() {
    clearTimeout(this._mediaTimer);
    this._mediaTimer = null;
    if (this.media) this.media.close();
    this.media = null;
    if (this.mic) this.mic.enabled = false;
    if (this.tx.phase !== 'idle') this.tx = idleTx();
    this.busy = null;
    this.patches.clear(); // every `joined` tells again
    this._patchOp = null;
    for (const g of this.groups.values()) {
      g.joined = false;
      g.floor = floorFrom(null);
      g.level = 0;
    }
  }

  /** The connection is gone (for now): nothing we show about the channel can be trusted. */
  _onLost(reason) {
    const wasTalking = this.tx.phase === 'granted';
    if (!this.outage) {
      this.outage = { since: Date.now(), reason, serverStopping: !!this._serverStopping };
      this.outOfServiceTones += 1;
      outOfServiceTone(this.engine.context());
    }
    // The server releases our floor and leaves us out of the queue; stop sending at once.
    if (this.media) this.media.setTransmit(false);
    else if (this.mic) this.mic.enabled = false;
    this.tx = idleTx();
    this.busy = null;
    this.patches.clear(); // the `joined` after reconnecting tells again
    this._patchOp = null;
    this._pendingJoins.clear();
    for (const g of this.groups.values()) {
      // Memberships stay (the server keeps them for a resumed session); the talker and the
      // meter are stale the moment we stop hearing the server.
      g.floor = floorFrom(null);
      g.level = 0;
    }
    const p = this.pendingEmergency;
    if (p) p.sent = false; // not confirmed: it goes again on the next connection
    if (wasTalking) this._notice(revokeKey('disconnected'), {}, 'warn');
    this._changed();
  }

  // -- talkgroups -----------------------------------------------------------------------------
  _group(tg) {
    let g = this.groups.get(tg);
    if (!g) {
      g = {
        id: tg, name: tg, kind: 'normal', mode: 'member', joined: false, members: [],
        presenceRevision: null, presenceAsked: false,
        floor: floorFrom(null), emergency: null, log: [], level: 0, maxLevel: 0,
        muted: false, volume: 1,
      };
      this.groups.set(tg, g);
    }
    return g;
  }

  join(tg, mode = 'member') {
    const g = this._group(tg);
    g.mode = mode;
    this.wanted.set(tg, mode);
    if (this.sig.connected) this._sendJoin(tg, mode);
    this._changed();
  }

  _sendJoin(tg, mode) {
    this._pendingJoins.add(tg);
    this.sig.send({ type: 'join', talkgroup: tg, mode });
  }

  leave(tg) {
    this.wanted.delete(tg);
    if (this.tx.tg === tg) this.release();
    const g = this.groups.get(tg);
    if (g && g.joined && this.sig.connected) this.sig.send({ type: 'leave', talkgroup: tg });
    else this.groups.delete(tg);
    this._changed();
  }

  setVolume(tg, volume) {
    this._group(tg).volume = volume;
    this.engine.setVolume(tg, volume);
    this._changed();
  }

  /** Hold a talkgroup's audio back, or let it play again (scan pre-emption, scan.js). */
  setHeld(tg, held) {
    this.engine.setHeld(tg, held);
  }

  setMuted(tg, muted) {
    this._group(tg).muted = !!muted;
    this.engine.setMuted(tg, muted);
    this._changed();
  }

  // -- push to talk ---------------------------------------------------------------------------
  press(tg) {
    this.unlockAudio();
    const tx = this.tx;
    if (tx.phase !== 'idle') {
      if (tx.tg === tg) tx.pressing = true; // e.g. taking over an emergency open mic
      this._changed();
      return;
    }
    const g = this.groups.get(tg);
    let problem = null; // a catalogue key
    if (!tg || !g) problem = 'client.no_talkgroup';
    else if (this.offline) problem = 'client.offline_talk';
    else if (!this.sig.connected || !g.joined) problem = 'client.not_connected';
    else if (g.mode !== 'member' && !MONITOR_TALK_ROLES.includes(this.me && this.me.role)) problem = 'client.monitor_only';
    else if (!this.mic) problem = this._micErrorKey || 'client.mic_not_ready';
    if (problem) {
      this.tones.bonk();
      this.busy = busyState(tg, null, () => t(problem), Date.now() + BUSY_SHOW_MS);
      this._changed();
      return;
    }
    this.busy = null;
    this.tx = { ...idleTx(), tg, phase: 'requesting', pressing: true };
    this.sig.send({ type: 'floor_request', talkgroup: tg, queue: true });
    this._changed();
  }

  release() {
    const tx = this.tx;
    if (!tx.pressing) return;
    tx.pressing = false;
    if (this.busy && !this.busy.until) this.busy = null;
    if (tx.allCall) {
      // 'requesting': the answer decides (a late grant is given straight back).
      if (tx.phase === 'granted') this._endAllCall();
      this._changed();
      return;
    }
    switch (tx.phase) {
      case 'granted':
        this._stopTalking();
        this.sig.send({ type: 'floor_release', talkgroup: tx.tg });
        break;
      case 'queued':
        if (!tx.emergency) {
          this.sig.send({ type: 'floor_cancel', talkgroup: tx.tg });
          this.tx = idleTx();
        }
        break;
      default:
        // 'requesting': the answer decides (a late grant is given straight back).
        break;
    }
    this._changed();
  }

  _stopTalking() {
    if (this.media) this.media.setTransmit(false);
    else if (this.mic) this.mic.enabled = false;
    this.tx = idleTx();
    if (this.emergencyNote && this.emergencyNote.openMic) this.emergencyNote = null; // closed now
  }

  revoke(tg) {
    this.sig.send({ type: 'floor_revoke', talkgroup: tg });
  }

  // -- all-call (dispatchers and supervisors) -------------------------------------------------
  /** Which talkgroups an all-call to `tgs` asks the floor of: each once, and one per patch
   * (patched talkgroups share one floor, so the first one takes them all). */
  allCallTargets(tgs) {
    const out = [];
    const patches = new Set();
    for (const tg of new Set(tgs)) {
      const p = this.patchOf(tg);
      if (p) {
        if (patches.has(p.id)) continue;
        patches.add(p.id);
      }
      out.push(tg);
    }
    return out;
  }

  /** The talkgroups an all-call to `tgs` is heard on (we listen to): with patched partners. */
  allCallCovers(tgs) {
    const out = new Set(tgs);
    for (const tg of tgs) {
      const p = this.patchOf(tg);
      if (p) p.talkgroups.forEach((t) => { if ((this.groups.get(t) || {}).joined) out.add(t); });
    }
    return Array.from(out);
  }

  /** Hold-to-talk on several talkgroups at once: the floor of every one of them, or none. */
  pressAllCall(tgs) {
    this.unlockAudio();
    const tx = this.tx;
    if (tx.phase !== 'idle') {
      if (tx.allCall) tx.pressing = true;
      this._changed();
      return;
    }
    const picked = Array.from(new Set(tgs));
    const targets = this.allCallTargets(picked);
    const covers = this.allCallCovers(picked);
    let problem = null; // a catalogue key
    if (!targets.length) problem = 'client.allcall_pick';
    else if (this.offline) problem = 'client.offline_talk';
    else if (!this.sig.connected || picked.some((tg) => !(this.groups.get(tg) || {}).joined)) problem = 'client.not_connected';
    else if (!this.mic) problem = this._micErrorKey || 'client.mic_not_ready';
    if (problem) {
      this.tones.bonk();
      this.busy = busyState(null, null, () => t(problem), Date.now() + BUSY_SHOW_MS);
      this._changed();
      return;
    }
    this.busy = null;
    this.tx = { ...idleTx(), phase: 'requesting', pressing: true, allCall: targets, covers, tids: {} };
    this.sig.send({ type: 'all_call', talkgroups: targets });
    this._changed();
  }

  /** Whether we are on the air on `tg` (a transmission of our own, or an all-call). */
  transmittingOn(tg) {
    const tx = this.tx;
    if (tx.phase !== 'granted') return false;
    return tx.allCall ? tx.covers.includes(tg) : tx.tg === tg;
  }

  _endAllCall() {
    this._stopTalking();
    this.sig.send({ type: 'all_call_release' });
  }

  /** One talkgroup of the all-call ended (revoked, pre-empted, time limit): the others go on. */
  _allCallLost(tg, reason) {
    const tx = this.tx;
    const partners = (this.patchOf(tg) || { talkgroups: [tg] }).talkgroups;
    delete tx.tids[tg];
    tx.allCall = tx.allCall.filter((t) => t !== tg);
    tx.covers = tx.covers.filter((t) => t !== tg && !partners.includes(t));
    if (reason) {
      this.tones.revoked();
      this._notice('client.revoked_on', { tg: this._name(tg), reason: t(revokeKey(reason)) }, 'warn');
    }
    if (!tx.allCall.length) this._endAllCall();
  }

  // -- patches (dispatchers and supervisors) --------------------------------------------------
  /** The patch `tg` is in, or null. */
  patchOf(tg) {
    for (const p of this.patches.values()) {
      if (p.talkgroups.includes(tg)) return p;
    }
    return null;
  }

  patchCreate(tgs) {
    const talkgroups = Array.from(new Set(tgs));
    if (talkgroups.length < 2) {
      this._notice('client.patch_pick_two', {}, 'error', 'patch');
      return false;
    }
    if (!this.sig.connected) {
      this._notice('client.patch_offline', {}, 'error', 'patch');
      return false;
    }
    this._patchOp = { kind: 'create', talkgroups, at: Date.now() };
    this.sig.send({ type: 'patch_create', talkgroups });
    return true;
  }

  patchRemove(patchId) {
    const p = this.patches.get(patchId);
    if (!this.sig.connected) {
      this._notice('client.unpatch_offline', {}, 'error', 'patch');
      return false;
    }
    this._patchOp = { kind: 'remove', id: patchId, talkgroups: p ? p.talkgroups : [], at: Date.now() };
    this.sig.send({ type: 'patch_remove', patch_id: patchId });
    return true;
  }

  _name(tg) {
    const g = this.groups.get(tg);
    return (g && g.name) || tg;
  }

  // -- emergency ------------------------------------------------------------------------------
  /**
   * Raise an emergency on `tg`. Without a connection it is kept, with the time it was
   * pressed and the location found then, and sent the moment the talkgroup is back; it stays
   * pending until the server confirms it (its `emergency` alert reaches us too), so a send
   * lost with a dying connection goes again.
   */
  async emergencyStart(tg) {
    this.unlockAudio();
    const g = this.groups.get(tg);
    if (!g) {
      this._notice('client.no_talkgroup', {}, 'error');
      this.tones.bonk();
      return false;
    }
    const pending = { tg, pressedAt: Date.now(), location: undefined, sent: false, queued: false };
    this.pendingEmergency = pending;
    this.myEmergency = tg;
    if (this.sig.connected && g.joined) {
      this._takeEmergencyFloor(tg);
    } else {
      this._queueEmergency(pending);
    }
    this._changed();
    const location = await currentLocation();
    if (this.pendingEmergency !== pending) return true; // cancelled meanwhile
    pending.location = location;
    this._flushEmergency();
    this._changed();
    return true;
  }

  /** The emergency request takes the floor itself: give back what we hold or wait for. */
  _takeEmergencyFloor(tg) {
    if (this.tx.tg === tg && this.tx.phase === 'granted') {
      this.sig.send({ type: 'floor_release', talkgroup: tg });
    } else if (this.tx.tg === tg && this.tx.phase === 'queued') {
      this.sig.send({ type: 'floor_cancel', talkgroup: tg });
    }
    if (this.media) this.media.setTransmit(false);
    this.tx = { ...idleTx(), tg, phase: 'requesting', emergency: true };
  }

  _queueEmergency(p) {
    if (p.queued) return;
    p.queued = true;
    this.emergencyNote = emergencyNote('client.emergency_waiting_at', { at: clockTime(p.pressedAt) }, 'warn', 0);
    this.tones.bonk();
    this._notice('client.emergency_waiting', {}, 'warn');
  }

  /** Send the pending emergency if we can (connected, its talkgroup joined, location known). */
  _flushEmergency() {
    const p = this.pendingEmergency;
    if (!p || p.sent || p.location === undefined) return;
    const g = this.groups.get(p.tg);
    if (!this.sig.connected || !g || !g.joined) {
      this._queueEmergency(p);
      return;
    }
    if (!(this.tx.tg === p.tg && this.tx.emergency)) this._takeEmergencyFloor(p.tg);
    const msg = { type: 'emergency_start', talkgroup: p.tg };
    if (p.location) msg.location = p.location;
    if (this.sig.send(msg)) p.sent = true;
    else this._queueEmergency(p);
  }

  emergencyCancel(tg) {
    const p = this.pendingEmergency;
    if (p && p.tg === tg) {
      this.pendingEmergency = null;
      if (p.queued && !p.sent) {
        this.emergencyNote = emergencyNote('client.emergency_cancelled_unsent', {}, 'info', Date.now() + EMERGENCY_SENT_SHOW_MS);
      } else {
        this.emergencyNote = null;
      }
    }
    this.sig.send({ type: 'emergency_cancel', talkgroup: tg });
    if (this.tx.tg === tg && this.tx.emergency) {
      if (this.tx.phase === 'granted') {
        this._stopTalking();
        this.sig.send({ type: 'floor_release', talkgroup: tg });
      } else if (this.tx.phase === 'queued') {
        this.sig.send({ type: 'floor_cancel', talkgroup: tg });
        this.tx = idleTx();
      } else {
        this.tx.emergency = false;
      }
    }
    if (this.myEmergency === tg) this.myEmergency = null;
    this._changed();
  }

  // -- messages -------------------------------------------------------------------------------
  _onMessage(msg) {
    const handler = this[`_on_${msg.type}`];
    if (typeof handler === 'function') {
      try {
        handler.call(this, msg);
      } catch (err) {
        console.error('message handling failed', msg.type, err);
      }
      this._changed();
    }
  }

  _on_joined(msg) {
    const g = this._group(msg.talkgroup);
    this._pendingJoins.delete(msg.talkgroup);
    g.joined = true;
    g.mode = msg.mode || g.mode;
    g.name = msg.name || g.id;
    g.kind = msg.kind || 'normal';
    g.members = Array.isArray(msg.members) ? msg.members : [];
    g.presenceRevision = typeof msg.presence_revision === 'number' ? msg.presence_revision : null;
    g.presenceAsked = false;
    g.floor = floorFrom(msg.floor);
    // `joined` knows the talkgroup's patch: it replaces whatever we thought.
    const patch = msg.patch && msg.patch.patch_id ? msg.patch : null;
    for (const [id, p] of this.patches) {
      if (p.talkgroups.includes(msg.talkgroup) && (!patch || patch.patch_id !== id)) this.patches.delete(id);
    }
    if (patch) {
      const known = this.patches.get(patch.patch_id);
      this.patches.set(patch.patch_id, {
        id: patch.patch_id, talkgroups: Array.isArray(patch.talkgroups) ? patch.talkgroups : [],
        by: known ? known.by : null,
      });
    }
    if (!this.wanted.has(msg.talkgroup) && msg.talkgroup.startsWith(PRIVATE_CALL_PREFIX)) {
      // A private call's talkgroup: the server joins both parties to it when the call is
      // accepted (before private_call_started) and makes them leave when it ends.
      this.wanted.set(msg.talkgroup, 'member');
    }
    if (!this.wanted.has(msg.talkgroup)) {
      // Left while the join was on its way.
      this.sig.send({ type: 'leave', talkgroup: msg.talkgroup });
      return;
    }
    const p = this.pendingEmergency;
    if (p && p.tg === msg.talkgroup) this._flushEmergency();
  }

  _on_left(msg) {
    const tg = msg.talkgroup;
    if (this.media) this.media.onLeft(tg);
    const g = this.groups.get(tg);
    if (g) g.joined = false;
    if (this.tx.tg === tg) this._stopTalking();
    if (tg.startsWith(PRIVATE_CALL_PREFIX)) this.wanted.delete(tg); // the call ended: not rejoined
    if (!this.wanted.has(tg)) this.groups.delete(tg);
    else if (this.sig.connected) this._sendJoin(tg, this.wanted.get(tg)); // left for a mode change
    // Patches of talkgroups we no longer hear: their `unpatched` would not reach us.
    for (const [id, p] of this.patches) {
      if (!p.talkgroups.some((t) => (this.groups.get(t) || {}).joined)) this.patches.delete(id);
    }
  }

  _on_presence(msg) {
    const g = this.groups.get(msg.talkgroup);
    if (!g) return;
    g.members = Array.isArray(msg.members) ? msg.members : [];
    g.presenceRevision = typeof msg.revision === 'number' ? msg.revision : null;
    g.presenceAsked = false;
  }

  _on_presence_delta(msg) {
    const g = this.groups.get(msg.talkgroup);
    const rev = g ? g.presenceRevision : null;
    if (!g || !g.joined || typeof rev !== 'number' || typeof msg.revision !== 'number') return;
    if (msg.revision <= rev) return; // had it already (replayed after a resume)
    if (msg.revision > rev + 1) {
      // We missed one: our list cannot be put right from here. The whole list, once.
      if (!g.presenceAsked) this.sig.send({ type: 'presence_request', talkgroup: msg.talkgroup });
      g.presenceAsked = true;
      return;
    }
    g.members = applyDelta(g.members, msg);
    g.presenceRevision = msg.revision;
  }

  _on_answer(msg) {
    if (this.media) this.media.onAnswer(msg.sdp);
  }

  _on_offer(msg) {
    if (this.media) this.media.onOffer(msg.sdp);
  }

  _on_downlink(msg) {
    if (this.media) this.media.onDownlink(msg.talkgroup, msg.mid);
    const g = this.groups.get(msg.talkgroup);
    if (g) {
      this.engine.setVolume(msg.talkgroup, g.volume);
      this.engine.setMuted(msg.talkgroup, g.muted);
    }
  }

  _on_media_state(msg) {
    this.serverMediaState = msg.state;
  }

  _on_floor_granted(msg) {
    const tg = msg.talkgroup;
    const tx = this.tx;
    if (tx.allCall && tx.phase === 'requesting' && tx.allCall.includes(tg)) {
      // One floor of an all-call: the microphone waits for all_call_granted.
      tx.tids[tg] = msg.transmission_id;
      if (msg.max_duration_s) tx.maxDuration = Math.min(tx.maxDuration || Infinity, msg.max_duration_s);
      return;
    }
    const wanted = tx.tg === tg && (tx.phase === 'requesting' || tx.phase === 'queued') &&
      (tx.pressing || tx.emergency);
    if (!wanted) {
      // Released before the grant arrived (or a stale grant): give the floor straight back.
      this.sig.send({ type: 'floor_release', talkgroup: tg });
      if (tx.tg === tg) this.tx = idleTx();
      return;
    }
    tx.phase = 'granted';
    tx.tid = msg.transmission_id;
    tx.since = Date.now();
    tx.maxDuration = msg.max_duration_s || null;
    tx.emergency = tx.emergency || !!msg.emergency;
    tx.position = null;
    this.busy = null;
    if (this.media) this.media.setTransmit(true);
    this.tones.permit();
    const g = this._group(tg);
    g.floor = {
      state: 'taken', unit: this.me && this.me.unit, alias: this.me && this.me.alias,
      tid: msg.transmission_id, emergency: !!msg.emergency, since: Date.now(), mine: true,
    };
  }

  _on_floor_denied(msg) {
    const tg = msg.talkgroup;
    if (this.tx.tg === tg && this.tx.phase !== 'granted') {
      const holder = msg.holder && (msg.holder.alias || msg.holder.unit);
      this.tx = idleTx();
      this.tones.bonk();
      const key = msg.reason === 'queue_timeout' ? 'client.queue_timeout' : 'client.channel_busy';
      this.busy = busyState(tg, holder, () => t(key), Date.now() + BUSY_SHOW_MS);
    }
  }

  _on_floor_queued(msg) {
    const tg = msg.talkgroup;
    const tx = this.tx;
    if (tx.tg !== tg || tx.phase === 'granted') return;
    if (!tx.pressing && !tx.emergency) {
      this.sig.send({ type: 'floor_cancel', talkgroup: tg });
      this.tx = idleTx();
      return;
    }
    if (tx.phase === 'requesting') this.tones.bonk(); // busy: someone else is talking
    tx.phase = 'queued';
    tx.position = msg.position;
    const g = this.groups.get(tg);
    const holder = g && g.floor.state === 'taken' ? g.floor.alias : null;
    this.busy = busyState(tg, holder, () => t('client.channel_busy'), 0);
  }

  _on_floor_taken(msg) {
    const g = this.groups.get(msg.talkgroup);
    if (!g) return;
    g.floor = floorFrom({ ...msg, state: 'taken' });
  }

  _on_floor_idle(msg) {
    const tg = msg.talkgroup;
    const g = this.groups.get(tg);
    if (this.tx.allCall && this.tx.phase === 'granted' && this.tx.tids[tg] === msg.transmission_id) {
      this._allCallLost(tg, null);
    }
    if (this.tx.tg === tg && this.tx.tid === msg.transmission_id && this.tx.phase === 'granted') {
      this._stopTalking();
    }
    if (!g) return;
    const f = g.floor;
    if (f.state === 'taken' && (!f.tid || f.tid === msg.transmission_id)) {
      const now = Date.now();
      g.log.unshift({
        tid: msg.transmission_id, unit: f.unit, alias: f.alias, start: f.since / 1000,
        duration: (now - f.since) / 1000, reason: msg.reason, emergency: f.emergency,
        mine: !!f.mine,
      });
      if (g.log.length > LOG_MAX) g.log.length = LOG_MAX;
      if (!f.mine && !g.muted) this.tones.over();
    }
    g.floor = floorFrom(null);
  }

  _on_floor_revoked(msg) {
    const tx = this.tx;
    if (tx.allCall && tx.tids[msg.talkgroup] === msg.transmission_id) {
      if (tx.phase === 'granted') this._allCallLost(msg.talkgroup, msg.reason);
      return;
    }
    if (tx.tg === msg.talkgroup && (tx.tid === msg.transmission_id || tx.phase === 'granted')) {
      this._stopTalking();
      this.tones.revoked();
      this._notice(revokeKey(msg.reason), {}, 'warn');
    }
  }

  _on_floor_warning(msg) {
    const tx = this.tx;
    const mine = tx.allCall ? tx.tids[msg.talkgroup] === msg.transmission_id : tx.tg === msg.talkgroup;
    if (mine && tx.phase === 'granted') {
      tx.warning = true;
      this.tones.warning();
    }
  }

  _on_all_call_granted(msg) {
    const tx = this.tx;
    if (!tx.allCall || tx.phase !== 'requesting') {
      this.sig.send({ type: 'all_call_release' }); // stale: nobody is waiting for it
      return;
    }
    if (!tx.pressing) {
      // Released before the grant arrived: give every floor straight back.
      this.sig.send({ type: 'all_call_release' });
      this.tx = idleTx();
      return;
    }
    const tids = msg.talkgroups && typeof msg.talkgroups === 'object' ? msg.talkgroups : {};
    Object.assign(tx.tids, tids);
    tx.phase = 'granted';
    tx.allCallId = msg.all_call_id || null;
    tx.since = Date.now();
    tx.position = null;
    this.busy = null;
    if (this.media) this.media.setTransmit(true);
    this.tones.permit();
    const first = Object.values(tx.tids)[0] || null;
    for (const tg of tx.covers) {
      const partner = tx.allCall.find((t) => (this.patchOf(t) || { talkgroups: [] }).talkgroups.includes(tg));
      this._group(tg).floor = {
        state: 'taken', unit: this.me && this.me.unit, alias: this.me && this.me.alias,
        tid: tx.tids[tg] || tx.tids[partner] || first, emergency: false, since: Date.now(), mine: true,
      };
    }
  }

  _on_all_call_denied(msg) {
    const tx = this.tx;
    if (tx.allCall && tx.phase === 'requesting') this.tx = idleTx();
    const holder = msg.holder && (msg.holder.alias || msg.holder.unit);
    const name = this._name(msg.talkgroup);
    const key = holder || msg.reason === 'floor_taken' ? 'client.allcall_refused_busy' : 'client.allcall_refused_unavailable';
    this.tones.bonk();
    this.busy = busyState(null, holder, () => t(key, { tg: name }), Date.now() + 2 * BUSY_SHOW_MS);
    if (holder) this._notice('client.allcall_refused_holder', { holder, tg: name }, 'warn');
    else this._notice(key, { tg: name }, 'warn');
  }

  _on_patched(msg) {
    this.patches.set(msg.patch_id, {
      id: msg.patch_id, talkgroups: Array.isArray(msg.talkgroups) ? msg.talkgroups : [], by: msg.by || null,
    });
    const op = this._patchOp;
    if (op && op.kind === 'create' && op.talkgroups.every((t) => (msg.talkgroups || []).includes(t))) {
      this._patchOp = null;
    }
    this.dispatchEvent(new CustomEvent('patch', { detail: { msg } }));
  }

  _on_unpatched(msg) {
    this.patches.delete(msg.patch_id);
    if (this._patchOp && this._patchOp.kind === 'remove' && this._patchOp.id === msg.patch_id) {
      this._patchOp = null;
    }
    this.dispatchEvent(new CustomEvent('patch', { detail: { msg } }));
  }

  /** A readable notice for an error answering our patch request; true if it was one. */
  _patchError(code, message) {
    const op = this._patchOp && Date.now() - this._patchOp.at < PATCH_OP_MS ? this._patchOp : null;
    const patchCodes = ['patch_busy', 'patch_conflict', 'unknown_patch', 'patch_error'];
    if (!patchCodes.includes(code) && !(op && ['forbidden', 'unavailable', 'bad_message', 'internal'].includes(code))) {
      return false;
    }
    this._patchOp = null;
    // The talkgroup the server's message names (data, not words: the message is not shown).
    const named = /'([^']+)'/.exec(message || '');
    const which = named && !(op && op.id === named[1]) ? this._name(named[1]) : null;
    const names = listNames(((op && op.talkgroups) || []).map((tg) => this._name(tg)));
    const removing = op && op.kind === 'remove';
    const params = {
      names: names || t('client.these_talkgroups'),
      which: which || t('client.a_talkgroup'),
      reason: codeText(code),
    };
    let key;
    switch (code) {
      case 'patch_busy':
        key = removing ? 'client.unpatch_busy' : 'client.patch_busy';
        break;
      case 'patch_conflict':
        key = 'client.patch_conflict';
        break;
      case 'unknown_patch':
        key = 'client.unknown_patch';
        if (op && op.id) this.patches.delete(op.id);
        break;
      case 'forbidden':
        key = removing ? 'client.unpatch_forbidden' : 'client.patch_forbidden';
        if (which) params.names = which;
        break;
      case 'unavailable':
        key = removing ? 'client.unpatch_unavailable' : 'client.patch_unavailable';
        break;
      default:
        key = removing ? 'client.unpatch_failed' : 'client.patch_failed';
    }
    this.tones.bonk();
    this._notice(key, params, 'error', 'patch', code);
    return true;
  }

  _on_emergency(msg) {
    this.alerts.set(msg.talkgroup, msg);
    const g = this.groups.get(msg.talkgroup);
    if (g) g.emergency = msg;
    const mine = this.me && msg.unit === this.me.unit;
    const p = this.pendingEmergency;
    if (mine && p && p.tg === msg.talkgroup && p.sent) {
      // The server has it (it alerted everyone, us included): no longer ours to resend.
      this.pendingEmergency = null;
      if (p.queued) {
        const at = clockTime(p.pressedAt);
        this.emergencyNote = emergencyNote('client.emergency_sent_at', { at }, 'info', Date.now() + EMERGENCY_SENT_SHOW_MS);
        this._notice('client.emergency_sent_at', { at }, 'info');
      } else {
        this.emergencyNote = null;
      }
    }
    if (!mine) this.tones.emergency();
    this.dispatchEvent(new CustomEvent('alert', { detail: { msg } }));
  }

  _on_emergency_cleared(msg) {
    this.alerts.delete(msg.talkgroup);
    const tx = this.tx;
    if (tx.tg === msg.talkgroup && tx.emergency && !tx.pressing) {
      // The emergency is over, but an open (hands-free) microphone it opened stays open: the
      // officer may still be talking to control, and cutting them off behind their back would
      // be worse than a minute more on the air. They are told, and end it with Talk.
      if (tx.phase === 'granted') {
        this.emergencyNote = emergencyNote('client.emergency_cleared_open_mic',
          { who: msg.alias || msg.by || t('client.someone') }, 'openmic', 0, { openMic: true });
      } else if (tx.phase === 'queued') {
        this.sig.send({ type: 'floor_cancel', talkgroup: msg.talkgroup });
        this.tx = idleTx();
      }
    }
    const g = this.groups.get(msg.talkgroup);
    if (g) g.emergency = null;
    if (this.myEmergency === msg.talkgroup) this.myEmergency = null;
    const p = this.pendingEmergency;
    if (p && p.tg === msg.talkgroup && p.sent) this.pendingEmergency = null;
  }

  _on_error(msg) {
    const code = msg.code;
    // The server's message is English and technical: for the log, never for the user. It is
    // read only for the talkgroup it names.
    const named = /'([^']+)'/.exec(msg.message || '');
    if (code === 'already_joined') return;
    console.warn('server error', code, msg.message || '');
    if (this._patchError(code, msg.message)) return;
    if (this.tx.allCall && this.tx.phase === 'requesting' &&
        ['forbidden', 'not_joined', 'bad_message', 'unknown_talkgroup', 'already_holder', 'unavailable', 'internal'].includes(code)) {
      // The all-call failed part-way: give back any floor it got.
      for (const tg of Object.keys(this.tx.tids)) this.sig.send({ type: 'floor_release', talkgroup: tg });
      this.tones.bonk();
      this.busy = busyState(null, null, () => t('client.allcall_refused', { reason: codeText(code) }), Date.now() + 2 * BUSY_SHOW_MS);
      this._notice('client.allcall_refused', { reason: codeText(code) }, 'error', null, code);
      this.tx = idleTx();
      return;
    }
    if ((code === 'forbidden' || code === 'unknown_talkgroup') && named && this._pendingJoins.has(named[1])) {
      const tg = named[1];
      const name = this._name(tg);
      this._pendingJoins.delete(tg);
      this.wanted.delete(tg);
      this.groups.delete(tg);
      this._notice('client.cannot_join', { tg: name, reason: codeText(code) }, 'error', null, code);
      return;
    }
    if (['forbidden', 'not_joined', 'not_holder', 'not_queued', 'already_holder'].includes(code) &&
        this.tx.phase !== 'idle' && this.tx.phase !== 'granted') {
      if (code !== 'not_queued') {
        this.tones.bonk();
        this.busy = busyState(this.tx.tg, null, () => codeText(code), Date.now() + BUSY_SHOW_MS);
      }
      this.tx = idleTx();
      return;
    }
    if (code === 'not_holder' || code === 'not_queued') return; // a race we already resolved
    if (code === 'rate_limited') return;
    this._notice(`error.${code}`, {}, 'error', null, code, codeText(code));
  }

  // -- state ----------------------------------------------------------------------------------
  /** A notice said by catalogue `key` (with `params`) in the current language; `code` is the
   * server error it answers, if any; `text` overrides the words (a code's fallback text). */
  _notice(key, params = {}, kind = 'info', scope = null, code = null, text = t(key, params)) {
    this.dispatchEvent(new CustomEvent('notice', { detail: { text, kind, scope, key, params, code } }));
  }

  _changed() {
    if (this._changeQueued) return;
    this._changeQueued = true;
    queueMicrotask(() => {
      this._changeQueued = false;
      if (this.busy && this.busy.until && this.busy.until < Date.now()) this.busy = null;
      const note = this.emergencyNote;
      if (note && note.until && note.until < Date.now()) this.emergencyNote = null;
      this.dispatchEvent(new Event('change'));
    });
  }

  isBusy(tg) {
    const b = this.busy;
    if (!b || (tg && b.tg !== tg)) return false;
    return !b.until || b.until > Date.now();
  }

  /** Who is talking on `tg` (alias), null if nobody; our own transmission counts. */
  talker(tg) {
    const g = this.groups.get(tg);
    return g && g.floor.state === 'taken' ? (g.floor.alias || g.floor.unit) : null;
  }

  /** A plain snapshot for tests and diagnostics (window.ptt.state()). */
  snapshot() {
    const level = {};
    const maxLevel = {};
    const talkers = {};
    const members = {};
    for (const g of this.groups.values()) {
      level[g.id] = g.level;
      maxLevel[g.id] = g.maxLevel;
      talkers[g.id] = this.talker(g.id);
      members[g.id] = g.members.map((m) => ({ unit: m.unit, alias: m.alias, state: m.state }));
    }
    return {
      connection: this.connection,
      connected: this.connection === 'connected',
      signaling: this.sig.state,
      media: this.mediaState,
      unit: this.me ? this.me.unit : null,
      alias: this.me ? this.me.alias : null,
      role: this.me ? this.me.role : null,
      joined: Array.from(this.groups.values()).filter((g) => g.joined).map((g) => g.id),
      transmitting: this.tx.phase === 'granted' ? (this.tx.allCall ? this.tx.covers.join(',') : this.tx.tg) : null,
      allCall: this.tx.allCall ? { phase: this.tx.phase, talkgroups: this.tx.covers.slice() } : null,
      patches: Array.from(this.patches.values()).map((p) => ({ id: p.id, talkgroups: p.talkgroups.slice() })),
      phase: this.tx.phase,
      granted: this.tx.phase === 'granted',
      queued: this.tx.phase === 'queued' ? this.tx.position : null,
      busy: this.isBusy(),
      emergencies: Array.from(this.alerts.keys()),
      micError: this.micError,
      audioRunning: this.engine.running,
      offline: this.offline,
      linkStatus: this.linkStatus,
      resumed: this.resumed,
      outages: this.outages.map((o) => ({ ...o })),
      outOfServiceTones: this.outOfServiceTones,
      mediaRestarts: this.mediaRestartCount,
      pendingEmergency: this.pendingEmergency
        ? { talkgroup: this.pendingEmergency.tg, pressedAt: this.pendingEmergency.pressedAt, sent: this.pendingEmergency.sent }
        : null,
      emergencyNote: this.emergencyNote ? this.emergencyNote.text : null,
      level, maxLevel, talkers, members,
    };
  }

  resetLevels() {
    for (const g of this.groups.values()) g.maxLevel = 0;
  }
}
