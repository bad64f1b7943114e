// Auditor page (/audit.html): search recorded transmissions and messages (by id, alias,
// talkgroup name, text and time), play them with a seekable waveform, play a channel's
// timeline in order and read it with the ledger's events, download, export, verify the ledger
// and (admins) read the access log.
//
// What the table shows is the *applied* search (`lastQuery`: what Search last ran), never the
// fields as they are being typed: every action on "these results" (export, the timeline) uses
// the applied filter, so an export holds exactly what the table shows.

import { api, apiBlob, bootSignIn, signOut } from './auth.js';
import { $, fmtDateTime, fmtDuration, h, setText, show, toast } from './dom.js';
import { CHANGE_EVENT, errorText, t } from './i18n.js';
import { endReasonText } from './command-text.js';

const ROLES = ['auditor', 'admin'];
const ROLE_NAMES = { auditor: 'audit.role_auditor', admin: 'audit.role_admin' };
// The access log's actions (the ledger's `access` entries), in words; a new one as it is.
const ACTIONS = {
  search: 'audit.act_search', view: 'audit.act_view', play: 'audit.act_play', waveform: 'audit.act_waveform',
  download: 'audit.act_download', export: 'audit.act_export', timeline: 'audit.act_timeline',
  messages: 'audit.act_messages', verify: 'audit.act_verify', access_log: 'audit.act_access_log',
  replay: 'audit.act_replay',
};
// The ledger's events on a channel timeline ("event action"), in words; others as recorded.
const EVENTS = {
  'emergency start': 'audit.ev_emergency_start', 'emergency ack': 'audit.ev_emergency_ack',
  'emergency clear': 'audit.ev_emergency_clear', floor_revoke: 'audit.ev_floor_revoke',
  'patch create': 'audit.ev_patch_create', 'patch remove': 'audit.ev_patch_remove',
  'incident create': 'audit.ev_incident_create', 'incident close': 'audit.ev_incident_close',
};
const WAVE_POINTS = 800;
// The auditor API's stable error codes (docs/recording.md) in words; any other code has the
// shared text (error.<code>: a session that ended, the server busy) or a plain "failed".
const ERRORS = {
  forbidden: 'audit.error_forbidden', not_found: 'audit.error_not_found', deleted: 'audit.error_deleted',
  no_audio: 'audit.error_no_audio', bad_request: 'audit.error_bad_request', bad_id: 'audit.error_bad_id',
  bad_cursor: 'audit.error_bad_cursor', unavailable: 'audit.error_unavailable',
};

const el = {
  who: $('#who'), whoAlias: $('#who-alias'), whoRole: $('#who-role'), signout: $('#signout'),
  signin: $('#signin'), audit: $('#audit'),
  form: $('#search-form'), reset: $('#search-reset'), tgList: $('#talkgroup-list'),
  fTalkgroup: $('#f-talkgroup'), fUnit: $('#f-unit'), fFrom: $('#f-from'), fTo: $('#f-to'), fLimit: $('#f-limit'),
  fQ: $('#f-q'), msgBody: $('#messages-body'), msgCount: $('#message-count'),
  showTimeline: $('#show-timeline'), tlCard: $('#timeline-card'), tlName: $('#timeline-name'), tlList: $('#timeline-list'),
  body: $('#results-body'), count: $('#result-count'), status: $('#results-status'), more: $('#more'),
  selectAll: $('#select-all'), exportSel: $('#export-selected'), exportRange: $('#export-range'),
  playTimeline: $('#play-timeline'),
  playerEmpty: $('#player-empty'), playerBody: $('#player-body'), meta: $('#player-meta'),
  canvas: $('#waveform'), play: $('#play'), position: $('#position'), tlStatus: $('#timeline-status'),
  dlOgg: $('#dl-ogg'), dlWav: $('#dl-wav'), audio: $('#audio'),
  verify: $('#verify'), verifyResult: $('#verify-result'),
  accessCard: $('#access-card'), accessBody: $('#access-body'), accessMore: $('#access-more'),
};

let claims = {};
let results = []; // recordings shown
let nextCursor = null;
let lastQuery = null; // the applied search: what the table shows
let messages = []; // messages shown
let timeline = null; // {talkgroup, items} of the channel timeline shown
const selected = new Set();
let current = null; // recording being played
let peaks = null; // {min: Float32Array, max: Float32Array}
let playlist = null; // {items, index, talkgroup}
let accessCursor = null;
let triedWav = false;
let media = null; // {kind, expiresAt, renewed}: the signed URL the player is using
let statusLine = null; // [key, params] of the line under the results (again after a language switch)
let verified = null; // the last verification's answer
let accessItems = []; // the access log's entries shown
let timelineShown = false;

