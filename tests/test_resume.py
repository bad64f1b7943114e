"""A dead spot does not end a session: the client resumes it, sees what it missed, and is back
in its talkgroups without signing in again. Real server, real Redis, a real cut link (no FIN,
no RST: the server learns of it only by its missed pongs)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from client_cli.client import PttClient

from .conftest import RunningServer
from .tcpcut import CuttableProxy

CUT_S = 2.0  # the dead spot measured to end sessions before


@pytest.fixture
async def proxy(server: RunningServer) -> AsyncIterator[CuttableProxy]:
    host, _, port = server.url.removeprefix("http://").partition(":")
    p = await CuttableProxy(host, int(port)).start()
    yield p
    await p.close()


async def test_listener_survives_a_dead_spot_and_hears_what_it_missed(
    server: RunningServer, proxy: CuttableProxy
) -> None:
    listener = PttClient(proxy.url, server.token("u2"))
    talker = PttClient(server.url, server.token("u1"))
    back: PttClient | None = None
    try:
        welcome = await listener.connect()
        assert welcome["resumed"] is False and welcome["resume_grace_s"] == 30.0
        await talker.connect()
        await listener.join("A")
        await talker.join("A")
        proxy.cut_link()
        # While the listener is away a whole transmission happens.
        grant = await talker.request_floor("A")
        assert grant["type"] == "floor_granted"
        await talker.release_floor("A")
        await asyncio.sleep(CUT_S)  # the dead spot lasts its 2 s
        proxy.restore()
        back = PttClient(proxy.url, server.token("u2"))
        resumed = await back.connect(resume_token=welcome["resume_token"],
                                     received=listener.messages_received)
        assert resumed["resumed"] is True
        assert resumed["session"] == welcome["session"]
        assert resumed["resume_token"] != welcome["resume_token"]
        missed_idle = await back.wait_for(
            lambda m: m["type"] == "floor_idle"
            and m["transmission_id"] == grant["transmission_id"], 10)
        assert missed_idle["reason"] == "released"
        current = await back.wait_for(lambda m: m["type"] == "joined" and m["talkgroup"] == "A")
        assert current["floor"]["state"] == "idle"
        kinds = [m["type"] for m in back.events]
        # What it missed comes before the current state, so the last word is the truth.
        assert kinds.index("floor_taken") < kinds.index("floor_idle") < kinds.index("joined")
        # Back in the talkgroup without a new join: it can talk at once.
        assert (await back.request_floor("A"))["type"] == "floor_granted"
        # A second dead spot: the counts still agree, so nothing is replayed twice.
        before = back.messages_received
        proxy.cut_link()
        await asyncio.sleep(CUT_S)
        proxy.restore()
        third = PttClient(proxy.url, server.token("u2"))
        try:
            again_welcome = await third.connect(resume_token=resumed["resume_token"],
                                                received=before)
            assert again_welcome["resumed"] is True
            await third.wait_for(lambda m: m["type"] == "joined", 10)
            def bare(msg: dict[str, object]) -> str:
                return json.dumps({k: v for k, v in msg.items() if k != "_at"}, sort_keys=True)

            seen = {bare(msg) for msg in back.events}
            replayed = [msg for msg in third.events[1:]
                        if msg["type"] not in ("joined", "presence", "presence_delta")]
            # Only what happened since: the floor its own session gave up in the dead spot.
            assert not [msg for msg in replayed if bare(msg) in seen], replayed
            assert [msg["reason"] for msg in replayed if msg["type"] == "floor_idle"] == [
                "disconnected"]
        finally:
            await third.close()
        # The stale token does not take the session a second time.
        again = PttClient(server.url, server.token("u2"))
        try:
            assert (await again.connect(resume_token=welcome["resume_token"]))["resumed"] is False
        finally:
            await again.close()
    finally:
        for c in (listener, talker, back):
            if c is not None:
                await c.close()


async def test_a_talker_in_a_dead_spot_loses_the_floor_but_not_the_session(
    server: RunningServer, proxy: CuttableProxy
) -> None:
    talker = PttClient(proxy.url, server.token("u1"))
    other = PttClient(server.url, server.token("u2"))
    back: PttClient | None = None
    try:
        welcome = await talker.connect()
        await other.connect()
        await talker.join("A")
        await other.join("A")
        grant = await talker.request_floor("A")
        assert grant["type"] == "floor_granted"
        proxy.cut_link()
        # The floor goes free within the liveness allowance, as before.
        idle = await other.wait_for(
            lambda m: m["type"] == "floor_idle"
            and m["transmission_id"] == grant["transmission_id"], 5)
        assert idle["reason"] == "disconnected"
        proxy.restore()
        back = PttClient(proxy.url, server.token("u1"))
        assert (await back.connect(resume_token=welcome["resume_token"],
                                   received=talker.messages_received))["resumed"] is True
        joined = await back.wait_for(lambda m: m["type"] == "joined" and m["talkgroup"] == "A")
        assert joined["floor"]["state"] == "idle"
        # The ledger says how the transmission ended.
        entry = await _ledger_entry(server, grant["transmission_id"])
        assert entry["end_reason"] == "disconnected"
    finally:
        for c in (talker, other, back):
            if c is not None:
                await c.close()


async def test_resume_needs_the_same_user_and_the_grace(server: RunningServer) -> None:
    first = PttClient(server.url, server.token("u1"))
    thief = PttClient(server.url, server.token("u3"))
    try:
        welcome = await first.connect()
        await first.join("A")
        # Another user's resume attempt starts a session of its own.
        stolen = await thief.connect(resume_token=welcome["resume_token"])
        assert stolen["resumed"] is False and stolen["session"] != welcome["session"]
    finally:
        await first.close()
        await thief.close()
    # A clean goodbye (close handshake) ends the session: nothing to resume.
    again = PttClient(server.url, server.token("u1"))
    try:
        assert (await again.connect(resume_token=welcome["resume_token"]))["resumed"] is False
    finally:
        await again.close()


async def _ledger_entry(server: RunningServer, tid: str, timeout: float = 10) -> dict[str, object]:
    import json
    import time

    ledger = server.config.data_dir / "ledger" / "ledger.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ledger.exists():
            for line in ledger.read_text().splitlines():
                entry = json.loads(line)
                if entry.get("id") == tid:
                    return dict(entry)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no ledger entry for {tid}")


def _reset(client: PttClient) -> None:
    """The client's connection is gone at once (a reset), without a closing handshake."""
    assert client._ws is not None
    transport = client._ws._response.connection.transport  # type: ignore[union-attr]
    assert transport is not None
    transport.abort()


