// Service worker: keeps the app shell (pages, styles, scripts, catalogues, icons) so the radio
// opens with no or a bad connection, and makes the pages installable.
//
// Only the shell is ever cached. /api/ (tokens, recordings, the access log), /ws and media
// pass by untouched: they are personal, live, or both, and a cached answer there would be a
// wrong answer. The shell is fetched network-first (revalidated with its ETag, a 304 when
// unchanged), so a deploy reaches a phone on its next load; the cache answers only when the
// network does not, or does not in time.

const CACHE = 'ptt-shell-v1';
const NETWORK_WAIT_MS = 4000; // a phone on one bar of signal: open from the cache instead
const SHELL = [
  '/', '/index.html', '/console.html', '/audit.html', '/manifest.webmanifest',
  '/css/base.css', '/css/officer.css', '/css/console.css', '/css/audit.css',
  '/js/officer.js', '/js/console.js', '/js/audit.js', '/js/auth.js', '/js/audio.js',
  '/js/dom.js', '/js/i18n.js', '/js/pwa.js', '/js/ptt-button.js', '/js/ptt-client.js',
  '/js/rtc.js', '/js/signaling.js', '/js/tones.js', '/js/ice-servers.js', '/js/unit-map.js',
  '/js/command-text.js', '/js/command-centre.js', '/js/messaging.js', '/js/officer-command.js',
  '/js/replay.js', '/js/scan.js', '/js/private-call.js', '/css/messaging.css', '/css/command.css',
  '/i18n/en.json', '/i18n/id.json',
  '/img/icon.svg', '/img/icon-192.png', '/img/icon-512.png',
];
const SHELL_DIRS = ['/css/', '/js/', '/i18n/', '/img/'];

function isShell(url) {
  if (url.origin !== self.location.origin) return false;
  const p = url.pathname;
  if (p.startsWith('/api/') || p === '/ws' || p.startsWith('/ws/')) return false;
  return p === '/' || /^\/[^/]+\.html$/.test(p) || p === '/manifest.webmanifest' ||
    SHELL_DIRS.some((d) => p.startsWith(d));
}

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    // One file missing (renamed in a deploy) must not leave the whole radio uncached.
    await Promise.allSettled(SHELL.map((path) => cache.add(new Request(path, { cache: 'no-cache' }))));
    await self.skipWaiting();
  })());
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) if (name !== CACHE) await caches.delete(name);
    await self.clients.claim(); // the page that installed us is served from the cache at once
  })());
});

async function networkFirst(request) {
  const cache = await caches.open(CACHE);
  // The query (?expired=1) is page state, not a different file.
  const key = new Request(new URL(request.url).pathname === '/' ? '/' : request.url.split('?')[0]);
  const network = fetch(request, { cache: 'no-cache' }).then(async (resp) => {
    if (resp.ok && resp.type === 'basic') await cache.put(key, resp.clone());
    return resp;
  });
  network.catch(() => {}); // answered from the cache meanwhile: a late failure is no error
  let timer;
  const late = new Promise((resolve) => { timer = setTimeout(resolve, NETWORK_WAIT_MS); });
  try {
    const first = await Promise.race([network, late]);
    if (first) return first;
    const cached = await cache.match(key);
    return cached || await network; // nothing cached: keep waiting for the network
  } catch (err) {
    const cached = await cache.match(key);
    if (cached) return cached;
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

self.addEventListener('fetch', (event) => {
  const { request } = event;
  if (request.method !== 'GET' || request.headers.has('range')) return; // media is ranged
  const url = new URL(request.url);
  if (!isShell(url)) return; // not ours: the browser fetches it as if we did not exist
  event.respondWith(networkFirst(request));
});
