"""Talk on any panel: the supervisor talks on a talkgroup it only monitors, with that panel's
own button and with its key, under that talkgroup's floor rules; officers there hear it
(aiortc listeners counting the packets); and before it talks, the console says whom it would
cut off (the talker its priority pre-empts), also before an all-call."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .audio import encode
from .browser_support import chromium, open_page, silence_wav, wait_connected, wait_js
from .conftest import RunningServer

pytestmark = pytest.mark.browser
HEARD = 25  # packets (half a second) a listener must get of the supervisor's transmission


async def radio(server: RunningServer, user: str, talkgroup: str) -> Any:
    from client_cli.client import PttClient

    c = PttClient(server.url, server.token(user), ice_addresses=("127.0.0.1",))
    await c.connect()
    await c.start_media(send=True)
    await c.join(talkgroup)
    await c.wait_for(lambda m: m["type"] == "downlink" and m["talkgroup"] == talkgroup)
    return c


def packets_from(listener: Any, unit: str, talkgroup: str) -> dict[str, int]:
    return {tid: len(t.packets) for tid, t in listener.transmissions.items()
            if t.unit == unit and t.talkgroup == talkgroup}


async def wait_heard(listener: Any, unit: str, talkgroup: str, known: set[str]) -> str:
    """The id of a new transmission of `unit` heard with at least HEARD packets."""
    async def heard() -> str:
        while True:
            for tid, n in packets_from(listener, unit, talkgroup).items():
                if tid not in known and n >= HEARD:
                    return tid
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(heard(), 30)  # generous: a loaded machine, a browser talker


@pytest.mark.timeout(150)
async def test_supervisor_talks_on_a_monitored_panel_and_is_warned_of_cut_offs(
    server: RunningServer, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    # 20 s of a quiet tone in Opus: the officer's long transmission.
    t = np.arange(48000 * 20) / 48000
    tone = encode((0.2 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16))
    talker = await radio(server, "u1", "A")
    listener = await radio(server, "u3", "A")
    async with async_playwright() as pw, contextlib.AsyncExitStack() as stack:
        ctx = await stack.enter_async_context(
            chromium(pw, tmp_path / "profile", silence_wav(tmp_path / "quiet.wav")))
        sup, log = await open_page(
            ctx, f"{server.url}/console.html?monitor=A#token={server.token('sup')}", "sup")
        await wait_connected(sup, ["CMD", "A"])
        panel = sup.locator('.panel[data-tg="A"]')
        button = panel.locator(".panel-ptt")
        # Monitoring, yet the panel has its own Talk, on key 2 (Command, a member, is 1).
        assert await button.get_attribute("aria-label") == "Talk on Alpha (key 2)"
        assert await button.is_enabled()

        # Unit 1 talks: the console warns that talking now cuts them off (150 > 100).
        assert (await talker.request_floor("A"))["type"] == "floor_granted"
        sending = asyncio.create_task(talker.send_audio(tone))
        warn = panel.locator(".panel-cutoff")
        await warn.filter(has_text="Talking now cuts off Unit 1.").wait_for(timeout=10000)
        # ...and so would an all-call that includes Alpha.
        await sup.locator('label[for="tx-mode-all"]').click()
        await sup.locator('label[for="allcall-A"]').click()
        await sup.locator("#tx-cutoff").filter(
            has_text="This all-call cuts off Unit 1 on Alpha.").wait_for(timeout=5000)
        await sup.locator('label[for="tx-mode-one"]').click()

        # The supervisor holds Alpha's Talk: Unit 1 is pre-empted, Unit 3 hears the supervisor.
        box = await button.bounding_box()
        assert box is not None
        await sup.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        await sup.mouse.down()
        await wait_js(sup, "() => window.ptt.state().transmitting === 'A'", 10)
        revoked = await talker.wait_for(lambda m: m["type"] == "floor_revoked")
        assert revoked["reason"] == "preempted"
        first = await wait_heard(listener, "sup", "A", set())
        assert await warn.is_hidden()  # nobody left to cut off: it is us on the air
        await sup.mouse.up()
        await listener.wait_for(lambda m: m["type"] == "floor_idle"
                                and m["transmission_id"] == first)
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending

        # Key 2 does the same, held down.
        await sup.locator("body").click(position={"x": 5, "y": 5})
        await sup.keyboard.down("2")
        await wait_js(sup, "() => window.ptt.state().transmitting === 'A'", 10)
        second = await wait_heard(listener, "sup", "A", {first})
        await sup.keyboard.up("2")
        await listener.wait_for(lambda m: m["type"] == "floor_idle"
                                and m["transmission_id"] == second)
        assert (await sup.evaluate("() => window.ptt.command()"))["keys"]["2"] == "A"
        assert log.csp_violations() == []
    for c in (talker, listener):
        await c.close()
