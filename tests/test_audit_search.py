"""The auditor's search as people ask it, on the real server: by alias and by talkgroup name,
the ledger's events (emergency, ack, clear, revoke, patch, status and text) on the channel
timeline, the copies of a patched or all-call transmission as one; and on the real audit page
(headless Chromium): grouped rows, the timeline with its events, and an export that holds
exactly what the table shows, even with another filter typed in and not yet searched."""

from __future__ import annotations

import asyncio
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ptt_server.core.model import EndReason
from ptt_server.recording.meta import TransmissionMeta
from ptt_server.recording.recorder import Recorder

from .browser_support import chromium, open_page, silence_wav, wait_js
from .conftest import RunningServer
from .test_media_e2e import Connect, connect
from .test_recording_store import PACKETS

__all__ = ["connect"]  # the fixture, used by name

PATCH = "tx-patch-0001"
CALL = "call-0000-0001"


async def record(data_dir: Path, t0: float) -> None:
    """Recordings as the recorder writes them (another process on the same data directory):
    two plain ones, a patched transmission (the talker's talkgroup and a linked copy) and an
    all-call (one recording per talkgroup, linked by the call)."""
    rec = Recorder(data_dir, "node-rec")
    await rec.start()
    for rid, tg, unit, alias, start, linked in (
        ("tx-alpha-0001", "A", "u1", "Unit 1", 0.0, None),
        ("tx-bravo-0001", "B", "u4", "Unit 4", 10.0, None),
        (PATCH, "A", "u3", "Unit 3", 20.0, None),
        ("tx-patch-0001-b", "B", "u3", "Unit 3", 20.0, PATCH),
        ("tx-allc-000a", "A", "disp", "Dispatch", 30.0, CALL),
        ("tx-allc-000b", "B", "disp", "Dispatch", 30.0, CALL),
    ):
        h = rec.begin(TransmissionMeta(rid, tg, unit, alias, "officer", "node-rec", t0 + start,
                                       linked_id=linked))
        for i, p in enumerate(PACKETS[:50]):
            h.packet(p, i * 960, i, t0 + start + i * 0.02)
        h.finish(EndReason.RELEASED, t0 + start + 1.0)
    await rec.stop()


def kind(name: str, **match: Any) -> Any:
    return lambda m: m["type"] == name and all(m.get(k) == v for k, v in match.items())


async def events_on_the_air(connect: Connect) -> None:
    """What the ledger records besides recordings, done as the units and supervisors do it."""
    u1 = await connect("u1", "A", media=False)
    sup = await connect("sup", media=False)
    for tg in ("A", "B"):
        await sup.join(tg, mode="monitor")
    await u1.send({"type": "emergency_start", "talkgroup": "A"})
    await u1.wait_for(kind("floor_granted", talkgroup="A"))
    await sup.send({"type": "emergency_ack", "talkgroup": "A"})
    await sup.wait_for(kind("emergency_acknowledged", talkgroup="A"))
    await sup.send({"type": "floor_revoke", "talkgroup": "A"})
    await u1.wait_for(kind("floor_revoked", talkgroup="A"))
    await u1.send({"type": "emergency_cancel", "talkgroup": "A"})
    await sup.wait_for(kind("emergency_cleared", talkgroup="A"))
    await sup.send({"type": "patch_create", "talkgroups": ["A", "B"]})
    patched = await sup.wait_for(kind("patched"))
    await sup.send({"type": "patch_remove", "patch_id": patched["patch_id"]})
    await sup.wait_for(kind("unpatched"))
    await u1.send({"type": "status", "talkgroup": "A", "status": "on_scene"})
    await u1.wait_for(kind("message_receipt", state="sent"))
    await u1.send({"type": "text", "talkgroup": "A", "text": "Suspect in custody"})
    await u1.wait_for(kind("text_message", text="Suspect in custody"))


