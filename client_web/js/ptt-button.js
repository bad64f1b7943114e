// Hold-to-talk input: a real <button> held by touch, pen or mouse (pointer events with
// capture, no context menu or long-press selection) and the Space key held anywhere on the
// page except in text fields.

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
export function bindHoldToTalk(button, { onPress, onRelease, space = true }) {
  let pointer = null; // active pointer id
  let key = false; // Space held
  const held = () => pointer !== null || key;

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
  // A click (Enter key, assistive technology) is not a hold: it does nothing by itself.
  button.addEventListener('click', (ev) => ev.preventDefault());

  if (space) {
    window.addEventListener('keydown', (ev) => {
      if (ev.code !== 'Space' || isTextTarget(ev.target) || button.disabled) return;
      ev.preventDefault(); // no page scroll, no activation of another focused button
      if (ev.repeat || key) return;
      const wasHeld = held();
      key = true;
      if (!wasHeld) start();
    });
    window.addEventListener('keyup', (ev) => {
      if (ev.code !== 'Space' || !key) return;
      ev.preventDefault();
      key = false;
      if (!held()) stop();
    });
  }
  const abort = () => {
    if (!held()) return;
    pointer = null;
    key = false;
    stop();
  };
  window.addEventListener('blur', abort);
  document.addEventListener('visibilitychange', () => { if (document.hidden) abort(); });
  return { abort, get held() { return held(); } };
}
