"""Who is online in each talkgroup, across all server nodes, kept in Redis.

Each node heartbeats its own sessions (`refresh`); an entry not refreshed within `ttl_s` is
treated as gone at once by `members` and physically removed by any node's `sweep`, so the
sessions of a node that died vanish without anyone having to notice the death.

Redis layout (prefix "ptt"):
  ptt:presence:{tg}          hash: session -> {"seen": <epoch s>, "member": {...}}
  ptt:presence_talkgroups    set of talkgroups that have (or recently had) entries
Every change publishes {"talkgroup": tg, "type": "presence_changed"} on ptt:presence:{tg};
readers fetch the member list themselves, so a lost message only delays an update.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import redis.asyncio as aioredis

MODES = ("member", "monitor")

# The stored value always starts with the "seen" field, written by `_encode`, so Lua can
# bump the heartbeat in place without decoding and re-encoding the member (Redis' cjson
# would round the floats to 14 digits).
_SEEN = '^{"seen":([^,]+)(,.*)$'

# KEYS: one presence hash per pair.  ARGV: now, then one session per key.
# Returns the 1-based indexes of the pairs that had no entry to refresh.
_REFRESH = f"""
local missing = {{}}
for i = 1, #KEYS do
  local raw = redis.call('HGET', KEYS[i], ARGV[i + 1])
  local rest = raw and select(2, string.match(raw, '{_SEEN}'))
  if rest then
    redis.call('HSET', KEYS[i], ARGV[i + 1], '{{"seen":' .. ARGV[1] .. rest)
  else
    table.insert(missing, i)
  end
end
return missing
"""

# KEYS: presence hash, talkgroup set.  ARGV: cutoff (entries seen before it are stale),
# talkgroup, channel, change message.  Returns how many entries were removed.
_SWEEP = f"""
local entries = redis.call('HGETALL', KEYS[1])
local removed = 0
for i = 1, #entries, 2 do
  local seen = string.match(entries[i + 1], '{_SEEN}')
  seen = seen and tonumber(seen)
  if seen == nil or seen < tonumber(ARGV[1]) then
    redis.call('HDEL', KEYS[1], entries[i])
    removed = removed + 1
  end
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
if removed > 0 then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return removed
"""

# KEYS: presence hash, talkgroup set.  ARGV: session, talkgroup, channel, change message.
_LEAVE = """
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
if removed > 0 then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return removed
"""


@dataclass(frozen=True)
class Member:
    session: str
    unit: str
    alias: str
    role: str
    node: str
    mode: str  # "member" (may talk) or "monitor" (listen only)
    since: float

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Member:
        return Member(
            session=str(d["session"]), unit=str(d["unit"]), alias=str(d["alias"]),
            role=str(d["role"]), node=str(d["node"]), mode=str(d["mode"]),
            since=float(d["since"]),
        )


def _encode(member: Member, seen: float) -> str:
    # `json.dumps` keeps insertion order, so "seen" comes first, as `_SEEN` expects.
    return json.dumps({"seen": seen, "member": member.to_dict()}, separators=(",", ":"))


def _decode(raw: Any) -> tuple[float, Member] | None:
    try:
        d = json.loads(raw)
        return float(d["seen"]), Member.from_dict(d["member"])
    except (ValueError, KeyError, TypeError):
        return None  # a damaged entry is never shown; sweep removes it


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Presence:
    def __init__(self, redis: aioredis.Redis, *, ttl_s: float, prefix: str = "ptt") -> None:
        if not ttl_s > 0:
            raise ValueError("ttl_s must be positive")
        self.redis = redis
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.talkgroups_key = f"{prefix}:presence_talkgroups"
        self._refresh = redis.register_script(_REFRESH)
        self._sweep = redis.register_script(_SWEEP)
        self._leave = redis.register_script(_LEAVE)

    def key(self, talkgroup: str) -> str:
        return f"{self.prefix}:presence:{talkgroup}"

    def channel(self, talkgroup: str) -> str:
        return f"{self.prefix}:presence:{talkgroup}"

    @staticmethod
    def _changed(talkgroup: str) -> str:
        return json.dumps({"talkgroup": talkgroup, "type": "presence_changed"})

    async def join(self, talkgroup: str, member: Member, now: float) -> None:
        """Add (or replace) a session's entry; it counts as seen at `now`."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.key(talkgroup), member.session, _encode(member, now))
            pipe.sadd(self.talkgroups_key, talkgroup)
            pipe.publish(self.channel(talkgroup), self._changed(talkgroup))
            await pipe.execute()

    async def leave(self, talkgroup: str, session: str) -> bool:
        """Remove a session's entry. False if it had none (left already, or swept)."""
        removed = await self._leave(
            keys=[self.key(talkgroup), self.talkgroups_key],
            args=[session, talkgroup, self.channel(talkgroup), self._changed(talkgroup)],
        )
        return int(removed) > 0

    async def refresh(
        self, sessions: Iterable[tuple[str, str]], now: float
    ) -> list[tuple[str, str]]:
        """Heartbeat many (talkgroup, session) pairs in one round trip. Never recreates an
        entry: returns the pairs that had none (swept while their node was cut off), which
        the caller should `join` again."""
        pairs = list(sessions)
        if not pairs:
            return []
        missing = await self._refresh(
            keys=[self.key(tg) for tg, _ in pairs],
            args=[repr(float(now)), *(session for _, session in pairs)],
        )
        return [pairs[int(i) - 1] for i in missing]

    async def members(self, talkgroup: str, now: float) -> list[Member]:
        """Live members (seen within ttl_s of `now`), sorted by unit, then session."""
        entries = await self.redis.hgetall(self.key(talkgroup))
        cutoff = now - self.ttl_s
        live = [
            decoded[1]
            for raw in entries.values()
            if (decoded := _decode(raw)) is not None and decoded[0] >= cutoff
        ]
        return sorted(live, key=lambda m: (m.unit, m.session))

    async def talkgroups(self) -> list[str]:
        """Talkgroups with entries (possibly stale ones, until the next sweep)."""
        return sorted(_text(t) for t in await self.redis.smembers(self.talkgroups_key))

    async def talkgroups_of_node(self, node: str, now: float | None = None) -> list[str]:
        """Talkgroups where `node` has sessions (live ones only, if `now` is given)."""
        found = []
        for talkgroup in await self.talkgroups():
            entries = await self.redis.hgetall(self.key(talkgroup))
            for raw in entries.values():
                decoded = _decode(raw)
                if decoded is None or decoded[1].node != node:
                    continue
                if now is None or decoded[0] >= now - self.ttl_s:
                    found.append(talkgroup)
                    break
        return found

    async def sweep(self, now: float) -> list[str]:
        """Remove entries not refreshed within ttl_s everywhere; returns the talkgroups that
        lost members (each was also announced on its channel). Any node may run this."""
        talkgroups = await self.talkgroups()
        if not talkgroups:
            return []
        cutoff = repr(float(now - self.ttl_s))
        async with self.redis.pipeline(transaction=False) as pipe:
            for talkgroup in talkgroups:
                await self._sweep(
                    keys=[self.key(talkgroup), self.talkgroups_key],
                    args=[cutoff, talkgroup, self.channel(talkgroup), self._changed(talkgroup)],
                    client=pipe,
                )
            removed = await pipe.execute()
        return [tg for tg, n in zip(talkgroups, removed, strict=True) if int(n) > 0]
