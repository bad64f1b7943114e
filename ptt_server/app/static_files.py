"""Serving the web client's files: an allow-list, gzip for text, and cache headers.

Officers open the radio over mobile data in places with one bar of signal, so the shell must
be small on the wire (text is gzipped, roughly a quarter of its size) and must not be fetched
again when it has not changed (an ETag, so a revalidation is a 304 without a body).

Caching: pages, the service worker and the manifest are `no-cache` (always revalidated: a
deploy must reach every phone on its next load, and a browser refuses to update a service
worker it was told to keep); the directories they load from get a short `max-age` (one load
of the page needs dozens of them). The service worker itself revalidates everything it
caches, so a long max-age could only ever make browsers without it stale.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import mimetypes
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import hdrs, web

# What the pages load. Served by allow-list, not the whole client_web/ directory: that also
# holds developer tools (tools/screenshots.py) and whatever else lands there later.
CLIENT_DIRS = ("css", "i18n", "img", "js")
# Top-level files besides the pages: the service worker must live at / to control the pages.
TOP_FILES = ("sw.js", "manifest.webmanifest")

REVALIDATE = "no-cache"
ASSET_MAX_AGE = "public, max-age=3600"

# Types worth compressing; PNG icons and the like are compressed already.
COMPRESSIBLE = ("text/", "application/javascript", "application/json",
                "application/manifest+json", "image/svg+xml")
CONTENT_TYPES = {".webmanifest": "application/manifest+json", ".js": "text/javascript",
                 ".json": "application/json", ".svg": "image/svg+xml", ".html": "text/html",
                 ".css": "text/css"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class _Text:
    plain: bytes
    gzipped: bytes
    etag: str
    last_modified: float


# Text files, read and gzipped once per version (mtime and size): the shell is small, and
# compressing it again for every officer's load would be work for nothing.
_TEXTS: dict[Path, tuple[tuple[int, int], _Text]] = {}


def _read_text(path: Path) -> _Text:
    st = path.stat()
    version = (st.st_mtime_ns, st.st_size)
    hit = _TEXTS.get(path)
    if hit is not None and hit[0] == version:
        return hit[1]
    plain = path.read_bytes()
    text = _Text(plain, gzip.compress(plain, 9, mtime=0), f'"{version[0]:x}-{version[1]:x}"',
                 st.st_mtime)
    _TEXTS[path] = (version, text)
    return text


def _matches(header: str, etag: str) -> bool:
    # Weak comparison (RFC 9110 section 13.1.2): the gzipped and the plain body are one file.
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return "*" in tags or etag in tags or etag[:-1] + '-gz"' in tags


async def _respond(request: web.Request, path: Path, cache_control: str) -> web.StreamResponse:
    headers = {hdrs.CACHE_CONTROL: cache_control}
    ctype = CONTENT_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or ""
    if not ctype.startswith(COMPRESSIBLE):
        # PNG icons and the like are compressed already: aiohttp's own file response, with
        # its ETag, Last-Modified and ranges.
        return web.FileResponse(path, headers=headers)
    text = await asyncio.to_thread(_read_text, path)
    # A cache in between must keep the gzipped and the plain answer apart.
    headers[hdrs.VARY] = hdrs.ACCEPT_ENCODING
    headers[hdrs.LAST_MODIFIED] = email.utils.formatdate(text.last_modified, usegmt=True)
    gzipped = "gzip" in request.headers.get(hdrs.ACCEPT_ENCODING, "").lower()
    headers[hdrs.ETAG] = text.etag[:-1] + '-gz"' if gzipped else text.etag
    if _matches(request.headers.get(hdrs.IF_NONE_MATCH, ""), text.etag):
        return web.Response(status=304, headers=headers)
    headers[hdrs.CONTENT_TYPE] = ctype + ("; charset=utf-8" if "charset" not in ctype else "")
    if gzipped:
        headers[hdrs.CONTENT_ENCODING] = "gzip"
    return web.Response(body=text.gzipped if gzipped else text.plain, headers=headers)


def file_handler(path: Path, cache_control: str = REVALIDATE) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await _respond(request, path, cache_control)

    return handler


def dir_handler(root: Path) -> Handler:
    """Files under `root` only: no dot files, no symlinks, nothing outside it."""
    base = root.resolve()

    async def handler(request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        parts = tail.split("/")
        if not tail or any(not p or p.startswith(".") for p in parts):
            raise web.HTTPNotFound()
        path = base.joinpath(*parts)
        if path.is_symlink() or not path.is_file() or base not in path.resolve().parents:
            raise web.HTTPNotFound()
        return await _respond(request, path, ASSET_MAX_AGE)

    return handler


def add_client_routes(app: web.Application, static: Path) -> None:
    """The web client: its top-level pages (/ is index.html), the service worker and manifest,
    and the directories they load from; nothing else under `static` is reachable."""
    app.router.add_get("/", file_handler(static / "index.html"))
    for html in sorted(static.glob("*.html")):
        if html.is_file() and not html.is_symlink():
            app.router.add_get(f"/{html.name}", file_handler(html))
    for name in TOP_FILES:
        if (static / name).is_file():
            app.router.add_get(f"/{name}", file_handler(static / name))
    for name in CLIENT_DIRS:
        if (static / name).is_dir():
            app.router.add_get(f"/{name}/{{tail:.+}}", dir_handler(static / name))
