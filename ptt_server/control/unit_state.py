"""Each unit's last status and last known location, shared by every node (Redis).

What the command centre asks "where is unit 7, what is it doing" from: the incident API's
`GET /api/units` (service/incident_api.py) joins this with presence. Two hashes keyed by unit:

    ptt:unit:status    unit -> {"status", "talkgroup", "ts"}
    ptt:unit:location  unit -> {"lat", "lon", "accuracy", "ts"}

Entries are overwritten, never accumulated: the history is in the ledger (status messages).
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

STATUS_KEY = "ptt:unit:status"
LOCATION_KEY = "ptt:unit:location"


def _load(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def set_status(redis: aioredis.Redis, unit: str, status: str, talkgroup: str | None,
                     ts: float) -> None:
    await redis.hset(STATUS_KEY, unit, json.dumps(
        {"status": status, "talkgroup": talkgroup, "ts": ts}, separators=(",", ":")))


async def set_location(redis: aioredis.Redis, unit: str, location: dict[str, float],
                       ts: float) -> None:
    await redis.hset(LOCATION_KEY, unit, json.dumps({**location, "ts": ts},
                                                    separators=(",", ":")))


async def of_units(redis: aioredis.Redis, units: list[str]
                   ) -> dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None]]:
    """unit -> (last status, last location), either None if never reported."""
    if not units:
        return {}
    statuses = await redis.hmget(STATUS_KEY, units)
    locations = await redis.hmget(LOCATION_KEY, units)
    return {u: (_load(s), _load(loc)) for u, s, loc in zip(units, statuses, locations,
                                                            strict=True)}
