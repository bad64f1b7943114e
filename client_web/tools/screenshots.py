"""Screenshots of the three web pages, at phone (390x844) and desktop (1440x900) sizes.

    .venv/bin/python client_web/tools/screenshots.py [--out docs/screenshots]

Starts a throw-away server on 127.0.0.1 (temporary data directory, embedded redis-server,
the test directory of talkgroups A, B, CMD and users u1..u4, sup, aud), puts some life on the
air with scripted radios (aiortc clients sending speech made by espeak-ng), and photographs
the pages in a headless Chromium. Needs the test extras (playwright, opuslib) and the Debian
packages chromium, espeak-ng and sox.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1440, "height": 900}


@contextlib.asynccontextmanager
async def running_server(tmp: Path) -> AsyncIterator[Any]:
    from aiohttp import web

    from ptt_server.app.wiring import create_app
    from ptt_server.app.redis_embed import EmbeddedRedis
    from tests.conftest import RunningServer, seed_directory, server_config

    redis = EmbeddedRedis(tmp / "redis", persist=False)
    redis.start()
    runner = None
    try:
        data = tmp / "data"
        data.mkdir()
        seed_directory(data)
        config = server_config(data, redis.url)
        app = create_app(config)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield RunningServer(url=f"http://127.0.0.1:{port}", config=config, app=app)
    finally:
        if runner is not None:
            await runner.cleanup()
        redis.stop()


async def radio(server: Any, user: str, *talkgroups: str) -> Any:
    from client_cli.client import PttClient

    c = PttClient(server.url, server.token(user), ice_addresses=("127.0.0.1",))
    await c.connect()
    await c.start_media(send=True)
    for tg in talkgroups:
        await c.join(tg)

        def is_downlink(m: dict[str, Any], tg: str = tg) -> bool:
            return bool(m["type"] == "downlink" and m["talkgroup"] == tg)

        await c.wait_for(is_downlink)
    return c


async def wait_js(page: Any, expression: str, timeout_s: float = 15.0) -> None:
    await page.wait_for_function(expression, timeout=timeout_s * 1000, polling=100)


async def main(out: Path) -> None:
    from playwright.async_api import async_playwright

    from tests.audio import encode, make_speech, read_wav
    from tests.browser_support import chromium, open_page, silence_wav, wait_connected

    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ptt-shots-") as tmpdir:
        tmp = Path(tmpdir)
        speech = encode(read_wav(make_speech(
            tmp / "speech.wav",
            "Unit one to control. Suspect vehicle heading north on main street, "
            "blue sedan, two occupants. Requesting backup at the junction with fifth avenue.")))
        short = encode(read_wav(make_speech(tmp / "short.wav", "Copy that, on my way.")))
        quiet = silence_wav(tmp / "silence.wav", 2.0)
        async with running_server(tmp) as server, async_playwright() as pw:
            u1 = await radio(server, "u1", "A")
            u3 = await radio(server, "u3", "A")
            u4 = await radio(server, "u4", "B")
            # Some history: a few transmissions on A and B.
            await u3.talk("A", short)
            await u4.talk("B", short)
            await u1.talk("A", speech[:150])
            await u3.talk("A", short)

            async with chromium(pw, tmp / "profile", quiet, viewport=DESKTOP) as ctx:
                officer, _ = await open_page(
                    ctx, f"{server.url}/#token={server.token('u2')}", "officer", viewport=PHONE)
                console, _ = await open_page(
                    ctx, f"{server.url}/console.html?monitor=A,B#token={server.token('sup')}",
                    "console", viewport=DESKTOP)
                await wait_connected(officer, ["A"])
                await wait_connected(console, ["CMD", "A", "B"])
                # Re-run the history so the console's logs have something in them.
                await u3.talk("A", short)
                await u4.talk("B", short)
                await asyncio.sleep(0.5)

                # Unit 4 raises an emergency on B; Unit 1 talks on A while we take pictures.
                await u4.send({"type": "emergency_start", "talkgroup": "B",
                               "location": {"lat": 52.37212, "lon": 4.89359, "accuracy": 12}})
                talking = asyncio.create_task(u1.talk("A", speech))
                await wait_js(officer, "() => window.ptt.state().talker === 'Unit 1'")
                await asyncio.sleep(1.5)
                await officer.bring_to_front()
                await officer.screenshot(path=str(out / "officer-phone.png"))
                await console.bring_to_front()
                await console.screenshot(path=str(out / "console-desktop.png"))
                await officer.bring_to_front()
                await officer.set_viewport_size(DESKTOP)
                await asyncio.sleep(0.4)
                await officer.screenshot(path=str(out / "officer-desktop.png"))
                await console.bring_to_front()
                await console.set_viewport_size(PHONE)
                await asyncio.sleep(0.4)
                await console.screenshot(path=str(out / "console-phone.png"))
                await talking

                # The officer talking: hold the button.
                await officer.bring_to_front()
                await officer.set_viewport_size(PHONE)
                await asyncio.sleep(0.3)
                button = officer.get_by_role("button", name="Talk")
                box = await button.bounding_box()
                assert box is not None
                await officer.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                await officer.mouse.down()
                await wait_js(officer, "() => window.ptt.state().granted")
                await asyncio.sleep(1.2)
                await officer.screenshot(path=str(out / "officer-phone-talking.png"))
                await officer.mouse.up()
                await u4.send({"type": "emergency_cancel", "talkgroup": "B"})
                await officer.close()
                await console.close()

                # The auditor: search, open Unit 1's long transmission, pause part-way.
                audit, _ = await open_page(
                    ctx, f"{server.url}/audit.html#token={server.token('aud')}", "audit",
                    viewport=DESKTOP)
                await audit.get_by_label("Talkgroup").fill("A")
                await audit.get_by_role("button", name="Search").click()
                await wait_js(audit, "() => window.audit.state().results.length >= 3")
                row = audit.locator("#results-body tr").filter(has_text="Unit 1").first
                await row.get_by_role("button", name="Play").click()
                await wait_js(audit, "() => window.audit.state().waveformDrawn")
                await wait_js(audit, "() => window.audit.state().currentTime > 2.5", 20)
                await audit.get_by_role("button", name="Pause").click()
                await audit.get_by_role("button", name="Verify now").click()
                await wait_js(audit, "() => document.querySelector('#verify-result div')")
                await audit.evaluate("() => window.scrollTo(0, 0)")
                await asyncio.sleep(0.2)
                await audit.screenshot(path=str(out / "audit-desktop.png"))
                await audit.set_viewport_size(PHONE)
                await asyncio.sleep(0.4)
                await audit.evaluate("() => window.dispatchEvent(new Event('resize'))")
                # On a phone, show the player and the first results.
                await audit.locator("#player-title").scroll_into_view_if_needed()
                await audit.evaluate(
                    "() => window.scrollTo(0, document.querySelector('.player').offsetTop - 8)")
                await asyncio.sleep(0.2)
                await audit.screenshot(path=str(out / "audit-phone.png"))
                await audit.close()
            for c in (u1, u3, u4):
                await c.close()
    await command_centre(out)
    await officer_radio(out)
    for p in sorted(await asyncio.to_thread(lambda: list(out.glob("*.png")))):
        print(p)


# Units around Monas, central Jakarta, sharing their positions with control.
PLACES = {"u1": (-6.18050, 106.82650, 12), "u3": (-6.18150, 106.83000, 20),
          "u4": (-6.18400, 106.82290, 9)}


async def command_centre(out: Path) -> None:
    """The console's unit map with an emergency on it, and the officer's phone once control
    has acknowledged the emergency."""
    from playwright.async_api import async_playwright

    from tests.browser_support import chromium, open_page, silence_wav, wait_connected

    with tempfile.TemporaryDirectory(prefix="ptt-shots-cc-") as tmpdir:
        tmp = Path(tmpdir)
        quiet = silence_wav(tmp / "silence.wav", 2.0)
        async with running_server(tmp) as server, async_playwright() as pw:
            radios = {"u1": await radio(server, "u1", "A"), "u3": await radio(server, "u3", "A"),
                      "u4": await radio(server, "u4", "B")}
            async with chromium(pw, tmp / "profile", quiet, viewport=DESKTOP) as ctx:
                console, _ = await open_page(
                    ctx, f"{server.url}/console.html?monitor=A,B#token={server.token('sup')}",
                    "console", viewport=DESKTOP)
                await wait_connected(console, ["CMD", "A", "B"])
                for unit, (lat, lon, acc) in PLACES.items():
                    await radios[unit].send({"type": "location", "lat": lat, "lon": lon,
                                             "accuracy": acc})
                lat, lon, acc = PLACES["u4"]
                await radios["u4"].send({"type": "emergency_start", "talkgroup": "B",
                                         "location": {"lat": lat, "lon": lon, "accuracy": acc}})
                await wait_js(console, "() => document.querySelectorAll("
                              "'.unit-marker[data-unit]').length === 3 && "
                              "document.querySelector('.emergency-marker')")
                talking = asyncio.create_task(radios["u1"].talk("A", [b"\xf8\xff\xfe"] * 150))
                await wait_js(console, "() => document.querySelector('.unit-marker.is-talking')")
                await asyncio.sleep(0.6)  # the map settles its last frame
                await console.screenshot(path=str(out / "console-map-emergency.png"))
                await talking

                officer, _ = await open_page(
                    ctx, f"{server.url}/#token={server.token('u2')}", "officer", viewport=PHONE)
                await wait_connected(officer, ["A"])
                await officer.get_by_role("button", name="Emergency").click()
                await officer.get_by_role("button", name="Tap again to send emergency").click()
                await wait_js(console, "() => document.querySelectorAll('.alert-card').length"
                              " === 2")
                await console.locator(".alert-card").filter(has_text="Unit 2").get_by_role(
                    "button", name="Acknowledge").click()
                await wait_js(officer, "() => !document.querySelector('#ack-banner').hidden")
                await asyncio.sleep(0.4)
                await officer.bring_to_front()
                await officer.screenshot(path=str(out / "officer-phone-acknowledged.png"))
            for c in radios.values():
                await c.close()


async def officer_radio(out: Path) -> None:
    """The officer's phone in Bahasa Indonesia, scanning Alpha and Bravo (Bravo the priority)
    while Unit 4 talks on Bravo; then, in English, the scan list and the replay list with a
    transmission missed while the phone was offline."""
    from playwright.async_api import async_playwright

    from tests.audio import encode, make_speech, read_wav
    from tests.browser_support import (
        chromium,
        open_page,
        scan_with_priority,
        silence_wav,
        wait_connected,
    )

    with tempfile.TemporaryDirectory(prefix="ptt-shots-radio-") as tmpdir:
        tmp = Path(tmpdir)
        quiet = silence_wav(tmp / "silence.wav", 2.0)
        speech = encode(read_wav(make_speech(
            tmp / "speech.wav", "Unit four. Traffic jam at the toll gate, sending two units.")))
        short = encode(read_wav(make_speech(tmp / "short.wav", "Copy that.")))
        async with running_server(tmp) as server, async_playwright() as pw:
            u1 = await radio(server, "u1", "A", "B")
            u4 = await radio(server, "u4", "B")
            await u1.talk("A", short)
            await u4.talk("B", short)
            for lang, locale in (("id", "id-ID"), ("en", "en-GB")):
                async with chromium(pw, tmp / f"profile-{lang}", quiet, viewport=PHONE,
                                    locale=locale) as ctx:
                    officer, _ = await open_page(
                        ctx, f"{server.url}/#token={server.token('u3')}", "officer",
                        viewport=PHONE)
                    await wait_connected(officer, ["A"])
                    await scan_with_priority(officer, "A", "B")
                    if lang == "en":
                        # Offline for one transmission: it is listed as missed.
                        await ctx.set_offline(True)
                        await wait_js(officer, "() => window.ptt.client.offline")
                        await u1.talk("A", short)
                        await ctx.set_offline(False)
                        await wait_connected(officer, ["A", "B"], 20)
                        await wait_js(officer, "() => document.querySelector("
                                      "'#replay-list .replay-item.is-missed')", 20)
                    talking = asyncio.create_task(u4.talk("B", speech))
                    await wait_js(officer, "() => window.ptt.state().scan.current === 'B'")
                    await officer.evaluate("() => window.scrollTo(0, 0)")
                    await asyncio.sleep(0.5)  # the level meter moves
                    if lang == "id":
                        await officer.screenshot(path=str(out / "officer-phone-id.png"))
                    else:
                        await officer.locator("#scan").screenshot(
                            path=str(out / "officer-phone-scan.png"))
                        await officer.locator(".replay").screenshot(
                            path=str(out / "officer-phone-replay.png"))
                    await talking
            for c in (u1, u4):
                await c.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    asyncio.run(main(args.out))
