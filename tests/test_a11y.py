"""The officer's radio without a hold: latch mode from the keyboard alone, and a Talk button
that does not move when the lines above it change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .browser_support import PHONE, chromium, open_page, silence_wav, wait_connected, wait_js
from .conftest import RunningServer

pytestmark = pytest.mark.browser



@pytest.mark.timeout(120)
async def test_latch_from_the_keyboard_and_a_stable_talk_button(
    server: RunningServer, playwright: Any, tmp_path: Path
) -> None:
    wav = silence_wav(tmp_path / "quiet.wav")
    async with chromium(playwright, tmp_path / "profile", wav, locale="en-GB") as ctx:
        talker, log = await open_page(
            ctx, f"{server.url}/#token={server.token('u1')}", "u1", viewport=PHONE)
        listener, _ = await open_page(
            ctx, f"{server.url}/#token={server.token('u2')}", "u2", viewport=PHONE)
        await wait_connected(talker, ["A"])
        await wait_connected(listener, ["A"])
        await talker.evaluate("() => { document.querySelector('.ptt-settings').open = true; }")
        await talker.get_by_label("Tap to talk, tap to stop").check()
        # Tab to the Talk button (bounded), then Enter: the channel is ours and stays ours.
        await talker.evaluate("() => document.activeElement && document.activeElement.blur()")
        for _ in range(40):
            await talker.keyboard.press("Tab")
            if await talker.evaluate("() => document.activeElement.id") == "talk-button":
                break
        else:
            raise AssertionError("Talk button not reachable with Tab")
        await talker.keyboard.press("Enter")
        await wait_js(talker, "() => window.ptt.state().granted", 10)
        assert await talker.get_by_role("button", name="Talk").get_attribute(
            "aria-pressed") == "true"
        # The listener is told who talks (the gate is open for the latch, not for a hold).
        await wait_js(listener, "() => (document.querySelector('#talker-name').textContent"
                                " || '').length > 0", 10)
        await wait_js(talker, "() => window.ptt.state().granted", 2)
        await talker.keyboard.press("Enter")
        await wait_js(talker, "() => !window.ptt.state().granted", 10)
        assert await talker.get_by_role("button", name="Talk").get_attribute(
            "aria-pressed") == "false"

        # The button stays put when a long busy text and a 64-character alias appear.
        talk = talker.locator("#talk-button")
        before = await talk.bounding_box()
        await talker.evaluate("""() => {
            document.querySelector('#talker-name').textContent = 'X'.repeat(64);
            document.querySelector('#talker-label').textContent = 'Emergency call - talking';
            document.querySelector('#tx-info').textContent =
                'Channel busy - ' + 'Y'.repeat(64) + ' is talking. You are number 3 in the queue.';
        }""")
        after = await talk.bounding_box()
        assert before is not None and after is not None
        assert abs(before["y"] - after["y"]) < 1 and abs(before["x"] - after["x"]) < 1
        # Targets are at least 44 x 44 px.
        small = await talker.evaluate("""() => [...document.querySelectorAll(
            '#radio button, #radio select, #radio summary, header button, header select')]
            .filter((e) => e.offsetParent !== null)
            .map((e) => [e.id || e.className, e.getBoundingClientRect()])
            .filter(([, r]) => r.width < 44 || r.height < 44).map(([n]) => n)""")
        assert small == []
        assert log.csp_violations() == []
