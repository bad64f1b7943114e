// Received audio: every downlink track plays through an <audio> element (Chromium decodes a
// remote track only when an element consumes it) and through WebAudio: an AnalyserNode for
// the level meter and a GainNode for per-talkgroup volume and mute.
//
//   track -> <audio muted> (keeps the decoder running)
//   track -> MediaStreamSource -> Analyser            (meter: what arrives)
//                              -> Gain -> output Analyser -> destination  (what you hear)
//
// A channel is silent when muted (the user's choice) or held (scan: a priority talkgroup or a
// private call is talking, see scan.js); the two are kept apart so ending one never undoes
// the other. The output analyser measures the mix that reaches the speaker.
//
// Mobile autoplay rules: call unlock() inside the first user gesture.

const METER_EVERY_MS = 50;

export class AudioEngine {
  constructor() {
    this.ctx = null;
    this.channels = new Map(); // key -> channel
    this.settings = new Map(); // key -> {volume, muted}, kept across re-attachments
    this.container = null;
    this._timer = null;
    this._buf = null;
    this.onlevels = null; // (key, level) callback per tick
    this.output = null; // AnalyserNode on the mix, created with the context
  }

  /** The AudioContext, created on demand (suspended until a gesture on some browsers). */
  context() {
    if (!this.ctx) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (!Ctx) return null;
      this.ctx = new Ctx({ latencyHint: 'interactive' });
      this.ctx.addEventListener('statechange', () => this.onstatechange && this.onstatechange());
      this.output = this.ctx.createAnalyser();
      this.output.fftSize = 4096;
      this.output.connect(this.ctx.destination);
    }
    return this.ctx;
  }

  get running() {
    return !!this.ctx && this.ctx.state === 'running';
  }

  /** Call from a user gesture: resumes the context and (re)starts every element. */
  unlock() {
    const ctx = this.context();
    if (ctx && ctx.state !== 'running') ctx.resume().catch(() => {});
    for (const ch of this.channels.values()) ch.el.play().catch(() => {});
  }

  _container() {
    if (!this.container) {
      this.container = document.createElement('div');
      this.container.className = 'audio-sinks';
      this.container.hidden = true;
      document.body.append(this.container);
    }
    return this.container;
  }

  /** Play `track` as channel `key` (a transceiver mid). Replaces what was there. */
  attach(key, track) {
    const old = this.channels.get(key);
    if (old && old.track === track) return old;
    this.detach(key);
    const stream = new MediaStream([track]);
    const el = document.createElement('audio');
    el.autoplay = true;
    el.setAttribute('playsinline', '');
    el.dataset.key = key;
    el.srcObject = stream;
    const ch = { key, track, stream, el, source: null, analyser: null, gain: null, level: 0, peak: 0 };
    const ctx = this.context();
    if (ctx) {
      el.muted = true; // heard through WebAudio (volume, mute); the element keeps decoding
      ch.source = ctx.createMediaStreamSource(stream);
      ch.analyser = ctx.createAnalyser();
      ch.analyser.fftSize = 1024;
      ch.analyser.smoothingTimeConstant = 0;
      ch.gain = ctx.createGain();
      ch.source.connect(ch.analyser);
      ch.source.connect(ch.gain);
      ch.gain.connect(this.output);
    }
    this._container().append(el);
    el.play().catch(() => {});
    this.channels.set(key, ch);
    this._apply(key);
    this._startMeter();
    return ch;
  }

  detach(key) {
    const ch = this.channels.get(key);
    if (!ch) return;
    this.channels.delete(key);
    try {
      ch.source && ch.source.disconnect();
      ch.gain && ch.gain.disconnect();
    } catch { /* already gone */ }
    ch.el.srcObject = null;
    ch.el.remove();
  }

  detachAll() {
    for (const key of Array.from(this.channels.keys())) this.detach(key);
  }

  setVolume(key, volume) {
    this._setting(key).volume = Math.max(0, Math.min(1, volume));
    this._apply(key);
  }

  setMuted(key, muted) {
    this._setting(key).muted = !!muted;
    this._apply(key);
  }

  /** Hold a channel back (scan pre-emption) without touching its mute. */
  setHeld(key, held) {
    const s = this._setting(key);
    if (s.held === !!held) return;
    s.held = !!held;
    this._apply(key);
  }

  /** The gain a channel plays at now (0 when muted or held). */
  gainOf(key) {
    const s = this._setting(key);
    return s.muted || s.held ? 0 : s.volume;
  }

  _setting(key) {
    if (!this.settings.has(key)) this.settings.set(key, { volume: 1, muted: false, held: false });
    return this.settings.get(key);
  }

  _apply(key) {
    const ch = this.channels.get(key);
    if (!ch) return;
    const v = this.gainOf(key);
    if (ch.gain) ch.gain.gain.setTargetAtTime(v, this.ctx.currentTime, 0.02);
    else ch.el.volume = v;
  }

  /** The output mix's magnitude (dB) at each of `freqs` (Hz): which talkgroup's audio reaches
   * the speaker, told apart by frequency (tests; diagnostics). */
  outputSpectrum(freqs) {
    if (!this.output) return freqs.map(() => -Infinity);
    const bins = new Float32Array(this.output.frequencyBinCount);
    this.output.getFloatFrequencyData(bins);
    const hz = this.ctx.sampleRate / this.output.fftSize;
    return freqs.map((f) => {
      const i = Math.round(f / hz);
      return Math.max(bins[i - 1] ?? -Infinity, bins[i] ?? -Infinity, bins[i + 1] ?? -Infinity);
    });
  }

  /** Current RMS level (0..1) of channel `key`. */
  level(key) {
    const ch = this.channels.get(key);
    return ch ? ch.level : 0;
  }

  _startMeter() {
    if (this._timer) return;
    this._timer = setInterval(() => this._measure(), METER_EVERY_MS);
  }

  _measure() {
    for (const ch of this.channels.values()) {
      if (!ch.analyser) continue;
      const n = ch.analyser.fftSize;
      if (!this._buf || this._buf.length !== n) this._buf = new Float32Array(n);
      ch.analyser.getFloatTimeDomainData(this._buf);
      let sum = 0;
      for (let i = 0; i < n; i++) sum += this._buf[i] * this._buf[i];
      ch.level = Math.sqrt(sum / n);
      if (this.onlevels) this.onlevels(ch.key, ch.level);
    }
  }
}


/** Map an RMS level (0..1) to a 0..1 meter position on a dB scale (-60 dB .. 0 dB). */
export function meterFraction(level) {
  if (!(level > 0)) return 0;
  const db = 20 * Math.log10(level);
  return Math.max(0, Math.min(1, (db + 60) / 60));
}