// -- API shapes -----------------------------------------------------------------------------
function pageOf(body) {
  const items = Array.isArray(body) ? body
    : (body && (body.items || body.recordings || body.entries || body.results)) || [];
  const next = body && !Array.isArray(body) ? (body.next_cursor || body.cursor || body.next || null) : null;
  return { items, next };
}

/** A time for the API: epoch milliseconds. */
function timeParam(date) {
  return String(date.getTime());
}

function startMs(rec) {
  if (typeof rec.start_ms === 'number') return rec.start_ms;
  return Date.parse(rec.start || rec.started_at || 0) || 0;
}

function durationS(rec) {
  if (typeof rec.duration_ms === 'number') return rec.duration_ms / 1000;
  if (typeof rec.end_ms === 'number') return (rec.end_ms - startMs(rec)) / 1000;
  return null;
}

/**
 * A URL the <audio> element can play. It cannot send the Authorization header, and a token
 * never goes into a URL (histories, caches and logs keep URLs): the server signs a link for
 * this recording, this user and about a minute instead.
 */
async function mediaUrl(rec, kind = 'audio') {
  const r = await api(`/api/recordings/${encodeURIComponent(rec.id)}/media-url`, { method: 'POST', body: { kind } });
  media = { kind, expiresAt: r.expires_at * 1000, renewed: false };
  return r.url;
}

/** Point the player at `rec` (`kind` rendition), at `at` seconds; false if the user has
 * moved on to another recording meanwhile. */
async function setSource(rec, kind, { at = 0, play = false } = {}) {
  const url = await mediaUrl(rec, kind);
  if (current !== rec) return false;
  el.audio.src = url;
  if (at > 0) el.audio.addEventListener('loadedmetadata', () => { el.audio.currentTime = at; }, { once: true });
  el.audio.load();
  if (play) el.audio.play().catch(() => {});
  return true;
}

function localInputValue(date) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

function expired() {
  signOut();
  location.replace(location.pathname + '?expired=1');
}

/** Human words for a failed API call: by the server's code, never its (English) message. */
function errorWords(err) {
  if (err instanceof TypeError) return t('error.network'); // fetch() itself failed
  const code = err && (err.code || (err.status === 403 ? 'forbidden' : null));
  if (code && ERRORS[code]) return t(ERRORS[code]);
  return errorText(code, 'audit.error_failed');
}

/** `whatKey`: the catalogue key naming what failed (the search, the playback...). */
function apiFailed(err, whatKey) {
  if (err && err.status === 401) { expired(); return; }
  toast(t('audit.failed', { what: t(whatKey), reason: errorWords(err) }), 'error', 6000);
}

function endReason(reason) {
  return reason ? endReasonText(reason) : '–';
}

/** The line under the results, by key, so that a language switch can say it again. */
function setStatus(key = null, params = {}) {
  statusLine = key ? [key, params] : null;
  setText(el.status, key ? t(key, params) : '');
}

// -- search ---------------------------------------------------------------------------------
function readQuery() {
  const q = {};
  const tg = el.fTalkgroup.value.trim();
  const unit = el.fUnit.value.trim();
  if (tg) q.talkgroup = tg;
  if (unit) q.unit = unit;
  const text = el.fQ.value.trim();
  if (text) q.q = text;
  if (el.fFrom.value) q.from = timeParam(new Date(el.fFrom.value));
  if (el.fTo.value) q.to = timeParam(new Date(el.fTo.value));
  q.limit = el.fLimit.value;
  return q;
}

async function search({ append = false } = {}) {
  const q = append ? { ...lastQuery } : readQuery();
  if (append && nextCursor) q.cursor = nextCursor;
  if (!append) lastQuery = q;
  setStatus('audit.searching');
  el.more.disabled = true;
  try {
    const page = pageOf(await api(`/api/recordings?${new URLSearchParams(q)}`));
    if (!append) {
      results = [];
      selected.clear();
    }
    results.push(...page.items);
    nextCursor = page.next;
    renderResults();
    setStatus(results.length ? null : 'audit.no_results');
    if (!append) loadMessages(q);
    refreshAccessSoon();
  } catch (err) {
    setStatus('audit.search_failed');
    apiFailed(err, 'audit.what_search');
  } finally {
    el.more.disabled = false;
  }
}

