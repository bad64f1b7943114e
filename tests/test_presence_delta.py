"""Presence as deltas (core/roster.py, node/views.py): two real server nodes in this process
sharing the real redis-server, real clients (client_cli) over WebSocket.

What is checked: every client's list, kept up from `joined` and the deltas alone, is after
each change the list a fresh read gives (joins, leaves and floor changes on either node); a
late joiner gets the whole list, then deltas that continue its revision; a client that misses
a delta asks for the whole list and is right again; a burst of joins costs each member one
message per coalescing window, each no larger than the members it adds."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from client_cli.client import PttClient
from client_cli.presence import MemberLists
from ptt_server.core import messages as m
from ptt_server.node.views import PRESENCE_COALESCE_S
from ptt_server.service.keys import NODE

from .conftest import RunningServer, seed_directory, server_config

# Many sessions of the same few units, joining at once: the per-user and per-address limits
# are not what this file is about.
LIMITS = {"max_sessions_per_user": 400, "message_rate_per_s": 5000.0, "message_burst": 5000.0,
          "max_unauthenticated_per_address": 400, "max_unauthenticated": 1000}
SETTLE_S = 15.0  # bound on any list reaching the truth (a loaded 2-core machine)
Join = Callable[..., Awaitable[PttClient]]


@pytest.fixture
async def nodes(data_dir: Any, redis_url: str) -> AsyncIterator[list[RunningServer]]:
    from ptt_server.app.wiring import create_app

    seed_directory(data_dir)
    started: list[TestServer] = []
    running = []
    try:
        for i in range(2):
            config = server_config(data_dir, redis_url, node_id=f"node{i}", **LIMITS)
            app = create_app(config)
            ts = TestServer(app, host="127.0.0.1")
            await ts.start_server()
            started.append(ts)
            running.append(RunningServer(url=str(ts.make_url("")).rstrip("/"), config=config,
                                         app=app))
        yield running
    finally:
        for ts in started:
            await ts.close()


@pytest.fixture
async def join(nodes: list[RunningServer]) -> AsyncIterator[Join]:
    clients: list[PttClient] = []

    async def make(node: int, user: str, talkgroup: str | None = "A",
                   cls: type[PttClient] = PttClient) -> PttClient:
        server = nodes[node]
        c = cls(server.url, server.token(user))
        clients.append(c)
        await c.connect()
        if talkgroup is not None:
            await c.join(talkgroup)
        return c

    yield make
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def truth(nodes: list[RunningServer], talkgroup: str = "A") -> list[dict[str, Any]]:
    """The list a fresh read gives, once both nodes agree on it (who talks is each node's
    own gate; a floor change reaches the other node a moment later)."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        views = [await s.app[NODE].member_views(talkgroup) for s in nodes]  # type: ignore[index]
        if views[0] == views[1] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert views[0] == views[1], "the nodes never agreed on the list"
    return list(json.loads(m.encode(m.Presence(talkgroup=talkgroup, revision=0,
                                                members=views[0])))["members"])


async def converge(nodes: list[RunningServer], clients: list[PttClient]) -> list[dict[str, Any]]:
    expected = await truth(nodes)
    for c in clients:
        try:
            await c.wait_members("A", lambda ms: ms == expected, SETTLE_S)
        except TimeoutError:
            raise AssertionError(
                f"{c.welcome.get('session')}: {c.members('A')} != {expected}") from None
    return expected


def lists_of(c: PttClient, since: int = 0) -> list[dict[str, Any]]:
    return [e for e in c.events[since:] if e["type"] in ("presence", "presence_delta")]


