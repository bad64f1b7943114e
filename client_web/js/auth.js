// Sign-in: username/password (POST /api/login) or an invite link (/#token=JWT).
//
// A login gives a short access token (minutes) and a refresh token. The access token goes with
// every request; the refresh token only ever to /api/refresh (which answers with a new access
// token AND a new refresh token: the old one is dead from then on) and /api/logout.
//
// The access token lives in sessionStorage only (this tab, gone with it): it is what opens
// the API, so it is never written where it outlives the tab. The refresh token lives in
// localStorage with its expiry (`refresh_expires_at`): an officer who opens the radio in a
// new tab, or again from the home screen, is signed in without typing the password, until
// that expiry, a sign-out, or the server revoking it. Tabs share it, so renewing is done
// under a Web Lock: two tabs presenting the same refresh token would look like theft to the
// server (reuse detection) and end the sign-in. Only this module touches the refresh token.

import { errorText, t } from './i18n.js';

const KEY = 'ptt.token';
const REFRESH_KEY = 'ptt.refresh';
const LOCK = 'ptt-refresh';
const INVITE_KEY = 'ptt.invite';

/** The stored refresh token, or null (none, unreadable, or past its expiry). */
function refreshToken() {
  let raw;
  if (sessionStorage.getItem(INVITE_KEY)) return null; // this tab was opened with an invite
  try { raw = localStorage.getItem(REFRESH_KEY); } catch { return null; }
  if (!raw) return null;
  try {
    const { token, exp } = JSON.parse(raw);
    if (typeof token === 'string' && (typeof exp !== 'number' || exp * 1000 > Date.now())) return token;
  } catch { /* an old or foreign value */ }
  localStorage.removeItem(REFRESH_KEY);
  return null;
}

function keepRefresh(token, exp) {
  localStorage.setItem(REFRESH_KEY, JSON.stringify({ token, exp: typeof exp === 'number' ? exp : null }));
}

function dropRefresh(onlyIf = null) {
  if (onlyIf === null || refreshToken() === onlyIf) localStorage.removeItem(REFRESH_KEY);
}

/** Run `fn` holding the cross-tab refresh lock (alone where Web Locks are missing). */
function withRefreshLock(fn) {
  return navigator.locks ? navigator.locks.request(LOCK, fn) : fn();
}
// Renew once this share of the access token's life has passed; check often, because a
// background tab runs its timers rarely and a sleeping laptop not at all.
const RENEW_AT = 0.6;
const CHECK_MS = 20000;

let renewing = null; // the refresh in flight
let watching = false;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

/** The claims of a JWT, read without verification (only to show names and roles; the server
 * verifies every request). Null if it is not a readable JWT. */
export function claimsOf(token) {
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(part.length / 4) * 4, '=');
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

function expired(claims) {
  return !claims || (typeof claims.exp === 'number' && claims.exp * 1000 <= Date.now());
}

function renewDue(token) {
  const c = claimsOf(token);
  if (!c || typeof c.exp !== 'number') return true;
  const iat = typeof c.iat === 'number' ? c.iat : c.exp - 600;
  return Date.now() >= (iat + (c.exp - iat) * RENEW_AT) * 1000;
}

function store(body) {
  sessionStorage.setItem(KEY, body.token);
  sessionStorage.removeItem(INVITE_KEY);
  if (body.refresh_token) keepRefresh(body.refresh_token, body.refresh_expires_at);
  watch();
}

/**
 * A new access token from the refresh token (null if there is none, or the sign-in has
 * ended). One request at a time: presenting a refresh token twice counts as theft on the
 * server (reuse detection) and ends the sign-in.
 */
