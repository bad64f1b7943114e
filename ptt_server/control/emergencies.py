"""Emergencies in Redis: who raised one on which talkgroup, and who acknowledged it.

Shared by every node: the alert is repeated until acknowledged by whichever node wins the
repeat (node/emergency_repeat.py), and a supervisor on one node acknowledges what an officer
raised on another. Three hashes, each keyed by talkgroup:

    ptt:emergency        talkgroup -> unit that raised it (the oldest key; ownership checks)
    ptt:emergency:state  talkgroup -> {"unit", "alias", "location", "ts"}: the alert as raised
    ptt:emergency:ack    talkgroup -> {"by", "alias", "ts"}: the first acknowledgement

An acknowledgement is taken only while the emergency exists, and only once (a Lua script: two
supervisors pressing at the same moment give one acknowledgement, not two ledger entries).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

RAISED_KEY = "ptt:emergency"
STATE_KEY = "ptt:emergency:state"
ACK_KEY = "ptt:emergency:ack"
REPEAT_CLAIM = "ptt:emergency:repeat"  # + ":{talkgroup}:{raised ts}:{n}": one sender per repeat

# -1: no such emergency; 0: acknowledged before; 1: this call acknowledged it.
_ACK = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
return redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2])
"""


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    by: str
    alias: str
    ts: float


@dataclass(frozen=True, slots=True)
class EmergencyState:
    talkgroup: str
    unit: str
    alias: str
    location: dict[str, float] | None
    ts: float
    ack: Acknowledgement | None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ack(raw: Any) -> Acknowledgement | None:
    if raw is None:
        return None
    d = json.loads(raw)
    return Acknowledgement(by=str(d["by"]), alias=str(d["alias"]), ts=float(d["ts"]))


def _state(talkgroup: str, raw: Any, ack: Any) -> EmergencyState:
    d = json.loads(raw)
    return EmergencyState(
        talkgroup=talkgroup, unit=str(d["unit"]), alias=str(d["alias"]),
        location=d.get("location"), ts=float(d["ts"]), ack=_ack(ack),
    )


class EmergencyStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._ack_script = redis.register_script(_ACK)

    async def raised(self, talkgroup: str, unit: str, alias: str,
                     location: dict[str, float] | None, ts: float) -> None:
        """A new alarm: any acknowledgement of an earlier one on the talkgroup is void (an
        officer who raises it again needs to be seen again). The emergency stays owned by the
        unit that raised it first: a second officer pressing Emergency on the same talkgroup
        alerts control again but cannot then clear the first one's alarm."""
        state = json.dumps({"unit": unit, "alias": alias, "location": location, "ts": ts})
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(RAISED_KEY, talkgroup, unit)
            pipe.hset(STATE_KEY, talkgroup, state)
            pipe.hdel(ACK_KEY, talkgroup)
            await pipe.execute()

    async def raiser(self, talkgroup: str) -> str | None:
        raw = await self._redis.hget(RAISED_KEY, talkgroup)
        return None if raw is None else _text(raw)

    async def raised_by(self, unit: str) -> list[str]:
        """The talkgroups where `unit`'s own emergency is under way."""
        raised = await self._redis.hgetall(RAISED_KEY)
        return sorted(_text(tg) for tg, who in raised.items() if _text(who) == unit)

    async def get(self, talkgroup: str) -> EmergencyState | None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hget(STATE_KEY, talkgroup)
            pipe.hget(ACK_KEY, talkgroup)
            raw, ack = await pipe.execute()
        return None if raw is None else _state(talkgroup, raw, ack)

    async def all(self) -> list[EmergencyState]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(STATE_KEY)
            pipe.hgetall(ACK_KEY)
            states, acks = await pipe.execute()
        acks = {_text(k): v for k, v in acks.items()}
        return [_state(_text(tg), raw, acks.get(_text(tg))) for tg, raw in states.items()]

    async def acknowledge(self, talkgroup: str, by: str, alias: str,
                          ts: float | None = None) -> tuple[bool, EmergencyState | None]:
        """(whether this call was the first to acknowledge, the emergency as it is now)."""
        ack = json.dumps({"by": by, "alias": alias, "ts": time.time() if ts is None else ts})
        result = int(await self._ack_script(keys=[STATE_KEY, ACK_KEY], args=[talkgroup, ack]))
        return result == 1, await self.get(talkgroup)

    async def withdraw_ack(self, talkgroup: str, by: str) -> None:
        """Undo this supervisor's acknowledgement (it could not be ledgered)."""
        current = await self.get(talkgroup)
        if current is not None and current.ack is not None and current.ack.by == by:
            await self._redis.hdel(ACK_KEY, talkgroup)

    async def cleared(self, talkgroup: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            for key in (RAISED_KEY, STATE_KEY, ACK_KEY):
                pipe.hdel(key, talkgroup)
            await pipe.execute()

    async def claim_repeat(self, state: EmergencyState, n: int, node: str, ttl_s: float) -> bool:
        """True for the one node that sends repeat `n` of this emergency."""
        key = f"{REPEAT_CLAIM}:{state.talkgroup}:{state.ts!r}:{n}"
        return bool(await self._redis.set(key, node, nx=True, px=max(1, int(ttl_s * 1000))))