async def test_deltas_from_two_nodes_add_up_to_a_fresh_list(
    nodes: list[RunningServer], join: Join
) -> None:
    a1 = await join(0, "u1")
    b1 = await join(1, "u2")
    a2 = await join(0, "u3")
    b2 = await join(1, "u1")  # a unit's second session is a member of its own
    here = [a1, b1, a2, b2]

    async def check() -> list[dict[str, Any]]:
        """After each change: every client's list, from the deltas alone, is the truth."""
        return await converge(nodes, here)

    await check()
    assert (await b1.request_floor("A"))["type"] == "floor_granted"
    await check()
    here.append(await join(0, "u2"))  # joins while someone talks on the other node
    await check()
    await a1.leave("A")
    here.remove(a1)
    await check()
    here.append(await join(1, "u3"))
    await check()
    await b1.release_floor("A")
    await check()
    assert (await a2.request_floor("A"))["type"] == "floor_granted"
    await check()
    await b2.leave("A")
    here.remove(b2)
    await check()
    await a2.release_floor("A")
    assert (await b1.request_floor("A"))["type"] == "floor_granted"
    expected = await check()
    assert [(x["unit"], x["state"]) for x in expected if x["state"] == "talking"] == [
        ("u2", "talking")]
    assert len(expected) == 4
    for c in here:
        # Every list was kept up by deltas in order: no gap ever needed a snapshot.
        assert c.presence.gaps == 0
        assert any(e["type"] == "presence_delta" for e in c.events)
    # Those who left hold no list.
    assert a1.members("A") is None and b2.members("A") is None


async def test_a_late_joiner_gets_the_list_then_deltas(
    nodes: list[RunningServer], join: Join
) -> None:
    early = [await join(0, "u1"), await join(1, "u2")]
    await converge(nodes, early)
    late = await join(0, "u3", talkgroup=None)
    joined = await late.join("A")
    # The whole list at once, itself included, and the revision it is at.
    assert {x["unit"] for x in joined["members"]} == {"u1", "u2", "u3"}
    revision = joined["presence_revision"]
    assert isinstance(revision, int) and revision >= 1
    since = len(late.events)
    more = [await join(1, "u1"), await join(0, "u2")]
    await converge(nodes, [*early, late, *more])
    after = lists_of(late, since)
    assert after and after[0]["type"] == "presence_delta"
    # Consecutive revisions from the one `joined` gave.
    assert [x["revision"] for x in after] == list(range(revision + 1, revision + 1 + len(after)))


class Forgetful(PttClient):
    """Loses the first delta it gets, as if it had never arrived."""

    dropped = 0  # the revision it lost

    async def _on_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "presence_delta" and not self.dropped:
            self.dropped = msg["revision"]
            return
        await super()._on_message(msg)


