"""FloorStore against a real redis-server: atomicity across nodes, publishing, deadlines,
leases and patches."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from ptt_server.control.floor_store import (
    FloorContention,
    FloorStore,
    PatchBusy,
    PatchConflict,
    UnknownPatch,
)
from ptt_server.core import floor as fl

LEASE = 2.0
T0 = 1_700_000_000.0


def who(session: str, priority: int = 100, node: str = "node-a") -> fl.Participant:
    return fl.Participant(session, f"unit-{session}", f"alias-{session}", "officer", node,
                          priority)


def req(session: str, now: float = T0, *, queue: bool = True, priority: int = 100,
        max_duration_s: float = 60.0, emergency: bool = False) -> fl.Request:
    return fl.Request(who(session, priority), now, max_duration_s, f"tx-{session}", queue,
                      emergency)


class Channel:
    """A real pub/sub subscription collecting decoded floor messages."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.pubsub: Any = client.pubsub()  # redis-py leaves PubSub partly untyped

    async def subscribe(self, *channels: str) -> Channel:
        await self.pubsub.subscribe(*channels)
        for _ in channels:
            msg = await self.pubsub.get_message(timeout=2.0)
            assert msg is not None and msg["type"] == "subscribe"
        return self

    async def next(self, timeout: float = 2.0) -> dict[str, Any]:
        msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        assert msg is not None, "no message published"
        body: dict[str, Any] = json.loads(msg["data"])
        body["_channel"] = msg["channel"].decode()
        return body

    async def nothing(self, timeout: float = 0.2) -> None:
        msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        assert msg is None, f"unexpected message {msg!r}"

    async def close(self) -> None:
        await self.pubsub.aclose()


@pytest.fixture
def store(redis: aioredis.Redis) -> FloorStore:
    return FloorStore(redis, lease_s=LEASE)


async def test_apply_stores_json_and_versions(store: FloorStore, redis: aioredis.Redis) -> None:
    floor, outputs = await store.apply("tg1", req("a"))
    assert floor.holder == "a" and floor.version == 1
    assert [type(o) for o in outputs] == [fl.Granted, fl.Taken]
    raw = await redis.get("ptt:floor:tg1")
    assert raw is not None
    assert fl.Floor.from_json(raw) == floor
    assert await store.get("tg1") == floor
    assert await store.get("other") == fl.Floor.initial()


async def test_illegal_event_raises_and_writes_nothing(
    store: FloorStore, redis: aioredis.Redis
) -> None:
    channel = await Channel(redis).subscribe("ptt:floor:tg1")
    try:
        with pytest.raises(fl.NotHolder):
            await store.apply("tg1", fl.Release("a", T0))
        assert await redis.exists("ptt:floor:tg1") == 0
        await store.apply("tg1", req("a"))
        await channel.next()
        before = await redis.get("ptt:floor:tg1")
        with pytest.raises(fl.AlreadyHolder):
            await store.apply("tg1", req("a", T0 + 1))
        with pytest.raises(fl.NotQueued):
            await store.apply("tg1", fl.CancelQueue("b", T0 + 1))
        assert await redis.get("ptt:floor:tg1") == before
        await channel.nothing()
    finally:
        await channel.close()


async def test_no_change_writes_nothing(store: FloorStore, redis: aioredis.Redis) -> None:
    floor, outputs = await store.apply("tg1", fl.Disconnect("ghost", T0))
    assert outputs == [] and floor == fl.Floor.initial()
    assert await redis.exists("ptt:floor:tg1") == 0
    assert await redis.zcard("ptt:floor:deadlines") == 0


