// The signaling WebSocket (docs/protocol.md): auth first, JSON messages, liveness checks and
// automatic reconnection that resumes the session (docs/protocol.md, "Resuming after a dead
// spot").
//
// Events (EventTarget): 'state' {state}, 'welcome' {msg, resumed}, 'message' {msg},
// 'lost' {reason} (the connection we had is gone; reconnecting), 'stopping' {msg} (the server
// announced a stop), 'fatal' {code}.
// state: 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed'.
//
// Why our own pings: the server's WebSocket pings are answered by the browser itself and are
// invisible to the page, and a socket whose network vanished (a tunnel, Wi-Fi to mobile data)
// neither errors nor closes for minutes. A ping every 0.5 s that must be answered within
// 1.2 s tells within about 1.5 s.

const TICK_MS = 250;
const PING_EVERY_MS = 500;
const DEAD_AFTER_MS = 1200; // nothing heard this long (with a ping out): the link is dead
const PING_ANSWER_MS = 500; // ...and the ping has had at least this long to be answered
const PROBE_MS = 800; // a hint that the network changed: answer this quickly or reconnect
const OPEN_TIMEOUT_MS = 3000; // a socket that does not open (SYNs into a dead network)
const WELCOME_TIMEOUT_MS = 4000; // ...or is not welcomed: try again rather than wait
const RETRY_FIRST_MS = 250;
const RETRY_MAX_MS = 1000;
// While the browser says it is offline there is nothing to reach: retry less often, the
// 'online' event retries at once anyway.
const RETRY_MAX_OFFLINE_MS = 2000;
// After server_stopping a restarted (or another) server is expected within seconds: retry
// often so the radio is back as soon as it answers. Jitter keeps the radios apart.
const RETRY_MAX_RESTART_MS = 500;
const RESTART_WINDOW_MS = 60000;
const HEALTH_TIMEOUT_MS = 3000;
const AUTH_CLOSE = 4401;
const REPLACED_CLOSE = 4000; // an abandoned socket, closed once a newer one took the session

