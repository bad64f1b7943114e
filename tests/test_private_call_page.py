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
from .polling import until
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

        # A call the rules refuse (an officer may not call the supervisor) is said, and over.
        await caller.evaluate("() => window.ptt.callUnit('sup')")
        await wait_js(caller, "() => window.ptt.state().call.last?.reason === 'error'"
                              " && window.ptt.state().call.call === null", 10)
        assert await caller.locator("#call-bar .call-text").inner_text() != ""

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


@pytest.mark.timeout(180)
async def test_a_supervisor_calls_a_unit_from_the_console(
    server: RunningServer, tmp_path: Path
) -> None:
    """The console's presence list calls Unit 1 (a radio, aiortc); accepted, the call's
    talkgroup gets a panel of its own whose Talk reaches Unit 1, and Unit 1's reply is heard
    at the console's speaker; Unit 1 ends it."""
    from playwright.async_api import async_playwright

    from client_cli.client import PttClient

    from .audio import tone_packets

    unit = PttClient(server.url, server.token("u1"), ice_addresses=("127.0.0.1",))
    await unit.connect()
    await unit.start_media(send=True)
    await unit.join("A")
    try:
        async with async_playwright() as pw, chromium(
            pw, tmp_path / "profile", tone_wav(tmp_path / "sup.wav", CALLEE_HZ, 30)
        ) as ctx:
            console, log = await open_page(
                ctx, f"{server.url}/console.html?monitor=A#token={server.token('sup')}", "sup")
            await wait_connected(console, ["CMD", "A"])
            await console.locator("#presence li", has_text="Unit 1").locator(
                ".member-call").click()
            incoming = await unit.wait_for(lambda m: m["type"] == "private_call_incoming")
            assert (incoming["unit"], incoming["role"]) == ("sup", "supervisor")
            await unit.send({"type": "private_call_answer", "call_id": incoming["call_id"],
                             "accept": True})
            started = await unit.wait_for(lambda m: m["type"] == "private_call_started")
            tg = started["talkgroup"]
            await unit.wait_for(lambda m: m["type"] == "downlink" and m["talkgroup"] == tg)
            await console.locator("#call-bar").filter(
                has_text="Private call with Unit 1").wait_for(timeout=15000)
            await wait_connected(console, ["CMD", "A", tg])

            # The call's own panel, and its Talk: Unit 1 hears the supervisor.
            button = console.locator(f'.panel[data-tg="{tg}"] .panel-ptt')
            await button.scroll_into_view_if_needed()
            box = await button.bounding_box()
            assert box is not None
            await console.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            await console.mouse.down()
            await wait_js(console, "(tg) => window.ptt.state().transmitting === tg", 15, tg)
            sup_tid = (await unit.wait_for(lambda m: m["type"] == "floor_taken"
                                           and m["talkgroup"] == tg))["transmission_id"]
            await until(lambda: len(unit.received(tg)) >= 25, 20)
            await console.mouse.up()
            await unit.wait_for(lambda m: m["type"] == "floor_idle" and m["talkgroup"] == tg)
            # Unit 1 answers: heard at the console.
            reply = await unit.talk(tg, tone_packets(CALLER_HZ, 3))
            await hears(console, CALLER_HZ)
            await unit.send({"type": "private_call_end", "call_id": incoming["call_id"]})
            await wait_js(console, "() => window.ptt.call().last?.reason === 'ended'", 15)
            await console.locator("#call-bar").filter(
                has_text="Call with Unit 1 ended").wait_for(timeout=10000)
            await wait_js(console, "(tg) => !window.ptt.state().joined.includes(tg)", 15, tg)
            assert log.csp_violations() == []
    finally:
        await unit.close()
    recorded = await wait_for_entries(server.config.data_dir,
                                      {sup_tid, reply["transmission_id"]})
    assert sorted(e["unit"] for e in recorded.values()) == ["sup", "u1"]
    calls = [e for e in ledger_entries(server.config.data_dir) if e["type"] == "private_call"]
    assert [(e["action"], e["from"], e["to"]) for e in calls] == [
        ("request", "sup", "u1"), ("accepted", "sup", "u1"), ("ended", "sup", "u1")]

