"""Emergency ownership stays with the raiser, and revokes and patches fail closed when the
audit ledger cannot record them."""

from __future__ import annotations

import asyncio

import pytest

from client_cli.client import PttClient
from ptt_server.service.keys import NODE

from .conftest import RunningServer


async def test_another_officer_cannot_take_over_and_clear_an_emergency(
    server: RunningServer,
) -> None:
    raiser = PttClient(server.url, server.token("u1"))
    other = PttClient(server.url, server.token("u3"))
    try:
        for c in (raiser, other):
            await c.connect()
            await c.join("A")
        await raiser.send({"type": "emergency_start", "talkgroup": "A"})
        await raiser.wait_for(lambda m: m["type"] == "floor_granted" and m["emergency"])
        # The second officer presses Emergency too, then tries to clear it.
        await other.send({"type": "emergency_start", "talkgroup": "A"})
        await other.send({"type": "emergency_cancel", "talkgroup": "A"})
        refused = await other.wait_for(lambda m: m["type"] == "error", 10)
        assert refused["code"] == "forbidden"
        # The raiser still can.
        await raiser.send({"type": "emergency_cancel", "talkgroup": "A"})
        cleared = await raiser.wait_for(lambda m: m["type"] == "emergency_cleared", 10)
        assert cleared["by"] == "u1"
    finally:
        await asyncio.gather(raiser.close(), other.close(), return_exceptions=True)


@pytest.fixture
def broken_ledger(server: RunningServer) -> object:
    """The ledger refuses every append (a full or read-only disk), then works again."""
    node = server.app[NODE]  # type: ignore[index]
    ledger = node.recorder.ledger
    original = ledger.append

    def refuse(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    ledger.append = refuse
    yield node
    ledger.append = original


async def test_revoke_and_patch_are_refused_when_they_cannot_be_ledgered(
    server: RunningServer, broken_ledger: object
) -> None:
    talker = PttClient(server.url, server.token("u1"))
    sup = PttClient(server.url, server.token("sup"))
    try:
        await talker.connect()
        await talker.join("A")
        await sup.connect()
        await sup.join("A", mode="monitor")
        await sup.join("B", mode="monitor")
        assert (await talker.request_floor("A"))["type"] == "floor_granted"
        await sup.send({"type": "floor_revoke", "talkgroup": "A"})
        err = await sup.wait_for(lambda m: m["type"] == "error", 10)
        assert err["code"] == "unavailable"
        await sup.send({"type": "patch_create", "talkgroups": ["A", "B"]})
        err2 = await sup.wait_for(lambda m: m["type"] == "error" and m is not err, 10)
        assert err2["code"] == "unavailable"
        # Nothing happened: the talker still holds the floor and no patch was announced.
        assert not [m for m in talker.events if m["type"] in ("floor_revoked", "patched")]
        assert (await talker.release_floor("A"))["type"] == "floor_idle"
    finally:
        await asyncio.gather(talker.close(), sup.close(), return_exceptions=True)


async def test_an_emergency_goes_through_and_its_entry_is_retried(
    server: RunningServer, broken_ledger: object
) -> None:
    node = broken_ledger
    raiser = PttClient(server.url, server.token("u1"))
    sup = PttClient(server.url, server.token("sup"))
    try:
        await sup.connect()
        await raiser.connect()
        await raiser.join("A")
        await raiser.send({"type": "emergency_start", "talkgroup": "A"})
        # The alarm is never silenced by the ledger...
        assert (await sup.wait_for(lambda m: m["type"] == "emergency", 10))["unit"] == "u1"
        assert node.audit_trail.pending >= 1  # type: ignore[attr-defined]
        # ...and supervisors are told the ledger is failing.
        alert = await sup.wait_for(
            lambda m: m["type"] == "system_alert" and m["alert"] == "ledger_failing", 15)
        assert alert["active"] is True
    finally:
        await asyncio.gather(raiser.close(), sup.close(), return_exceptions=True)
