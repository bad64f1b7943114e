// The officer's side of the command centre, beside officer.js: sharing the position with
// control (off unless the officer turns it on; the choice is kept on this device), and
// "Control acknowledged – <who>" when a supervisor has seen the officer's emergency.

import { api } from './auth.js';
import { OFFICER_TEXT as T } from './command-text.js';
import { setText, show } from './dom.js';
import { clockTime } from './ptt-client.js';

const SHARE_KEY = 'ptt.officer.shareLocation';
const DEFAULT_INTERVAL_S = 15; // until the server's policy is known

export class OfficerCommand {
  /** @param els {share (checkbox), shareStatus, ackBanner} */
  constructor(client, els) {
    this.client = client;
    this.els = els;
    this.interval = DEFAULT_INTERVAL_S;
    this.sharing = false;
    this.fix = null; // the last GeolocationPosition's {lat, lon, accuracy, ts}
    this.error = null; // 'denied' | 'unavailable'
    this.sent = 0;
    this.lastSent = 0; // Date.now() of the last location sent
    this.ack = null; // emergency_acknowledged of our own emergency
    this._watch = null;
    this._timer = null;
    els.share.checked = localStorage.getItem(SHARE_KEY) === 'on';
    els.share.addEventListener('change', () => this.setSharing(els.share.checked));
    client.sig.addEventListener('message', (ev) => this._onMessage(ev.detail.msg));
    client.sig.addEventListener('welcome', () => { if (this.sharing) this._send(); });
    client.addEventListener('change', () => this.render());
    if (els.share.checked) this.setSharing(true);
    this.render();
  }

  async setSharing(on) {
    localStorage.setItem(SHARE_KEY, on ? 'on' : 'off');
    this.els.share.checked = on;
    if (!on) {
      this._stop();
      this.render();
      return;
    }
    if (this.sharing) return;
    this.sharing = true;
    this.error = null;
    try {
      const policy = await api('/api/location-policy');
      if (policy && policy.interval_s > 0) this.interval = policy.interval_s;
    } catch { /* the default interval will do */ }
    if (!this.sharing) return; // turned off meanwhile
    if (!('geolocation' in navigator)) {
      this.error = 'unavailable';
      this.render();
      return;
    }
    this._watch = navigator.geolocation.watchPosition(
      (pos) => this._onFix(pos),
      (err) => {
        this.error = err && err.code === 1 ? 'denied' : 'unavailable';
        this.render();
      },
      { enableHighAccuracy: true, maximumAge: this.interval * 1000, timeout: 60000 },
    );
    this._timer = setInterval(() => this._send(), this.interval * 1000);
    this.render();
  }

  _stop() {
    this.sharing = false;
    if (this._watch !== null) navigator.geolocation.clearWatch(this._watch);
    this._watch = null;
    clearInterval(this._timer);
    this._timer = null;
    this.fix = null;
  }

  _onFix(pos) {
    const first = !this.fix;
    const c = pos.coords;
    this.fix = {
      lat: c.latitude, lon: c.longitude,
      accuracy: Number.isFinite(c.accuracy) ? Math.round(c.accuracy) : null,
      ts: (pos.timestamp || Date.now()) / 1000,
    };
    this.error = null;
    if (first) this._send(); // control sees us at once, then every interval
    this.render();
  }

  _send() {
    const f = this.fix;
    if (!this.sharing || !f || !this.client.sig.connected) return;
    const msg = { type: 'location', lat: f.lat, lon: f.lon, ts: f.ts };
    if (f.accuracy !== null) msg.accuracy = f.accuracy;
    if (this.client.sig.send(msg) !== false) {
      this.sent += 1;
      this.lastSent = Date.now();
    }
    this.render();
  }

  _onMessage(msg) {
    const me = this.client.me && this.client.me.unit;
    if (msg.type === 'emergency_acknowledged' && msg.unit === me) {
      const again = this.ack && this.ack.talkgroup === msg.talkgroup;
      this.ack = msg;
      if (!again) this.client.tones.acknowledged();
    } else if (msg.type === 'emergency' && msg.unit === me && this.ack && msg.ts > this.ack.ts) {
      this.ack = null; // raised again: control has to see it again
    } else if (msg.type === 'emergency_cleared' && this.ack && msg.talkgroup === this.ack.talkgroup) {
      this.ack = null;
    } else {
      return;
    }
    this.render();
  }

  render() {
    const { shareStatus, ackBanner } = this.els;
    let text = T.shareOff;
    let warn = false;
    if (this.sharing) {
      if (this.error === 'denied') { text = T.shareDenied; warn = true; }
      else if (this.error) { text = T.shareUnavailable; warn = true; }
      else if (!this.fix) text = T.shareWaiting;
      else if (!this.client.sig.connected) { text = T.shareOffline; warn = true; }
      else text = T.shareOn(Math.round(this.interval), this.fix.accuracy, this.lastSent ? clockTime(this.lastSent) : '');
    }
    setText(shareStatus, text);
    shareStatus.classList.toggle('is-warn', warn);
    const ack = this.ack;
    const ackText = ack ? T.acknowledgedAt(ack.alias || ack.by, clockTime(ack.ts * 1000)) : '';
    setText(ackBanner, ackText);
    show(ackBanner, !!ack);
  }

  state() {
    return {
      sharing: this.sharing, fix: this.fix, error: this.error, sent: this.sent,
      interval: this.interval, acknowledged: this.ack ? { by: this.ack.by, alias: this.ack.alias } : null,
      acknowledgedTones: this.client.tones.acknowledgedCount || 0,
      ackText: this.els.ackBanner.textContent,
    };
  }
}