async def test_outputs_are_published_as_one_message(
    store: FloorStore, redis: aioredis.Redis
) -> None:
    channel = await Channel(redis).subscribe("ptt:floor:tg1")
    try:
        floor, outputs = await store.apply("tg1", req("a"))
        msg = await channel.next()
        assert msg["_channel"] == "ptt:floor:tg1"
        assert msg["talkgroup"] == "tg1" and msg["version"] == floor.version
        assert [fl.output_from_dict(d) for d in msg["outputs"]] == outputs
        # A denial changes no state but is still announced, with the unchanged version.
        _, denied = await store.apply("tg1", req("b", T0 + 1, queue=False))
        msg = await channel.next()
        assert msg["version"] == floor.version
        assert [fl.output_from_dict(d) for d in msg["outputs"]] == denied
        # A lease refresh changes state but has nothing to tell anyone.
        refreshed, none = await store.apply("tg1", fl.Refresh("a", T0 + 1, LEASE))
        assert none == [] and refreshed.version == floor.version + 1
        await channel.nothing()
    finally:
        await channel.close()


async def test_two_nodes_race_fifty_requests_one_grant(redis_url: str) -> None:
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    stores = [FloorStore(c, lease_s=LEASE) for c in clients]
    listener = aioredis.Redis.from_url(redis_url)
    channel = await Channel(listener).subscribe("ptt:floor:tg1")
    try:
        results = await asyncio.gather(*(
            stores[i % 2].apply("tg1", req(f"s{i}", T0 + i * 1e-3, queue=False))
            for i in range(50)
        ))
        outputs = [o for _, outs in results for o in outs]
        granted = [o for o in outputs if isinstance(o, fl.Granted)]
        denied = [o for o in outputs if isinstance(o, fl.Denied)]
        assert len(granted) == 1 and len(denied) == 49
        assert {d.holder_unit for d in denied} == {granted[0].unit}
        final = await stores[0].get("tg1")
        assert final.holder == granted[0].session and final.version == 1
        published = [await channel.next() for _ in range(50)]
        grants = [d for m in published for d in m["outputs"] if d["type"] == "granted"]
        assert len(grants) == 1
        await channel.nothing()
    finally:
        await channel.close()
        for c in (*clients, listener):
            await c.aclose()


async def test_many_nodes_race_on_one_connection(redis: aioredis.Redis) -> None:
    """Twenty stores (twenty nodes' worth of writers) contend through the CAS alone."""
    stores = [FloorStore(redis, lease_s=LEASE, max_queue=64) for _ in range(20)]
    results = await asyncio.gather(*(
        s.apply("tg1", req(f"s{i}", T0 + i * 1e-3)) for i, s in enumerate(stores)
    ))
    granted = [o for _, outs in results for o in outs if isinstance(o, fl.Granted)]
    assert len(granted) == 1
    final = await stores[0].get("tg1")
    assert final.version == 20 and len(final.queue) == 19


async def test_two_nodes_race_fifty_queued_requests(redis_url: str) -> None:
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    stores = [FloorStore(c, lease_s=LEASE, max_queue=64) for c in clients]
    try:
        results = await asyncio.gather(*(
            stores[i % 2].apply("tg1", req(f"s{i}", T0 + i * 1e-3)) for i in range(50)
        ))
        granted = [o for _, outs in results for o in outs if isinstance(o, fl.Granted)]
        assert len(granted) == 1
        final = await stores[1].get("tg1")
        queued = [e.participant.session for e in final.queue]
        assert len(queued) == len(set(queued)) == 49
        assert final.holder not in queued
        assert final.version == 50
    finally:
        for c in clients:
            await c.aclose()


async def test_contention_is_bounded(redis: aioredis.Redis) -> None:
    rival = FloorStore(redis, lease_s=LEASE)
    await rival.apply("tg1", req("a"))
    bumps = 0

    class Crowded(FloorStore):
        """Another node changes the floor between every read and write of ours."""

        async def _read(self, talkgroup: str) -> tuple[str, fl.Floor]:
            nonlocal bumps
            result = await super()._read(talkgroup)
            bumps += 1
            await rival.apply(talkgroup, fl.Refresh("a", T0 + bumps, LEASE))
            return result

    with pytest.raises(FloorContention) as info:
        await Crowded(redis, lease_s=LEASE).apply("tg1", req("b", T0))
    assert info.value.code == "unavailable"
    assert bumps == 50
    assert (await rival.get("tg1")).queue == ()


