// Status and text messages on the radio page and the console: a row of status buttons, a
// short text, and the messages of this session with their receipts. Everything is shown as
// text (never HTML): what a sender typed cannot become markup on anyone else's screen.
//
// attachMessaging(client, {root, target, targets, onTalkgroupAdded, onTalkgroupRemoved})
//   root      an empty element to fill
//   target    () => {talkgroup} | {to} | null: where the officer's page writes (its talkgroup)
//   targets   () => [{value, label, talkgroup?, to?}]: the console's choice (a select)
// Messages come from the session's own socket (client.sig), so they share its resume replay.

import { api } from './auth.js';
import { fmtTime, h, setText, show, toast } from './dom.js';
import { CHANGE_EVENT, errorText, language, t } from './i18n.js';

const MAX_TEXT = 280;
const KEPT = 200; // messages shown; older ones drop off the list (they stay in the ledger)

/** A status in the page's language; the server sends every label (English, Indonesian). */
function label(labels) {
  return (labels && (labels[language()] || labels.en)) || '';
}

export function attachMessaging(client, { root, target = null, targets = null,
  onTalkgroupAdded = null, onTalkgroupRemoved = null } = {}) {
  const messages = new Map(); // message_id -> {msg, delivered: Map unit -> alias, read: Map}
  const readSent = new Set();
  let refSeq = 0;
  let statuses = [];

  const statusRow = h('div', { class: 'status-row', role: 'group' });
  const chooser = targets ? h('select', { class: 'msg-target' }) : null;
  const input = h('input', {
    class: 'msg-input', type: 'text', maxlength: String(MAX_TEXT), autocomplete: 'off',
  });
  const send = h('button', { class: 'btn btn-small', type: 'submit' });
  const form = h('form', { class: 'msg-form', novalidate: true }, chooser, input, send);
  const note = h('p', { class: 'msg-note', role: 'status', 'aria-live': 'polite' });
  const list = h('ol', { class: 'message-list', 'aria-live': 'polite' });
  const title = h('h2', { class: 'msg-title' });
  root.replaceChildren(title, statusRow, form, note, list);

  function translate() {
    setText(title, t('msg.title'));
    statusRow.setAttribute('aria-label', t('msg.status_group'));
    if (chooser) chooser.setAttribute('aria-label', t('msg.to'));
    input.setAttribute('aria-label', t('msg.input'));
    input.setAttribute('placeholder', t('msg.placeholder'));
    setText(send, t('msg.send'));
    list.setAttribute('aria-label', t('msg.title'));
  }

  function where() {
    if (chooser) {
      const pick = (targets() || []).find((t) => t.value === chooser.value);
      return pick ? (pick.to ? { to: pick.to } : { talkgroup: pick.talkgroup }) : null;
    }
    return target ? target() : null;
  }

  function refreshTargets() {
    if (!chooser) return;
    const items = targets() || [];
    const key = JSON.stringify(items.map((t) => [t.value, t.label]));
    if (chooser.dataset.key === key) return;
    const keep = chooser.value;
    chooser.dataset.key = key;
    chooser.replaceChildren(...items.map((t) => h('option', { value: t.value }, t.label)));
    if (items.some((t) => t.value === keep)) chooser.value = keep;
  }

  function submit(payload) {
    const to = where();
    if (!to) { setText(note, t('msg.no_target')); return false; }
    refSeq += 1;
    const msg = { ...payload, ...to, ref: `m${Date.now().toString(36)}${refSeq}` };
    if (!client.sig.send(msg)) { setText(note, t('msg.offline')); return false; }
    setText(note, '');
    return true;
  }

  function renderStatuses() {
    statusRow.replaceChildren(...statuses.map((s) => {
      const other = s.labels && (language() === 'id' ? s.labels.en : s.labels.id);
      return h('button', {
        class: `btn btn-small status-btn${s.urgent ? ' is-urgent' : ''}`, type: 'button',
        title: other || '', dataset: { status: s.id },
        onclick: () => submit({ type: 'status', status: s.id }),
      }, label(s.labels));
    }));
  }

  function receiptText(entry) {
    const mine = client.me && entry.msg.unit === client.me.unit;
    if (!mine) return '';
    const names = (m) => Array.from(m.values()).join(', ');
    if (entry.read.size) return t('msg.read_by', { names: names(entry.read) });
    if (entry.delivered.size) return t('msg.delivered', { count: entry.delivered.size });
    return entry.sent ? t('msg.sent') : t('msg.sending');
  }

  function place(msg) {
    if (msg.talkgroup) {
      const g = client.groups.get(msg.talkgroup);
      return (g && g.name) || msg.talkgroup;
    }
    if (msg.to) return client.me && msg.to === client.me.unit ? t('msg.to_you') : msg.to;
    return t('msg.control');
  }

  function render() {
    const items = Array.from(messages.values()).slice(-KEPT);
    list.replaceChildren(...items.map((entry) => {
      const { msg } = entry;
      const mine = client.me && msg.unit === client.me.unit;
      const body = msg.type === 'status_update' ? label(msg.labels) : msg.text;
      return h('li', {
        class: `msg${mine ? ' is-mine' : ''}${msg.urgent ? ' is-urgent' : ''}${msg.type === 'status_update' ? ' is-status' : ''}`,
        dataset: { id: msg.message_id, from: msg.unit, kind: msg.type },
      },
      h('span', { class: 'msg-meta' }, t('msg.meta', {
        time: fmtTime(msg.ts), from: mine ? t('msg.you') : (msg.alias || msg.unit), to: place(msg),
      })),
      h('span', { class: 'msg-text' }, body),
      h('span', { class: 'msg-receipt' }, receiptText(entry)));
    }));
    list.scrollTop = list.scrollHeight;
    markRead();
  }

  /** Tell the sender its message was on screen: only while the page is visible. */
  function markRead() {
    if (document.hidden || !client.me) return;
    for (const entry of messages.values()) {
      const id = entry.msg.message_id;
      if (entry.msg.unit === client.me.unit || readSent.has(id)) continue;
      if (client.sig.send({ type: 'read', message_id: id })) readSent.add(id);
    }
  }

  function onMessage(msg) {
    switch (msg.type) {
      case 'text_message':
      case 'status_update': {
        if (!messages.has(msg.message_id)) {
          messages.set(msg.message_id, { msg, sent: false, delivered: new Map(), read: new Map() });
          const mine = client.me && msg.unit === client.me.unit;
          if (msg.urgent && !mine) toast(`${msg.alias || msg.unit}: ${msg.type === 'status_update' ? label(msg.labels) : msg.text}`, 'warn', 8000);
          render();
        }
        break;
      }
      case 'message_receipt': {
        const entry = messages.get(msg.message_id);
        if (!entry) break;
        if (msg.state === 'sent') entry.sent = true;
        else if (msg.state === 'delivered') entry.delivered.set(msg.unit, msg.alias || msg.unit);
        else if (msg.state === 'read') entry.read.set(msg.unit, msg.alias || msg.unit);
        render();
        break;
      }
      case 'talkgroup_added':
        toast(t('msg.tg_added', { name: msg.name }), 'info', 8000);
        if (onTalkgroupAdded) onTalkgroupAdded(msg);
        break;
      case 'talkgroup_removed':
        toast(t(msg.reason === 'closed' ? 'msg.tg_closed' : 'msg.tg_removed', { name: msg.talkgroup }), 'info', 6000);
        if (onTalkgroupRemoved) onTalkgroupRemoved(msg);
        break;
      case 'error':
        // A message that names nothing known: the code in words (never the server's English).
        if (['unknown_status', 'unknown_unit', 'unknown_message'].includes(msg.code)) setText(note, errorText(msg.code));
        break;
      default:
    }
  }

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    if (submit({ type: 'text', text })) input.value = '';
  });
  document.addEventListener('visibilitychange', markRead);
  window.addEventListener(CHANGE_EVENT, () => { translate(); renderStatuses(); render(); });
  translate();
  client.sig.addEventListener('message', (ev) => onMessage(ev.detail.msg));
  if (chooser) setInterval(refreshTargets, 1000);
  refreshTargets();
  api('/api/statuses').then((body) => {
    statuses = (body && body.statuses) || [];
    renderStatuses();
  }).catch(() => show(statusRow, false));

  const view = {
    list: () => Array.from(messages.values()).map((e) => ({
      message_id: e.msg.message_id, type: e.msg.type, unit: e.msg.unit, talkgroup: e.msg.talkgroup,
      to: e.msg.to, text: e.msg.text, status: e.msg.status, sent: e.sent,
      delivered: Array.from(e.delivered.keys()), read: Array.from(e.read.keys()),
    })),
    refreshTargets,
  };
  return view;
}
