// The installable radio: service worker, screen wake lock, vibration, the hardware PTT key
// and a headset's media buttons.

import { t } from './i18n.js';

/** Register /sw.js (the app shell offline, installability). Failure only costs offline use. */
export function registerServiceWorker() {
  if (!('serviceWorker' in navigator)) return;
  navigator.serviceWorker.register('/sw.js', { scope: '/' }).catch(() => {});
}

/**
 * Keep the screen on while signed in: a radio whose screen sleeps needs an unlock before the
 * officer can talk. The browser drops the lock whenever the page is hidden, so it is asked
 * for again each time the page comes back. Returns a function that lets the screen sleep.
 */
export function keepScreenOn() {
  if (!('wakeLock' in navigator)) return () => {};
  let lock = null;
  let wanted = true;
  const acquire = async () => {
    if (!wanted || document.hidden || (lock && !lock.released)) return;
    try { lock = await navigator.wakeLock.request('screen'); } catch { lock = null; }
  };
  const onVisible = () => { if (!document.hidden) acquire(); };
  document.addEventListener('visibilitychange', onVisible);
  acquire();
  return () => {
    wanted = false;
    document.removeEventListener('visibilitychange', onVisible);
    if (lock) lock.release().catch(() => {});
    lock = null;
  };
}

// Felt, not heard: a glove in a pocket or a noisy street. Distinct rhythms: one short pulse
// for "talk now", a stutter for "busy", long pulses for an emergency.
export const VIBRATION = {
  permit: [70],
  busy: [60, 60, 60, 60, 60],
  emergency: [400, 150, 400, 150, 400],
};

export function vibrate(kind) {
  const pattern = VIBRATION[kind];
  if (pattern && typeof navigator.vibrate === 'function') {
    try { navigator.vibrate(pattern); } catch { /* not allowed before a user gesture */ }
  }
}

// -- the PTT key ------------------------------------------------------------------------------
const KEY_STORE = 'ptt.key';
const LATCH_STORE = 'ptt.latch';
export const DEFAULT_KEY = 'Space';

/** The KeyboardEvent.code used as PTT key (a rugged phone's side key, a Bluetooth button). */
export function pttKey() {
  try { return localStorage.getItem(KEY_STORE) || DEFAULT_KEY; } catch { return DEFAULT_KEY; }
}

export function setPttKey(code) {
  try { localStorage.setItem(KEY_STORE, code || DEFAULT_KEY); } catch { /* session only */ }
}

export function latchMode() {
  try { return localStorage.getItem(LATCH_STORE) === '1'; } catch { return false; }
}

export function setLatchMode(on) {
  try { localStorage.setItem(LATCH_STORE, on ? '1' : '0'); } catch { /* session only */ }
}

/** Wait for the next key press and resolve with its code (Escape cancels: null). */
export function captureKey() {
  return new Promise((resolve) => {
    const onKey = (ev) => {
      ev.preventDefault();
      ev.stopImmediatePropagation();
      window.removeEventListener('keydown', onKey, true);
      resolve(ev.code === 'Escape' ? null : ev.code || ev.key);
    };
    window.addEventListener('keydown', onKey, true);
  });
}

// Key codes people name differently by language (the key cap says the rest: F, 5, Enter).
const KEY_NAMES = { Space: 'client.key_space' };

/** A readable name for a key code ("KeyF" -> "F", "Space" -> "Space", in Bahasa Indonesia "Spasi"). */
export function keyName(code) {
  const s = String(code);
  if (KEY_NAMES[s]) return t(KEY_NAMES[s]);
  return s.replace(/^Key/, '').replace(/^Digit/, '');
}

/**
 * A headset's play/pause button (Media Session actions) toggles talking: it is the one
 * button a Bluetooth headset reliably sends to a web page.
 */
export function bindMediaSession(onToggle) {
  const ms = navigator.mediaSession;
  if (!ms || typeof ms.setActionHandler !== 'function') return;
  for (const action of ['play', 'pause', 'stop']) {
    try { ms.setActionHandler(action, () => onToggle(action)); } catch { /* unsupported action */ }
  }
}
