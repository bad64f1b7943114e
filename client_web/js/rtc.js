// One RTCPeerConnection per signaling session (docs/protocol.md, "Media negotiation").
//
// The client offers one audio transceiver: sendrecv with the microphone (its track stays
// attached but disabled until the floor is granted), or recvonly without one. The server adds
// a transceiver per further talkgroup and renegotiates with its own offer, which we answer.
// `downlink` messages tell which mid carries which talkgroup.

import { iceServers } from './ice-servers.js';

const GATHER_WAIT_MS = 2000;

function waitForGathering(pc, ms) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => { if (pc.iceGatheringState === 'complete') done(); };
    const timer = setTimeout(done, ms);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

export class Media extends EventTarget {
  /**
   * @param send    (msg) => bool: sends a signaling message
   * @param engine  AudioEngine that plays the downlink tracks
   */
  constructor(send, engine) {
    super();
    this.send = send;
    this.engine = engine;
    this.pc = null;
    this.track = null;
    this.state = 'new';
    this.ice = 'new';
    this.midTrack = new Map(); // mid -> remote MediaStreamTrack
    this.tgMid = new Map(); // talkgroup -> mid
    this._chain = Promise.resolve();
    this._offerSent = false;
    // Our offer awaits its answer. An answer arriving while none is awaited belongs to an
    // earlier peer connection (the server replays what a resumed session missed): ignored.
    this.awaitingAnswer = false;
    this.negotiated = false; // the first answer arrived
    this.closed = false;
  }

  _serial(fn) {
    const run = this._chain.then(fn, fn);
    this._chain = run.catch((err) => this._fail(err));
    return run;
  }

  _fail(err) {
    if (this.closed) return;
    console.warn('media:', err);
    this.dispatchEvent(new CustomEvent('error', { detail: { error: err } }));
  }

  /**
   * Create the peer connection and send our offer. `track`: microphone track or null.
   * `restart`: this replaces a peer connection the server still has (a resumed session whose
   * media died with the old network); the server closes its old one.
   */
  start(track, { restart = false } = {}) {
    return this._serial(async () => {
      // TURN for phones behind carrier NAT or UDP-blocking networks, when the operator runs
      // one (time-limited credentials from the server; an empty list otherwise).
      const pc = new RTCPeerConnection({ iceServers: await iceServers() });
      this.pc = pc;
      this.track = track;
      if (track) pc.addTransceiver(track, { direction: 'sendrecv' });
      else pc.addTransceiver('audio', { direction: 'recvonly' });
      pc.ontrack = (ev) => {
        if (this.closed || ev.track.kind !== 'audio') return;
        const mid = ev.transceiver && ev.transceiver.mid;
        if (mid === null || mid === undefined) return;
        this.midTrack.set(String(mid), ev.track);
        this._bind();
      };
      pc.onicecandidate = (ev) => {
        // Candidates gathered before the offer went out are inside its SDP.
        if (!this._offerSent || this.closed || !ev.candidate || !ev.candidate.candidate) return;
        this.send({
          type: 'candidate', candidate: ev.candidate.candidate,
          sdpMid: ev.candidate.sdpMid, sdpMLineIndex: ev.candidate.sdpMLineIndex,
        });
      };
      // ICE notices a dead path (no answers to its checks) about as soon as anything can:
      // 'disconnected' after a few seconds, 'failed' later. Both states are reported.
      const changed = () => {
        if (this.closed) return;
        this.state = pc.connectionState;
        this.ice = pc.iceConnectionState;
        this.dispatchEvent(new CustomEvent('state', { detail: { state: this.state, ice: this.ice } }));
      };
      pc.onconnectionstatechange = changed;
      pc.oniceconnectionstatechange = changed;
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      await waitForGathering(pc, GATHER_WAIT_MS);
      if (this.closed) return;
      this._offerSent = true;
      const msg = { type: 'offer', sdp: pc.localDescription.sdp };
      if (restart) msg.restart = true;
      this.awaitingAnswer = this.send(msg);
      if (!this.awaitingAnswer) throw new Error('the offer could not be sent');
    });
  }

  /** Whether this peer connection carries media now. */
  get connected() {
    return !!this.pc && !this.closed && this.pc.connectionState === 'connected';
  }

  /** The server's answer to our offer. */
  onAnswer(sdp) {
    // Decided on arrival, not in the queue: a stale answer must not wait for our offer.
    if (!this.awaitingAnswer) return Promise.resolve();
    this.awaitingAnswer = false;
    // Negotiated from now on: a server offer right behind this answer (a transceiver for
    // another talkgroup) is queued after it, not taken for a stale one.
    this.negotiated = true;
    return this._serial(async () => {
      if (!this.pc || this.closed) return;
      await this.pc.setRemoteDescription({ type: 'answer', sdp });
    });
  }

  /** A server offer (a transceiver added for another talkgroup): answer it. */
  onOffer(sdp) {
    // The server offers only after answering ours; an offer before that, or one we already
    // answered (replayed twice), belongs to another peer connection or is done.
    if (!this.negotiated || this.awaitingAnswer) return Promise.resolve();
    return this._serial(async () => {
      if (!this.pc || this.closed) return;
      const pc = this.pc;
      const current = pc.currentRemoteDescription;
      if (current && current.type === 'offer' && current.sdp === sdp) return;
      // The server keeps the payload types and extension ids negotiated first.
      await pc.setRemoteDescription({ type: 'offer', sdp });
      const answer = await this.pc.createAnswer();
      await this.pc.setLocalDescription(answer);
      if (this.closed) return;
      this.send({ type: 'answer', sdp: this.pc.localDescription.sdp });
    });
  }

  /** `downlink`: talkgroup `tg` is carried by transceiver `mid` (a reused slot moves). */
  onDownlink(tg, mid) {
    mid = String(mid);
    for (const [other, m] of this.tgMid) {
      if (m === mid && other !== tg) {
        this.tgMid.delete(other);
        this.engine.detach(other);
      }
    }
    this.tgMid.set(tg, mid);
    this._bind();
  }

  onLeft(tg) {
    this.tgMid.delete(tg);
    this.engine.detach(tg);
  }

  _bind() {
    for (const [tg, mid] of this.tgMid) {
      const track = this.midTrack.get(mid);
      if (track) this.engine.attach(tg, track);
    }
  }

  /** Send microphone audio (floor granted) or not. The track stays on the sender. */
  setTransmit(on) {
    if (this.track) this.track.enabled = !!on;
  }

  async inboundStats() {
    const out = {};
    if (!this.pc) return out;
    const stats = await this.pc.getStats();
    stats.forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'audio') {
        out[r.mid] = { packets: r.packetsReceived, bytes: r.bytesReceived, level: r.audioLevel };
      }
    });
    return out;
  }

  close() {
    this.closed = true;
    if (this.track) this.track.enabled = false;
    if (this.pc) {
      this.pc.ontrack = this.pc.onicecandidate = null;
      this.pc.onconnectionstatechange = this.pc.oniceconnectionstatechange = null;
      try { this.pc.close(); } catch { /* closed */ }
    }
    this.pc = null;
    for (const tg of this.tgMid.keys()) this.engine.detach(tg);
    this.tgMid.clear();
    this.midTrack.clear();
    this.state = 'closed';
  }
}
