"""Where units are: the positions officers share (opt-in), kept in Redis for every node.

Per unit a list of its last `history` positions, newest first, that expires `ttl_s` after
the last one (a unit that stopped sharing drops off the map by itself), and one sorted set of
units by the time their last position arrived, so a console that opens finds every unit seen
recently without scanning keys:

    ptt:loc:{unit}     list of JSON positions (unit_location's fields), at most `history`
    ptt:loc:units      unit -> when its last position was received (Unix seconds)
    ptt:loc:rate:{unit}  set while a unit's next position would come too soon

Bounded in every direction: the history by LTRIM, each unit by its TTL, the set by trimming
entries older than the TTL on every write.
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

PREFIX = "ptt:loc"
UNITS_KEY = f"{PREFIX}:units"
HISTORY = 50
TTL_S = 3600.0  # an hour without a position: the unit is no longer on the map


def _key(unit: str) -> str:
    return f"{PREFIX}:{unit}"


class LocationStore:
    def __init__(self, redis: aioredis.Redis, *, history: int = HISTORY,
                 ttl_s: float = TTL_S) -> None:
        self._redis = redis
        self.history = history
        self.ttl_s = ttl_s

    async def admit(self, unit: str, min_gap_s: float) -> bool:
        """False if `unit`'s previous position came less than `min_gap_s` ago (on any node,
        from any of its sessions): a page that sends too often is not stored or forwarded."""
        ms = max(1, int(min_gap_s * 1000))
        return bool(await self._redis.set(f"{PREFIX}:rate:{unit}", 1, nx=True, px=ms))

    async def record(self, unit: str, point: dict[str, Any], received: float) -> None:
        key = _key(unit)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(key, json.dumps(point, allow_nan=False))
            pipe.ltrim(key, 0, self.history - 1)
            pipe.pexpire(key, int(self.ttl_s * 1000))
            pipe.zadd(UNITS_KEY, {unit: received})
            pipe.zremrangebyscore(UNITS_KEY, "-inf", received - self.ttl_s)
            await pipe.execute()

    async def history_of(self, unit: str) -> list[dict[str, Any]]:
        """The unit's last positions, newest first."""
        return [json.loads(raw) for raw in await self._redis.lrange(_key(unit), 0, -1)]

    async def latest(self, now: float) -> list[dict[str, Any]]:
        """The last position of each unit seen within the TTL, most recent first."""
        units = await self._redis.zrevrangebyscore(UNITS_KEY, "+inf", now - self.ttl_s)
        if not units:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for unit in units:
                pipe.lindex(_key(unit.decode() if isinstance(unit, bytes) else str(unit)), 0)
            raws = await pipe.execute()
        return [json.loads(raw) for raw in raws if raw is not None]
