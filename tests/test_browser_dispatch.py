"""Dispatcher tools in the web clients, in a real headless Chromium against the real server:
patches made and removed on the console (and seen by officers), and the all-call.

One browser process with a silent fake microphone holds every page (each in its own tab with
its own sign-in); the talking officer is a scripted Python radio sending real speech.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .browser_support import (
    PHONE,
    SILENCE,
    SPEECH,
    chromium,
    open_page,
    ptt_state,
    silence_wav,
    wait_connected,
    wait_js,
)
from .conftest import RunningServer

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def speech_packets(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    from .audio import encode, make_speech, read_wav

    wav = make_speech(
        tmp_path_factory.mktemp("dispatch-audio") / "speech.wav",
        "Unit one to all units. Suspect vehicle now heading south on the ring road. "
        "Bravo units, set up a roadblock at the bridge.",
    )
    return encode(read_wav(wav))


@pytest.fixture
async def quiet_browser(tmp_path: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    silent = silence_wav(tmp_path / "silence.wav", 2.0)
    async with async_playwright() as pw, chromium(pw, tmp_path / "profile", silent) as ctx:
        yield ctx


def invite(server: RunningServer, path: str, user: str) -> str:
    return f"{server.url}{path}#token={server.token(user)}"


async def python_radio(server: RunningServer, user: str, talkgroup: str) -> Any:
    from client_cli.client import PttClient

    c = PttClient(server.url, server.token(user), ice_addresses=("127.0.0.1",))
    await c.connect()
    await c.start_media(send=True)
    await c.join(talkgroup)
    await c.wait_for(lambda m: m["type"] == "downlink" and m["talkgroup"] == talkgroup)
    return c


async def hold(page: Any, button: Any) -> None:
    box = await button.bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    await page.mouse.down()


@pytest.mark.timeout(120)
async def test_console_patches_talkgroups_and_dispatch_all_calls(
    server: RunningServer, quiet_browser: Any, speech_packets: list[bytes]
) -> None:
    console = "/console.html?monitor=A,B"
    sup, log_sup = await open_page(quiet_browser, invite(server, console, "sup"), "sup")
    disp, log_disp = await open_page(quiet_browser, invite(server, console, "disp"), "disp")
    u4, log4 = await open_page(quiet_browser, invite(server, "/", "u4"), "u4", viewport=PHONE)
    u2, log2 = await open_page(quiet_browser, invite(server, "/", "u2"), "u2", viewport=PHONE)
    u1, *_ = await asyncio.gather(
        python_radio(server, "u1", "A"),
        wait_connected(sup, ["CMD", "A", "B"], 30), wait_connected(disp, ["CMD", "A", "B"], 30),
        wait_connected(u4, ["B"], 30), wait_connected(u2, ["A"], 30),
    )
    sending: asyncio.Task[None] | None = None
    try:
        # -- The supervisor patches Alpha and Bravo.
        patches = sup.locator(".patches")
        await patches.get_by_label("Alpha", exact=True).check()
        await patches.get_by_label("Bravo", exact=True).check()
        await patches.get_by_role("button", name="Patch Alpha and Bravo").click()
        await patches.locator(".patch-item").filter(has_text="Alpha + Bravo").wait_for(
            timeout=10000)
        badge_a = sup.locator('.panel[data-tg="A"] .patch-badge')
        badge_b = sup.locator('.panel[data-tg="B"] .patch-badge')
        await badge_a.filter(has_text="Patched with Bravo").wait_for(timeout=5000)
        assert await badge_b.inner_text() == "Patched with Alpha"
        # The officer on Bravo is told that Alpha hears them too (u4 may not use Alpha, so
        # its page knows it by its id only).
        banner = u4.locator("#patch-banner")
        await banner.filter(has_text="Patched with").wait_for(timeout=10000)
        assert "everyone in both hears you" in await banner.inner_text()
        assert (await ptt_state(u4))["patch"]["talkgroups"] == ["A", "B"]
        # Unit 2 on Alpha learnt it from the `patched` event as well.
        await u2.locator("#patch-banner").filter(has_text="Patched with").wait_for(timeout=10000)

        # -- Unit 1 talks on Alpha: Unit 4 on Bravo hears it through the patch.
        assert (await ptt_state(u4))["maxLevel"]["B"] < SILENCE  # silent until then
        await u4.evaluate("() => window.ptt.resetLevels()")
        assert (await u1.request_floor("A"))["type"] == "floor_granted"
        sending = asyncio.create_task(u1.send_audio(speech_packets * 2))
        await wait_js(u4, "() => window.ptt.state().talker === 'Unit 1'", 10)
        await wait_js(u4, f"() => window.ptt.state().maxLevel.B > {SPEECH}", 15)
        assert await u4.locator("#talker-name").inner_text() == "Unit 1"

        # Unpatching mid-transmission is refused, readably.
        await patches.get_by_role("button", name="Unpatch Alpha and Bravo").click()
        await sup.locator("#patch-msg").filter(has_text="someone is talking").wait_for(
            timeout=10000)
        assert await patches.locator(".patch-item").count() == 1

        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        sending = None
        await u1.release_floor("A")
        await wait_js(u4, "() => window.ptt.state().talker === null", 10)

        # -- The channel is clear: the supervisor unpatches; the notices go away.
        await patches.get_by_role("button", name="Unpatch Alpha and Bravo").click()
        await patches.locator(".patch-item").wait_for(state="detached", timeout=10000)
        await banner.wait_for(state="hidden", timeout=10000)
        await u2.locator("#patch-banner").wait_for(state="hidden", timeout=10000)
        assert await badge_a.is_hidden() and await badge_b.is_hidden()
        assert (await ptt_state(u4))["patch"] is None

        # -- The dispatcher all-calls Alpha and Bravo: both officers see "Dispatch".
        await disp.locator("#tx-mode label").filter(has_text="All-call").click()
        assert await disp.get_by_label("All-call", exact=True).is_checked()
        all_call = disp.locator("#tx-all")
        await all_call.get_by_label("Alpha", exact=True).check()
        await all_call.get_by_label("Bravo", exact=True).check()
        talk = disp.locator("#talk-button")  # the main bar (each panel has its own too)
        await hold(disp, talk)
        await wait_js(disp, """() => {
            const s = window.ptt.state();
            return s.allCall && s.allCall.phase === 'granted';
        }""", 10)
        await wait_js(u2, "() => window.ptt.state().talker === 'Dispatch'", 10)
        await wait_js(u4, "() => window.ptt.state().talker === 'Dispatch'", 10)
        assert await u2.locator("#talker-name").inner_text() == "Dispatch"
        assert await u4.locator("#talker-name").inner_text() == "Dispatch"
        await wait_js(sup, """() => window.ptt.state().talkers.A === 'Dispatch'
                                && window.ptt.state().talkers.B === 'Dispatch'""", 10)
        assert "All-call on Alpha and Bravo" in await disp.locator("#tx-info").inner_text()
        await disp.mouse.up()
        await wait_js(u2, "() => window.ptt.state().talker === null", 10)
        await wait_js(u4, "() => window.ptt.state().talker === null", 10)
        assert (await ptt_state(disp))["phase"] == "idle"

        # -- An all-call that cannot have every floor has none: the supervisor (as high a
        # priority as the dispatcher) talks on Command, so calling Command too is refused,
        # naming the talker, and Alpha and Bravo are given back.
        await hold(sup, sup.locator("#talk-button"))
        await wait_js(sup, "() => window.ptt.state().granted", 10)
        await all_call.get_by_label("Command", exact=True).check()
        await hold(disp, talk)
        await disp.locator("#tx-info").filter(has_text="Sgt Stone is talking").wait_for(
            timeout=10000)
        assert "Command" in await disp.locator("#tx-info").inner_text()
        await disp.mouse.up()
        await sup.mouse.up()
        await wait_js(disp, "() => window.ptt.state().talkers.CMD === null", 10)
        for page in (u2, u4):
            await wait_js(page, "() => window.ptt.state().talker === null", 10)
        s_disp = await ptt_state(disp)
        assert not s_disp["granted"] and s_disp["allCall"] is None
    finally:
        if sending is not None:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
        await u1.close()

    for log in (log_sup, log_disp, log4, log2):
        assert log.csp_violations() == [], log.name
        assert log.serious() == [], (log.name, log.serious())
