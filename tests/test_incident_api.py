"""The incident API and webhooks against the real server: an emergency-line gateway with a
service token minted by `ptt-server token` opens an incident talkgroup; the officer's real
radio page (headless Chromium) shows it at once and joins it; an alert reaches it; a real
webhook receiver (aiohttp, on loopback) gets each emergency event correctly signed, again
after answering 500; units are taken off and the incident is closed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ptt_server.app import cli
from ptt_server.core.config import Webhook
from ptt_server.core.model import Role
from ptt_server.identity.directory import Directory
from ptt_server.service.keys import TOKENS
from ptt_server.service.webhooks import signature

from .browser_support import PHONE, chromium, open_page, silence_wav, wait_connected, wait_js
from .conftest import RunningServer, seed_directory, server_config

SECRET = "whsec-3c1d5b8f0a7e4c2d9b6a"


@dataclass
class Receiver:
    """A webhook receiver: records every attempt, fails the first attempt of each event."""

    url: str = ""
    attempts: list[dict[str, Any]] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        delivery = request.headers["X-PTT-Delivery"]
        first = not any(a["delivery"] == delivery for a in self.attempts)
        self.attempts.append({"delivery": delivery, "headers": dict(request.headers),
                              "body": body, "at": time.monotonic()})
        self.event.set()
        return web.Response(status=500 if first else 204)

    def delivered(self, event: str) -> list[dict[str, Any]]:
        return [a for a in self.attempts if a["headers"]["X-PTT-Event"] == event]

    async def wait(self, event: str, attempts: int, timeout_s: float = 15.0) -> list[Any]:
        async with asyncio.timeout(timeout_s):
            while len(self.delivered(event)) < attempts:
                self.event.clear()
                await self.event.wait()
        return self.delivered(event)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/ptt", rec.handle)
    ts = TestServer(app, host="127.0.0.1")
    await ts.start_server()
    rec.url = str(ts.make_url("/hooks/ptt"))
    yield rec
    await ts.close()


@pytest.fixture
async def server(data_dir: Path, redis_url: str, receiver: Receiver
                 ) -> AsyncIterator[RunningServer]:
    from ptt_server.app.wiring import create_app

    seed_directory(data_dir)
    Directory(data_dir / "directory.sqlite3").add_user(
        "cad-110", Role.INTEGRATION, [], "pw-cad", alias="Emergency line 110")
    config = server_config(data_dir, redis_url, webhooks=(Webhook(receiver.url, SECRET),),
                           webhook_retry_s=0.2)
    app = create_app(config)
    ts = TestServer(app, host="127.0.0.1")
    await ts.start_server()
    yield RunningServer(url=str(ts.make_url("")).rstrip("/"), config=config, app=app)
    await ts.close()


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    silent = silence_wav(tmp_path / "silence.wav", 2.0)
    async with async_playwright() as pw, chromium(pw, tmp_path / "profile", silent) as ctx:
        yield ctx


def service_token(data_dir: Path, name: str) -> str:
    """What an operator does: `ptt-server token cad-110`."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["--data-dir", str(data_dir), "token", name]) == 0
    return out.getvalue().strip()


