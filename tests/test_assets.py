"""The web client's files on the wire: gzip for text, cache headers, revalidation, the
allow-list, and the officer page's whole shell under 100 KB transferred."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ptt_server.app import static_files

from .conftest import RunningServer

CLIENT_WEB = Path(__file__).resolve().parents[1] / "client_web"
GZIP = {"Accept-Encoding": "gzip"}


async def _client() -> TestClient[web.Request, web.Application]:
    app = web.Application()
    static_files.add_client_routes(app, CLIENT_WEB)
    client = TestClient(TestServer(app), auto_decompress=False)
    await client.start_server()
    return client


async def test_text_is_gzipped_and_cached_and_revalidates() -> None:
    client = await _client()
    try:
        r = await client.get("/js/officer.js", headers=GZIP)
        body = await r.read()
        assert r.status == 200
        assert r.headers["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in r.headers["Vary"]
        assert "max-age=" in r.headers["Cache-Control"]
        assert r.headers["Content-Type"].startswith("text/javascript")
        assert len(body) < (CLIENT_WEB / "js/officer.js").stat().st_size / 2
        # A second load with the ETag costs a 304 and no body.
        again = await client.get("/js/officer.js",
                                 headers={**GZIP, "If-None-Match": r.headers["ETag"]})
        assert again.status == 304 and await again.read() == b""
        # Without Accept-Encoding: plain.
        plain = await client.get("/js/officer.js", headers={"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in plain.headers
        assert await plain.read() == (CLIENT_WEB / "js/officer.js").read_bytes()
        # Pages, the service worker and the manifest are always revalidated.
        for path in ("/", "/index.html", "/sw.js", "/manifest.webmanifest"):
            r = await client.get(path, headers=GZIP)
            assert r.status == 200, path
            assert r.headers["Cache-Control"] == "no-cache", path
            assert r.headers["Content-Encoding"] == "gzip", path
            assert "ETag" in r.headers, path
        m = await client.get("/manifest.webmanifest")
        assert m.headers["Content-Type"].startswith("application/manifest+json")
        # PNGs are sent as they are (compressing them again gains nothing).
        png = await client.get("/img/icon-192.png", headers=GZIP)
        assert png.status == 200 and "Content-Encoding" not in png.headers
        assert png.headers["Content-Type"] == "image/png"
    finally:
        await client.close()


async def test_only_the_allow_list_is_served() -> None:
    client = await _client()
    try:
        for path in ("/tools/screenshots.py", "/js/../tools/screenshots.py",
                     "/js/%2e%2e/tools/icons.py", "/i18n/", "/js/.hidden", "/css"):
            r = await client.get(path)
            assert r.status == 404, path
        assert (await client.get("/i18n/id.json")).status == 200
    finally:
        await client.close()


ASSET_REF = re.compile(r"""(?:href|src)="(/[^"]+)"|from '\./([^']+)'|import\('\./([^']+)'\)""")


async def test_officer_shell_is_under_100_kb_on_the_wire(server: RunningServer) -> None:
    """Everything the officer page loads before it can talk (the page, its styles, every
    module it imports, its catalogues and icons), counted as transferred, gzipped."""
    seen: dict[str, int] = {}
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async def load(path: str) -> None:
            if path in seen:
                return
            async with http.get(server.url + path, headers=GZIP) as r:
                assert r.status == 200, path
                body = await r.read()
            seen[path] = len(body)
            if not path.endswith((".html", ".js", "/")):
                return
            import gzip

            text = (gzip.decompress(body) if r.headers.get("Content-Encoding") == "gzip"
                    else body).decode()
            base = path.rsplit("/", 1)[0] + "/"
            for m in ASSET_REF.finditer(text):
                ref = m.group(1) or base + (m.group(2) or m.group(3))
                await load(ref.split("#")[0])

        await load("/")
        for extra in ("/manifest.webmanifest", "/sw.js", "/i18n/en.json", "/i18n/id.json"):
            await load(extra)
    total = sum(seen.values())
    assert any(p.endswith("officer.js") for p in seen) and any(p.endswith(".css") for p in seen)
    assert total < 100 * 1024, sorted(seen.items(), key=lambda kv: -kv[1])
