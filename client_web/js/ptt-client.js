// The radio: signaling + media + talkgroups + floor control, shared by the officer page and
// the supervisor console. Pages render from its state and call press()/release()/join()...
//
// Events: 'change' (state changed: re-render), 'levels' (meter tick), 'notice' {text, kind},
// 'alert' {msg} (an emergency arrived), 'fatal' {code} (the token was refused: sign in again).

import { AudioEngine } from './audio.js';
import { Media } from './rtc.js';
import { Signaling } from './signaling.js';
import { Tones } from './tones.js';

const BUSY_SHOW_MS = 2500;
const LOG_MAX = 50;
const GEO_WAIT_MS = 2500;

const REVOKE_TEXT = {
  timeout: 'Transmit time limit reached.',
  revoked: 'A supervisor ended your transmission.',
  preempted: 'A higher-priority call took the channel.',
  disconnected: 'The connection dropped during your transmission.',
};

function idleTx() {
  return {
    tg: null, phase: 'idle', pressing: false, emergency: false, tid: null, since: 0,
    maxDuration: null, position: null,
  };
}

function floorFrom(f, now = Date.now()) {
  if (!f || f.state !== 'taken') return { state: 'idle', unit: null, alias: null, tid: null, emergency: !!(f && f.emergency), since: 0 };
  return {
    state: 'taken', unit: f.unit, alias: f.alias || f.unit, tid: f.transmission_id,
    emergency: !!f.emergency, since: now,
  };
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
   * @param getToken  () => JWT or null
   * @param transmit  whether this client has a microphone uplink
   */
  constructor({ getToken, transmit = true }) {
    super();
    this.engine = new AudioEngine();
    this.tones = new Tones(this.engine);
    this.sig = new Signaling(getToken);
    this.transmitCapable = transmit;
    this.media = null;
    this.mic = null; // the microphone track (kept across reconnects)
    this.micError = null;
    this._micPromise = null;
    this.me = null; // the welcome message
    this.groups = new Map(); // talkgroup -> group state
    this.wanted = new Map(); // talkgroup -> mode: joined again after every reconnect
    this.tx = idleTx();
    this.busy = null; // {tg, holder, reason, until}
    this.alerts = new Map(); // talkgroup -> emergency message (active alerts)
    this.myEmergency = null; // talkgroup of our own emergency
    this.patches = new Map(); // patch id -> {id, talkgroups, by}
    this.mediaState = 'new';
    this._hadMedia = false;
    this._pendingJoins = new Set();
    this._changeQueued = false;

    this.sig.addEventListener('state', () => this._changed());
    this.sig.addEventListener('welcome', (ev) => this._onWelcome(ev.detail.msg));
    this.sig.addEventListener('message', (ev) => this._onMessage(ev.detail.msg));
    this.sig.addEventListener('lost', () => this._onLost());
    this.sig.addEventListener('fatal', (ev) => {
      this._onLost();
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
    this._onLost();
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

  _microphone() {
    if (!this.transmitCapable) return Promise.resolve(null);
    if (this.mic && this.mic.readyState === 'live') return Promise.resolve(this.mic);
    if (this._micPromise) return this._micPromise;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      this.micError = 'This browser cannot use a microphone here (a secure https:// page is required).';
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
        this.micError = 'The microphone stopped.';
        this._changed();
      });
      this.mic = track;
      this.micError = null;
      this._changed();
      return track;
    }).catch((err) => {
      this._micPromise = null;
      this.micError = err && err.name === 'NotAllowedError'
        ? 'Microphone access was refused: you can listen but not talk.'
        : 'No microphone available: you can listen but not talk.';
      this._changed();
      return null;
    });
    return this._micPromise;
  }

  async _onWelcome(msg) {
    this.me = msg;
    this._resetSessionState();
    const media = new Media((m) => this.sig.send(m), this.engine);
    this.media = media;
    this.mediaState = 'connecting';
    media.addEventListener('state', (ev) => {
      if (media !== this.media) return;
      this.mediaState = ev.detail.state;
      if (this.mediaState === 'connected') this._hadMedia = true;
      if (this.mediaState === 'failed') this.sig.restart();
      this._changed();
    });
    media.addEventListener('error', () => {
      if (media === this.media) this._notice('Audio negotiation failed; reconnecting.', 'error');
      if (media === this.media) this.sig.restart();
    });
    for (const [tg, mode] of this.wanted) this._sendJoin(tg, mode);
    this._changed();
    const track = await this._microphone();
    if (media !== this.media) return;
    media.start(track);
  }

  _resetSessionState() {
    if (this.media) this.media.close();
    this.media = null;
    if (this.mic) this.mic.enabled = false;
    if (this.tx.phase !== 'idle') this.tx = idleTx();
    this.busy = null;
    for (const g of this.groups.values()) {
      g.joined = false;
      g.floor = floorFrom(null);
      g.level = 0;
    }
  }

  _onLost() {
    this._resetSessionState();
    this.mediaState = 'closed';
    this._changed();
  }

  // -- talkgroups -----------------------------------------------------------------------------
  _group(tg) {
    let g = this.groups.get(tg);
    if (!g) {
      g = {
        id: tg, name: tg, kind: 'normal', mode: 'member', joined: false, members: [],
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
    let problem = null;
    if (!tg || !g) problem = 'No talkgroup selected.';
    else if (!this.sig.connected || !g.joined) problem = 'Not connected.';
    else if (g.mode !== 'member') problem = 'Monitoring only: you cannot talk on this talkgroup.';
    else if (!this.mic) problem = this.micError || 'The microphone is not ready.';
    if (problem) {
      this.tones.bonk();
      this.busy = { tg, holder: null, reason: problem, until: Date.now() + BUSY_SHOW_MS };
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
  }

  revoke(tg) {
    this.sig.send({ type: 'floor_revoke', talkgroup: tg });
  }

  // -- emergency ------------------------------------------------------------------------------
  async emergencyStart(tg) {
    this.unlockAudio();
    const g = this.groups.get(tg);
    if (!g || !g.joined || !this.sig.connected) {
      this._notice('Not connected: the emergency could not be sent.', 'error');
      this.tones.bonk();
      return false;
    }
    // The emergency request takes the floor itself: give back what we hold or wait for.
    if (this.tx.tg === tg && this.tx.phase === 'granted') {
      this.sig.send({ type: 'floor_release', talkgroup: tg });
    } else if (this.tx.tg === tg && this.tx.phase === 'queued') {
      this.sig.send({ type: 'floor_cancel', talkgroup: tg });
    }
    if (this.media) this.media.setTransmit(false);
    this.tx = { ...idleTx(), tg, phase: 'requesting', emergency: true };
    this.myEmergency = tg;
    this._changed();
    const location = await currentLocation();
    const msg = { type: 'emergency_start', talkgroup: tg };
    if (location) msg.location = location;
    this.sig.send(msg);
    return true;
  }

  emergencyCancel(tg) {
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
    g.floor = floorFrom(msg.floor);
    if (!this.wanted.has(msg.talkgroup)) {
      // Left while the join was on its way.
      this.sig.send({ type: 'leave', talkgroup: msg.talkgroup });
    }
  }

  _on_left(msg) {
    const tg = msg.talkgroup;
    if (this.media) this.media.onLeft(tg);
    const g = this.groups.get(tg);
    if (g) g.joined = false;
    if (this.tx.tg === tg) this._stopTalking();
    if (!this.wanted.has(tg)) this.groups.delete(tg);
    else if (this.sig.connected) this._sendJoin(tg, this.wanted.get(tg)); // left for a mode change
  }

  _on_presence(msg) {
    const g = this.groups.get(msg.talkgroup);
    if (g) g.members = Array.isArray(msg.members) ? msg.members : [];
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
      const reason = msg.reason === 'queue_timeout' ? 'Waited too long for the channel.' : 'Channel busy.';
      this.busy = { tg, holder, reason, until: Date.now() + BUSY_SHOW_MS };
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
    this.busy = { tg, holder, reason: 'Channel busy.', until: 0 };
  }

  _on_floor_taken(msg) {
    const g = this.groups.get(msg.talkgroup);
    if (!g) return;
    g.floor = floorFrom({ ...msg, state: 'taken' });
  }

  _on_floor_idle(msg) {
    const tg = msg.talkgroup;
    const g = this.groups.get(tg);
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
    if (tx.tg === msg.talkgroup && (tx.tid === msg.transmission_id || tx.phase === 'granted')) {
      this._stopTalking();
      this.tones.revoked();
      this._notice(REVOKE_TEXT[msg.reason] || 'Your transmission was ended.', 'warn');
    }
  }

  _on_floor_warning(msg) {
    const tx = this.tx;
    if (tx.tg === msg.talkgroup && tx.phase === 'granted') {
      tx.warning = true;
      this.tones.warning();
    }
  }

  _on_patched(msg) {
    this.patches.set(msg.patch_id, { id: msg.patch_id, talkgroups: msg.talkgroups || [], by: msg.by });
  }

  _on_unpatched(msg) {
    this.patches.delete(msg.patch_id);
  }

  _on_emergency(msg) {
    this.alerts.set(msg.talkgroup, msg);
    const g = this.groups.get(msg.talkgroup);
    if (g) g.emergency = msg;
    if (!(this.me && msg.unit === this.me.unit)) this.tones.emergency();
    this.dispatchEvent(new CustomEvent('alert', { detail: { msg } }));
  }

  _on_emergency_cleared(msg) {
    this.alerts.delete(msg.talkgroup);
    const tx = this.tx;
    if (tx.tg === msg.talkgroup && tx.emergency && !tx.pressing) {
      // The emergency is over: close an open (hands-free) microphone it had opened.
      if (tx.phase === 'granted') {
        this._stopTalking();
        this.sig.send({ type: 'floor_release', talkgroup: msg.talkgroup });
      } else if (tx.phase === 'queued') {
        this.sig.send({ type: 'floor_cancel', talkgroup: msg.talkgroup });
        this.tx = idleTx();
      }
    }
    const g = this.groups.get(msg.talkgroup);
    if (g) g.emergency = null;
    if (this.myEmergency === msg.talkgroup) this.myEmergency = null;
  }

  _on_error(msg) {
    const code = msg.code;
    const text = msg.message || code;
    const named = /'([^']+)'/.exec(msg.message || '');
    if (code === 'already_joined') return;
    if ((code === 'forbidden' || code === 'unknown_talkgroup') && named && this._pendingJoins.has(named[1])) {
      this._pendingJoins.delete(named[1]);
      this.wanted.delete(named[1]);
      this.groups.delete(named[1]);
      this._notice(`Cannot join ${named[1]}: ${text}`, 'error');
      return;
    }
    if (['forbidden', 'not_joined', 'not_holder', 'not_queued', 'already_holder'].includes(code) &&
        this.tx.phase !== 'idle' && this.tx.phase !== 'granted') {
      if (code !== 'not_queued') {
        this.tones.bonk();
        this.busy = { tg: this.tx.tg, holder: null, reason: text, until: Date.now() + BUSY_SHOW_MS };
      }
      this.tx = idleTx();
      return;
    }
    if (code === 'not_holder' || code === 'not_queued') return; // a race we already resolved
    if (code === 'rate_limited') return;
    this._notice(text, 'error');
  }

  // -- state ----------------------------------------------------------------------------------
  _notice(text, kind = 'info') {
    this.dispatchEvent(new CustomEvent('notice', { detail: { text, kind } }));
  }

  _changed() {
    if (this._changeQueued) return;
    this._changeQueued = true;
    queueMicrotask(() => {
      this._changeQueued = false;
      if (this.busy && this.busy.until && this.busy.until < Date.now()) this.busy = null;
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
      transmitting: this.tx.phase === 'granted' ? this.tx.tg : null,
      phase: this.tx.phase,
      granted: this.tx.phase === 'granted',
      queued: this.tx.phase === 'queued' ? this.tx.position : null,
      busy: this.isBusy(),
      emergencies: Array.from(this.alerts.keys()),
      micError: this.micError,
      audioRunning: this.engine.running,
      level, maxLevel, talkers, members,
    };
  }

  resetLevels() {
    for (const g of this.groups.values()) g.maxLevel = 0;
  }
}