async def test_a_client_that_misses_a_delta_asks_and_is_right_again(
    nodes: list[RunningServer], join: Join
) -> None:
    forgetful = await join(0, "u1", cls=Forgetful)
    other = await join(1, "u2")
    assert isinstance(forgetful, Forgetful)
    await other.wait_members("A", lambda ms: len(ms) == 2)
    # The delta adding `other` is lost; the next one shows the gap.
    await forgetful.wait_for(lambda e: e["type"] == "presence_delta", SETTLE_S)
    assert forgetful.dropped > 0
    since = len(forgetful.events)
    third = await join(1, "u3")
    await converge(nodes, [forgetful, other, third])
    assert forgetful.presence.gaps >= 1
    snapshot = next(e for e in lists_of(forgetful, since) if e["type"] == "presence")
    assert snapshot["revision"] > forgetful.dropped
    # And deltas continue from the snapshot's revision.
    await third.leave("A")
    await converge(nodes, [forgetful, other])
    assert forgetful.presence.revisions["A"] > snapshot["revision"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("size", [10, 100])
async def test_a_burst_of_joins_costs_one_small_message_per_window(
    nodes: list[RunningServer], join: Join, size: int
) -> None:
    users = ("u1", "u2", "u3")
    existing: list[PttClient] = []
    for i in range(0, size, 25):
        existing += await asyncio.gather(*(
            join(k % 2, users[k % 3]) for k in range(i, min(size, i + 25))))
    await converge(nodes, existing)
    newcomers = await asyncio.gather(*(join(k % 2, users[k % 3], talkgroup=None)
                                       for k in range(50)))
    marks = [len(c.events) for c in existing]
    t0 = time.monotonic()
    await asyncio.gather(*(c.join("A") for c in newcomers))
    expected = await converge(nodes, existing + newcomers)
    assert len(expected) == size + 50
    new_sessions = sorted(c.welcome["session"] for c in newcomers)
    longest_view = max(len(json.dumps(x, separators=(",", ":"))) for x in expected)
    empty = len(m.encode(m.PresenceDelta(talkgroup="A", revision=10**6, changed=(),
                                         removed=())))
    full = len(m.encode(m.Presence(talkgroup="A", revision=1, members=tuple(
        m.MemberView(**x) for x in expected))))
    for c, mark in zip(existing, marks, strict=True):
        got = lists_of(c, mark)
        assert got and all(e["type"] == "presence_delta" for e in got), [e["type"] for e in got]
        # One per coalescing window at most (pushes are at least a window apart), so far
        # fewer than one per join.
        span = got[-1]["_at"] - t0
        assert len(got) <= 1 + span / PRESENCE_COALESCE_S, (len(got), span)
        assert len(got) < 50
        # Exact: each newcomer added once, nobody removed.
        assert sorted(x["session"] for e in got for x in e["changed"]) == new_sessions
        assert all(e["removed"] == [] for e in got)
        total = 0
        for e in got:
            size_on_wire = len(json.dumps({k: v for k, v in e.items() if k != "_at"},
                                          separators=(",", ":")))
            # What it carries, and nothing of the members that did not change.
            assert size_on_wire <= empty + len(e["changed"]) * (longest_view + 1)
            total += size_on_wire
        assert total <= len(got) * empty + 50 * (longest_view + 1)
        if size >= 100:
            assert total < full  # less than one whole list, for fifty changes
    # One floor change: a delta of one member to each, however many members there are.
    talker = existing[0]
    marks = [len(c.events) for c in existing[1:]]
    assert (await talker.request_floor("A"))["type"] == "floor_granted"
    longest_view = max(len(json.dumps(x, separators=(",", ":")))
                       for x in await converge(nodes, existing))
    for c, mark in zip(existing[1:], marks, strict=True):
        got = lists_of(c, mark)
        assert [len(e["changed"]) for e in got] == [1], got
        assert got[0]["changed"][0]["session"] == talker.welcome["session"]
        assert len(json.dumps({k: v for k, v in got[0].items() if k != "_at"},
                              separators=(",", ":"))) <= empty + longest_view + 1


def test_member_lists_follow_the_revision_rule() -> None:
    """The client side of the rule alone (client_cli/presence.py)."""
    def view(session: str, unit: str, state: str = "idle") -> dict[str, Any]:
        return {"unit": unit, "alias": unit, "role": "officer", "mode": "member",
                "state": state, "session": session}

    lists = MemberLists()
    lists.on_message({"type": "joined", "talkgroup": "A", "presence_revision": 4,
                      "members": [view("s2", "u2"), view("s1", "u1")]})
    assert [x["session"] for x in lists.members("A") or []] == ["s1", "s2"]
    assert lists.on_message({"type": "presence_delta", "talkgroup": "A", "revision": 5,
                             "changed": [view("s3", "u0"), view("s2", "u2", "talking")],
                             "removed": ["s1"]}) is None
    assert lists.members("A") == [view("s3", "u0"), view("s2", "u2", "talking")]
    # Had already (a replay): ignored.
    lists.on_message({"type": "presence_delta", "talkgroup": "A", "revision": 5,
                      "changed": [], "removed": ["s3"]})
    assert len(lists.members("A") or []) == 2
    # A gap: ask once, ignore deltas until the whole list comes.
    gap = {"type": "presence_delta", "talkgroup": "A", "revision": 7, "changed": [],
           "removed": ["s3"]}
    assert lists.on_message(gap) == "A"
    assert lists.on_message({**gap, "revision": 8}) is None
    assert len(lists.members("A") or []) == 2 and lists.gaps == 2
    lists.on_message({"type": "presence", "talkgroup": "A", "revision": 8,
                      "members": [view("s2", "u2")]})
    assert lists.on_message({"type": "presence_delta", "talkgroup": "A", "revision": 9,
                             "changed": [view("s4", "u4")], "removed": []}) is None
    assert [x["session"] for x in lists.members("A") or []] == ["s2", "s4"]
    lists.on_message({"type": "left", "talkgroup": "A"})
    assert lists.members("A") is None
