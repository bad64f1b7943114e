// Private call on a radio page: one unit calls another (MCPTT private call with manual
// commencement, 3GPP TS 24.379 section 11.1): the callee accepts or rejects before anything is
// heard; then both talk half duplex on the call's own talkgroup with the usual floor rules
// (Talk transmits on the call while it lasts), and either side ends it. The server records
// and ledgers it (docs/protocol.md, "Private calls").
//
// This module keeps the call's state from the server's messages and draws two things:
//   - a sheet for an incoming call (Accept / Reject), fixed at the bottom of the screen so it
//     never moves the Talk button, with a ring tone and vibration;
//   - a bar while calling or in a call (who, time left, Cancel / End call).

import { h, setText, show } from './dom.js';
import { errorText, t } from './i18n.js';
import { vibrate } from './pwa.js';

const RING_EVERY_MS = 2000;
// Codes a private_call_request is refused with (docs/protocol.md).
const REFUSED = ['unknown_unit', 'forbidden', 'bad_message', 'unavailable', 'rate_limited'];
// Catalogue keys of how a call ended or was refused (the server's reasons, docs/protocol.md).
const REASON_TEXT = {
  rejected: 'call.reason_rejected', unavailable: 'call.reason_unavailable', busy: 'call.reason_busy',
  no_answer: 'call.reason_no_answer', cancelled: 'call.reason_cancelled',
  answered_elsewhere: 'call.reason_answered_elsewhere', ended: 'call.reason_ended',
  time_limit: 'call.reason_time_limit', disconnected: 'call.reason_disconnected',
  server_stopped: 'call.reason_server_stopped', error: 'call.reason_error',
};

export class PrivateCall extends EventTarget {
  /**
   * @param client  PttClient
   * @param bar     element for "Calling…" / "Private call with …"
   * @param sheet   element for the incoming call
   */
  constructor(client, { bar, sheet }) {
    super();
    this.client = client;
    this.bar = bar;
    this.sheet = sheet;
    // {id, phase: 'calling'|'ringing'|'active', unit, alias, talkgroup, until, startedAt}
    this.call = null;
    this.incoming = null; // {id, unit, alias, role, until}
    this.last = null; // how the last call ended: {reason, unit, alias} (shown, tests)
    this._ring = null;
    client.sig.addEventListener('message', (ev) => this._on(ev.detail && ev.detail.msg));
    client.sig.addEventListener('lost', () => this.render());
    client.sig.addEventListener('welcome', (ev) => {
      // A new session (not resumed) has no calls: whatever we showed is over.
      if (!ev.detail.resumed && (this.call || this.incoming)) {
        this._finish(null, 'disconnected');
      }
    });
    setInterval(() => { if (this.call || this.incoming) this.render(); }, 1000);
  }

  /** The talkgroup Talk transmits on during a call, else null. */
  get talkgroup() {
    return this.call && this.call.phase === 'active' ? this.call.talkgroup : null;
  }

  request(unit, alias) {
    if (this.call || !this.client.sig.connected) return;
    this.call = { id: null, phase: 'calling', unit, alias: alias || unit, talkgroup: null, until: 0 };
    this.last = null;
    this.client.sig.send({ type: 'private_call_request', unit });
    this._changed();
  }

  answer(accept) {
    const inc = this.incoming;
    if (!inc) return;
    this.client.unlockAudio();
    this.client.sig.send({ type: 'private_call_answer', call_id: inc.id, accept: !!accept });
    if (accept) {
      this.call = { id: inc.id, phase: 'ringing', unit: inc.unit, alias: inc.alias, talkgroup: null, until: 0 };
    }
    this.incoming = null;
    this._stopRing();
    this._changed();
  }

  /** Cancel a call that rings, or end the one in progress. */
  hangUp() {
    const c = this.call;
    if (!c) return;
    if (c.id) this.client.sig.send({ type: 'private_call_end', call_id: c.id });
    else this._finish(null, 'cancelled');
  }

  state() {
    return {
      call: this.call ? { ...this.call } : null,
      incoming: this.incoming ? { ...this.incoming } : null,
      last: this.last ? { ...this.last } : null,
    };
  }

