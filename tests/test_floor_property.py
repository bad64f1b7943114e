"""Property tests: random floor histories, driven through three FloorStore instances (three
simulated server nodes) on one real Redis, must keep the floor invariants and must leave in
Redis exactly what a pure replay of `floor.step` produces."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptt_server.control.floor_store import FloorStore
from ptt_server.core import floor as fl

T0 = 1_700_000_000.0
LEASE = 6.0
QUEUE_TIMEOUT = 4.0  # shorter than a lease, so queue entries expire under a live holder
MAX_QUEUE = 3  # small, so "queue_full" happens
NODES = 3
SESSIONS = 7
TALKGROUPS = ("tg-a", "tg-b")

# --- actions (plain tuples, turned into inputs at run time with the fake clock) -------------
session_ids = st.integers(0, SESSIONS - 1)
nodes = st.integers(0, NODES - 1)
request = st.tuples(
    st.just("request"), session_ids, st.sampled_from([0, 50, 100, 100, 150, 255]),
    st.sampled_from([False, False, False, True]),  # emergency
    st.sampled_from([True, True, True, False]),  # queue
    st.sampled_from([1.0, 10.0, 30.0, 30.0]),  # max duration
)
by_session = st.tuples(st.sampled_from(["release", "disconnect", "refresh", "cancel"]),
                       session_ids)
by_node = st.tuples(
    st.sampled_from(["revoke", "clear", "tick", "keepalive", "keepalive", "let_go"]), nodes
)
simple = st.one_of(request, request, request, by_session, by_node)
advance = st.tuples(st.just("advance"), st.sampled_from([0.1, 0.5, 1.0, 2.0, 4.0, 9.0]), nodes)
concurrent = st.tuples(st.just("concurrent"), st.lists(simple, min_size=2, max_size=3))
# A crowd pressing PTT at once fills the queue (queue_full, position updates).
crowd = st.lists(request, min_size=3, max_size=6)


def history_of(*parts: st.SearchStrategy[Any], max_chunks: int) -> st.SearchStrategy[Any]:
    single = st.one_of(*parts).map(lambda a: [a])
    chunks = st.lists(st.one_of(single, single, single, crowd), max_size=max_chunks)
    return chunks.map(lambda cs: [a for c in cs for a in c])


actions = history_of(simple, simple, simple, advance, concurrent, max_chunks=30)

Action = tuple[Any, ...]


@dataclass
class World:
    now: float = T0
    counter: int = 0
    gone: set[str] = field(default_factory=set)  # sessions that disconnected

    def participant(self, i: int, priority: int) -> fl.Participant:
        return fl.Participant(f"s{i}", f"unit{i}", f"alias{i}", "officer", f"node{i % NODES}",
                              priority)

    def event(self, action: Action, floor: fl.Floor) -> tuple[int, fl.FloorInput] | None:
        """(node, input) for an action, or None for a session that already disconnected
        (a closed session never speaks again)."""
        kind, arg = action[0], action[1]
        if kind in ("keepalive", "let_go"):  # the holder's node refreshes; the talker lets go
            if floor.grant is None:
                return None
            holder = floor.grant.participant
            node = int(holder.node.removeprefix("node"))
            if kind == "let_go":
                return node, fl.Release(holder.session, self.now)
            return node, fl.Refresh(holder.session, self.now, LEASE)
        if kind in ("revoke", "clear", "tick"):
            node = arg
            if kind == "revoke":
                return node, fl.Revoke(self.now, "revoked", by="sup")
            if kind == "clear":
                return node, fl.EmergencyClear(self.now, by="dispatch")
            return node, fl.Tick(self.now)
        session = f"s{arg}"
        if session in self.gone:
            return None
        node = arg % NODES
        if kind == "request":
            _, i, priority, emergency, queue, duration = action
            self.counter += 1
            return node, fl.Request(self.participant(i, priority), self.now, duration,
                                    f"tx{self.counter}", queue, emergency)
        if kind == "release":
            return node, fl.Release(session, self.now)
        if kind == "disconnect":
            return node, fl.Disconnect(session, self.now)
        if kind == "refresh":
            return node, fl.Refresh(session, self.now, LEASE)
        assert kind == "cancel"
        return node, fl.CancelQueue(session, self.now)


Outcome = tuple[fl.Floor, list[fl.FloorOutput]] | type[fl.FloorError]


def pure(floor: fl.Floor, event: fl.FloorInput) -> Outcome:
    try:
        return fl.step(floor, event, lease_s=LEASE, queue_timeout_s=QUEUE_TIMEOUT,
                       max_queue=MAX_QUEUE)
    except fl.FloorError as exc:
        return type(exc)


def check_invariants(floor: fl.Floor, gone: set[str]) -> None:
    grant = floor.grant
    # At most one holder, and TAKEN exactly when there is one.
    assert (floor.state is fl.FloorState.TAKEN) == (grant is not None)
    if grant is None:
        assert floor.queue == ()
    queued = [e.participant.session for e in floor.queue]
    assert len(queued) == len(set(queued)) <= MAX_QUEUE
    if grant is not None:
        assert grant.participant.session not in queued
        # The holder is never outranked by anyone waiting (they would have pre-empted it).
        assert all(e.priority <= grant.priority for e in floor.queue)
    # Priority desc, then arrival asc.
    keys = [(-e.priority, e.enqueued_at) for e in floor.queue]
    assert keys == sorted(keys)
    for e in floor.queue:
        assert e.priority == (fl.EMERGENCY_PRIORITY if e.emergency else e.participant.priority)
    # A disconnected session leaves no trace.
    assert floor.holder not in gone
    assert not gone & set(queued)


async def run_history(url: str, history: list[Action], patched: bool) -> None:
    clients = [aioredis.Redis.from_url(url) for _ in range(NODES)]
    try:
        await clients[0].flushdb()
        stores = [FloorStore(c, lease_s=LEASE, queue_timeout_s=QUEUE_TIMEOUT,
                             max_queue=MAX_QUEUE) for c in clients]
        floor_id = TALKGROUPS[0]
        if patched:
            await stores[0].patch("p", list(TALKGROUPS))
            floor_id = "patch:p"
        world = World()
        model = fl.Floor.initial()

        def talkgroup(node: int) -> str:
            # Through a patch, every member talkgroup reaches the same floor.
            return TALKGROUPS[node % 2] if patched else TALKGROUPS[0]

        async def through_redis(node: int, event: fl.FloorInput) -> Outcome:
            try:
                return await stores[node].apply(talkgroup(node), event)
            except fl.FloorError as exc:
                return type(exc)

        for action in history:
            if action[0] == "advance":
                world.now += action[1]
                ticked = await stores[action[2]].tick_due(world.now)
                expected = pure(model, fl.Tick(world.now))
                assert isinstance(expected, tuple)
                after, outputs = expected
                assert ticked == ([(floor_id, outputs)] if after != model else [])
                model = after
            elif action[0] == "concurrent":
                model = await run_concurrent(
                    world, model, action[1], through_redis, stores[0].get(TALKGROUPS[0])
                )
            else:
                made = world.event(action, model)
                if made is None:
                    continue
                node, event = made
                expected = pure(model, event)
                got = await through_redis(node, event)
                assert got == expected, (event, got, expected)
                if isinstance(expected, tuple):
                    model = expected[0]
                if isinstance(event, fl.Disconnect):
                    world.gone.add(event.session)

            stored = await stores[(world.counter + 1) % NODES].get(talkgroup(world.counter))
            assert stored == model
            check_invariants(stored, world.gone)
            score = await clients[0].zscore("ptt:floor:deadlines", floor_id)
            assert score == stored.deadline()
    finally:
        for c in clients:
            await c.aclose()


def actor(event: fl.FloorInput) -> str | None:
    if isinstance(event, fl.Request):
        return event.participant.session
    return getattr(event, "session", None)


async def run_concurrent(
    world: World, model: fl.Floor, batch: list[Action], through_redis: Any,
    read_back: Coroutine[Any, Any, fl.Floor],
) -> fl.Floor:
    """Fire a few inputs from different nodes at once. Whatever interleaving Redis saw, the
    result must be that of applying them one by one in *some* order: same final floor, and
    each input getting the outputs (or error) it would get at its place in that order."""
    made = [m for m in (world.event(a, model) for a in batch) if m is not None]
    leaving = {e.session for _, e in made if isinstance(e, fl.Disconnect)}
    # A session's own inputs never race its disconnect (the server stops reading first).
    made = [(n, e) for n, e in made
            if isinstance(e, fl.Disconnect) or actor(e) not in leaving]
    got = await asyncio.gather(*(through_redis(n, e) for n, e in made))
    stored = await read_back
    got_changes = [g if not isinstance(g, tuple) else g[1] for g in got]
    world.gone |= leaving
    for order in itertools.permutations(range(len(made))):
        floor = model
        changes: list[Any] = [None] * len(made)
        for i in order:
            outcome = pure(floor, made[i][1])
            if isinstance(outcome, tuple):
                floor, changes[i] = outcome
            else:
                changes[i] = outcome
        if changes == got_changes and floor == stored:
            return floor
    raise AssertionError(f"no serial order explains {made} -> {got}")


@settings(max_examples=50, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(history=actions, patched=st.booleans())
def test_floor_histories_across_three_nodes(
    redis_url: str, history: list[Action], patched: bool
) -> None:
    asyncio.run(run_history(redis_url, history, patched))


@settings(max_examples=300, deadline=None, database=None)
@given(history=history_of(simple, simple, advance, max_chunks=50))
def test_pure_step_keeps_invariants(history: list[Action]) -> None:
    """The same histories without Redis, many more of them: invariants, and that an error
    really changes nothing while a success bumps the version exactly when the floor moved."""
    world = World()
    floor = fl.Floor.initial()
    for action in history:
        if action[0] == "advance":
            world.now += action[1]
            event: fl.FloorInput = fl.Tick(world.now)
        else:
            made = world.event(action, floor)
            if made is None:
                continue
            event = made[1]
        outcome = pure(floor, event)
        if isinstance(outcome, tuple):
            after, outputs = outcome
            if after is floor:
                assert after.version == floor.version
            else:
                assert after.version == floor.version + 1 and after != floor
            assert fl.Floor.from_json(after.to_json()) == after
            for out in outputs:
                assert fl.output_from_dict(out.to_dict()) == out
            floor = after
        if isinstance(event, fl.Disconnect):
            world.gone.add(event.session)
        check_invariants(floor, world.gone)
        deadline = floor.deadline()
        if deadline is not None and deadline > world.now:
            quiet = pure(floor, fl.Tick(world.now))
            assert isinstance(quiet, tuple) and quiet[0] is floor and quiet[1] == []