function renderResults() {
  setText(el.count, results.length ? `(${results.length}${nextCursor ? '+' : ''})` : '');
  const tgs = new Set(results.map((r) => r.talkgroup));
  const known = new Set(Array.from(el.tgList.options).map((o) => o.value));
  for (const tg of tgs) if (tg && !known.has(tg)) el.tgList.append(h('option', { value: tg }));
  el.body.replaceChildren(...groupRows().map(({ rec, ids, talkgroups }) => {
    const box = h('input', { type: 'checkbox', checked: ids.every((id) => selected.has(id)), 'aria-label': t('audit.select_row', { who: rec.alias || rec.unit, time: fmtDateTime(startMs(rec) / 1000) }) });
    box.addEventListener('change', () => {
      for (const id of ids) if (box.checked) selected.add(id); else selected.delete(id);
      updateButtons();
    });
    const reason = rec.end_reason || '';
    const play = h('button', { class: 'btn btn-small', type: 'button', disabled: rec.deleted || undefined }, t('audit.play'));
    play.setAttribute('aria-label', t('audit.play_row', { who: rec.alias || rec.unit, tg: rec.talkgroup, time: fmtDateTime(startMs(rec) / 1000) }));
    play.addEventListener('click', () => {
      playlist = null;
      load(rec, { autoplay: true });
    });
    return h('tr', { class: current && current.id === rec.id ? 'is-current' : '', dataset: { id: rec.id, group: rec.group_id || rec.id } },
      h('td', { class: 'c-sel' }, box),
      h('td', { class: 'c-start mono' }, fmtDateTime(startMs(rec) / 1000)),
      h('td', { class: 'c-tg' }, talkgroups.join(' + '),
        ids.length > 1 ? [' ', h('span', { class: 'tag flag-linked', title: t('audit.linked_title') }, t('audit.copies', { n: ids.length }))] : null),
      h('td', { class: 'c-unit' }, rec.alias || rec.unit, rec.alias ? h('span', { class: 'unit-id' }, rec.unit) : null),
      h('td', { class: 'c-dur mono' }, fmtDuration(durationS(rec))),
      h('td', { class: 'c-end' },
        h('span', { class: reason === 'released' ? 'reason-released' : 'reason-other', dataset: { reason } }, endReason(reason)),
        rec.emergency ? [' ', h('span', { class: 'tag flag-emergency' }, t('emergency.button'))] : null,
        rec.deleted ? [' ', h('span', { class: 'tag flag-deleted' }, t('audit.deleted'))] : null),
      h('td', { class: 'c-act' }, play));
  }));
  show(el.more, !!nextCursor);
  el.selectAll.checked = results.length > 0 && results.every((r) => selected.has(r.id));
  updateButtons();
}

/** One row per transmission: the copies a patch or an all-call recorded in each talkgroup
 * (they share `group_id`) are one row, listing every talkgroup, wherever the copies are. */
function groupRows() {
  const rows = new Map();
  for (const rec of results) {
    const key = rec.group_id || rec.id;
    if (!rows.has(key)) {
      const copies = [{ id: rec.id, talkgroup: rec.talkgroup }, ...(rec.linked || [])];
      rows.set(key, {
        rec, ids: copies.map((c) => c.id),
        talkgroups: Array.from(new Set(copies.map((c) => c.talkgroup))),
      });
    }
  }
  return Array.from(rows.values());
}

/** The talkgroup id of the applied search's results, if they are all on one. */
function resultsTalkgroup() {
  const tgs = new Set(results.map((r) => r.talkgroup));
  if (tgs.size === 1) return Array.from(tgs)[0];
  return lastQuery && lastQuery.talkgroup && !results.length ? lastQuery.talkgroup : null;
}

/** The applied search as a filter for the server (the export): never the fields as typed. */
function appliedFilter() {
  const f = {};
  for (const k of ['talkgroup', 'unit', 'from', 'to']) if (lastQuery && lastQuery[k]) f[k] = lastQuery[k];
  return f;
}

// -- messages -------------------------------------------------------------------------------
async function loadMessages(q) {
  const params = new URLSearchParams();
  for (const k of ['talkgroup', 'unit', 'from', 'to', 'q']) if (q[k]) params.set(k, q[k]);
  params.set('limit', '100');
  try {
    const body = await api(`/api/messages?${params}`);
    messages = (body && body.messages) || [];
  } catch (err) {
    messages = [];
    apiFailed(err, 'audit.what_messages');
  }
  renderMessages();
}