export function renew() {
  if (renewing) return renewing;
  if (!refreshToken()) return Promise.resolve(null);
  renewing = withRefreshLock(async () => {
    // Read under the lock: another tab may have just rotated it.
    const current = refreshToken();
    if (!current) return null;
    try {
      const resp = await fetch('/api/refresh', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ refresh_token: current }),
        cache: 'no-store', credentials: 'same-origin',
      });
      if (resp.status === 401) {
        // Ended (expired, revoked, user removed): the next request will ask to sign in.
        dropRefresh(current);
        return null;
      }
      if (!resp.ok) return null; // the server is busy or restarting: try again at the next check
      const body = await resp.json();
      store(body);
      return body.token;
    } catch {
      return null; // offline: the refresh token is kept for the next check
    }
  }).finally(() => { renewing = null; });
  return renewing;
}

function check() {
  const token = sessionStorage.getItem(KEY);
  if (refreshToken() && (!token || renewDue(token))) renew();
}

function watch() {
  if (watching) return;
  watching = true;
  setInterval(check, CHECK_MS);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) check(); });
  window.addEventListener('online', check);
  window.addEventListener('focus', check);
}

/** Take a token from an invite link (#token=...) and remove it from the address bar. */
export function takeInviteToken() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!m) return false;
  const token = decodeURIComponent(m[1]);
  history.replaceState(null, '', location.pathname + location.search);
  if (expired(claimsOf(token))) return false;
  sessionStorage.setItem(KEY, token);
  // An invite is a sign-in of its own, without refresh, for this tab only: the device's
  // stored sign-in (other tabs, perhaps another officer) stays as it is.
  sessionStorage.setItem(INVITE_KEY, '1');
  return true;
}

export function getToken() {
  const token = sessionStorage.getItem(KEY);
  if (!token) return null;
  if (expired(claimsOf(token))) {
    sessionStorage.removeItem(KEY);
    renew();
    return null;
  }
  return token;
}

export function setToken(token) {
  sessionStorage.setItem(KEY, token);
}

/** Forget the tokens, and have the server revoke them (the refresh token's whole chain and
 * the access token) so that a copy left anywhere is worthless. */
export function signOut() {
  const token = sessionStorage.getItem(KEY);
  const refresh = refreshToken();
  sessionStorage.removeItem(KEY);
  if (refresh) dropRefresh(); // signing out here signs this device out
  if (!token && !refresh) return;
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  // keepalive: the page usually navigates away right after signing out.
  fetch('/api/logout', {
    method: 'POST', headers, keepalive: true, cache: 'no-store', credentials: 'same-origin',
    body: JSON.stringify(refresh ? { refresh_token: refresh } : {}),
  }).catch(() => {});
}

/** fetch() with the bearer token; an expired token is renewed once and the call retried. */
async function authorized(path, init, token) {
  const send = (t) => {
    const headers = { ...init.headers };
    if (t) headers.Authorization = `Bearer ${t}`;
    return fetch(path, { ...init, headers });
  };
  let resp = await send(token);
  if (resp.status === 401 && token && refreshToken()) {
    const fresh = await renew();
    if (fresh) resp = await send(fresh);
  }
  return resp;
}

async function parseError(resp) {
  let code = null;
  let message = null;
  try {
    const body = await resp.json();
    const err = body && typeof body.error === 'object' && body.error ? body.error : body;
    code = err.code || (typeof body.error === 'string' ? body.error : null);
    message = err.message || null;
  } catch { /* not JSON */ }
  return new ApiError(resp.status, code, message);
}

/** JSON API call with the bearer token. */
export async function api(path, { method = 'GET', body, token = getToken(), signal } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (!token) token = await renew();
  const resp = await authorized(path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin', cache: 'no-store',
  }, token);
  if (!resp.ok) throw await parseError(resp);
  if (resp.status === 204) return null;
  return resp.json();
}

/** Fetch binary data (a download) with the bearer token. */
export async function apiBlob(path, { method = 'GET', body, token = getToken() } = {}) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (!token) token = await renew();
  const resp = await authorized(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store',
  }, token);
  if (!resp.ok) throw await parseError(resp);
  const disposition = resp.headers.get('Content-Disposition') || '';
  const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
  return { blob: await resp.blob(), filename: m ? decodeURIComponent(m[1]) : null };
}

