"""Presence against a real redis-server, with time passed in explicitly."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from ptt_server.control.presence import Member, Presence

TTL = 10.0
T0 = 1_700_000_000.123456


def member(session: str, unit: str | None = None, *, node: str = "node-a",
           mode: str = "member", since: float = T0) -> Member:
    return Member(session=session, unit=unit or f"unit-{session}", alias=f"alias-{session}",
                  role="officer", node=node, mode=mode, since=since)


@pytest.fixture
def presence(redis: aioredis.Redis) -> Presence:
    return Presence(redis, ttl_s=TTL)


class Changes:
    def __init__(self, client: aioredis.Redis) -> None:
        self.pubsub: Any = client.pubsub()  # redis-py leaves PubSub partly untyped

    async def start(self) -> Changes:
        await self.pubsub.psubscribe("ptt:presence:*")
        msg = await self.pubsub.get_message(timeout=2.0)
        assert msg is not None and msg["type"] == "psubscribe"
        return self

    async def talkgroups(self, timeout: float = 0.3) -> list[str]:
        """Every change announced until the channel goes quiet."""
        seen: list[str] = []
        while True:
            msg = await self.pubsub.get_message(ignore_subscribe_messages=True,
                                                timeout=timeout)
            if msg is None:
                return seen
            body = json.loads(msg["data"])
            assert body["type"] == "presence_changed"
            assert msg["channel"].decode() == f"ptt:presence:{body['talkgroup']}"
            seen.append(body["talkgroup"])

    async def close(self) -> None:
        await self.pubsub.aclose()


@pytest.fixture
async def changes(redis: aioredis.Redis) -> AsyncIterator[Changes]:
    watcher = await Changes(redis).start()
    yield watcher
    await watcher.close()


def test_member_dict_round_trip() -> None:
    m = member("s1", mode="monitor")
    assert Member.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    with pytest.raises(ValueError):
        member("s1", mode="listener")


async def test_join_members_leave(presence: Presence, changes: Changes) -> None:
    await presence.join("tg1", member("s2", "bravo"), T0)
    await presence.join("tg1", member("s1", "alpha", mode="monitor"), T0 + 1)
    await presence.join("tg2", member("s3"), T0)
    assert await changes.talkgroups() == ["tg1", "tg1", "tg2"]
    got = await presence.members("tg1", T0 + 2)
    assert [m.unit for m in got] == ["alpha", "bravo"]
    assert got[0] == member("s1", "alpha", mode="monitor")  # floats survive exactly
    assert await presence.talkgroups() == ["tg1", "tg2"]

    assert await presence.leave("tg1", "s2") is True
    assert await presence.leave("tg1", "s2") is False
    assert await changes.talkgroups() == ["tg1"]  # only a real change is announced
    assert [m.session for m in await presence.members("tg1", T0 + 2)] == ["s1"]
    await presence.leave("tg1", "s1")
    assert await presence.talkgroups() == ["tg2"]
    assert await presence.members("tg1", T0 + 2) == []


async def test_rejoin_replaces_the_entry(presence: Presence) -> None:
    await presence.join("tg1", member("s1", mode="member"), T0)
    await presence.join("tg1", member("s1", mode="monitor", since=T0 + 5), T0 + 5)
    assert await presence.members("tg1", T0 + 5) == [member("s1", mode="monitor",
                                                            since=T0 + 5)]


async def test_expiry_without_refresh(presence: Presence) -> None:
    await presence.join("tg1", member("s1"), T0)
    assert len(await presence.members("tg1", T0 + TTL)) == 1  # exactly at the limit: alive
    assert await presence.members("tg1", T0 + TTL + 0.001) == []


async def test_refresh_keeps_members_alive(presence: Presence, changes: Changes) -> None:
    await presence.join("tg1", member("s1"), T0)
    await presence.join("tg2", member("s1"), T0)
    await presence.join("tg1", member("s2"), T0)
    await changes.talkgroups()
    missing = await presence.refresh([("tg1", "s1"), ("tg2", "s1")], T0 + 8)
    assert missing == []
    assert await changes.talkgroups() == []  # a heartbeat is not a change
    later = T0 + 15
    assert [m.session for m in await presence.members("tg1", later)] == ["s1"]
    assert [m.session for m in await presence.members("tg2", later)] == ["s1"]
    # The refreshed entry is unchanged apart from its heartbeat.
    assert (await presence.members("tg1", later))[0] == member("s1")
    assert await presence.refresh([], later) == []


async def test_refresh_never_resurrects(presence: Presence, redis: aioredis.Redis) -> None:
    await presence.join("tg1", member("s1"), T0)
    await presence.leave("tg1", "s1")
    missing = await presence.refresh([("tg1", "s1"), ("tg9", "s9")], T0 + 1)
    assert missing == [("tg1", "s1"), ("tg9", "s9")]
    assert await redis.exists("ptt:presence:tg1", "ptt:presence:tg9") == 0


async def test_sweep_removes_stale_entries_everywhere(
    presence: Presence, redis: aioredis.Redis, changes: Changes
) -> None:
    await presence.join("tg1", member("s1"), T0)
    await presence.join("tg1", member("s2"), T0 + 5)
    await presence.join("tg2", member("s3"), T0)
    await presence.join("tg3", member("s4"), T0 + 5)
    await changes.talkgroups()
    assert await presence.sweep(T0 + TTL) == []
    assert await changes.talkgroups() == []

    changed = await presence.sweep(T0 + 12)
    assert sorted(changed) == ["tg1", "tg2"]
    assert sorted(await changes.talkgroups()) == ["tg1", "tg2"]
    assert await redis.hkeys("ptt:presence:tg1") == [b"s2"]
    assert await redis.exists("ptt:presence:tg2") == 0
    assert await presence.talkgroups() == ["tg1", "tg3"]

    assert sorted(await presence.sweep(T0 + 100)) == ["tg1", "tg3"]
    assert await presence.talkgroups() == []
    assert await presence.sweep(T0 + 100) == []


async def test_sweep_removes_damaged_entries(presence: Presence, redis: aioredis.Redis) -> None:
    await presence.join("tg1", member("s1"), T0)
    await redis.hset("ptt:presence:tg1", "junk", "not json")
    assert [m.session for m in await presence.members("tg1", T0)] == ["s1"]
    assert await presence.sweep(T0) == ["tg1"]
    assert await redis.hkeys("ptt:presence:tg1") == [b"s1"]


async def test_talkgroups_of_node(presence: Presence) -> None:
    await presence.join("tg1", member("s1", node="n1"), T0)
    await presence.join("tg2", member("s2", node="n2"), T0)
    await presence.join("tg3", member("s3", node="n1"), T0 + 20)
    assert await presence.talkgroups_of_node("n1") == ["tg1", "tg3"]
    assert await presence.talkgroups_of_node("n1", now=T0 + 20) == ["tg3"]
    assert await presence.talkgroups_of_node("n3") == []


async def test_two_nodes_share_one_view(redis_url: str) -> None:
    a, b = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
    try:
        pa, pb = Presence(a, ttl_s=TTL), Presence(b, ttl_s=TTL)
        await pa.join("tg1", member("s1", node="n-a"), T0)
        await pb.join("tg1", member("s2", node="n-b"), T0)
        # Node b dies: only node a keeps heartbeating.
        await pa.refresh([("tg1", "s1")], T0 + 9)
        assert await pb.sweep(T0 + 15) == ["tg1"]
        assert [m.node for m in await pa.members("tg1", T0 + 15)] == ["n-a"]
    finally:
        await a.aclose()
        await b.aclose()