function renderMessages() {
  setText(el.msgCount, messages.length ? `(${messages.length})` : '');
  el.msgBody.replaceChildren(...(messages.length ? messages.map((m) => h('tr', { dataset: { id: m.message_id } },
    h('td', { class: 'mono' }, fmtDateTime(Date.parse(m.ts) / 1000)),
    h('td', {}, m.alias || m.unit, h('span', { class: 'unit-id' }, m.unit)),
    h('td', {}, m.talkgroup || (m.to ? t('audit.to_unit', { unit: m.to }) : t('msg.control'))),
    h('td', { class: 'c-text' }, m.action === 'status' ? t('audit.status', { label: m.label || m.status }) : m.text,
      m.urgent ? [' ', h('span', { class: 'tag flag-emergency' }, t('audit.alert'))] : null),
    h('td', {}, (m.read_by || []).map((r) => r.unit).join(', ') || '–')))
    : [h('tr', {}, h('td', { colspan: '5', class: 'empty' }, t('audit.no_messages')))]));
}

function updateButtons() {
  el.exportSel.disabled = selected.size === 0;
  setText(el.exportSel, selected.size ? t('audit.export_selected_n', { n: selected.size }) : t('audit.export_selected'));
  // What the table shows (the applied search), not what is typed and not yet searched.
  el.exportRange.disabled = !results.length;
  el.playTimeline.disabled = !resultsTalkgroup();
  el.showTimeline.disabled = !resultsTalkgroup();
}

// -- playback -------------------------------------------------------------------------------
function metaItem(term, value, cls = '') {
  return h('div', {}, h('dt', {}, term), h('dd', { class: cls }, value));
}

async function load(rec, { autoplay = false } = {}) {
  current = rec;
  peaks = null;
  triedWav = false;
  show(el.playerEmpty, false);
  show(el.playerBody, true);
  for (const tr of el.body.children) tr.classList.toggle('is-current', tr.dataset.id === rec.id);
  renderMeta();
  drawWave();
  el.audio.pause();
  el.audio.removeAttribute('src');
  try {
    await setSource(rec, 'audio', { play: autoplay });
  } catch (err) {
    if (current === rec) apiFailed(err, 'audit.what_playback');
  }
  refreshAccessSoon();
  try {
    const body = await api(`/api/recordings/${encodeURIComponent(rec.id)}/waveform?points=${WAVE_POINTS}`);
    if (current !== rec) return;
    peaks = parsePeaks(body);
  } catch (err) {
    if (current === rec) apiFailed(err, 'audit.what_waveform');
  }
  drawWave();
}

function renderMeta() {
  const rec = current;
  if (!rec) return;
  el.meta.replaceChildren(
    metaItem(t('audit.talkgroup'), rec.talkgroup),
    metaItem(t('audit.unit'), `${rec.alias || rec.unit} (${rec.unit})`),
    metaItem(t('audit.start'), fmtDateTime(startMs(rec) / 1000)),
    metaItem(t('audit.duration'), fmtDuration(durationS(rec))),
    metaItem(t('audit.ended'), `${endReason(rec.end_reason)}${rec.emergency ? ` · ${t('audit.emergency_lower')}` : ''}`),
    metaItem(t('audit.recording'), rec.id, 'hash'),
    rec.sha256 ? metaItem('SHA-256', rec.sha256, 'hash') : null,
  );
}

/** Accepts {min: [], max: []}, {peaks: [[min, max], ...]} or {points: [{min, max}]}. */
function parsePeaks(body) {
  let mins = [];
  let maxs = [];
  const src = body && (body.peaks || body.points || body.data || body.waveform);
  if (body && Array.isArray(body.min) && Array.isArray(body.max)) {
    mins = body.min;
    maxs = body.max;
  } else if (Array.isArray(src)) {
    for (const p of src) {
      if (Array.isArray(p)) { mins.push(p[0]); maxs.push(p[1]); } else if (p && typeof p === 'object') { mins.push(p.min); maxs.push(p.max); } else { mins.push(-Math.abs(p)); maxs.push(Math.abs(p)); }
    }
  } else if (src && Array.isArray(src.min)) {
    mins = src.min;
    maxs = src.max;
  }
  // Scale to -1..1 whatever the unit (16-bit samples or floats).
  let peak = 0;
  for (let i = 0; i < maxs.length; i++) peak = Math.max(peak, Math.abs(maxs[i] || 0), Math.abs(mins[i] || 0));
  const scale = peak > 1.5 ? 32768 : 1;
  return {
    min: Float32Array.from(mins, (v) => (v || 0) / scale),
    max: Float32Array.from(maxs, (v) => (v || 0) / scale),
  };
}