export async function login(username, password) {
  let resp;
  try {
    resp = await fetch('/api/login', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ username, password }),
      cache: 'no-store',
    });
  } catch {
    throw new ApiError(0, 'network', t('error.network'));
  }
  if (resp.status === 401) throw new ApiError(401, 'login_failed', t('error.login_failed'));
  if (resp.status === 429) {
    const wait = Number(resp.headers.get('Retry-After')) || 60;
    const err = new ApiError(429, 'login_rate_limited', t('error.login_rate_limited', { wait }));
    err.wait = wait;
    throw err;
  }
  if (!resp.ok) throw await parseError(resp);
  const body = await resp.json();
  store(body);
  return body;
}

/**
 * Wire a sign-in form (#login-form with #username, #password, #login-error) and call
 * onSignedIn(token, claims) once a token is available: already stored, renewed with a stored
 * refresh token, from an invite link, or after a successful login. `roles`, if given,
 * restricts who may use the page. `onNeeded` is called when the form must be shown after all
 * (a stored refresh token that no longer works).
 */
export function setupSignIn({ form, error, onSignedIn, roles = null, roleMessage = '', onNeeded = () => {} }) {
  const showError = (text) => {
    error.textContent = text;
    error.hidden = !text;
  };
  const accept = (token) => {
    const claims = claimsOf(token) || {};
    if (roles && !roles.includes(claims.role)) {
      signOut();
      showError(roleMessage ? t(roleMessage) : t('signin.wrong_role'));
      return false;
    }
    showError('');
    onSignedIn(token, claims);
    return true;
  };
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    const submit = form.querySelector('button[type="submit"]');
    const user = form.querySelector('[name="username"]');
    const pass = form.querySelector('[name="password"]');
    const username = String(data.get('username') || '').trim();
    const password = String(data.get('password') || '');
    // Checked here, in words, rather than sent for the server's validation text.
    const empty = !username ? user : !password ? pass : null;
    if (empty) {
      showError(t(empty === user ? 'signin.need_username' : 'signin.need_password'));
      empty.setAttribute('aria-invalid', 'true');
      empty.focus();
      return;
    }
    submit.disabled = true;
    showError('');
    for (const input of [user, pass]) input.removeAttribute('aria-invalid');
    let focusTo = null;
    try {
      const body = await login(username, password);
      form.reset();
      accept(body.token);
    } catch (exc) {
      // Human words by the error's code, never the server's text; focus goes back to the
      // field to correct (a disabled button has just dropped it to <body>).
      showError(errorText(exc.code, 'signin.failed', { wait: exc.wait || 60 }));
      if (exc.code === 'login_failed') {
        pass.value = '';
        pass.setAttribute('aria-invalid', 'true');
        focusTo = pass;
      } else {
        focusTo = exc.code === 'bad_request' ? user : pass;
      }
    } finally {
      submit.disabled = false;
      if (focusTo) focusTo.focus();
    }
  });
  takeInviteToken();
  const token = getToken();
  if (token) {
    if (refreshToken()) watch();
    return accept(token);
  }
  if (refreshToken()) {
    renew().then((fresh) => { if (!(fresh && accept(fresh))) onNeeded(); });
    return true;
  }
  return false;
}

/**
 * Page start, shared by the three pages: say why an earlier session ended (`?expired`), then
 * sign in with a stored or invite token, or show the form in `signInPanel`.
 */
export function bootSignIn({ signInPanel, onSignedIn, roles = null, roleMessage = '' }) {
  const error = document.querySelector('#login-error');
  if (new URLSearchParams(location.search).has('expired')) {
    error.textContent = t('signin.expired');
    error.hidden = false;
    history.replaceState(null, '', location.pathname);
  }
  const form = document.querySelector('#login-form');
  const showForm = () => {
    signInPanel.hidden = false;
    document.querySelector('#username').focus();
  };
  if (!setupSignIn({ form, error, onSignedIn, roles, roleMessage, onNeeded: showForm })) showForm();
}
