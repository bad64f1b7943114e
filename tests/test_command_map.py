"""The console's unit map: officers share their position (Chromium's geolocation emulation),
the console places them where they are, with and without a tile server; and the `location`
message itself, stored and bounded in Redis.

Where a marker should be is computed here from the coordinates with Web Mercator (EPSG:3857)
and the map's own centre and zoom, independently of the page: a marker a few pixels off, or
a map that only looks right, fails.
"""

from __future__ import annotations

import math
import struct
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ptt_server.control.locations import LocationStore
from ptt_server.core import protocol as p
from ptt_server.core.errors import SignalingError
from ptt_server.core.maptiles import tile_source

from .browser_support import PHONE, chromium, open_page, silence_wav, wait_connected, wait_js
from .conftest import RunningServer, seed_directory, server_config

# Two officers a few hundred metres apart in central Jakarta.
U1 = {"latitude": -6.17540, "longitude": 106.82720, "accuracy": 12}
U2 = {"latitude": -6.18230, "longitude": 106.83960, "accuracy": 30}
TILE = 256
PIXEL_TOLERANCE = 2.5


def mercator(lat: float, lon: float, zoom: int) -> tuple[float, float]:
    """World pixel coordinates of a point at `zoom` (Web Mercator, 256-pixel tiles)."""
    scale = TILE * 2**zoom
    phi = math.radians(lat)
    x = scale * (lon + 180.0) / 360.0
    y = scale * (1.0 - math.log(math.tan(phi) + 1.0 / math.cos(phi)) / math.pi) / 2.0
    return x, y