function mediaDuration() {
  const d = el.audio.duration;
  if (isFinite(d) && d > 0) return d;
  return current ? (durationS(current) || 0) : 0;
}

function drawWave() {
  const c = el.canvas;
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(c.clientWidth * dpr));
  const hgt = Math.max(1, Math.round(c.clientHeight * dpr));
  if (c.width !== w || c.height !== hgt) { c.width = w; c.height = hgt; }
  const g = c.getContext('2d');
  g.fillStyle = '#070b10';
  g.fillRect(0, 0, w, hgt);
  const mid = hgt / 2;
  g.fillStyle = '#2a3542';
  g.fillRect(0, Math.round(mid), w, Math.max(1, Math.round(dpr)));
  const dur = mediaDuration();
  const frac = dur ? Math.min(1, el.audio.currentTime / dur) : 0;
  if (peaks && peaks.max.length) {
    const n = peaks.max.length;
    for (let x = 0; x < w; x++) {
      const i0 = Math.floor((x / w) * n);
      const i1 = Math.max(i0 + 1, Math.floor(((x + 1) / w) * n));
      let lo = 0;
      let hi = 0;
      for (let i = i0; i < i1 && i < n; i++) {
        if (peaks.min[i] < lo) lo = peaks.min[i];
        if (peaks.max[i] > hi) hi = peaks.max[i];
      }
      const top = mid - Math.max(hi, 0.004) * mid * 0.95;
      const bottom = mid - Math.min(lo, -0.004) * mid * 0.95;
      g.fillStyle = x / w <= frac ? '#4cb2ff' : '#19c37d';
      g.fillRect(x, top, 1, Math.max(1, bottom - top));
    }
  }
  if (dur) {
    g.fillStyle = '#ffd23f';
    g.fillRect(Math.min(w - 2 * dpr, frac * w), 0, 2 * dpr, hgt);
  }
  el.canvas.setAttribute('aria-valuemax', String(Math.round(dur)));
  el.canvas.setAttribute('aria-valuenow', String(Math.round(el.audio.currentTime || 0)));
  el.canvas.setAttribute('aria-valuetext', t('audit.position_of', { at: clock(el.audio.currentTime || 0), of: clock(dur) }));
  setText(el.position, `${clock(el.audio.currentTime || 0)} / ${clock(dur)}`);
  el.canvas.dataset.drawn = peaks && peaks.max.length ? 'true' : 'false';
}

function clock(s) {
  if (!isFinite(s) || s < 0) s = 0;
  const m = Math.floor(s / 60);
  const rest = s - m * 60;
  return `${m}:${rest.toFixed(1).padStart(4, '0')}`;
}

function seekTo(seconds) {
  const dur = mediaDuration();
  if (!dur) return;
  el.audio.currentTime = Math.max(0, Math.min(dur - 0.01, seconds));
  drawWave();
}

let raf = 0;
function animate() {
  cancelAnimationFrame(raf);
  const step = () => {
    drawWave();
    if (!el.audio.paused) raf = requestAnimationFrame(step);
  };
  raf = requestAnimationFrame(step);
}

