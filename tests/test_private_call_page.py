"""A private call between two officer pages, in two real Chromiums on phone viewports: Unit 1
calls Unit 3 from the member list, Unit 3's phone rings and the call is accepted, each side
talks with the Talk button and the other hears it (the two fake microphones play sines of
different frequencies, read at the listener's speaker), Unit 1 ends the call, and the
request, the answer, the end and both transmissions are in the ledger."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest

from .browser_support import PHONE, chromium, open_page, tone_wav, wait_connected, wait_js
from .conftest import RunningServer
from .test_recording_e2e import ledger_entries, wait_for_entries

pytestmark = pytest.mark.browser
CALLER_HZ, CALLEE_HZ = 440.0, 1320.0
HEARD_DB = -60.0


async def hold_talk(page: Any) -> None:
    button = page.locator("#talk-button")
    await button.scroll_into_view_if_needed()
    box = await button.bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    await page.mouse.down()


FLOOR_TID = "(tg) => window.ptt.client.groups.get(tg).floor.tid"


async def hears(page: Any, freq: float, timeout_s: float = 20) -> None:
    await wait_js(page, "([f, db]) => window.ptt.outputSpectrum([f])[0] > db", timeout_s,
                  [freq, HEARD_DB])


@pytest.mark.timeout(180)
async def test_private_call_requested_accepted_heard_both_ways_and_ledgered(
    server: RunningServer, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw, contextlib.AsyncExitStack() as stack:
        pages = {}
        for user, hz in (("u1", CALLER_HZ), ("u3", CALLEE_HZ)):
            ctx = await stack.enter_async_context(chromium(
                pw, tmp_path / f"profile-{user}", tone_wav(tmp_path / f"{user}.wav", hz, 30),
                viewport=PHONE))
            pages[user] = await open_page(ctx, f"{server.url}/#token={server.token(user)}", user)
        caller, caller_log = pages["u1"]
        callee, callee_log = pages["u3"]
        for page in (caller, callee):  # both are in Alpha (their first talkgroup)
            await wait_connected(page, ["A"])
            assert await page.evaluate("() => window.ptt.state().talkgroup") == "A"

        # From the member list: Call Unit 3.
        row = caller.locator("#members li", has_text="Unit 3")
        await row.locator(".member-call").click()
        await caller.locator("#call-bar").filter(has_text="Calling Unit 3").wait_for(timeout=10000)
        # Unit 3's phone rings with the caller's name; accept.
        sheet = callee.locator("#call-sheet")
        await sheet.filter(has_text="Unit 1").wait_for(timeout=10000)
        assert await sheet.get_attribute("role") == "alertdialog"
        await sheet.locator(".call-accept").click()
        tg = await wait_js(caller, "() => window.ptt.state().call.call?.phase === 'active'"
                                   " && window.ptt.state().txTalkgroup", 15)
        assert tg.startswith("pc-")
        for page in (caller, callee):
            await wait_js(page, "(tg) => window.ptt.state().txTalkgroup === tg", 15, tg)
            await wait_connected(page, ["A", tg])
        await caller.locator("#call-bar").filter(has_text="Private call with Unit 3").wait_for()
        await callee.locator("#call-bar").filter(has_text="Private call with Unit 1").wait_for()
        assert await sheet.is_hidden()

        # Unit 1 talks: Unit 3 hears the caller's tone; then the other way round.
        tids = set()
        for talker, listener, hz in ((caller, callee, CALLER_HZ), (callee, caller, CALLEE_HZ)):
            await hold_talk(talker)
            await wait_js(talker, "(tg) => window.ptt.state().transmitting === tg", 15, tg)
            tids.add(await wait_js(listener, FLOOR_TID, 15, tg))
            await hears(listener, hz)
            await talker.mouse.up()
            await wait_js(listener, "(tg) => window.ptt.state().talkers[tg] === null", 15, tg)

        # Unit 1 ends it: both pages say so, Talk is back on Alpha.
        await caller.locator("#call-bar .call-hangup").click()
        for page in (caller, callee):
            await wait_js(page, "() => window.ptt.state().call.last?.reason === 'ended'"
                                " && window.ptt.state().txTalkgroup === 'A'", 15)
        await callee.locator("#call-bar").filter(has_text="Call with Unit 1 ended").wait_for()
        for log in (caller_log, callee_log):
            assert log.csp_violations() == []
            assert log.serious() == []

    calls = [e for e in ledger_entries(server.config.data_dir) if e["type"] == "private_call"]
    assert [e["action"] for e in calls] == ["request", "accepted", "ended"]
    assert all((e["from"], e["to"]) == ("u1", "u3") for e in calls)
    assert calls[-1]["by"] == "u1"
    recorded = await wait_for_entries(server.config.data_dir, tids)
    assert {e["talkgroup"] for e in recorded.values()} == {tg}
    assert sorted(e["unit"] for e in recorded.values()) == ["u1", "u3"]