class Api:
    def __init__(self, server: RunningServer, token: str) -> None:
        self.server, self.headers = server, {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as http, http.request(
                method, self.server.url + path, json=body, headers=self.headers) as r:
            return r.status, await r.json()


def verify(attempt: dict[str, Any]) -> dict[str, Any]:
    """What the receiver does (docs/integration.md): check the signature over the timestamp
    and the body, and that the timestamp is recent."""
    headers, body = attempt["headers"], attempt["body"]
    ts = headers["X-PTT-Timestamp"]
    expected = "sha256=" + hmac.new(SECRET.encode(), f"{ts}.".encode() + body,
                                    hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-PTT-Signature"], expected)
    assert expected == signature(SECRET, ts, body)
    assert abs(time.time() - int(ts)) < 60
    payload: dict[str, Any] = json.loads(body)
    assert payload["id"] == headers["X-PTT-Delivery"]
    assert payload["event"] == headers["X-PTT-Event"]
    return payload


def kind(name: str, **match: Any) -> Any:
    return lambda m: m["type"] == name and all(m.get(k) == v for k, v in match.items())


JOINED = "(window.ptt ? window.ptt.state().joined : [])"


@pytest.mark.browser
@pytest.mark.timeout(120)
async def test_incident_opened_by_the_emergency_line_reaches_the_phones(
    server: RunningServer, receiver: Receiver, browser: Any, data_dir: Path
) -> None:
    from client_cli.client import PttClient

    token = service_token(data_dir, "cad-110")
    claims = server.app[TOKENS].verify(token)  # type: ignore[index]
    assert claims.service and claims.role is Role.INTEGRATION
    assert claims.exp - time.time() > 300 * 86400  # a service token, not a 12 h one
    cad = Api(server, token)

    officer, log = await open_page(browser, f"{server.url}/#token={server.token('u4')}", "u4",
                                   viewport=PHONE)
    await wait_connected(officer, ["B"], 30)
    u1 = PttClient(server.url, server.token("u1"), ice_addresses=("127.0.0.1",))
    disp = PttClient(server.url, server.token("disp"), ice_addresses=("127.0.0.1",))
    await u1.connect()
    await disp.connect()
    try:
        # -- Officers and the wrong roles cannot; unknown units are refused before anything.
        status, body = await Api(server, server.token("u1")).call(
            "POST", "/api/incidents", {"name": "x", "units": ["u4"]})
        assert status == 403 and body["error"]["code"] == "forbidden"
        status, body = await cad.call("POST", "/api/incidents",
                                      {"name": "x", "units": ["u4", "ghost", "aud"]})
        assert status == 400 and body["error"]["code"] == "unknown_unit"

        # -- A 110 call: the gateway opens an incident talkgroup for Unit 4 and Unit 1.
        name = "110: robbery, Jl. Sudirman 12"
        status, incident = await cad.call("POST", "/api/incidents", {
            "name": name, "units": ["u4", "u1"], "ref": "call-2026-0501-0042"})
        assert status == 201, incident
        tg = incident["talkgroup"]
        assert incident["name"] == name and incident["kind"] == "incident"
        assert [u["unit"] for u in incident["units"]] == ["u1", "u4"]
        added = await u1.wait_for(kind("talkgroup_added", talkgroup=tg))
        assert added["access"] == "member" and added["name"] == name and added["by"] == "cad-110"
        seen = await disp.wait_for(kind("talkgroup_added", talkgroup=tg))
        assert seen["access"] == "monitor"

        # The phone shows it at once, and joins it without signing in again.
        await wait_js(officer, f"""() => Array.from(document.querySelectorAll(
            '#tg-select option')).some((o) => o.value === "{tg}")""", 10)
        await officer.locator("#tg-select").select_option(tg)
        await wait_js(officer, f"() => ({JOINED}).includes('{tg}')", 15)
        assert (await u1.join(tg))["kind"] == "incident"
        status, now = await cad.call("GET", f"/api/incidents/{tg}")
        assert status == 200 and {u["unit"]: u["joined"] for u in now["units"]} == {
            "u1": True, "u4": True}

        # -- An alert to the incident: the phone shows it.
        status, sent = await cad.call("POST", f"/api/incidents/{tg}/alert",
                                      {"text": "Suspects armed, wait for backup"})
        assert status == 201
        await officer.locator("#messaging .msg.is-urgent").filter(
            has_text="wait for backup").wait_for(timeout=10000)
        mid = sent["messages"][0]["message_id"]
        for _ in range(100):  # the phone says it showed it: the API is polled, 10 s at most
            if "u4" in (await cad.call("GET", f"/api/alerts/{mid}"))[1]["read"]:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the alert was never marked read")

        # -- Who is where.
        status, units = await cad.call("GET", f"/api/units?talkgroup={tg}")
        where = {u["unit"]: [o["talkgroup"] for o in u["online"]] for u in units["units"]}
        assert tg in where["u4"] and tg in where["u1"]

        # -- Unit 1 raises an emergency on it: the receiver is told, signed, after a 500.
        await u1.send({"type": "emergency_start", "talkgroup": tg,
                       "location": {"lat": -6.2, "lon": 106.8}})
        first, second = await receiver.wait("emergency", 2)
        assert first["delivery"] == second["delivery"]  # the same event, retried
        assert second["at"] - first["at"] >= 0.15  # after the backoff, not at once
        event = verify(second)
        assert verify(first)["id"] == event["id"]
        assert event["data"]["talkgroup"] == tg and event["data"]["unit"] == "u1"
        assert event["data"]["location"] == {"lat": -6.2, "lon": 106.8}
        assert event["ledger_seq"] > 0 and event["ts"].endswith("Z")
        await disp.join(tg, mode="monitor")
        await disp.send({"type": "emergency_ack", "talkgroup": tg})
        ack = verify((await receiver.wait("emergency_ack", 2))[-1])
        assert ack["data"]["by"] == "disp"
        await u1.send({"type": "emergency_cancel", "talkgroup": tg})
        cleared = verify((await receiver.wait("emergency_cleared", 2))[-1])
        assert cleared["data"]["by"] == "u1"

        # -- Unit 1 is taken off: it leaves the talkgroup; then the incident closes.
        status, _ = await cad.call("DELETE", f"/api/incidents/{tg}/units/u1")
        assert status == 200
        gone = await u1.wait_for(kind("talkgroup_removed", talkgroup=tg))
        assert gone["reason"] == "unassigned"
        await u1.wait_for(kind("left", talkgroup=tg))
        status, _ = await cad.call("DELETE", f"/api/incidents/{tg}")
        assert status == 200
        await wait_js(officer, f"""() => !({JOINED}).includes('{tg}') && !Array.from(
            document.querySelectorAll('#tg-select option')).some((o) => o.value === "{tg}")""",
                      10)
        await disp.wait_for(kind("talkgroup_removed", talkgroup=tg, reason="closed"))
        assert (await cad.call("GET", f"/api/incidents/{tg}"))[0] == 404
        assert not log.serious(), log.errors
    finally:
        await asyncio.gather(u1.close(), disp.close(), return_exceptions=True)

    # Every change was ledgered, with the caller's reference.
    from ptt_server.recording.store import RecordingStore

    entries = [e.data for e in RecordingStore(data_dir).ledger.entries()
               if e.type == "incident"]
    assert [e["action"] for e in entries] == ["create", "remove_unit", "close"]
    assert entries[0]["ref"] == "call-2026-0501-0042" and entries[0]["by"] == "cad-110"


async def test_webhooks_follow_the_ledger_once_per_event(
    data_dir: Path, redis: Any, receiver: Receiver
) -> None:
    """Two processes on one data directory (two Webhooks on one ledger and one Redis) send
    each event once; only the events asked for; a refusal (4xx) is given up at once."""
    from ptt_server.recording import layout
    from ptt_server.recording.ledger import Ledger
    from ptt_server.service.webhooks import Webhooks

    ledger = Ledger(layout.ledger_path(data_dir))
    ledger.path.parent.mkdir(parents=True, exist_ok=True)
    ledger.append("emergency", {"action": "start", "talkgroup": "A"})  # before: not sent
    refused: list[str] = []

    async def refuse(request: web.Request) -> web.Response:
        refused.append(request.headers["X-PTT-Event"])
        return web.Response(status=410)

    app = web.Application()
    app.router.add_post("/gone", refuse)
    gone = TestServer(app, host="127.0.0.1")
    await gone.start_server()
    hooks = [Webhook(receiver.url, SECRET, events=("recording_failed",)),
             Webhook(str(gone.make_url("/gone")), SECRET)]
    processes = [Webhooks(data_dir, hooks, redis, retry_s=0.05) for _ in range(2)]
    runs = [asyncio.create_task(w.run()) for w in processes]
    try:
        async with asyncio.timeout(5):
            for w in processes:
                await w.started.wait()
        await asyncio.to_thread(ledger.append, "recording_failed", {
            "id": "rec-00000002", "talkgroup": "A", "unit": "u1", "reason": "disk full"})
        await asyncio.to_thread(ledger.append, "emergency", {
            "action": "start", "talkgroup": "A", "unit": "u1"})
        _first, second = await receiver.wait("recording_failed", 2)  # a 500, then taken
        payload = verify(second)
        assert payload["data"] == {"id": "rec-00000002", "talkgroup": "A", "unit": "u1",
                                   "reason": "disk full"}

        def settled() -> bool:  # three deliveries ended: one taken, two refused
            ended = [r.delivered + r.failed for w in processes for r in w.receivers]
            return sum(ended) == 3

        async with asyncio.timeout(10):
            while not settled():
                waits = [asyncio.ensure_future(w.done.wait()) for w in processes]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for w, waiting in zip(processes, waits, strict=True):
                    waiting.cancel()
                    w.done.clear()
        # Each event was queued once over both processes, and the refusal never retried.
        assert sum(r.queued for w in processes for r in w.receivers) == 3
        assert sorted(refused) == ["emergency", "recording_failed"]
        assert len(receiver.attempts) == 2 and not receiver.delivered("emergency")
    finally:
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        await gone.close()