function renderPlayButton() {
  setText(el.play, t(el.audio.paused || el.audio.ended ? 'audit.play' : 'audit.pause'));
}
el.audio.addEventListener('play', () => { renderPlayButton(); animate(); });
el.audio.addEventListener('pause', () => { renderPlayButton(); drawWave(); });
el.audio.addEventListener('timeupdate', drawWave);
el.audio.addEventListener('loadedmetadata', drawWave);
el.audio.addEventListener('ended', () => {
  renderPlayButton();
  drawWave();
  if (playlist) nextInPlaylist();
});
el.audio.addEventListener('error', async () => {
  if (!current || !media || !el.audio.getAttribute('src')) return;
  const rec = current;
  const wasPlaying = !el.audio.paused || el.audio.autoplay || el.play.dataset.want === '1';
  const at = el.audio.currentTime || 0;
  let kind;
  if (!media.renewed && Date.now() > media.expiresAt - 5000) {
    // The player came back for more of the file after its link expired: a fresh link, same place.
    kind = media.kind;
  } else if (!triedWav) {
    // Some browsers cannot play Ogg Opus: fall back to the WAV rendition once.
    triedWav = true;
    kind = 'wav';
  } else {
    return;
  }
  const renewed = kind === media.kind;
  try {
    if (await setSource(rec, kind, { at, play: wasPlaying || !!playlist }) && renewed) media.renewed = true;
  } catch (err) {
    if (current === rec) apiFailed(err, 'audit.what_playback');
  }
});
el.play.addEventListener('click', () => {
  if (!current) return;
  if (el.audio.paused) {
    el.play.dataset.want = '1';
    el.audio.play().catch((err) => toast(t('audit.cannot_play'), 'error'));
  } else {
    el.play.dataset.want = '0';
    el.audio.pause();
  }
});
el.canvas.addEventListener('click', (ev) => {
  const rect = el.canvas.getBoundingClientRect();
  seekTo(((ev.clientX - rect.left) / rect.width) * mediaDuration());
});
el.canvas.addEventListener('keydown', (ev) => {
  const t = el.audio.currentTime || 0;
  const moves = { ArrowLeft: t - 2, ArrowRight: t + 2, PageDown: t - 10, PageUp: t + 10, Home: 0, End: mediaDuration() };
  if (ev.key in moves) {
    ev.preventDefault();
    seekTo(moves[ev.key]);
  } else if (ev.key === ' ' || ev.key === 'Enter') {
    ev.preventDefault();
    el.play.click();
  }
});
window.addEventListener('resize', drawWave);

// -- timeline -------------------------------------------------------------------------------
/** The channel timeline of the applied search: transmissions, silences and the ledger's
 * events (emergencies, acknowledgements, revokes, patches, messages) in order. */
async function fetchTimeline() {
  const tg = resultsTalkgroup();
  if (!tg) return null;
  const q = lastQuery || {};
  const to = q.to || String(Date.now());
  const from = q.from || String(Number(to) - 24 * 3600 * 1000);
  const body = await api(`/api/talkgroups/${encodeURIComponent(tg)}/timeline?from=${from}&to=${to}`);
  timeline = { talkgroup: tg, items: body.items || [] };
  return timeline;
}

function eventText(e) {
  const who = e.alias || e.unit || e.by || '';
  const raw = `${e.event}${e.action ? ` ${e.action}` : ''}`;
  let what = EVENTS[raw] ? t(EVENTS[raw]) : raw;
  if (e.event === 'message') {
    what = e.action === 'status' ? t('audit.event_status', { label: e.label || e.status })
      : e.action === 'text' ? t('audit.event_text', { text: e.text || '' }) : `${e.action} “${e.text || ''}”`;
  }
  return `${what}${who ? ` · ${who}` : ''}${e.by && e.by !== who ? ` (${t('audit.by', { who: e.by })})` : ''}`;
}

async function showTimeline() {
  try {
    const tl = await fetchTimeline();
    if (!tl) return;
    timelineShown = true;
    renderTimeline();
    show(el.tlCard, true);
    refreshAccessSoon();
  } catch (err) {
    apiFailed(err, 'audit.what_timeline');
  }
}

function renderTimeline() {
  const tl = timeline;
  if (!tl || !timelineShown) return;
  setText(el.tlName, tl.talkgroup);
  el.tlList.replaceChildren(...tl.items.map((i) => {
    if (i.type === 'gap') {
      return h('li', { class: 'tl-gap', dataset: { type: 'gap' } }, t('audit.silence', { d: fmtDuration(i.duration_ms / 1000) }));
    }
    if (i.type === 'event') {
      return h('li', { class: `tl-event tl-${i.event}`, dataset: { type: 'event', event: i.event, action: i.action || '' } },
        h('span', { class: 'mono' }, fmtDateTime(i.ts_ms / 1000)), ' ', eventText(i));
    }
    const copies = (i.linked || []).map((l) => l.talkgroup);
    return h('li', { class: 'tl-tx', dataset: { type: 'transmission', id: i.id } },
      h('span', { class: 'mono' }, fmtDateTime(startMs(i) / 1000)), ' ',
      `${i.alias || i.unit} · ${fmtDuration(durationS(i))}`,
      copies.length ? [' ', h('span', { class: 'tag flag-linked' }, t('audit.also_on', { tgs: copies.join(', ') }))] : null);
  }));
}

async function playTimeline() {
  try {
    const tl = await fetchTimeline();
    if (!tl) return;
    const items = tl.items.filter((i) => (i.type || 'transmission') === 'transmission' && !i.deleted);
    if (!items.length) {
      toast(t('audit.timeline_empty'), 'info');
      return;
    }
    playlist = { items, index: 0, talkgroup: tl.talkgroup };
    startPlaylistItem();
  } catch (err) {
    apiFailed(err, 'audit.what_timeline');
  }
}