async def test_deadline_tick_revokes_with_timeout(
    store: FloorStore, redis: aioredis.Redis
) -> None:
    await store.apply("tg1", req("a", max_duration_s=5.0))
    await store.apply("tg1", req("b", T0 + 1))
    channel = await Channel(redis).subscribe("ptt:floor:tg1")
    try:
        for t in (1.5, 3.0, 4.5):  # the holder's node keeps refreshing
            await store.apply("tg1", fl.Refresh("a", T0 + t, LEASE))
            assert await store.tick_due(T0 + t) == []
        assert await redis.zscore("ptt:floor:deadlines", "tg1") == T0 + 5.0
        assert await store.due(T0 + 4.9) == []
        assert await store.due(T0 + 5.0) == ["tg1"]
        ticked = await store.tick_due(T0 + 5.0)
        assert len(ticked) == 1 and ticked[0][0] == "tg1"
        outs = ticked[0][1]
        assert outs[:2] == [fl.Revoked("a", "tx-a", "timeout"), fl.Idle("tx-a", "timeout")]
        assert isinstance(outs[2], fl.Granted) and outs[2].session == "b"
        msg = await channel.next()
        assert [fl.output_from_dict(d) for d in msg["outputs"]] == outs
        floor = await store.get("tg1")
        assert floor.holder == "b"
        assert await redis.zscore("ptt:floor:deadlines", "tg1") == floor.deadline()
        await store.apply("tg1", fl.Release("b", T0 + 6))
        assert await redis.zscore("ptt:floor:deadlines", "tg1") is None
        assert await store.tick_due(T0 + 10_000) == []
    finally:
        await channel.close()


async def test_lease_expiry_frees_the_floor(store: FloorStore) -> None:
    await store.apply("tg1", req("a"))
    assert await store.tick_due(T0 + LEASE - 0.01) == []
    ticked = await store.tick_due(T0 + LEASE)
    assert ticked == [("tg1", [fl.Revoked("a", "tx-a", "disconnected"),
                               fl.Idle("tx-a", "disconnected")])]
    floor = await store.get("tg1")
    assert floor.state is fl.FloorState.IDLE
    _, outs = await store.apply("tg1", req("b", T0 + LEASE + 0.1))
    assert isinstance(outs[0], fl.Granted)


async def test_concurrent_ticks_on_two_nodes_fire_once(redis_url: str) -> None:
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    stores = [FloorStore(c, lease_s=LEASE) for c in clients]
    try:
        for i in range(10):
            await stores[0].apply(f"tg{i}", req("a"))
        results = await asyncio.gather(*(s.tick_due(T0 + 3) for s in stores for _ in range(3)))
        fired = sorted(tg for r in results for tg, _ in r)
        assert fired == sorted(f"tg{i}" for i in range(10))
        assert await stores[1].due(T0 + 1e9) == []
    finally:
        for c in clients:
            await c.aclose()


async def test_real_clock_deadlines(store: FloorStore) -> None:
    now = time.time()
    await store.apply("tg1", req("a", now, max_duration_s=0.2))
    await store.apply("tg1", fl.Refresh("a", now, 10.0))
    assert await store.tick_due(time.time()) == []
    await asyncio.sleep(0.25)
    ticked = await store.tick_due(time.time())
    assert ticked and ticked[0][1][0] == fl.Revoked("a", "tx-a", "timeout")


