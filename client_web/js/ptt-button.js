// Talk input: a real <button> held by touch, pen or mouse (pointer events with capture, no
// context menu or long-press selection) and a PTT key (Space unless configured) held anywhere
// on the page except in text fields.
//
// Latch mode (tap to talk, tap again to stop) is for those who cannot hold: switch access, a
// screen reader's double tap, a gloved hand. A click that comes from the keyboard or from
// assistive technology (Enter, Space on the focused button, a switch; click.detail is 0)
// latches in hold mode too, so the button is never dead for them. The server's transmit
// limit ends a latch that is forgotten.

const TEXT_INPUT = /^(INPUT|TEXTAREA|SELECT)$/;

function isTextTarget(el) {
  if (!el) return false;
  if (el.isContentEditable) return true;
  if (!TEXT_INPUT.test(el.tagName)) return false;
  if (el.tagName !== 'INPUT') return true;
  return !['button', 'checkbox', 'radio', 'range', 'submit', 'reset', 'color'].includes(el.type);
}

/**
 * Make `button` a hold-to-talk control.
 * onPress() when the hold starts, onRelease() when it ends (pointer up/cancel, capture lost,
 * Space up, window blur or the page hidden).
 */
export function bindHoldToTalk(button, {
  onPress, onRelease, space = true, key: keyCode = () => 'Space', latch: isLatch = () => false,
}) {
  let pointer = null; // active pointer id
  let key = false; // PTT key held
  let latched = false; // talking until the next tap
  const held = () => pointer !== null || key || latched;

  const start = () => {
    button.classList.add('is-held');
    button.setAttribute('aria-pressed', 'true');
    onPress();
  };
  const stop = () => {
    button.classList.remove('is-held');
    button.setAttribute('aria-pressed', 'false');
    onRelease();
  };

  button.setAttribute('aria-pressed', 'false');
  button.addEventListener('pointerdown', (ev) => {
    if (ev.pointerType === 'mouse' && ev.button !== 0) return;
    if (isLatch() || latched) return; // the click that follows toggles
    ev.preventDefault(); // no focus-steal text selection, no emulated mouse events
    if (pointer !== null) return;
    const wasHeld = held();
    pointer = ev.pointerId;
    try { button.setPointerCapture(ev.pointerId); } catch { /* synthetic pointer */ }
    if (!wasHeld) start();
  });
  const end = (ev) => {
    if (pointer === null || ev.pointerId !== pointer) return;
    pointer = null;
    try { button.releasePointerCapture(ev.pointerId); } catch { /* not captured */ }
    if (!held()) stop();
  };
  button.addEventListener('pointerup', end);
  button.addEventListener('pointercancel', end);
  button.addEventListener('lostpointercapture', end);
  button.addEventListener('contextmenu', (ev) => ev.preventDefault());
  button.addEventListener('selectstart', (ev) => ev.preventDefault());
  button.addEventListener('dragstart', (ev) => ev.preventDefault());
  const toggle = () => {
    if (button.disabled && !latched) return;
    if (latched) {
      latched = false;
      if (!held()) stop();
    } else {
      const wasHeld = held();
      latched = true;
      if (!wasHeld) start();
    }
  };
  button.addEventListener('click', (ev) => {
    ev.preventDefault();
    // A mouse or touch click in hold mode ends a hold that has already been handled.
    if (isLatch() || latched || ev.detail === 0) toggle();
  });

  if (space) {
    window.addEventListener('keydown', (ev) => {
      if (ev.code !== keyCode() || isTextTarget(ev.target) || (button.disabled && !latched)) return;
      ev.preventDefault(); // no page scroll, no activation of another focused button
      if (ev.repeat || key) return;
      if (isLatch() || latched) { toggle(); return; }
      const wasHeld = held();
      key = true;
      if (!wasHeld) start();
    });
    window.addEventListener('keyup', (ev) => {
      if (ev.code !== keyCode() || !key) return;
      ev.preventDefault();
      key = false;
      if (!held()) stop();
    });
  }
  const abort = () => {
    if (!held()) return;
    pointer = null;
    key = false;
    latched = false;
    stop();
  };
  // A hold cannot be released while the page is away, so it ends; a latch is meant to outlast
  // the hand and stays (the transmit limit ends it).
  const abortHold = () => {
    if (pointer === null && !key) return;
    pointer = null;
    key = false;
    if (!held()) stop();
  };
  window.addEventListener('blur', abortHold);
  document.addEventListener('visibilitychange', () => { if (document.hidden) abortHold(); });
  /** The transmission ended by itself (denied, revoked, time limit): forget the latch. */
  const ended = () => {
    if (!latched) return;
    latched = false;
    if (!held()) { button.classList.remove('is-held'); button.setAttribute('aria-pressed', 'false'); }
  };
  return { abort, toggle, ended, get held() { return held(); }, get latched() { return latched; } };
}
