// Sign-in: username/password (POST /api/login) or an invite link (/#token=JWT).
// The token lives in sessionStorage: it survives a reload, not a closed tab.

const KEY = 'ptt.token';

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

/** Take a token from an invite link (#token=...) and remove it from the address bar. */
export function takeInviteToken() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!m) return false;
  const token = decodeURIComponent(m[1]);
  history.replaceState(null, '', location.pathname + location.search);
  if (expired(claimsOf(token))) return false;
  sessionStorage.setItem(KEY, token);
  return true;
}

export function getToken() {
  const token = sessionStorage.getItem(KEY);
  if (!token) return null;
  if (expired(claimsOf(token))) {
    sessionStorage.removeItem(KEY);
    return null;
  }
  return token;
}

export function setToken(token) {
  sessionStorage.setItem(KEY, token);
}

export function signOut() {
  sessionStorage.removeItem(KEY);
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
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin', cache: 'no-store',
  });
  if (!resp.ok) throw await parseError(resp);
  if (resp.status === 204) return null;
  return resp.json();
}

/** Fetch binary data (a download) with the bearer token. */
export async function apiBlob(path, { method = 'GET', body, token = getToken() } = {}) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store',
  });
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
    throw new ApiError(0, 'network', 'The server cannot be reached. Check the network and try again.');
  }
  if (resp.status === 401) throw new ApiError(401, 'login_failed', 'Wrong username or password.');
  if (resp.status === 429) throw new ApiError(429, 'login_rate_limited', 'Too many attempts. Wait a minute and try again.');
  if (!resp.ok) throw await parseError(resp);
  const body = await resp.json();
  setToken(body.token);
  return body;
}

/**
 * Wire a sign-in form (#login-form with #username, #password, #login-error) and call
 * onSignedIn(token, claims) once a token is available: already stored, from an invite link,
 * or after a successful login. `roles`, if given, restricts who may use the page.
 */
export function setupSignIn({ form, error, onSignedIn, roles = null, roleMessage = '' }) {
  const showError = (text) => {
    error.textContent = text;
    error.hidden = !text;
  };
  const accept = (token) => {
    const claims = claimsOf(token) || {};
    if (roles && !roles.includes(claims.role)) {
      signOut();
      showError(roleMessage || 'This account cannot use this page.');
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
    submit.disabled = true;
    showError('');
    try {
      const body = await login(String(data.get('username') || '').trim(), String(data.get('password') || ''));
      form.reset();
      accept(body.token);
    } catch (exc) {
      showError(exc.message || 'Sign-in failed.');
    } finally {
      submit.disabled = false;
    }
  });
  takeInviteToken();
  const token = getToken();
  if (token) return accept(token);
  return false;
}

/**
 * Page start, shared by the three pages: say why an earlier session ended (`?expired`), then
 * sign in with a stored or invite token, or show the form in `signInPanel`.
 */
export function bootSignIn({ signInPanel, onSignedIn, roles = null, roleMessage = '' }) {
  const error = document.querySelector('#login-error');
  if (new URLSearchParams(location.search).has('expired')) {
    error.textContent = 'Your session has ended. Please sign in again.';
    error.hidden = false;
    history.replaceState(null, '', location.pathname);
  }
  const form = document.querySelector('#login-form');
  if (!setupSignIn({ form, error, onSignedIn, roles, roleMessage })) {
    signInPanel.hidden = false;
    document.querySelector('#username').focus();
  }
}
