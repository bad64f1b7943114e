"""Floor reads and compare-and-sets coalesced into pipelines (control/coalesce.py), against a
real redis-server: a burst over many talkgroups from two nodes at once still gives exactly one
grant per talkgroup, the right denials and queue places, and each caller its own reply."""

from __future__ import annotations

import asyncio
import collections
import socket

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from ptt_server.control.coalesce import Coalescer
from ptt_server.control.floor_store import FloorStore
from ptt_server.core import floor as fl

LEASE = 2.0
T0 = 1_700_000_000.0
WAIT_S = 10.0  # every gather below is bounded by this


def request(session: str, node: str, *, queue: bool) -> fl.Request:
    who = fl.Participant(session, f"unit-{session}", f"alias-{session}", "officer", node, 100)
    return fl.Request(who, T0, 60.0, f"tx-{session}", queue)


async def test_burst_over_talkgroups_from_two_nodes(redis_url: str) -> None:
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    stores = [FloorStore(c, lease_s=LEASE) for c in clients]
    try:
        queued_tgs = [f"Q{i}" for i in range(8)]  # contenders queue
        denied_tgs = [f"D{i}" for i in range(8)]  # contenders are refused
        contenders = 6
        calls = []
        for tg in queued_tgs + denied_tgs:
            for k in range(contenders):
                store = stores[k % 2]  # two nodes racing on every floor
                session = f"{tg}-s{k}"
                calls.append((tg, session, store.apply(
                    tg, request(session, f"node-{k % 2}", queue=tg.startswith("Q")))))
        results = await asyncio.wait_for(
            asyncio.gather(*(c for _tg, _s, c in calls)), WAIT_S)

        outputs: dict[str, list[fl.FloorOutput]] = collections.defaultdict(list)
        for (tg, _session, _call), (_floor, outs) in zip(calls, results, strict=True):
            outputs[tg] += outs
        for tg in queued_tgs + denied_tgs:
            granted = [o for o in outputs[tg] if isinstance(o, fl.Granted)]
            assert len(granted) == 1, (tg, outputs[tg])
            holder = granted[0]
            floor = await stores[0].get(tg)
            assert floor.holder == holder.session
            if tg.startswith("Q"):
                places = sorted(o.position for o in outputs[tg] if isinstance(o, fl.Queued))
                assert places == list(range(1, contenders)), (tg, outputs[tg])
                assert len(floor.queue) == contenders - 1
                assert holder.session not in {e.participant.session for e in floor.queue}
            else:
                denied = [o for o in outputs[tg] if isinstance(o, fl.Denied)]
                assert len(denied) == contenders - 1, (tg, outputs[tg])
                assert {d.holder_unit for d in denied} == {holder.unit}
                assert floor.queue == ()
        # Coalesced: far fewer pipelines than the reads and writes they carried (each
        # request is at least a read of two commands and a compare-and-set).
        for store in stores:
            assert store.batch.commands >= 3 * len(calls) // 2
            assert store.batch.batches * 2 < store.batch.commands
    finally:
        for c in clients:
            await c.aclose()


async def test_one_node_queues_one_floor_in_arrival_order(redis: aioredis.Redis) -> None:
    """Requests for one floor on one node wait their turn (its lock) while other floors'
    requests share their batches: queue places follow the order the requests were made."""
    store = FloorStore(redis, lease_s=LEASE)
    order = [f"s{k}" for k in range(7)]
    others = [store.apply(f"X{i}", request(f"x{i}", "node-a", queue=True)) for i in range(10)]
    mine = [store.apply("A", request(s, "node-a", queue=True)) for s in order]
    results = await asyncio.wait_for(asyncio.gather(*mine, *others), WAIT_S)
    first = results[0][1]
    assert any(isinstance(o, fl.Granted) and o.session == "s0" for o in first)
    for k, (_floor, outs) in enumerate(results[1:len(order)], start=1):
        assert [(o.session, o.position) for o in outs if isinstance(o, fl.Queued)] == [
            (order[k], k)]
    for _floor, outs in results[len(order):]:
        assert sum(isinstance(o, fl.Granted) for o in outs) == 1


async def test_each_caller_gets_its_own_reply(redis: aioredis.Redis) -> None:
    await redis.set("plain", "v")
    await redis.hset("hash", "f", "w")
    batch = Coalescer(redis)
    good, bad, pair = await asyncio.wait_for(asyncio.gather(
        batch.run(("GET", "plain")),
        batch.run(("HGET", "plain", "f")),  # WRONGTYPE: that caller's error only
        batch.run(("HGET", "hash", "f"), ("GET", "missing")),
    ), WAIT_S)
    assert good == [b"v"]
    assert len(bad) == 1 and isinstance(bad[0], ResponseError)
    assert pair == [b"w", None]
    assert batch.batches == 1 and batch.commands == 4


async def test_a_caller_cancelled_before_the_batch_is_sent_writes_nothing(
    redis: aioredis.Redis,
) -> None:
    batch = Coalescer(redis)
    task = asyncio.create_task(batch.run(("SET", "never", "1")))
    await asyncio.sleep(0)  # the task has queued its command; the batch goes after this
    task.cancel()
    kept = await asyncio.wait_for(batch.run(("SET", "kept", "1")), WAIT_S)
    assert kept == [True]
    assert task.cancelled()
    assert await redis.get("never") is None


async def test_compare_and_set_survives_a_script_cache_flush(redis: aioredis.Redis) -> None:
    """A Redis that lost its script cache (restarted, failed over) answers NOSCRIPT to the
    batched EVALSHA: the script is loaded and the write made."""
    store = FloorStore(redis, lease_s=LEASE)
    await store.apply("A", request("s1", "node-a", queue=False))
    await store.apply("A", fl.Release("s1", T0 + 1))
    await redis.script_flush()
    _floor, outs = await asyncio.wait_for(
        store.apply("A", request("s2", "node-a", queue=False)), WAIT_S)
    assert any(isinstance(o, fl.Granted) and o.session == "s2" for o in outs)
    assert (await store.get("A")).holder == "s2"


async def test_a_lost_connection_fails_every_caller_of_the_batch() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = aioredis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1.0,
                            retry=Retry(NoBackoff(), 0))
    batch = Coalescer(client)
    try:
        results = await asyncio.wait_for(asyncio.gather(
            batch.run(("GET", "a")), batch.run(("GET", "b")), return_exceptions=True,
        ), WAIT_S)
        assert all(isinstance(r, RedisConnectionError) for r in results), results
    finally:
        await client.aclose()