export function wsUrl(path = '/ws') {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}${path}`;
}

function jitter(ms) {
  return ms / 2 + Math.random() * ms / 2;
}

/** Whether the server answers at all (its public health check). */
async function serverAnswers() {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), HEALTH_TIMEOUT_MS);
  try {
    const resp = await fetch('/healthz', { cache: 'no-store', signal: ctl.signal });
    return resp.ok;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

export class Signaling extends EventTarget {
  /**
   * @param getToken    () => the access token, or null (none, or expired)
   * @param url         the WebSocket URL
   * @param renewToken  () => Promise of a new access token or null (optional): access tokens
   *                    are short-lived and an outage can outlast one
   */
  constructor(getToken, url = wsUrl(), renewToken = null) {
    super();
    this.getToken = getToken;
    this.renewToken = renewToken;
    this._renewals = 0; // bumped to forget a renewal in flight (reconnectNow, stop)
    this.url = url;
    this.ws = null;
    this.state = 'idle';
    this.attempt = 0;
    this.welcome = null;
    // The session we can take back after a dead spot: its latest resume token and how many
    // of its messages we have handled (the server replays the rest).
    this.resumeToken = null;
    this.received = 0;
    this.lostAt = 0; // when the connection we had was lost (0 while connected)
    this.lostReason = null;
    this._stopped = true;
    this._retryTimer = null;
    this._openTimer = null;
    this._tickTimer = null;
    this._probeTimer = null;
    this._pingId = 0;
    this._lastRx = 0;
    this._lastPing = 0;
    this._unanswered = 0; // when the oldest ping not followed by any message went out
    this._stale = []; // abandoned sockets that had a session: closed after the next welcome
    this._everConnected = false;
    this._nextDelay = null; // the server's reconnect_after_s, for the next retry only
    this._restartUntil = 0;
    this._serverWait = false;
    this._onOnline = () => {
      if (this.state === 'connected') this.probe();
      else this.reconnectNow('online');
    };
    this._onOffline = () => this.probe(PROBE_MS / 2);
    this._onNetChange = () => this.probe();
    this._onVisible = () => { if (!document.hidden) this.probe(); };
  }

  start() {
    if (!this._stopped) return;
    this._stopped = false;
    window.addEventListener('online', this._onOnline);
    window.addEventListener('offline', this._onOffline);
    document.addEventListener('visibilitychange', this._onVisible);
    const conn = navigator.connection;
    if (conn && conn.addEventListener) conn.addEventListener('change', this._onNetChange);
    this._open();
  }

  stop() {
    this._stopped = true;
    this._renewals += 1;
    window.removeEventListener('online', this._onOnline);
    window.removeEventListener('offline', this._onOffline);
    document.removeEventListener('visibilitychange', this._onVisible);
    const conn = navigator.connection;
    if (conn && conn.removeEventListener) conn.removeEventListener('change', this._onNetChange);
    clearTimeout(this._retryTimer);
    // A normal close (1000) ends the session on the server: this is a goodbye.
    const ws = this.ws;
    this._drop();
    if (ws) this._close(ws, 1000);
    this._closeStale();
    this.resumeToken = null;
    this._setState('closed');
  }

  /** Reconnect at once from any state: the current socket (alive or not) is given up. */
  reconnectNow(reason = 'reconnect') {
    if (this._stopped) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = null;
    this.attempt = 0;
    this._nextDelay = null;
    this._renewals += 1;
    this._lose(reason);
    this._open();
  }

  /** Kept for callers of the old API: same as reconnectNow(). */
  restart() {
    this.reconnectNow('restart');
  }

  /**
   * Something suggests the network changed (an 'online'/'offline' or connection change
   * event, the peer connection losing its path): check now instead of at the next ping.
   * Connected: a ping that must be answered within `ms`. Waiting to retry: retry now.
   */
  probe(ms = PROBE_MS) {
    if (this._stopped) return;
    if (this.state !== 'connected') {
      // Waiting to retry: retry now, unless the wait is the one a stopping server asked for.
      if (this._retryTimer && !this._serverWait) this.reconnectNow(this.lostReason || 'probe');
      return;
    }
    if (this._probeTimer) return;
    const since = Date.now();
    this._sendPing();
    this._probeTimer = setTimeout(() => {
      this._probeTimer = null;
      if (this.state === 'connected' && this._lastRx < since) this.reconnectNow('no_answer');
    }, ms);
  }

  get connected() {
    return this.state === 'connected';
  }

  send(msg) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN || !this.welcome) return false;
    try {
      this.ws.send(JSON.stringify(msg));
    } catch {
      return false;
    }
    return true;
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state } }));
  }

  /** Forget the current socket; tell the client if it had a session. */
  _lose(reason) {
    const had = !!this.welcome;
    const ws = this.ws;
    this._drop();
    if (ws) {
      // A socket that carried the session is not closed yet: a close frame reaching the
      // server would end the session we are about to take back. It goes once a new socket
      // has been welcomed (or when it closes by itself).
      if (had && ws.readyState === WebSocket.OPEN) this._stale.push(ws);
      else this._close(ws, REPLACED_CLOSE);
    }
    if (had) {
      this.lostAt = Date.now();
      this.lostReason = reason;
      this._setState('reconnecting');
      this.dispatchEvent(new CustomEvent('lost', { detail: { reason } }));
    }
  }

  _drop() {
    clearInterval(this._tickTimer);
    clearTimeout(this._openTimer);
    clearTimeout(this._probeTimer);
    this._tickTimer = this._openTimer = this._probeTimer = null;
    this.welcome = null;
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  }

  _close(ws, code) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(code); } catch { /* already closed */ }
  }

  _closeStale() {
    for (const ws of this._stale.splice(0)) this._close(ws, REPLACED_CLOSE);
  }

  _fatal(code) {
    this._drop();
    this._closeStale();
    this._stopped = true;
    this._setState('closed');
    this.dispatchEvent(new CustomEvent('fatal', { detail: { code } }));
  }

  _open() {
    const token = this.getToken();
    if (token) this._connect(token);
    else if (this.renewToken) this._renewThenConnect();
    else this._fatal('token_missing');
  }

  /**
   * The access token expired (an outage longer than its life): get a new one first. No new
   * one from a server that answers means the sign-in has ended; from one that does not (or
   * with no network), it is the outage itself: keep trying.
   */
  async _renewThenConnect() {
    const renewal = ++this._renewals;
    this._setState(this._everConnected ? 'reconnecting' : 'connecting');
    let fresh = null;
    try {
      fresh = await this.renewToken();
    } catch {
      fresh = null;
    }
    if (renewal !== this._renewals || this._stopped) return;
    if (fresh) {
      this._connect(fresh);
      return;
    }
    const reachable = navigator.onLine !== false && await serverAnswers();
    if (renewal !== this._renewals || this._stopped) return;
    if (reachable) this._fatal('token_expired');
    else this._scheduleRetry();
  }

  _connect(token) {
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
    const giveUp = () => {
      if (ws !== this.ws) return;
      this._drop();
      this._close(ws, REPLACED_CLOSE);
      this._scheduleRetry();
    };
    this._openTimer = setTimeout(giveUp, OPEN_TIMEOUT_MS);
    ws.onopen = () => {
      clearTimeout(this._openTimer);
      this._openTimer = setTimeout(giveUp, WELCOME_TIMEOUT_MS);
      const auth = { type: 'auth', token };
      if (this.resumeToken) {
        auth.resume_token = this.resumeToken;
        auth.received = this.received;
      }
      ws.send(JSON.stringify(auth));
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (!msg || typeof msg.type !== 'string') return;
      this._lastRx = Date.now();
      this._unanswered = 0;
      if (!this.welcome) {
        if (msg.type === 'welcome') this._onWelcome(ws, msg);
        else if (msg.type === 'error') {
          authError = msg.code;
          if (msg.code === 'server_stopping') this._restartUntil = Date.now() + RESTART_WINDOW_MS;
        }
        else if (msg.type === 'server_stopping') this._onStopping(msg);
        return;
      }
      // Every message of the session counts, pongs too: the server numbers them all.
      this.received += 1;
      if (msg.type === 'pong') return;
      if (msg.type === 'server_stopping') this._onStopping(msg);
      this.dispatchEvent(new CustomEvent('message', { detail: { msg } }));
    };
    ws.onerror = () => { /* onclose follows */ };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      const hadSession = !!this.welcome;
      if (authError === 'token_expired' && this.renewToken) {
        // Expired between our check and the server's: renew and try again.
        this._drop();
        this._renewThenConnect();
        return;
      }
      if (ev.code === AUTH_CLOSE || (authError && authError.startsWith('token'))) {
        this._fatal(authError || 'unauthorized');
        return;
      }
      if (this._stopped) return;
      if (hadSession) this._lose(ev.code === 1001 ? 'server_stopping' : 'closed');
      else this._drop();
      this._scheduleRetry();
    };
  }

  _onWelcome(ws, msg) {
    clearTimeout(this._openTimer);
    this._openTimer = null;
    const resumed = msg.resumed === true;
    this.welcome = msg;
    // The welcome is the session's first message (or, resumed, the next one).
    this.received = resumed ? this.received + 1 : 1;
    this.resumeToken = msg.resume_token || null;
    this.attempt = 0;
    this._restartUntil = 0;
    this._everConnected = true;
    this.lostAt = 0;
    this.lostReason = null;
    this._closeStale(); // the session lives on this socket now
    this._lastRx = Date.now();
    this._lastPing = 0;
    this._unanswered = 0;
    clearInterval(this._tickTimer);
    this._tickTimer = setInterval(() => this._tick(), TICK_MS);
    this._setState('connected');
    this.dispatchEvent(new CustomEvent('welcome', { detail: { msg, resumed } }));
  }

  _onStopping(msg) {
    // The server goes away on purpose and says when to come back: wait that long (plus
    // jitter, not every radio at once), then retry often until it answers.
    const after = Number(msg.reconnect_after_s);
    const s = Number.isFinite(after) && after >= 0 ? Math.min(after, 30) : 1;
    this._nextDelay = s * 1000 * (1 + Math.random() * 0.5);
    this._restartUntil = Date.now() + s * 1000 + RESTART_WINDOW_MS;
    this.dispatchEvent(new CustomEvent('stopping', { detail: { msg } }));
  }

  _sendPing() {
    const now = Date.now();
    this._lastPing = now;
    if (!this._unanswered) this._unanswered = now;
    this.send({ type: 'ping', id: ++this._pingId });
  }

  _tick() {
    if (!this.ws || !this.welcome) return;
    const now = Date.now();
    if (this._unanswered && now - this._lastRx > DEAD_AFTER_MS &&
        now - this._unanswered >= PING_ANSWER_MS) {
      // The socket looks open but nothing comes back: the network under it is gone.
      this.reconnectNow('no_answer');
      return;
    }
    // Time-based, not every n-th tick: in a throttled background tab ticks come late, and a
    // ping must have had its chance before its silence counts.
    if (now - this._lastPing >= PING_EVERY_MS) this._sendPing();
  }

  _scheduleRetry() {
    if (this._stopped) return;
    this._setState(this._everConnected ? 'reconnecting' : 'connecting');
    let delay;
    this._serverWait = this._nextDelay !== null;
    if (this._serverWait) {
      delay = this._nextDelay;
      this._nextDelay = null;
    } else if (this.attempt === 0) {
      delay = 0; // the first retry at once: most losses are a network change, not an outage
    } else {
      let cap = RETRY_MAX_MS;
      if (navigator.onLine === false) cap = RETRY_MAX_OFFLINE_MS;
      else if (Date.now() < this._restartUntil) cap = RETRY_MAX_RESTART_MS;
      delay = jitter(Math.min(cap, RETRY_FIRST_MS * 2 ** (this.attempt - 1)));
    }
    this.attempt += 1;
    clearTimeout(this._retryTimer);
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._open();
    }, delay);
  }
}
