// Missed-call replay for the officer page: the recent transmissions of the officer's
// talkgroups (who, when, how long), those that came while the page was offline marked
// "missed", and one-tap replay streamed from the recording store.
//
// The audio element plays a signed media URL (POST /api/recordings/{id}/replay-url): an
// <audio> element cannot send the bearer token, and a token in a URL would leak into history
// and logs. The server serves the file in byte ranges, so the player can seek; each replay is
// written to the access ledger on the server. How far back is the talkgroup's policy
// (`replay_hours`), applied by the server.
import { api } from './auth.js';
import { h } from './dom.js';
import { t } from './i18n.js';

// Offline periods as [from_ms, to_ms) (to_ms null while still offline), kept by the page.
export class OfflineLog {
  constructor() { this.periods = []; }
  wentOffline(now = Date.now()) {
    const last = this.periods[this.periods.length - 1];
    if (!last || last[1] !== null) this.periods.push([now, null]);
  }
  cameOnline(now = Date.now()) {
    const last = this.periods[this.periods.length - 1];
    if (last && last[1] === null) last[1] = now;
  }
  missed(startMs) {
    return this.periods.some(([a, b]) => startMs >= a && (b === null || startMs < b));
  }
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

export async function recent(talkgroups, limit = 30) {
  const lists = await Promise.all(talkgroups.map((tg) =>
    api(`/api/talkgroups/${encodeURIComponent(tg)}/recent?limit=${limit}`)
      .then((body) => body.recordings).catch(() => [])));
  return lists.flat().sort((a, b) => b.start_ms - a.start_ms);
}

export async function replayUrl(id) {
  const body = await api(`/api/recordings/${encodeURIComponent(id)}/replay-url`, { method: 'POST' });
  return body.url;
}

// Fills `list` (a <ul>) with the recent transmissions; `player` is an <audio> element;
// `nameOf` gives a talkgroup's display name.
export async function renderReplay(list, player, talkgroups, offline, nameOf = (tg) => tg) {
  const items = await recent(talkgroups);
  list.replaceChildren(...items.map((r) => {
    const missed = offline.missed(r.start_ms);
    const button = h('button', { type: 'button', class: 'btn btn-small replay-play', 'data-id': r.id,
      'aria-label': t('replay.play_label', { alias: r.alias || r.unit }) }, t('replay.play'));
    button.addEventListener('click', async () => {
      player.src = await replayUrl(r.id);
      await player.play().catch(() => {});
    });
    return h('li', { class: missed ? 'replay-item is-missed' : 'replay-item', 'data-id': r.id },
      h('span', { class: 'replay-who' }, r.alias || r.unit),
      h('span', { class: 'replay-tg' }, nameOf(r.talkgroup)),
      h('time', { datetime: new Date(r.start_ms).toISOString() }, clock(r.start_ms)),
      h('span', { class: 'replay-len' }, t('replay.seconds', { s: Math.round((r.duration_ms || 0) / 1000) })),
      missed ? h('span', { class: 'tag tag-missed' }, t('replay.missed')) : null,
      button);
  }));
  if (!items.length) list.replaceChildren(h('li', { class: 'replay-empty' }, t('replay.none')));
  return items;
}