function startPlaylistItem() {
  const item = playlist.items[playlist.index];
  setText(el.tlStatus, t('audit.timeline_at', { tg: playlist.talkgroup, n: playlist.index + 1, of: playlist.items.length }));
  load(item, { autoplay: true });
}

function nextInPlaylist() {
  playlist.index += 1;
  if (playlist.index >= playlist.items.length) {
    setText(el.tlStatus, t('audit.timeline_done', { tg: playlist.talkgroup, of: playlist.items.length }));
    playlist = null;
    return;
  }
  startPlaylistItem();
}

// -- downloads and exports ------------------------------------------------------------------
function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}

async function download(kind) {
  if (!current) return;
  const ext = kind === 'wav' ? 'wav' : 'opus';
  try {
    const { blob, filename } = await apiBlob(`/api/recordings/${encodeURIComponent(current.id)}/${kind}`);
    saveBlob(blob, filename || `${current.talkgroup}-${current.id}.${ext}`);
  } catch (err) {
    apiFailed(err, 'audit.what_download');
  }
}

/** `what`: {n, more} transmissions (more: the results go on past those shown). */
async function exportZip(body, what) {
  const n = `${what.n}${what.more ? '+' : ''}`;
  setStatus('audit.export_preparing', { n });
  try {
    const { blob, filename } = await apiBlob('/api/exports', { method: 'POST', body });
    saveBlob(blob, filename || 'ptt-export.zip');
    setStatus('audit.export_done', { n });
    refreshAccessSoon();
  } catch (err) {
    setStatus('audit.export_failed');
    apiFailed(err, 'audit.what_export');
  }
}

// -- integrity and access log ---------------------------------------------------------------
async function verify() {
  el.verify.disabled = true;
  verified = null;
  el.verifyResult.replaceChildren(h('p', { class: 'muted' }, t('audit.verifying')));
  try {
    verified = await api('/api/audit/verify');
    renderVerified();
  } catch (err) {
    el.verifyResult.replaceChildren();
    apiFailed(err, 'audit.what_verify');
  } finally {
    el.verify.disabled = false;
    refreshAccessSoon();
  }
}

/** The verification's answer in the page's language (its counts); each problem as the
 * server words it (which entry, which file: for the record, not translated). */
function renderVerified() {
  const r = verified;
  if (!r) return;
  const ok = r.ok === true || r.status === 'ok';
  const problems = Array.isArray(r.problems) ? r.problems : [];
  const counts = { entries: r.entries ?? '?', recordings: r.recordings ?? '?', problems: problems.length };
  el.verifyResult.replaceChildren(h('div', { class: ok ? 'verify-ok' : 'verify-bad' },
    `${ok ? '✔' : '✘'} ${t(ok ? 'audit.verify_ok' : 'audit.verify_bad', counts)}`,
    problems.length ? h('ul', {}, problems.slice(0, 50).map((p) => h('li', {}, typeof p === 'string' ? p : JSON.stringify(p)))) : null));
}

function accessWhat(e) {
  const parts = [];
  for (const k of ['id', 'format', 'export_id', 'talkgroup', 'query', 'results', 'ok', 'problems', 'outcome']) {
    if (k === 'outcome' && e[k] === 'ok') continue;
    if (e[k] === undefined || e[k] === null || e[k] === '') continue;
    parts.push(`${k}=${typeof e[k] === 'object' ? JSON.stringify(e[k]) : e[k]}`);
  }
  return parts.join(' ');
}

let accessTimer = null;
function refreshAccessSoon() {
  if (claims.role !== 'admin') return;
  clearTimeout(accessTimer);
  accessTimer = setTimeout(() => loadAccess(), 800);
}

async function loadAccess({ append = false } = {}) {
  try {
    const q = new URLSearchParams({ limit: '50' });
    if (append && accessCursor) q.set('cursor', accessCursor);
    const page = pageOf(await api(`/api/audit/access?${q}`));
    accessCursor = page.next;
    if (append) accessItems.push(...page.items); else accessItems = page.items.slice();
    renderAccess();
    show(el.accessMore, !!accessCursor);
    show(el.accessCard, true);
  } catch (err) {
    if (err.status === 403) { show(el.accessCard, false); return; }
    apiFailed(err, 'audit.what_access');
  }
}