def png(rgb: tuple[int, int, int], size: int = TILE) -> bytes:
    """A plain one-colour PNG (RFC 2083), built here: a tile server needs nothing more."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes(rgb) * size
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(row * size)) + chunk(b"IEND", b""))


@pytest.fixture
async def tile_server() -> AsyncIterator[tuple[str, list[str]]]:
    """Tiles on loopback: (URL template, the paths asked for)."""
    asked: list[str] = []
    tile = png((40, 60, 80))

    async def handler(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(body=tile, content_type="image/png")

    app = web.Application()
    app.router.add_get("/tiles/{z}/{x}/{y}.png", handler)
    ts = TestServer(app, host="127.0.0.1")
    await ts.start_server()
    yield f"http://127.0.0.1:{ts.port}/tiles/{{z}}/{{x}}/{{y}}.png", asked
    await ts.close()


async def start_server(data_dir: Path, redis_url: str, **kw: Any) -> tuple[RunningServer, Any]:
    from ptt_server.app.wiring import create_app

    seed_directory(data_dir)
    config = server_config(data_dir, redis_url, location_interval_s=1.0, **kw)
    app = create_app(config)
    ts = TestServer(app, host="127.0.0.1")
    await ts.start_server()
    return RunningServer(url=str(ts.make_url("")).rstrip("/"), config=config, app=app), ts


def invite(server: RunningServer, path: str, user: str) -> str:
    return f"{server.url}{path}#token={server.token(user)}"


MARKERS = """() => {
    const box = document.querySelector('#unit-map').getBoundingClientRect();
    const out = {};
    for (const el of document.querySelectorAll('.unit-marker[data-unit]')) {
        const r = el.querySelector('.unit-dot').getBoundingClientRect();
        out[el.dataset.unit] = {x: r.left + r.width / 2 - box.left,
                                y: r.top + r.height / 2 - box.top, cls: el.className};
    }
    return out;
}"""


def check_placed(state: dict[str, Any], markers: dict[str, Any],
                 where: dict[str, dict[str, float]]) -> None:
    m = state["map"]
    zoom, size = m["zoom"], m["size"]
    cx, cy = mercator(m["center"]["lat"], m["center"]["lon"], zoom)
    for unit, pos in where.items():
        x, y = mercator(pos["latitude"], pos["longitude"], zoom)
        expected = (size["x"] / 2 + x - cx, size["y"] / 2 + y - cy)
        got = (markers[unit]["x"], markers[unit]["y"])
        assert abs(got[0] - expected[0]) <= PIXEL_TOLERANCE, (unit, got, expected, m)
        assert abs(got[1] - expected[1]) <= PIXEL_TOLERANCE, (unit, got, expected, m)
        assert 0 <= got[0] <= size["x"] and 0 <= got[1] <= size["y"], (unit, got, size)


async def officer_sharing(playwright: Any, tmp: Path, name: str, server: RunningServer,
                          user: str, where: dict[str, float], stack: Any) -> Any:
    ctx = await stack.enter_async_context(
        chromium(playwright, tmp / f"profile-{name}", silence_wav(tmp / f"{name}.wav")))
    await ctx.grant_permissions(["geolocation", "microphone"], origin=server.url)
    await ctx.set_geolocation(where)
    page, _log = await open_page(ctx, invite(server, "/", user), user, viewport=PHONE)
    await wait_connected(page, ["A"])
    await page.get_by_label("Share my location with control").check()
    await wait_js(page, "() => window.ptt.command().sent >= 1", 15)
    return ctx, page


@pytest.mark.browser
@pytest.mark.timeout(150)
@pytest.mark.parametrize("with_tiles", [False, True], ids=["grid", "tiles"])
async def test_console_places_sharing_officers_on_the_map(
    data_dir: Path, redis_url: str, tmp_path: Path, tile_server: tuple[str, list[str]],
    with_tiles: bool,
) -> None:
    import contextlib

    from playwright.async_api import async_playwright

    template, asked = tile_server
    server, ts = await start_server(data_dir, redis_url,
                                    map_tiles=template if with_tiles else None,
                                    map_attribution="Test tiles" if with_tiles else None)
    try:
        async with async_playwright() as pw, contextlib.AsyncExitStack() as stack:
            ctx1, u1 = await officer_sharing(pw, tmp_path, "u1", server, "u1", U1, stack)
            ctx2, _u2 = await officer_sharing(pw, tmp_path, "u2", server, "u2", U2, stack)
            missing: list[str] = []
            ctx1.on("response", lambda r: missing.append(r.url) if r.status >= 400 else None)
            console, log = await open_page(ctx1, invite(server, "/console.html?monitor=A", "sup"),
                                           "sup")
            await wait_connected(console, ["CMD", "A"])
            await wait_js(console, """() => {
                const s = window.ptt.command();
                return s.map.available
                    && ['u1', 'u2'].every((u) => s.units.some((x) => x.unit === u))
                    && document.querySelectorAll('.unit-marker[data-unit]').length === 2;
            }""", 15)
            state = await console.evaluate("() => window.ptt.command()")
            assert state["map"]["tiles"] == (template if with_tiles else None)
            check_placed(state, await console.evaluate(MARKERS), {"u1": U1, "u2": U2})
            # Their talkgroup and how long ago they were seen are on the markers.
            label = await console.locator('.unit-marker[data-unit="u1"]').inner_text()
            assert "Unit 1" in label and "A" in label and "seen" in label

            if with_tiles:
                # Tiles from the operator's server, allowed by the page's policy for that host.
                await wait_js(console, "() => document.querySelector('.leaflet-tile-loaded')", 15)
                assert asked and all(a.startswith("/tiles/") for a in asked)
                headers = (await console.evaluate(
                    "async () => Object.fromEntries((await fetch('/console.html')).headers)"))
                assert f"img-src 'self' data: blob: {tile_source(template)}" in \
                    headers["content-security-policy"]
            else:
                # No tile server: a grid of latitude/longitude lines, and nothing asked of tiles.
                assert await console.locator("#unit-map.is-grid").count() == 1
                assert await console.locator(".map-grid-line").count() >= 4
                assert asked == []
                policy = await console.evaluate("async () => (await fetch('/console.html'))"
                                                ".headers.get('content-security-policy')")
                assert "img-src 'self' data: blob:;" in policy

            # Unit 2 moves: the console follows (the officer's page sends every interval).
            moved = {"latitude": -6.17900, "longitude": 106.83300, "accuracy": 8}
            await ctx2.set_geolocation(moved)
            await wait_js(console, """(p) => window.ptt.command().units.some(
                (u) => u.unit === 'u2' && Math.abs(u.lat - p.latitude) < 1e-6)""", 15, moved)
            # An emergency from Unit 1: its marker turns red and the map centres on it.
            emergency = u1.get_by_role("button", name="Emergency")
            await emergency.click()
            await u1.get_by_role("button", name="Tap again to send emergency").click()
            await console.locator(".alert-card").filter(has_text="Unit 1").wait_for(timeout=10000)
            await wait_js(console, """() => {
                const el = document.querySelector('.unit-marker[data-unit="u1"]');
                return el && el.classList.contains('is-emergency')
                    && document.querySelector('.emergency-marker');
            }""", 10)
            await wait_js(console, """(p) => {
                const c = window.ptt.command().map.center;
                return Math.abs(c.lat - p.latitude) < 1e-3 && Math.abs(c.lon - p.longitude) < 1e-3;
            }""", 10, U1)
            state = await console.evaluate("() => window.ptt.command()")
            assert state["map"]["zoom"] >= 15
            check_placed(state, await console.evaluate(MARKERS), {"u1": U1})
            # The card no longer shows raw coordinates: the place is on the map.
            card = await console.locator(".alert-card").inner_text()
            assert "106.82720" not in card and "On the map" in card
            await u1.get_by_role("button", name="Cancel emergency").click()
            await console.locator(".alert-card").wait_for(state="detached", timeout=10000)
            assert log.csp_violations() == [], log.errors
            assert log.serious() == [], (log.errors, missing)
    finally:
        await ts.close()


# -- the message and its store ---------------------------------------------------------------
def test_location_is_parsed_strictly() -> None:
    msg = p.parse('{"type":"location","lat":-6.2,"lon":106.8,"accuracy":12,"ts":1795334400}')
    assert msg == p.Location(lat=-6.2, lon=106.8, accuracy=12.0, ts=1795334400.0)
    assert p.parse('{"type":"location","lat":0,"lon":0}') == p.Location(lat=0.0, lon=0.0)
    for bad in ('{"type":"location","lat":91,"lon":0}',
                '{"type":"location","lat":0,"lon":-180.5}',
                '{"type":"location","lat":"1","lon":0}',
                '{"type":"location","lat":true,"lon":0}',
                '{"type":"location","lon":0}',
                '{"type":"location","lat":0,"lon":0,"accuracy":-1}',
                '{"type":"location","lat":0,"lon":0,"accuracy":1e7}',
                '{"type":"location","lat":0,"lon":0,"ts":12}',
                '{"type":"location","lat":1e400,"lon":0}',
                '{"type":"location","lat":NaN,"lon":0}'):
        with pytest.raises(SignalingError):
            p.parse(bad)


def test_tile_templates_are_checked() -> None:
    assert tile_source("https://tiles.example:8443/{z}/{x}/{y}.png") == "https://tiles.example:8443"
    assert tile_source("https://{s}.tiles.example/{z}/{x}/{y}.png") == "https://*.tiles.example"
    for bad in ("ftp://tiles.example/{z}/{x}/{y}.png", "https://tiles.example/{z}/{x}.png",
                "https://tiles.example/{z}/{x}/{y}.png; script-src *",
                "https://a@tiles.example/{z}/{x}/{y}.png", "https://{q}.x/{z}/{x}/{y}.png",
                "https://tiles.example/{z}/{x}/{y}.png 'unsafe-inline'"):
        with pytest.raises(ValueError):
            tile_source(bad)


async def test_positions_reach_supervisors_only_and_history_is_bounded(
    server: RunningServer, redis: Any
) -> None:
    from client_cli.client import PttClient

    officer = PttClient(server.url, server.token("u1"))
    other = PttClient(server.url, server.token("u3"))
    sup = PttClient(server.url, server.token("sup"))
    for c in (officer, other, sup):
        await c.connect()
    await officer.join("A")
    await other.join("A")
    await sup.join("CMD")
    await officer.send({"type": "location", "lat": -6.2, "lon": 106.8, "accuracy": 5,
                        "ts": 1795334400.0})
    seen = await sup.wait_for(lambda m: m["type"] == "unit_location")
    assert seen["unit"] == "u1" and seen["talkgroups"] == ["A"] and seen["lat"] == -6.2
    assert seen["ts"] <= seen["received"]
    # Sent again at once: too soon (twice the policy's rate), dropped without an error.
    await officer.send({"type": "location", "lat": -6.3, "lon": 106.8})
    ping = await officer.request({"type": "ping", "id": 1}, lambda m: m["type"] == "pong")
    assert ping["type"] == "pong"
    assert not any(m["type"] == "unit_location" for m in other.events)
    assert sum(m["type"] == "unit_location" for m in sup.events) == 1
    # The API a console opens with lists it.
    import aiohttp

    async with aiohttp.ClientSession() as http:
        auth = {"Authorization": f"Bearer {server.token('sup')}"}
        async with http.get(server.url + "/api/command-map", headers=auth) as r:
            body = await r.json()
            assert r.status == 200 and [u["unit"] for u in body["units"]] == ["u1"]
            assert body["tiles"] is None and body["emergencies"] == []
        async with http.get(server.url + "/api/command-map",
                            headers={"Authorization": f"Bearer {server.token('u1')}"}) as r:
            assert r.status == 403
        async with http.get(server.url + "/api/location-policy",
                            headers={"Authorization": f"Bearer {server.token('u1')}"}) as r:
            assert (await r.json())["interval_s"] == server.config.location_interval_s
    for c in (officer, other, sup):
        await c.close()

    store = LocationStore(redis, history=5, ttl_s=60)
    now = time.time()
    for i in range(12):
        await store.record("u9", {"unit": "u9", "lat": float(i), "lon": 0.0}, now - 12 + i)
    history = await store.history_of("u9")
    assert [h["lat"] for h in history] == [11.0, 10.0, 9.0, 8.0, 7.0]  # newest first, 5 kept
    assert 0 < await redis.pttl("ptt:loc:u9") <= 60_000
    assert {u["unit"] for u in await store.latest(now)} == {"u1", "u9"}
    assert await store.latest(now + 3600 + 61) == []  # past every TTL: off the map