async def test_patch_shares_one_floor(store: FloorStore, redis: aioredis.Redis) -> None:
    await store.patch("north", ["tg1", "tg2"])
    assert await store.floor_key_for("tg1") == "patch:north"
    assert await store.floor_key_for("tg3") == "tg3"
    assert await store.patch_members("north") == ["tg1", "tg2"]
    channel = await Channel(redis).subscribe("ptt:floor:tg1", "ptt:floor:tg2")
    try:
        _, outs = await store.apply("tg1", req("a"))
        messages = [await channel.next(), await channel.next()]
        assert {m["_channel"] for m in messages} == {"ptt:floor:tg1", "ptt:floor:tg2"}
        assert {m["talkgroup"] for m in messages} == {"tg1", "tg2"}
        for m in messages:
            assert [fl.output_from_dict(d) for d in m["outputs"]] == outs
        # A unit on the other talkgroup meets the same floor.
        assert (await store.get("tg2")).holder == "a"
        _, outs = await store.apply("tg2", req("b", T0 + 1, queue=False))
        assert outs == [fl.Denied("b", "floor_taken", "unit-a", "alias-a")]
        assert await redis.exists("ptt:floor:tg1", "ptt:floor:tg2") == 0
        assert await store.due(T0 + LEASE) == ["patch:north"]
        with pytest.raises(PatchBusy):
            await store.unpatch("north")
        # Deadlines work on the shared floor.
        ticked = await store.tick_due(T0 + LEASE)
        assert ticked[0][0] == "patch:north"
        assert (await store.get("tg2")).state is fl.FloorState.IDLE
        await store.unpatch("north")
    finally:
        await channel.close()
    assert await store.floor_key_for("tg1") == "tg1"
    assert await store.patch_members("north") == []
    _, outs1 = await store.apply("tg1", req("a", T0 + 5))
    _, outs2 = await store.apply("tg2", req("b", T0 + 5))
    assert isinstance(outs1[0], fl.Granted) and isinstance(outs2[0], fl.Granted)
    with pytest.raises(UnknownPatch):
        await store.unpatch("north")


async def test_patch_refusals(store: FloorStore) -> None:
    await store.apply("busy", req("a"))
    with pytest.raises(PatchBusy):
        await store.patch("p1", ["tg1", "busy"])
    assert await store.floor_key_for("tg1") == "tg1"  # all or nothing
    await store.patch("p1", ["tg1", "tg2"])
    with pytest.raises(PatchConflict):
        await store.patch("p2", ["tg3", "tg2"])
    with pytest.raises(PatchConflict):
        await store.patch("p1", ["tg4", "tg5"])
    with pytest.raises(ValueError):
        await store.patch("p3", ["tg6"])
    with pytest.raises(ValueError):
        await store.patch("p3", ["tg6", "bad:id"])


async def test_patched_write_racing_a_patch_is_retried(
    store: FloorStore, redis: aioredis.Redis
) -> None:
    """A node that read tg1's own floor just before tg1 was patched must not write there."""
    patcher = FloorStore(redis, lease_s=LEASE)

    class Slow(FloorStore):
        patched = False

        async def _read(self, talkgroup: str) -> tuple[str, fl.Floor]:
            result = await super()._read(talkgroup)
            if not self.patched:
                self.patched = True
                await patcher.patch("p", ["tg1", "tg2"])
            return result

    _, outs = await Slow(redis, lease_s=LEASE).apply("tg1", req("a"))
    assert isinstance(outs[0], fl.Granted)
    assert await redis.exists("ptt:floor:tg1") == 0
    assert (await store.get("tg2")).holder == "a"


async def test_unpatched_floor_keeps_counting_versions(store: FloorStore) -> None:
    await store.patch("p", ["tg1", "tg2"])
    await store.apply("tg1", req("a"))
    await store.apply("tg1", fl.Release("a", T0 + 1))
    await store.unpatch("p")
    reset = await store.get_by_id("patch:p")
    assert reset.state is fl.FloorState.IDLE and reset.version == 3
    await store.patch("p", ["tg1", "tg2"])
    floor, _ = await store.apply("tg2", req("b", T0 + 2))
    assert floor.version == 4