  // -- server messages --------------------------------------------------------------------
  _on(msg) {
    if (!msg || typeof msg.type !== 'string' || !msg.type.startsWith('private_call_')) {
      // A refused request is answered with an error (errors name no request): while ours
      // awaits its ringing, one of the codes a request is refused with is its answer.
      const c = this.call;
      if (msg && msg.type === 'error' && c && c.phase === 'calling' && !c.id
          && REFUSED.includes(msg.code)) {
        this._finish(null, 'error', errorText(msg.code, 'call.failed'));
      }
      return;
    }
    const c = this.call;
    switch (msg.type) {
      case 'private_call_ringing':
        if (c && c.phase === 'calling' && c.unit === msg.unit) {
          c.id = msg.call_id;
          c.alias = msg.alias || c.alias;
          c.until = Date.now() + (msg.ring_s || 30) * 1000;
        }
        break;
      case 'private_call_incoming':
        this.incoming = {
          id: msg.call_id, unit: msg.unit, alias: msg.alias || msg.unit, role: msg.role,
          until: Date.now() + (msg.ring_s || 30) * 1000,
        };
        this._startRing();
        break;
      case 'private_call_started':
        this.call = {
          id: msg.call_id, phase: 'active', unit: msg.unit, alias: msg.alias || msg.unit,
          talkgroup: msg.talkgroup, startedAt: Date.now(),
          until: Date.now() + (msg.max_duration_s || 300) * 1000,
        };
        this.client.tones.permit();
        vibrate('permit');
        break;
      case 'private_call_rejected':
        if (this.incoming && this.incoming.id === msg.call_id) {
          this.incoming = null;
          this._stopRing();
        }
        if (c && (c.id === msg.call_id || (!c.id && c.unit === msg.unit))) {
          this._finish(msg.call_id, msg.reason);
          this.client.tones.bonk();
        }
        break;
      case 'private_call_ended':
        if (c && c.id === msg.call_id) {
          this._finish(msg.call_id, msg.reason, null, msg.by);
          this.client.tones.over();
        }
        break;
      default:
        break;
    }
    this._changed();
  }

  _finish(id, reason, text = null, by = null) {
    const c = this.call;
    this.last = { id, reason, unit: c ? c.unit : null, alias: c ? c.alias : null, by, text };
    this.call = null;
    if (!id) { this.incoming = null; this._stopRing(); }
    this._changed();
  }

  _startRing() {
    this._stopRing();
    const ring = () => {
      if (!this.incoming || Date.now() > this.incoming.until) { this._stopRing(); return; }
      this.client.tones.queued();
      vibrate('emergency');
    };
    ring();
    this._ring = setInterval(ring, RING_EVERY_MS);
  }

  _stopRing() {
    clearInterval(this._ring);
    this._ring = null;
  }

  _changed() {
    this.render();
    this.dispatchEvent(new Event('change'));
  }

  // -- drawing -------------------------------------------------------------------------------
  render() {
    this._renderSheet();
    this._renderBar();
  }

  _renderSheet() {
    const inc = this.incoming;
    show(this.sheet, !!inc);
    if (!inc) { this.sheet.dataset.id = ''; return; }
    if (this.sheet.dataset.id === inc.id) return;
    this.sheet.dataset.id = inc.id;
    const accept = h('button', {
      type: 'button', class: 'btn btn-primary call-accept', onclick: () => this.answer(true),
    }, t('call.accept'));
    this.sheet.replaceChildren(
      h('p', { class: 'call-title', id: 'call-incoming-title' }, t('call.incoming')),
      h('p', { class: 'call-who' }, inc.alias, ' ', h('span', { class: 'unit' }, `(${inc.unit})`)),
      h('div', { class: 'call-actions' },
        accept,
        h('button', { type: 'button', class: 'btn call-reject', onclick: () => this.answer(false) },
          t('call.reject'))));
    accept.focus();
  }

  _renderBar() {
    const c = this.call;
    const last = this.last;
    let text = '';
    let action = null;
    let kind = '';
    if (c && (c.phase === 'calling' || c.phase === 'ringing')) {
      text = t(c.phase === 'calling' ? 'call.calling' : 'call.connecting', { who: c.alias });
      action = 'call.cancel';
      kind = 'is-calling';
    } else if (c) {
      const left = Math.max(0, Math.ceil((c.until - Date.now()) / 1000));
      text = t('call.active', { who: c.alias, m: Math.floor(left / 60), s: String(left % 60).padStart(2, '0') });
      action = 'call.end';
      kind = 'is-active';
    } else if (last && last.reason) {
      text = last.text || t(REASON_TEXT[last.reason] || 'call.reason_ended', { who: last.alias || last.unit || '' });
      kind = 'is-ended';
    }
    show(this.bar, !!text);
    this.bar.className = `banner banner-call ${kind}`;
    const key = `${kind}|${action}`;
    if (this.bar.dataset.key !== key) {
      this.bar.dataset.key = key;
      const children = [h('span', { class: 'call-text' })];
      if (action) {
        children.push(h('button', { type: 'button', class: 'btn btn-small call-hangup', onclick: () => this.hangUp() },
          t(action)));
      } else if (last) {
        children.push(h('button', {
          type: 'button', class: 'btn btn-small btn-ghost call-dismiss',
          'aria-label': t('call.dismiss'), onclick: () => { this.last = null; this.render(); },
        }, '×'));
      }
      this.bar.replaceChildren(...children);
    }
    setText(this.bar.querySelector('.call-text'), text);
  }
}
