// The signaling WebSocket (docs/protocol.md): auth first, JSON messages, keep-alive and
// automatic reconnection with exponential backoff.
//
// Events (EventTarget): 'state' {state}, 'welcome' {msg}, 'message' {msg}, 'fatal' {code}.
// state: 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed'.

const PING_EVERY_MS = 2000;
const DEAD_AFTER_MS = 6000; // nothing heard for this long: the network is gone
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 10000;
const AUTH_CLOSE = 4401;

export function wsUrl(path = '/ws') {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}${path}`;
}

export class Signaling extends EventTarget {
  constructor(getToken, url = wsUrl()) {
    super();
    this.getToken = getToken;
    this.url = url;
    this.ws = null;
    this.state = 'idle';
    this.attempt = 0;
    this.welcome = null;
    this._stopped = true;
    this._retryTimer = null;
    this._pingTimer = null;
    this._pingId = 0;
    this._lastRx = 0;
    this._everConnected = false;
    this._onOnline = () => this.reconnectNow();
  }

  start() {
    if (!this._stopped) return;
    this._stopped = false;
    window.addEventListener('online', this._onOnline);
    this._open();
  }

  stop() {
    this._stopped = true;
    window.removeEventListener('online', this._onOnline);
    clearTimeout(this._retryTimer);
    this._drop();
    this._setState('closed');
  }

  /** Retry at once (the network came back, or the user asked). */
  reconnectNow() {
    if (this._stopped || this.state === 'connected') return;
    clearTimeout(this._retryTimer);
    this.attempt = 0;
    this._drop();
    this._open();
  }

  /** Drop the current connection (e.g. its media failed) and reconnect with backoff. */
  restart() {
    if (this._stopped) return;
    const wasConnected = !!this.welcome;
    this._drop();
    if (wasConnected) this.dispatchEvent(new CustomEvent('lost'));
    this._scheduleRetry();
  }

  get connected() {
    return this.state === 'connected';
  }

  send(msg) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN || !this.welcome) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state } }));
  }

  _drop() {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    this.welcome = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(); } catch { /* already closed */ }
    }
  }

  _open() {
    const token = this.getToken();
    if (!token) {
      this._setState('closed');
      this.dispatchEvent(new CustomEvent('fatal', { detail: { code: 'token_missing' } }));
      return;
    }
    this._setState(this._everConnected ? 'reconnecting' : 'connecting');
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      this._scheduleRetry();
      return;
    }
    this.ws = ws;
    let authError = null;
    ws.onopen = () => {
      this._lastRx = Date.now();
      ws.send(JSON.stringify({ type: 'auth', token }));
    };
    ws.onmessage = (ev) => {
      this._lastRx = Date.now();
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (!msg || typeof msg.type !== 'string') return;
      if (!this.welcome) {
        if (msg.type === 'welcome') {
          this.welcome = msg;
          this.attempt = 0;
          this._everConnected = true;
          this._startPings();
          this._setState('connected');
          this.dispatchEvent(new CustomEvent('welcome', { detail: { msg } }));
        } else if (msg.type === 'error') {
          authError = msg.code;
        }
        return;
      }
      if (msg.type === 'pong') return;
      this.dispatchEvent(new CustomEvent('message', { detail: { msg } }));
    };
    ws.onerror = () => { /* onclose follows */ };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      const wasConnected = !!this.welcome;
      this._drop();
      if (ev.code === AUTH_CLOSE || (authError && authError.startsWith('token'))) {
        this._stopped = true;
        this._setState('closed');
        this.dispatchEvent(new CustomEvent('fatal', { detail: { code: authError || 'unauthorized' } }));
        return;
      }
      if (this._stopped) return;
      if (wasConnected) this.dispatchEvent(new CustomEvent('lost'));
      this._scheduleRetry();
    };
  }

  _startPings() {
    clearInterval(this._pingTimer);
    this._pingTimer = setInterval(() => {
      if (!this.ws) return;
      if (Date.now() - this._lastRx > DEAD_AFTER_MS) {
        // The socket looks open but nothing arrives: treat it as lost and start over.
        this._drop();
        this.dispatchEvent(new CustomEvent('lost'));
        this._scheduleRetry();
        return;
      }
      this.send({ type: 'ping', id: ++this._pingId });
    }, PING_EVERY_MS);
  }

  _scheduleRetry() {
    if (this._stopped) return;
    this._setState(this._everConnected ? 'reconnecting' : 'connecting');
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    const delay = base / 2 + Math.random() * base / 2; // jitter: not every radio at once
    this.attempt += 1;
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => this._open(), delay);
  }
}
