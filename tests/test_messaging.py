"""Status and text messages against the real server (real Redis, real ledger): to a talkgroup
and to a unit, sanitised, with delivery and read receipts, ledgered before delivery and found
by the auditor's search; then the same on the real pages in a headless Chromium (the officer's
radio and the dispatcher's console), with a second phone as a scripted client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ptt_server.recording.store import RecordingStore

from .browser_support import PHONE, chromium, open_page, silence_wav, wait_connected, wait_js
from .conftest import RunningServer
from .test_media_e2e import Connect, connect

__all__ = ["connect"]  # the fixture, used by name

NASTY = "Car\tB 1234\u202eYX\x07 <img src=x onerror=alert(1)>\nnow"
CLEAN = "Car B 1234YX <img src=x onerror=alert(1)> now"
# What a text field can hold (an <input> drops line breaks itself); cleaned, the same text.
NASTY_LINE = "Car\tB 1234\u202eYX\x07 <img src=x onerror=alert(1)> now"


def kind(name: str, **match: Any) -> Any:
    return lambda m: m["type"] == name and all(m.get(k) == v for k, v in match.items())


async def api_get(server: RunningServer, user: str, path: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(
            server.url + path, headers={"Authorization": f"Bearer {server.token(user)}"}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def ledger_messages(server: RunningServer) -> list[dict[str, Any]]:
    store = RecordingStore(server.config.data_dir)
    return [e.data for e in store.ledger.entries() if e.type == "message"]


async def test_texts_and_statuses_reach_talkgroup_and_unit_with_receipts(
    server: RunningServer, connect: Connect
) -> None:
    u1 = await connect("u1", "A", media=False)
    u2 = await connect("u2", "A", media=False)
    disp = await connect("disp", media=False)
    await disp.join("A", mode="monitor")
    u4 = await connect("u4", "B", media=False)

    # -- A text to talkgroup A: sanitised, to both others, receipts back to the sender.
    since = len(u1.events)
    await u1.send({"type": "text", "talkgroup": "A", "text": NASTY, "ref": "r-1"})
    mine = await u1.wait_for(kind("text_message", ref="r-1"), since=since)
    assert mine["text"] == CLEAN and mine["unit"] == "u1" and mine["alias"] == "Unit 1"
    mid = mine["message_id"]
    sent = await u1.wait_for(kind("message_receipt", message_id=mid, state="sent"), since=since)
    assert sent["ref"] == "r-1"
    for other in (u2, disp):
        got = await other.wait_for(kind("text_message", message_id=mid))
        assert got["text"] == CLEAN and got["talkgroup"] == "A" and got["to"] is None
    delivered = {(await u1.wait_for(kind("message_receipt", message_id=mid, state="delivered",
                                         unit=u), since=since))["unit"] for u in ("u2", "disp")}
    assert delivered == {"u2", "disp"}
    assert not [e for e in u4.events if e["type"] == "text_message"]  # not on B

    # -- u2 has read it: u1 hears so once, however often u2 says it.
    await u2.send({"type": "read", "message_id": mid})
    await u2.send({"type": "read", "message_id": mid})
    read = await u1.wait_for(kind("message_receipt", message_id=mid, state="read"), since=since)
    assert read["unit"] == "u2" and read["alias"] == "Unit 2"
    # Someone it was never delivered to cannot mark it read.
    err = await u4.request({"type": "read", "message_id": mid}, kind("message_receipt",
                                                                         state="read"))
    assert err["type"] == "error" and err["code"] == "forbidden"

    # -- A status with a location, in both languages.
    since = len(disp.events)
    await u1.send({"type": "status", "talkgroup": "A", "status": "on_scene",
                   "location": {"lat": -6.2, "lon": 106.8}})
    status = await disp.wait_for(kind("status_update", unit="u1"), since=since)
    assert status["labels"] == {"en": "On scene", "id": "Di lokasi"}
    assert status["urgent"] is False and status["location"] == {"lat": -6.2, "lon": 106.8}

    # -- The dispatcher writes to Unit 1 directly: only u1 gets it.
    since = len(disp.events)
    await disp.send({"type": "text", "to": "u1", "text": "Plate B 1234 XY", "ref": "d-1"})
    direct = await u1.wait_for(kind("text_message", to="u1"))
    assert direct["unit"] == "disp" and direct["talkgroup"] is None
    await disp.wait_for(kind("message_receipt", message_id=direct["message_id"],
                             state="delivered", unit="u1"), since=since)
    await u1.send({"type": "read", "message_id": direct["message_id"]})
    await disp.wait_for(kind("message_receipt", message_id=direct["message_id"], state="read"),
                        since=since)
    await asyncio.sleep(0)
    assert not [e for e in u2.events if e.get("message_id") == direct["message_id"]]

    # -- Refusals: an officer writes only to colleagues and control; nothing empty or unknown.
    for client, message, code in (
        (u4, {"type": "text", "to": "u2", "text": "hi"}, "forbidden"),  # no shared talkgroup
        (u4, {"type": "text", "talkgroup": "A", "text": "hi"}, "not_joined"),
        (u1, {"type": "text", "talkgroup": "A", "text": "\x00\u202e \t"}, "bad_message"),
        (u1, {"type": "text", "talkgroup": "A", "text": "x" * 281}, "too_large"),
        (u1, {"type": "status", "talkgroup": "A", "status": "dancing"}, "unknown_status"),
        (u1, {"type": "text", "to": "ghost", "text": "hi"}, "unknown_unit"),
        (u1, {"type": "read", "message_id": "0" * 32}, "unknown_message"),
    ):
        reply = await client.request(message, kind("message_receipt", state="sent"))
        assert reply["type"] == "error" and reply["code"] == code, (message, reply)
    ok = await u4.request({"type": "text", "to": "disp", "text": "to control"},
                          kind("message_receipt", state="sent"))
    assert ok["type"] == "message_receipt"

    # -- Ledgered: each message and the read receipts, as delivered.
    entries = ledger_messages(server)
    texts = [e for e in entries if e["action"] == "text"]
    assert [e["text"] for e in texts] == [CLEAN, "Plate B 1234 XY", "to control"]
    assert texts[0]["talkgroup"] == "A" and texts[0]["unit"] == "u1" and texts[0]["ref"] == "r-1"
    reads = [(e["message_id"], e["unit"]) for e in entries if e["action"] == "read"]
    assert reads == [(mid, "u2"), (direct["message_id"], "u1")]
    assert [e["status"] for e in entries if e["action"] == "status"] == ["on_scene"]

    # -- The auditor finds them by text, by alias, by talkgroup name; with who read them.
    found = (await api_get(server, "aud", "/api/messages?q=b%201234"))["messages"]
    assert [m["message_id"] for m in found] == [direct["message_id"], mid]  # newest first
    assert found[1]["read_by"][0]["unit"] == "u2"
    by_alias = (await api_get(server, "aud", "/api/messages?unit=unit%201"))["messages"]
    assert {m["action"] for m in by_alias} == {"text", "status"}  # what Unit 1 sent
    by_name = (await api_get(server, "aud", "/api/messages?talkgroup=alph"))["messages"]
    assert {m["message_id"] for m in by_name} == {mid, status["message_id"]}
    # On the channel's timeline, between its transmissions.
    timeline = await api_get(server, "aud", "/api/talkgroups/A/timeline")
    events = [i for i in timeline["items"] if i["type"] == "event"]
    assert [(e["event"], e.get("action")) for e in events] == [("message", "text"),
                                                               ("message", "status")]


async def test_the_statuses_are_the_deployments(server: RunningServer, connect: Connect) -> None:
    path = server.config.data_dir / "statuses.json"
    path.write_text(json.dumps([
        {"id": "tkp", "labels": {"en": "At the crime scene", "id": "Di TKP"}},
        {"id": "sos", "labels": {"en": "Officer down", "id": "Anggota cedera"}, "urgent": True},
    ]))
    body = await api_get(server, "u1", "/api/statuses")
    assert [s["id"] for s in body["statuses"]] == ["tkp", "sos"]
    u1 = await connect("u1", "A", media=False)
    disp = await connect("disp", "CMD", media=False)
    await disp.join("A", mode="monitor")
    await u1.send({"type": "status", "talkgroup": "A", "status": "sos"})
    got = await disp.wait_for(kind("status_update", status="sos"))
    assert got["urgent"] is True and got["labels"]["id"] == "Anggota cedera"
    reply = await u1.request({"type": "status", "talkgroup": "A", "status": "on_scene"},
                             kind("message_receipt", state="sent"))
    assert reply["type"] == "error" and reply["code"] == "unknown_status"
    path.write_text("[{not json")  # a broken edit keeps the last good list
    assert [s["id"] for s in (await api_get(server, "u1", "/api/statuses"))["statuses"]] == [
        "tkp", "sos"]


# --- the real pages -------------------------------------------------------------------------
@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    silent = silence_wav(tmp_path / "silence.wav", 2.0)
    async with async_playwright() as pw, chromium(pw, tmp_path / "profile", silent) as ctx:
        yield ctx


def invite(server: RunningServer, path: str, user: str) -> str:
    return f"{server.url}{path}#token={server.token(user)}"


MESSAGES = "() => window.pttMessages ? window.pttMessages.list() : []"


@pytest.mark.browser
@pytest.mark.timeout(120)
async def test_officer_page_and_console_exchange_statuses_and_texts(
    server: RunningServer, connect: Connect, browser: Any
) -> None:
    officer, log_o = await open_page(browser, invite(server, "/", "u1"), "u1", viewport=PHONE)
    console, log_c = await open_page(browser, invite(server, "/console.html?monitor=A", "disp"),
                                     "disp")
    await asyncio.gather(wait_connected(officer, ["A"], 30), wait_connected(console, ["A"], 30))
    phone = await connect("u2", "A", media=False)  # another phone, a scripted one

    # The officer taps "On scene": the console and the other phone have it.
    await officer.locator('.status-btn[data-status="on_scene"]').click()
    await console.locator("#messaging .msg.is-status").filter(has_text="On scene").wait_for(
        timeout=10000)
    await phone.wait_for(kind("status_update", unit="u1", status="on_scene"))

    # The officer types a text with markup and control characters: everyone sees the text.
    await officer.locator("#messaging .msg-input").fill(NASTY_LINE)
    await officer.locator("#messaging .msg-form button[type=submit]").click()
    shown = console.locator("#messaging .msg").filter(has_text="Car B 1234")
    await shown.wait_for(timeout=10000)
    assert await shown.locator(".msg-text").inner_text() == CLEAN
    assert await console.locator("#messaging img").count() == 0  # text, never HTML
    text = await phone.wait_for(kind("text_message", unit="u1"))
    assert text["text"] == CLEAN
    # The console showed it (and said so), the phone reads it: the officer sees both.
    await phone.send({"type": "read", "message_id": text["message_id"]})
    await wait_js(officer, f"""() => {{
        const m = ({MESSAGES})().find((x) => x.message_id === "{text['message_id']}");
        return m && m.read.includes("u2") && m.read.includes("disp") && m.delivered.length >= 2;
    }}""", 10)
    receipt = officer.locator(f'#messaging .msg[data-id="{text["message_id"]}"] .msg-receipt')
    assert "Read by" in await receipt.inner_text()

    # The dispatcher writes to Unit 1 only, choosing the unit in the console.
    await wait_js(console, """() => Array.from(document.querySelectorAll(
        '#messaging .msg-target option')).some((o) => o.value === 'unit:u1')""", 10)
    await console.locator("#messaging .msg-target").select_option("unit:u1")
    await console.locator("#messaging .msg-input").fill("Plate B 1234 XY, stop it at the bridge")
    await console.locator("#messaging .msg-form button[type=submit]").click()
    await officer.locator("#messaging .msg").filter(has_text="stop it at the bridge").wait_for(
        timeout=10000)
    direct = next(m for m in await console.evaluate(MESSAGES) if m["to"] == "u1")
    await wait_js(console, f"""() => ({MESSAGES})().some(
        (m) => m.message_id === "{direct['message_id']}" && m.read.includes("u1"))""", 10)
    assert not [e for e in phone.events if e.get("message_id") == direct["message_id"]]

    for log in (log_o, log_c):
        assert not log.serious(), log.errors
    # All of it is in the ledger, texts exactly as delivered.
    actions = [(e["action"], e["unit"]) for e in ledger_messages(server)]
    assert ("status", "u1") in actions and ("text", "disp") in actions
    assert ("read", "u1") in actions and ("read", "disp") in actions
