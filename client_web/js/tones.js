// Radio tones made with WebAudio (no audio files): talk permit, busy "bonk", end of
// transmission, time-out and the emergency alert.

function beep(ctx, out, { freq, start, dur, type = 'sine', gain = 0.25, endFreq = null }) {
  const osc = ctx.createOscillator();
  const g = ctx.createGain();
  osc.type = type;
  osc.frequency.setValueAtTime(freq, start);
  if (endFreq) osc.frequency.exponentialRampToValueAtTime(endFreq, start + dur);
  // Short attack and release: no clicks.
  g.gain.setValueAtTime(0.0001, start);
  g.gain.exponentialRampToValueAtTime(gain, start + 0.008);
  g.gain.setValueAtTime(gain, start + Math.max(0.01, dur - 0.015));
  g.gain.exponentialRampToValueAtTime(0.0001, start + dur);
  osc.connect(g).connect(out);
  osc.start(start);
  osc.stop(start + dur + 0.02);
}

export class Tones {
  constructor(engine) {
    this.engine = engine;
    this.volume = 0.8;
    this._out = null;
    this._alarmUntil = 0;
  }

  _ready() {
    const ctx = this.engine.context();
    if (!ctx) return null;
    if (ctx.state !== 'running') ctx.resume().catch(() => {});
    if (!this._out) {
      this._out = ctx.createGain();
      this._out.connect(ctx.destination);
    }
    this._out.gain.value = this.volume;
    return ctx;
  }

  /** Talk permit: a quick rising double chirp, "go ahead". */
  permit() {
    const ctx = this._ready();
    if (!ctx) return;
    const t = ctx.currentTime + 0.01;
    beep(ctx, this._out, { freq: 1200, start: t, dur: 0.06 });
    beep(ctx, this._out, { freq: 1600, start: t + 0.08, dur: 0.08 });
  }

  /** Busy: the low "bonk" of a channel someone else holds. */
  bonk() {
    const ctx = this._ready();
    if (!ctx) return;
    const t = ctx.currentTime + 0.01;
    beep(ctx, this._out, { freq: 330, endFreq: 220, start: t, dur: 0.22, type: 'square', gain: 0.12 });
    beep(ctx, this._out, { freq: 330, endFreq: 220, start: t + 0.3, dur: 0.22, type: 'square', gain: 0.12 });
  }

  /** Queued: a short neutral tick (the request waits for the floor). */
  queued() {
    const ctx = this._ready();
    if (!ctx) return;
    beep(ctx, this._out, { freq: 700, start: ctx.currentTime + 0.01, dur: 0.05, gain: 0.15 });
  }

  /** End of someone else's transmission: a soft short blip. */
  over() {
    const ctx = this._ready();
    if (!ctx) return;
    beep(ctx, this._out, { freq: 900, start: ctx.currentTime + 0.01, dur: 0.04, gain: 0.08 });
  }

  /** The transmit time limit is near: three quick high pips. */
  warning() {
    const ctx = this._ready();
    if (!ctx) return;
    const t = ctx.currentTime + 0.01;
    for (let i = 0; i < 3; i++) beep(ctx, this._out, { freq: 1800, start: t + i * 0.12, dur: 0.06, gain: 0.2 });
  }

  /** Our transmission was cut (time limit, supervisor, preemption): falling tone. */
  revoked() {
    const ctx = this._ready();
    if (!ctx) return;
    beep(ctx, this._out, { freq: 900, endFreq: 300, start: ctx.currentTime + 0.01, dur: 0.45, type: 'triangle', gain: 0.3 });
  }

  /** Control has acknowledged our emergency: three calm rising notes, unlike any alarm. */
  acknowledged() {
    const ctx = this._ready();
    if (!ctx) return;
    const t = ctx.currentTime + 0.01;
    [660, 880, 1100].forEach((freq, i) => {
      beep(ctx, this._out, { freq, start: t + i * 0.18, dur: 0.16, type: 'sine', gain: 0.25 });
    });
    this.acknowledgedCount = (this.acknowledgedCount || 0) + 1; // tests and diagnostics
  }

  /** Emergency: a loud two-tone warble, distinct from every other sound. */
  emergency(seconds = 2.4) {
    const ctx = this._ready();
    if (!ctx) return;
    const now = ctx.currentTime;
    if (now < this._alarmUntil) return; // one alarm at a time
    this._alarmUntil = now + seconds;
    for (let t = 0; t < seconds; t += 0.3) {
      beep(ctx, this._out, { freq: 1400, start: now + t, dur: 0.14, type: 'sawtooth', gain: 0.12 });
      beep(ctx, this._out, { freq: 950, start: now + t + 0.15, dur: 0.14, type: 'sawtooth', gain: 0.12 });
    }
  }
}