async def test_a_resume_sends_member_lists_once_as_they_are_now(server: RunningServer) -> None:
    """The `joined` a client never got is not replayed (it would be stale, and it is the
    largest message a session sends): the current one follows the replay, once, and the
    counts still agree at the next resume (nothing is sent twice)."""
    first = PttClient(server.url, server.token("u2"))
    talker = PttClient(server.url, server.token("u1"))
    clients = [first, talker]
    try:
        welcome = await first.connect()
        await first.join("A")
        await talker.connect()
        await talker.join("A")
        await first.wait_for(lambda m: m["type"] == "presence_delta", 10)  # the talker came
        assert [e["type"] for e in first.events].count("joined") == 1
        _reset(first)
        grant = await talker.request_floor("A")  # something to miss
        await talker.release_floor("A")
        back = PttClient(server.url, server.token("u2"))
        clients.append(back)
        # As if only the welcome had arrived: the joined, the delta and the floor are missed.
        again = await back.connect(resume_token=welcome["resume_token"], received=1)
        assert again["resumed"] is True
        await back.wait_for(lambda m: m["type"] == "floor_idle"
                            and m["transmission_id"] == grant["transmission_id"], 10)
        current = await back.wait_for(lambda m: m["type"] == "joined", 10)
        kinds = [e["type"] for e in back.events]
        assert kinds.count("joined") == 1 and "presence_delta" in kinds
        assert kinds.index("floor_idle") < kinds.index("joined")
        assert {m["unit"] for m in current["members"]} == {"u1", "u2"}
        # The counts agree: resumed again with everything received, nothing comes twice.
        count = back.messages_received
        _reset(back)
        third = PttClient(server.url, server.token("u2"))
        clients.append(third)
        await third.connect(resume_token=again["resume_token"], received=count)
        await third.wait_for(lambda m: m["type"] == "joined", 10)
        kinds = [e["type"] for e in third.events]
        # Nothing replayed: before the current list, at most presence changes made since.
        assert set(kinds[1:kinds.index("joined")]) <= {"presence_delta"}, kinds
        assert kinds[0] == "welcome" and kinds.count("joined") == 1, kinds
    finally:
        for c in clients:
            await c.close()


async def test_a_resume_replays_from_the_clients_count_within_the_last_256(
    server: RunningServer,
) -> None:
    """300 pings sent at once, each answered (a pong, or `rate_limited` past the bucket): resumed
    with a count inside the window, exactly the messages after it come again, in order; with a
    count older than the window, the last 256 messages (session.REPLAY_MAX), but for an earlier
    welcome (its resume token was spent: a client taking it up would lose its session at the
    next dead spot)."""
    def key(m: dict[str, Any]) -> tuple[Any, ...]:
        return m["type"], m.get("id"), m.get("code")

    first = PttClient(server.url, server.token("u2"))
    clients = [first]
    try:
        welcome = await first.connect()
        for i in range(300):
            await first.send({"type": "ping", "id": i})
        await first.wait_for(lambda m: len(first.events) >= 301, 20)
        sent = [key(m) for m in first.events]  # numbered 0 (the welcome) to 300
        assert ("pong", 299, None) in sent or ("error", None, "rate_limited") in sent
        _reset(first)

        async def resume(token: str, received: int, n: int) -> PttClient:
            back = PttClient(server.url, server.token("u2"))
            clients.append(back)
            again = await back.connect(resume_token=token, received=received)
            assert again["resumed"] is True
            await back.wait_for(lambda m: len(back.events) >= 1 + n, 10)
            return back

        back = await resume(welcome["resume_token"], 291, 10)  # had up to number 290
        assert [key(m) for m in back.events[1:]] == sent[291:301]
        # Numbered now: 1..290 as before, the new welcome 291, sent[291:301] again as
        # 292..301. The last 256 are 46..301; the welcome among them is not replayed.
        assert back.messages_received == 302
        _reset(back)
        third = await resume(back.welcome["resume_token"], 1, 255)  # as if only a welcome came
        assert [key(m) for m in third.events[1:]] == sent[46:301]
    finally:
        for c in clients:
            await c.close()