async def get(server: RunningServer, path: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(
            server.url + path, headers={"Authorization": f"Bearer {server.token('aud')}"}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def ids(body: dict[str, Any]) -> list[str]:
    return [r["id"] for r in body["recordings"] if r["id"].startswith("tx-")]


@pytest.fixture
async def data(server: RunningServer, connect: Connect) -> float:
    t0 = time.time() - 600
    await record(server.config.data_dir, t0)
    await events_on_the_air(connect)
    return t0


async def test_search_by_alias_and_talkgroup_name_with_linked_copies(
    server: RunningServer, data: float
) -> None:
    since = int(data * 1000) - 1000
    # "Unit 3", however it is written, finds Unit 3's transmissions; its id does too, alone.
    assert ids(await get(server, f"/api/recordings?unit=unit%203&from={since}")) == [
        "tx-patch-0001-b", PATCH]
    assert ids(await get(server, f"/api/recordings?unit=UNIT%204&from={since}")) == [
        "tx-bravo-0001"]
    assert ids(await get(server, f"/api/recordings?unit=u4&from={since}")) == ["tx-bravo-0001"]
    # "bravo" is talkgroup B by its name; "A" is talkgroup A, not every name with an "a".
    assert ids(await get(server, f"/api/recordings?talkgroup=bravo&from={since}")) == [
        "tx-allc-000b", "tx-patch-0001-b", "tx-bravo-0001"]
    assert ids(await get(server, f"/api/recordings?talkgroup=A&from={since}")) == [
        "tx-allc-000a", PATCH, "tx-alpha-0001"]
    assert ids(await get(server, f"/api/recordings?talkgroup=nothing&from={since}")) == []
    # Each copy knows the transmission it belongs to, and the other copies, wherever they are.
    alpha = {r["id"]: r for r in (await get(
        server, f"/api/recordings?talkgroup=alph&from={since}"))["recordings"]}
    assert alpha[PATCH]["group_id"] == PATCH
    assert alpha[PATCH]["linked"] == [{"id": "tx-patch-0001-b", "talkgroup": "B"}]
    assert alpha["tx-allc-000a"]["group_id"] == CALL
    assert alpha["tx-allc-000a"]["linked"] == [{"id": "tx-allc-000b", "talkgroup": "B"}]
    assert alpha["tx-alpha-0001"]["linked"] == []


async def test_the_channel_timeline_has_the_ledgers_events(
    server: RunningServer, data: float
) -> None:
    tl = await get(server, f"/api/talkgroups/A/timeline?from={int(data * 1000) - 1000}")
    events = [(i["event"], i.get("action")) for i in tl["items"] if i["type"] == "event"]
    assert events == [
        ("emergency", "start"), ("emergency", "ack"), ("floor_revoke", None),
        ("emergency", "clear"), ("patch", "create"), ("patch", "remove"),
        ("message", "status"), ("message", "text"),
    ]
    assert tl["events"] == len(events)
    kinds = [i["type"] for i in tl["items"]]
    assert kinds.index("transmission") < kinds.index("event")  # the recordings come first
    times = [i["ts_ms"] if i["type"] == "event" else i["start_ms"] for i in tl["items"]]
    assert times == sorted(times)
    revoke = next(i for i in tl["items"] if i.get("event") == "floor_revoke")
    assert revoke["by"] == "sup" and revoke["unit"] == "u1" and "entry_hash" not in revoke
    # Bravo has the patch too, and none of Alpha's emergency.
    tl_b = await get(server, f"/api/talkgroups/B/timeline?from={int(data * 1000) - 1000}")
    assert [i["event"] for i in tl_b["items"] if i["type"] == "event"] == ["patch", "patch"]


# --- the audit page -------------------------------------------------------------------------
@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    silent = silence_wav(tmp_path / "silence.wav", 2.0)
    async with async_playwright() as pw, chromium(pw, tmp_path / "profile", silent,
                                                  accept_downloads=True) as ctx:
        yield ctx


# `window.audit` is the page's <div id="audit"> (named access) until audit.js replaces it.
STATE = "() => typeof (window.audit || {}).state === 'function' && window.audit.state()"


@pytest.mark.browser
@pytest.mark.timeout(120)
async def test_audit_page_groups_copies_shows_events_and_exports_what_it_shows(
    server: RunningServer, data: float, browser: Any, tmp_path: Path
) -> None:
    page, log = await open_page(browser, f"{server.url}/audit.html#token={server.token('aud')}",
                                "aud")
    await wait_js(page, f"() => ({STATE})() && ({STATE})().results.length >= 6", 15)

    # Search "bravo" (talkgroup B by name) and "unit 3" (by alias): the patched transmission.
    await page.get_by_label("Talkgroup", exact=True).fill("bravo")
    await page.get_by_role("button", name="Search").click()
    await wait_js(page, f"""() => {{
        const s = ({STATE})();
        return s.applied && s.applied.talkgroup === 'bravo'
            && s.results.every((r) => r.talkgroup === 'B') && s.results.length >= 3;
    }}""", 10)
    state = await page.evaluate(STATE)
    shown = {r["id"] for r in state["results"]}
    assert {"tx-bravo-0001", "tx-patch-0001-b", "tx-allc-000b"} <= shown
    # One row per transmission, naming every talkgroup it was heard on.
    rows = {r["id"]: r for r in state["rows"]}
    assert rows["tx-patch-0001-b"]["talkgroups"] == ["B", "A"]
    assert sorted(rows["tx-patch-0001-b"]["ids"]) == sorted([PATCH, "tx-patch-0001-b"])
    assert rows["tx-allc-000b"]["talkgroups"] == ["B", "A"]
    row = page.locator('#results-body tr[data-id="tx-patch-0001-b"]')
    assert "B + A" in await row.locator(".c-tg").inner_text()
    assert "2 copies" in (await row.inner_text()).lower()

    # Without a filter both copies are in the table, and still one row.
    await page.get_by_label("Talkgroup", exact=True).fill("")
    await page.get_by_role("button", name="Search").click()
    await wait_js(page, f"""() => {{
        const s = ({STATE})();
        return s.applied && !s.applied.talkgroup && s.results.some((r) => r.id === '{PATCH}')
            && s.results.some((r) => r.id === 'tx-patch-0001-b');
    }}""", 10)
    state = await page.evaluate(STATE)
    patch_rows = [r for r in state["rows"] if PATCH in r["ids"]]
    assert len(patch_rows) == 1 and sorted(patch_rows[0]["talkgroups"]) == ["A", "B"]
    assert await page.locator(f'#results-body tr[data-group="{PATCH}"]').count() == 1

    # Alpha's timeline lists the ledger's events between its transmissions.
    await page.get_by_label("Talkgroup", exact=True).fill("alpha")
    await page.get_by_role("button", name="Search").click()
    await wait_js(page, f"() => ({STATE})().results.every((r) => r.talkgroup === 'A')", 10)
    await page.get_by_role("button", name="Show channel timeline").click()
    events = page.locator("#timeline-list li[data-type=event]")
    await events.first.wait_for(timeout=10000)
    found = [(await e.get_attribute("data-event"), await e.get_attribute("data-action"))
             for e in await events.all()]
    assert ("emergency", "start") in found and ("emergency", "ack") in found
    assert ("emergency", "clear") in found and ("floor_revoke", "") in found
    assert ("patch", "create") in found and ("message", "text") in found
    assert "Suspect in custody" in await page.locator("#timeline-list").inner_text()
    # The messages found with the search.
    await page.locator("#messages-body tr").filter(has_text="Suspect in custody").wait_for(
        timeout=5000)

    # Search Bravo, then type another filter without searching: the export is the table.
    await page.get_by_label("Talkgroup", exact=True).fill("B")
    await page.get_by_role("button", name="Search").click()
    await wait_js(page, f"""() => {{
        const s = ({STATE})();
        return s.applied && s.applied.talkgroup === 'B' && s.results.length >= 3
            && s.results.every((r) => r.talkgroup === 'B');
    }}""", 10)
    table = {r["id"] for r in (await page.evaluate(STATE))["results"]}
    await page.get_by_label("Talkgroup", exact=True).fill("alpha")
    await page.get_by_label("Unit", exact=True).fill("u1")
    async with page.expect_download(timeout=20000) as info:
        await page.get_by_role("button", name="Export these results (zip)").click()
    path = tmp_path / "export.zip"
    await (await info.value).save_as(path)
    exported = {Path(n).stem for n in zipfile.ZipFile(path).namelist()
                if "/recordings/" in n and n.endswith(".opus")}
    assert exported == table
    assert log.csp_violations() == [] and log.serious() == [], log.errors
    await asyncio.sleep(0)
