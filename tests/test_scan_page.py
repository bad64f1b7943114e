"""Scan on the officer page, in a real Chromium on a phone viewport: an officer listening to
two talkgroups hears a talker on each, the priority talkgroup pre-empts the other's playback
(the other talker keeps their floor: floor rules stay per talkgroup), the display names the
talkgroup of the current talker, and a muted talkgroup is not heard.

The talkers are aiortc clients sending sines of different frequencies; what reaches the
page's speaker is read from an analyser on the page's output mix, so "heard" means audio
that plays, not packets that arrive."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from .audio import tone_packets
from .browser_support import (
    PHONE,
    chromium,
    open_page,
    scan_with_priority,
    silence_wav,
    wait_connected,
    wait_js,
)
from .conftest import RunningServer

pytestmark = pytest.mark.browser
LOW, HIGH = 440.0, 1320.0  # Alpha's talker, Bravo's talker
HEARD_DB = -60.0  # a tone at the speaker is far above this; a held or muted one far below
GONE_DB = -85.0


async def radio(server: RunningServer, user: str, talkgroup: str) -> Any:
    from client_cli.client import PttClient

    c = PttClient(server.url, server.token(user), ice_addresses=("127.0.0.1",))
    await c.connect()
    await c.start_media(send=True)
    await c.join(talkgroup)
    return c


async def wait_output(
    page: Any, heard: list[float], silent: list[float], timeout_s: float = 20
) -> None:
    """Until every frequency in `heard` reaches the speaker and none in `silent` does."""
    await wait_js(page, """([heard, silent, hi, lo]) => {
        const db = window.ptt.outputSpectrum([...heard, ...silent]);
        return db.slice(0, heard.length).every((v) => v > hi)
            && db.slice(heard.length).every((v) => !(v > lo));
    }""", timeout_s, [heard, silent, HEARD_DB, GONE_DB])


async def talking(client: Any, talkgroup: str, freq: float) -> asyncio.Task[None]:
    grant = await client.request_floor(talkgroup)
    assert grant["type"] == "floor_granted", grant
    return asyncio.create_task(client.send_audio(tone_packets(freq, 30)))


async def stop(client: Any, talkgroup: str, task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await client.release_floor(talkgroup)


@pytest.mark.timeout(180)
async def test_scanning_two_talkgroups_with_priority_and_mute(
    server: RunningServer, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    alpha = await radio(server, "u1", "A")
    bravo = await radio(server, "u4", "B")
    async with async_playwright() as pw, contextlib.AsyncExitStack() as stack:
        ctx = await stack.enter_async_context(
            chromium(pw, tmp_path / "profile", silence_wav(tmp_path / "quiet.wav"),
                     viewport=PHONE))
        page, log = await open_page(ctx, f"{server.url}/#token={server.token('u3')}", "u3")
        await wait_connected(page, ["A"])
        # Scan on, Bravo added to the list and made the priority talkgroup.
        await scan_with_priority(page, "A", "B")
        state = await page.evaluate("() => window.ptt.state().scan")
        assert (state["on"], state["list"], state["priority"]) == (True, ["B"], "B")
        assert await page.evaluate("() => window.ptt.state().txTalkgroup") == "A"

        # Unit 1 on Alpha: heard, and the display says who.
        on_a = await talking(alpha, "A", LOW)
        await wait_output(page, [LOW], [HIGH])
        await page.locator("#talker-name").filter(has_text="Unit 1").wait_for(timeout=10000)
        # Unit 4 on Bravo, the priority: Bravo is heard, Alpha held back, the display names Bravo.
        on_b = await talking(bravo, "B", HIGH)
        await wait_output(page, [HIGH], [LOW])
        label = page.locator("#talker-label")
        await label.filter(has_text="Talking on Bravo").wait_for(timeout=10000)
        assert await page.locator("#talker-name").inner_text() == "Unit 4"
        row_a = page.locator('#scan-list li[data-tg="A"]')
        assert "is-held" in (await row_a.get_attribute("class") or "")
        # Playback only: Unit 1 still holds Alpha's floor, and was told nothing.
        assert not [m for m in alpha.events if m["type"] in ("floor_revoked", "floor_idle")]
        assert await page.evaluate("() => window.ptt.state().talkers.A") == "Unit 1"
        # Bravo ends: Alpha plays again.
        await stop(bravo, "B", on_b)
        await wait_output(page, [LOW], [HIGH])

        # Bravo muted: its talker is not heard, and (muted) does not pre-empt Alpha.
        await page.locator('#scan-list li[data-tg="B"] .scan-mute').click()
        on_b = await talking(bravo, "B", HIGH)
        await wait_js(page, "() => window.ptt.state().talkers.B === 'Unit 4'", 10)
        await page.locator('#scan-list li[data-tg="B"] .scan-status').filter(
            has_text="(muted)").wait_for(timeout=10000)
        await wait_output(page, [LOW], [HIGH])
        await stop(bravo, "B", on_b)
        await stop(alpha, "A", on_a)

        # The choices are kept on this device for this officer.
        await page.reload()
        await wait_connected(page, ["A", "B"])
        state = await page.evaluate("() => window.ptt.state().scan")
        assert (state["on"], state["list"], state["priority"], state["muted"]) == (
            True, ["B"], "B", ["B"])
        assert log.csp_violations() == []
        assert log.serious() == []
    for c in (alpha, bravo):
        await c.close()