function renderAccess() {
  const rows = accessItems.map((e) => h('tr', {},
    h('td', { class: 'mono' }, e.ts || e.at || e.time ? fmtDateTime(typeof (e.ts ?? e.at ?? e.time) === 'number' ? (e.ts ?? e.at ?? e.time) : Date.parse(e.ts || e.at || e.time) / 1000) : '–'),
    h('td', {}, e.by || e.user || e.unit || e.sub || '–'),
    h('td', { dataset: { action: e.action || '' } }, ACTIONS[e.action] ? t(ACTIONS[e.action]) : (e.action || e.what || e.kind || '–')),
    h('td', { class: 'mono' }, accessWhat(e)),
    h('td', { class: 'mono' }, e.remote || e.ip || '–')));
  el.accessBody.replaceChildren(...(rows.length ? rows
    : [h('tr', {}, h('td', { colspan: '5', class: 'empty' }, t('audit.no_access')))]));
}

// -- wiring ---------------------------------------------------------------------------------
function renderRole() {
  const role = claims.role || '';
  setText(el.whoRole, ROLE_NAMES[role] ? t(ROLE_NAMES[role]) : role);
}

function start(token, c) {
  claims = c;
  show(el.signin, false);
  show(el.audit, true);
  show(el.who, true);
  setText(el.whoAlias, c.alias || c.sub || '');
  renderRole();
  const now = new Date();
  el.fTo.value = '';
  el.fFrom.value = localInputValue(new Date(now.getTime() - 24 * 3600 * 1000));
  search();
  if (c.role === 'admin') loadAccess();
  window.audit = {
    state: () => ({
      results: results.map((r) => ({ id: r.id, talkgroup: r.talkgroup, unit: r.unit, alias: r.alias, duration_ms: r.duration_ms, group_id: r.group_id })),
      rows: groupRows().map((r) => ({ id: r.rec.id, ids: r.ids, talkgroups: r.talkgroups })),
      applied: lastQuery,
      messages: messages.map((m) => ({ message_id: m.message_id, action: m.action, text: m.text, unit: m.unit, read_by: (m.read_by || []).map((r) => r.unit) })),
      timeline: timeline,
      current: current ? current.id : null,
      playing: !el.audio.paused && !el.audio.ended,
      currentTime: el.audio.currentTime,
      duration: mediaDuration(),
      source: el.audio.currentSrc ? el.audio.currentSrc.replace(/\?.*$/, '') : null,
      waveformDrawn: el.canvas.dataset.drawn === 'true',
      peaks: peaks ? peaks.max.length : 0,
    }),
    search: () => search(),
  };
}

el.form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  search();
});
el.reset.addEventListener('click', () => {
  el.form.reset();
  updateButtons();
  search();
});
el.more.addEventListener('click', () => search({ append: true }));
el.selectAll.addEventListener('change', () => {
  for (const row of groupRows()) {
    for (const id of row.ids) if (el.selectAll.checked) selected.add(id); else selected.delete(id);
  }
  renderResults();
});
el.exportSel.addEventListener('click', () => exportZip({ ids: Array.from(selected) }, { n: selected.size }));
el.exportRange.addEventListener('click', () => {
  // The applied search, resolved again by the server with the same rules as the table.
  exportZip({ filter: appliedFilter() }, { n: results.length, more: !!nextCursor });
});
el.playTimeline.addEventListener('click', playTimeline);
el.showTimeline.addEventListener('click', showTimeline);
el.dlOgg.addEventListener('click', () => download('audio'));
el.dlWav.addEventListener('click', () => download('wav'));
el.verify.addEventListener('click', verify);
el.accessMore.addEventListener('click', () => loadAccess({ append: true }));
el.signout.addEventListener('click', () => {
  signOut();
  location.replace(location.pathname);
});

// Another language: the markup is done by i18n.js; what this script wrote is written again.
window.addEventListener(CHANGE_EVENT, () => {
  if (!claims.role) return;
  renderRole();
  renderResults();
  renderMessages();
  renderTimeline();
  renderMeta();
  renderPlayButton();
  renderVerified();
  if (accessItems.length || el.accessBody.children.length) renderAccess();
  if (statusLine) setStatus(...statusLine);
  if (playlist) setText(el.tlStatus, t('audit.timeline_at', { tg: playlist.talkgroup, n: playlist.index + 1, of: playlist.items.length }));
  drawWave();
});

bootSignIn({
  signInPanel: el.signin, onSignedIn: start, roles: ROLES, roleMessage: 'audit.wrong_role',
});
