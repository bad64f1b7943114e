"""Emergency acknowledgement: control acknowledges, the officer's radio says so (and plays a
tone), the alert stops repeating, clearing is a separate step that leaves an open microphone
open (the officer is told), and the ledger has the acknowledgement and the clearing with who
and when. Real server, real Redis, real Chromium; repeats every second here."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from ptt_server.node.emergency_repeat import due_repeat
from ptt_server.service.keys import RECORDER

from .browser_support import PHONE, chromium, open_page, silence_wav, wait_connected, wait_js
from .conftest import RunningServer, seed_directory, server_config

REPEAT_S = 1.0


@pytest.fixture
async def ack_server(data_dir: Path, redis_url: str) -> AsyncIterator[RunningServer]:
    from ptt_server.app.wiring import create_app

    seed_directory(data_dir)
    config = server_config(data_dir, redis_url, emergency_repeat_s=REPEAT_S)
    app = create_app(config)
    ts = TestServer(app, host="127.0.0.1")
    await ts.start_server()
    yield RunningServer(url=str(ts.make_url("")).rstrip("/"), config=config, app=app)
    await ts.close()


def ledger(server: RunningServer) -> list[dict[str, Any]]:
    return [dict(e.data) for e in server.app[RECORDER].ledger.entries()]  # type: ignore[index]


def emergency_entries(server: RunningServer) -> list[dict[str, Any]]:
    return [e for e in ledger(server) if e.get("type") == "emergency"]


def test_repeat_schedule() -> None:
    assert [due_repeat(100.0, t, 10.0) for t in (100.0, 109.9, 110.0, 125.0, 131.0)] == \
        [0, 0, 1, 2, 3]


async def connect(server: RunningServer, user: str, *talkgroups: str) -> Any:
    from client_cli.client import PttClient

    c = PttClient(server.url, server.token(user))
    await c.connect()
    for tg in talkgroups:
        await c.join(tg)
    return c


async def test_ack_stops_repeats_once_and_is_ledgered(ack_server: RunningServer) -> None:
    server = ack_server
    officer = await connect(server, "u1", "A")
    sup = await connect(server, "sup", "CMD")
    disp = await connect(server, "disp", "CMD")
    # Nothing to acknowledge yet; officers may not acknowledge at all.
    none = await sup.request({"type": "emergency_ack", "talkgroup": "A"},
                             lambda m: m["type"] == "emergency_acknowledged")
    assert none["type"] == "error" and none["code"] == "not_emergency"
    await officer.send({"type": "emergency_start", "talkgroup": "A",
                        "location": {"lat": -6.2, "lon": 106.8, "accuracy": 9}})
    first = await sup.wait_for(lambda m: m["type"] == "emergency")
    assert first["repeat"] == 0
    # Unacknowledged, it comes again to every supervisor and dispatcher, counting up.
    again = await disp.wait_for(lambda m: m["type"] == "emergency" and m["repeat"] >= 2, 5)
    assert again["ts"] == first["ts"] and again["location"] == first["location"]
    refused = await officer.request({"type": "emergency_ack", "talkgroup": "A"},
                                    lambda m: m["type"] == "emergency_acknowledged")
    assert refused["type"] == "error" and refused["code"] == "forbidden"

    ack = await sup.request({"type": "emergency_ack", "talkgroup": "A"},
                            lambda m: m["type"] == "emergency_acknowledged")
    assert ack["type"] == "emergency_acknowledged", ack
    assert (ack["unit"], ack["by"], ack["alias"]) == ("u1", "sup", "Sgt Stone")
    told = await officer.wait_for(lambda m: m["type"] == "emergency_acknowledged")
    assert told["by"] == "sup"
    await disp.wait_for(lambda m: m["type"] == "emergency_acknowledged")
    # A second acknowledgement (the dispatcher, a moment later) is told who was first.
    second = await disp.request({"type": "emergency_ack", "talkgroup": "A"},
                                lambda m: m["type"] == "emergency_acknowledged"
                                and m["by"] == "sup", timeout=5)
    assert second["by"] == "sup" and second["ts"] == ack["ts"]
    # The repeats have stopped: none in three repeat intervals.
    last = max(m["repeat"] for m in sup.events if m["type"] == "emergency")
    since = len(sup.events)
    with pytest.raises(TimeoutError):
        await sup.wait_for(lambda m: m["type"] == "emergency" and m["repeat"] > last,
                           3 * REPEAT_S + 0.5, since=since)

    # Clearing is a separate step, by a supervisor who listens there.
    await sup.join("A", "monitor")
    await sup.send({"type": "emergency_cancel", "talkgroup": "A"})
    await officer.wait_for(lambda m: m["type"] == "emergency_cleared")
    entries = emergency_entries(server)
    actions = [e["action"] for e in entries]
    assert actions == ["start", "ack", "clear"], entries
    acked, cleared = entries[1], entries[2]
    assert (acked["by"], acked["alias"], acked["raised_by"]) == ("sup", "Sgt Stone", "u1")
    assert acked["at"] == ack["ts"] and acked["ts"]  # our time, and the ledger's own
    assert (cleared["by"], cleared["acked_by"], cleared["raised_by"]) == ("sup", "sup", "u1")
    assert cleared["at"] >= acked["at"]
    for c in (officer, sup, disp):
        await c.close()


async def test_an_ack_that_cannot_be_ledgered_is_not_carried_out(
    ack_server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ack_server
    officer = await connect(server, "u1", "A")
    sup = await connect(server, "sup", "CMD")
    await officer.send({"type": "emergency_start", "talkgroup": "A"})
    await sup.wait_for(lambda m: m["type"] == "emergency")
    ledger_ = server.app[RECORDER].ledger  # type: ignore[index]
    real = ledger_.append

    def failing(kind: str, fields: Any) -> Any:
        if fields.get("action") == "ack":
            raise OSError("disk full")
        return real(kind, fields)

    monkeypatch.setattr(ledger_, "append", failing)
    answer = await sup.request({"type": "emergency_ack", "talkgroup": "A"},
                               lambda m: m["type"] == "emergency_acknowledged")
    assert answer["type"] == "error" and answer["code"] == "unavailable"
    assert not any(m["type"] == "emergency_acknowledged" for m in officer.events)
    # Still unacknowledged: it keeps repeating.
    since = len(sup.events)
    await sup.wait_for(lambda m: m["type"] == "emergency" and m["repeat"] >= 1, 5, since=since)
    monkeypatch.setattr(ledger_, "append", real)
    ok = await sup.request({"type": "emergency_ack", "talkgroup": "A"},
                           lambda m: m["type"] == "emergency_acknowledged")
    assert ok["type"] == "emergency_acknowledged"
    for c in (officer, sup):
        await c.close()


@pytest.mark.browser
@pytest.mark.timeout(120)
async def test_officer_sees_control_acknowledge_and_keeps_the_open_mic(
    ack_server: RunningServer, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    server = ack_server
    async with async_playwright() as pw, contextlib.AsyncExitStack() as stack:
        ctx = await stack.enter_async_context(
            chromium(pw, tmp_path / "profile", silence_wav(tmp_path / "quiet.wav")))
        u2, log2 = await open_page(ctx, f"{server.url}/#token={server.token('u2')}", "u2",
                                   viewport=PHONE)
        sup, logs = await open_page(
            ctx, f"{server.url}/console.html?monitor=A#token={server.token('sup')}", "sup")
        await wait_connected(u2, ["A"])
        await wait_connected(sup, ["CMD", "A"])
        await u2.get_by_role("button", name="Emergency").click()
        await u2.get_by_role("button", name="Tap again to send emergency").click()
        card = sup.locator(".alert-card").filter(has_text="Unit 2")
        await card.wait_for(timeout=10000)
        # Unacknowledged: the console keeps the alarm going.
        await wait_js(sup, "() => window.ptt.command().alarms >= 1", 10)
        await wait_js(u2, "() => window.ptt.state().granted", 10)  # the emergency's open mic
        await card.get_by_role("button", name=re.compile("Acknowledge")).click()
        banner = u2.locator("#ack-banner")
        await banner.wait_for(state="visible", timeout=10000)
        assert (await banner.inner_text()).startswith("Control acknowledged \u2013 Sgt Stone")
        await wait_js(u2, "() => window.ptt.command().acknowledgedTones === 1", 5)
        await card.filter(has_text="Acknowledged by Sgt Stone").wait_for(timeout=10000)
        alarms = (await sup.evaluate("() => window.ptt.command()"))["alarms"]
        assert (await sup.evaluate("() => window.ptt.command()"))["unacknowledged"] == []

        # Clearing does not close the officer's microphone behind their back: a note says so.
        await card.get_by_role("button", name="Clear emergency").click()
        await card.wait_for(state="detached", timeout=10000)
        note = u2.locator("#emergency-status")
        await note.filter(has_text="microphone is still open").wait_for(timeout=10000)
        assert (await u2.evaluate("() => window.ptt.state()"))["granted"] is True
        assert await banner.is_hidden()
        # Talk ends it.
        talk = u2.get_by_role("button", name=re.compile("Talk"))
        await talk.dispatch_event("pointerdown", {"pointerId": 1, "button": 0,
                                                  "pointerType": "mouse"})
        await talk.dispatch_event("pointerup", {"pointerId": 1, "button": 0,
                                                "pointerType": "mouse"})
        await wait_js(u2, "() => !window.ptt.state().granted", 10)
        await note.filter(has_text="microphone is still open").wait_for(state="detached",
                                                                          timeout=5000)
        assert (await sup.evaluate("() => window.ptt.command()"))["alarms"] <= alarms + 1
        assert log2.csp_violations() == [] and logs.csp_violations() == []
    actions = [e["action"] for e in emergency_entries(server)]
    assert actions == ["start", "ack", "clear"]
