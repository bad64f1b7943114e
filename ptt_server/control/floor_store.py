"""Floor control shared by every server node: the pure rules of `floor.step`, applied to the
floor stored in Redis with optimistic concurrency.

apply() reads the floor, runs `step` in Python (the one place the rules live), and writes the
result with a Lua compare-and-set on the floor's version. The same script, atomically with the
write, publishes the outputs and files the floor's next deadline, so a subscriber never sees
an event for a state that was not stored, and no stored deadline is ever lost. A lost race
just means: read again, decide again.

Redis layout (prefix "ptt"):
  ptt:floor:{id}         the floor as JSON; id is the talkgroup, or "patch:<patch id>"
  ptt:floor:deadlines    sorted set: floor id -> Floor.deadline(), only while there is one
  ptt:patch_of           hash: talkgroup -> patch id
  ptt:patch:{patch id}   set of the patch's talkgroups
Channel ptt:floor:{talkgroup} carries {"talkgroup", "version", "outputs": [...]}.

Patches (TS 24.380 has none; this is the dispatch-console "patch" of trunked radio): the
patched talkgroups share one floor, so one talker is heard on all of them and two units on
different patched talkgroups cannot talk over each other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
import weakref
from collections.abc import Sequence
from typing import Any, ClassVar

import redis.asyncio as aioredis

from ptt_server.core import floor as fl

log = logging.getLogger("ptt.floor")

MAX_ATTEMPTS = 50
PATCH_PREFIX = "patch:"
_BACKOFF_S = 0.002  # per attempt, jittered: spreads a burst of contenders apart


class FloorContention(fl.FloorError):
    """Too many concurrent writers on one floor; the client may simply try again."""

    code: ClassVar[str] = "unavailable"


class PatchError(fl.FloorError):
    code: ClassVar[str] = "patch_error"


class PatchConflict(PatchError):
    """The patch id exists already, or a talkgroup is already in a patch."""

    code: ClassVar[str] = "patch_conflict"


class PatchBusy(PatchError):
    """A floor involved is taken; (un)patching now would cut a transmission in two."""

    code: ClassVar[str] = "patch_busy"


class UnknownPatch(PatchError):
    code: ClassVar[str] = "unknown_patch"


# Results of the compare-and-set script.
_WRITTEN, _VERSION_MOVED, _MAPPING_MOVED, _FENCED = 1, 0, -1, -2

# After Redis comes back without the floor state, no floor is granted for this long: longer
# than a node keeps a transmission going without reaching Redis (node/loops.py), so the talker
# of the lost state has been stopped by its own node before anyone else may talk.
FENCE_S = 4.0


class EpochChanged(fl.FloorError):
    """Redis is not the one our floor state came from (restarted empty, or another epoch)."""

    code: ClassVar[str] = "unavailable"


class Fenced(fl.FloorError):
    """Floors are not granted yet: Redis lost its state a moment ago."""

    code: ClassVar[str] = "unavailable"


# KEYS: epoch hash. ARGV: new epoch id, now, fence seconds for a re-created epoch ('' = none).
# Returns {id, not_before, created}. The epoch says "this Redis's floor state began here":
# a node that knew another epoch (or finds none) knows every floor it saw is gone.
_EPOCH = """
local id = redis.call('HGET', KEYS[1], 'id')
if id then return {id, redis.call('HGET', KEYS[1], 'not_before'), 0} end
local not_before = ARGV[2]
if ARGV[3] ~= '' then not_before = tostring(tonumber(ARGV[2]) + tonumber(ARGV[3])) end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'not_before', not_before)
return {ARGV[1], not_before, 1}
"""

# KEYS: floor key, deadlines zset, patch_of hash, patch member set (unused for a plain floor),
#       epoch hash
# ARGV: floor id, talkgroup it was resolved from ('' for a deadline tick), expected version,
#       new floor JSON ('' = unchanged), new version, outputs JSON array ('' = none),
#       deadline ('' = none), channel prefix, expected epoch id
_CAS = """
if redis.call('HGET', KEYS[5], 'id') ~= ARGV[9] then return -2 end
local floor_id, tg = ARGV[1], ARGV[2]
local members
local pid = string.match(floor_id, '^patch:(.+)$')
if pid then
  members = redis.call('SMEMBERS', KEYS[4])
  if #members == 0 then return -1 end
  if tg ~= '' and redis.call('HGET', KEYS[3], tg) ~= pid then return -1 end
else
  if redis.call('HEXISTS', KEYS[3], floor_id) == 1 then return -1 end
  members = {floor_id}
end
local raw = redis.call('GET', KEYS[1])
local version = 0
if raw then version = tonumber(cjson.decode(raw)['version']) end
if version ~= tonumber(ARGV[3]) then return 0 end
if ARGV[4] ~= '' then redis.call('SET', KEYS[1], ARGV[4]) end
if ARGV[7] == '' then
  redis.call('ZREM', KEYS[2], floor_id)
else
  redis.call('ZADD', KEYS[2], ARGV[7], floor_id)
end
if ARGV[6] ~= '' then
  for _, m in ipairs(members) do
    redis.call('PUBLISH', ARGV[8] .. m, '{"talkgroup":' .. cjson.encode(m) ..
      ',"version":' .. ARGV[5] .. ',"outputs":' .. ARGV[6] .. '}')
  end
end
return 1
"""

# KEYS: patch_of hash, patch member set, then each talkgroup's own floor key
# ARGV: patch id, then the talkgroups (same order as their floor keys)
_PATCH = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {'conflict', ARGV[1]} end
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then return {'conflict', ARGV[i]} end
  local raw = redis.call('GET', KEYS[i + 1])
  if raw and cjson.decode(raw)['state'] ~= 'idle' then return {'busy', ARGV[i]} end
end
for i = 2, #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[1])
  redis.call('SADD', KEYS[2], ARGV[i])
end
return {'ok', ''}
"""

# KEYS: patch_of hash, patch member set, patch floor key, deadlines zset
# ARGV: floor id, expected version, reset floor JSON
# The patch floor is reset, not deleted, so its version keeps counting up: a writer that read
# it before the unpatch can never mistake a later patch of the same id for the floor it read.
_UNPATCH = """
local members = redis.call('SMEMBERS', KEYS[2])
if #members == 0 then return 'unknown' end
local raw = redis.call('GET', KEYS[3])
local version = 0
if raw then
  local doc = cjson.decode(raw)
  if doc['state'] ~= 'idle' then return 'busy' end
  version = tonumber(doc['version'])
end
if version ~= tonumber(ARGV[2]) then return 'moved' end
for _, m in ipairs(members) do redis.call('HDEL', KEYS[1], m) end
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[3], ARGV[3])
redis.call('ZREM', KEYS[4], ARGV[1])
return 'ok'
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _check_talkgroup(talkgroup: str) -> None:
    # Floor ids share the key space `{prefix}:floor:*` with patches and the deadline set.
    if not talkgroup or ":" in talkgroup or talkgroup == "deadlines":
        raise ValueError(f"invalid talkgroup id {talkgroup!r}")


class FloorStore:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        lease_s: float,
        prefix: str = "ptt",
        queue_timeout_s: float = fl.QUEUE_TIMEOUT_S,
        max_queue: int = fl.MAX_QUEUE,
    ) -> None:
        self.redis = redis
        self.lease_s = lease_s
        self.queue_timeout_s = queue_timeout_s
        self.max_queue = max_queue
        self.prefix = prefix
        self.deadlines_key = f"{prefix}:floor:deadlines"
        self.patch_of_key = f"{prefix}:patch_of"
        self.epoch_key = f"{prefix}:epoch"
        self.epoch: str | None = None  # the Redis epoch our view of the floors belongs to
        self.not_before = 0.0  # no grants before this (wall clock): the fence after a reset
        self._epoch = redis.register_script(_EPOCH)
        self._cas = redis.register_script(_CAS)
        self._patch = redis.register_script(_PATCH)
        self._unpatch = redis.register_script(_UNPATCH)
        # One writer per floor per node: the compare-and-set keeps nodes correct, this keeps
        # a burst on one node from turning into a retry storm (n contenders cost n^2 attempts;
        # serialised locally, only the nodes contend).
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    # -- naming -------------------------------------------------------------------------------
    def floor_key(self, floor_id: str) -> str:
        return f"{self.prefix}:floor:{floor_id}"

    def channel(self, talkgroup: str) -> str:
        return f"{self.prefix}:floor:{talkgroup}"

    def _members_key(self, floor_id: str) -> str:
        if floor_id.startswith(PATCH_PREFIX):
            return f"{self.prefix}:patch:{floor_id.removeprefix(PATCH_PREFIX)}"
        return f"{self.prefix}:patch:"  # never a real patch set; keeps KEYS' shape fixed

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def step(self, floor: fl.Floor, event: fl.FloorInput) -> tuple[fl.Floor, list[fl.FloorOutput]]:
        """The pure rules with this store's parameters (tests replay through this)."""
        return fl.step(floor, event, lease_s=self.lease_s,
                       queue_timeout_s=self.queue_timeout_s, max_queue=self.max_queue)

    # -- reading ------------------------------------------------------------------------------
    async def floor_key_for(self, talkgroup: str) -> str:
        """The id of the floor a talkgroup uses: itself, or "patch:<id>" while patched.
        The floor's Redis key is `floor_key(id)`."""
        _check_talkgroup(talkgroup)
        patch_id = await self.redis.hget(self.patch_of_key, talkgroup)
        return talkgroup if patch_id is None else PATCH_PREFIX + _text(patch_id)

    async def _read(self, talkgroup: str) -> tuple[str, fl.Floor]:
        _check_talkgroup(talkgroup)
        # Guess "not patched" and fetch both at once: one round trip in the common case.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.patch_of_key, talkgroup)
            pipe.get(self.floor_key(talkgroup))
            patch_id, raw = await pipe.execute()
        floor_id = talkgroup
        if patch_id is not None:
            floor_id = PATCH_PREFIX + _text(patch_id)
            raw = await self.redis.get(self.floor_key(floor_id))
        return floor_id, self._decode(raw)

    @staticmethod
    def _decode(raw: Any) -> fl.Floor:
        return fl.Floor.initial() if raw is None else fl.Floor.from_json(raw)

    async def get(self, talkgroup: str) -> fl.Floor:
        return (await self._read(talkgroup))[1]

    async def get_by_id(self, floor_id: str) -> fl.Floor:
        return self._decode(await self.redis.get(self.floor_key(floor_id)))

    # -- epoch --------------------------------------------------------------------------------
    async def check_epoch(self, now: float) -> bool:
        """Read (or, if Redis has none, create) the epoch. False if it is not the one we knew:
        Redis restarted empty or was replaced, and every floor this node saw is gone. A node
        that never knew an epoch creates one without a fence (a fresh deployment); one that
        knew another creates it fenced."""
        fence = repr(FENCE_S) if self.epoch is not None else ""
        epoch_id, not_before, _created = await self._epoch(
            keys=[self.epoch_key], args=[uuid.uuid4().hex, repr(now), fence]
        )
        epoch_id = _text(epoch_id)
        changed = self.epoch is not None and epoch_id != self.epoch
        self.epoch = epoch_id
        self.not_before = float(_text(not_before))
        return not changed

    # -- writing ------------------------------------------------------------------------------
    async def apply(
        self, talkgroup: str, event: fl.FloorInput
    ) -> tuple[fl.Floor, list[fl.FloorOutput]]:
        """Apply one input to a talkgroup's floor (its patch's, if patched), atomically across
        nodes. Returns the stored floor and the outputs, which were also published on the
        channel of each talkgroup sharing the floor. A FloorError from the rules propagates
        with nothing written; FloorContention if the floor kept changing under us."""
        async with self._lock(talkgroup):
            return await self._apply(talkgroup, event)

    async def _apply(
        self, talkgroup: str, event: fl.FloorInput
    ) -> tuple[fl.Floor, list[fl.FloorOutput]]:
        if self.epoch is None:
            await self.check_epoch(time.time())
        if isinstance(event, fl.Request) and time.time() < self.not_before:
            raise Fenced("floors are being restored after a service interruption; try again")
        for attempt in range(MAX_ATTEMPTS):
            floor_id, floor = await self._read(talkgroup)
            after, outputs = self.step(floor, event)
            if after is floor and not outputs:
                return floor, outputs
            result = await self._write(floor_id, talkgroup, floor, after, outputs)
            if result == _WRITTEN:
                return after, outputs
            if result == _FENCED:
                raise EpochChanged("the floor service was interrupted; try again")
            await self._backoff(attempt)
        raise FloorContention(f"floor of '{talkgroup}' is too busy, try again")

    async def _apply_id(self, floor_id: str, event: fl.FloorInput) -> list[fl.FloorOutput]:
        """Apply to a floor by id, as a deadline tick does; a floor whose id is no longer in
        use (its patch dissolved) is dropped from the deadlines instead."""
        if self.epoch is None:
            await self.check_epoch(time.time())
        async with self._lock(floor_id):
            return await self._apply_by_id(floor_id, event)

    async def _apply_by_id(self, floor_id: str, event: fl.FloorInput) -> list[fl.FloorOutput]:
        for attempt in range(MAX_ATTEMPTS):
            floor = await self.get_by_id(floor_id)
            after, outputs = self.step(floor, event)
            if after is floor and not outputs:
                return outputs
            result = await self._write(floor_id, "", floor, after, outputs)
            if result == _WRITTEN:
                return outputs
            if result == _FENCED:
                raise EpochChanged("the floor service was interrupted")
            if result == _MAPPING_MOVED:
                await self.redis.zrem(self.deadlines_key, floor_id)
                return []
            await self._backoff(attempt)
        raise FloorContention(f"floor '{floor_id}' is too busy")

    async def _write(
        self, floor_id: str, talkgroup: str, before: fl.Floor, after: fl.Floor,
        outputs: Sequence[fl.FloorOutput],
    ) -> int:
        deadline = after.deadline()
        changed = after.version != before.version
        result = await self._cas(
            keys=[self.floor_key(floor_id), self.deadlines_key, self.patch_of_key,
                  self._members_key(floor_id), self.epoch_key],
            args=[
                floor_id, talkgroup, before.version,
                after.to_json() if changed else "", after.version,
                json.dumps([o.to_dict() for o in outputs], separators=(",", ":"))
                if outputs else "",
                repr(deadline) if deadline is not None else "",
                f"{self.prefix}:floor:", self.epoch or "",
            ],
        )
        return int(result)

    @staticmethod
    async def _backoff(attempt: int) -> None:
        await asyncio.sleep(random.uniform(0, _BACKOFF_S * min(attempt + 1, 10)))

    # -- deadlines ----------------------------------------------------------------------------
    async def due(self, now: float) -> list[str]:
        """Floor ids (a talkgroup, or "patch:<id>") whose deadline is at or before `now`."""
        ids = await self.redis.zrangebyscore(self.deadlines_key, "-inf", repr(now))
        return [_text(i) for i in ids]

    async def tick_due(self, now: float) -> list[tuple[str, list[fl.FloorOutput]]]:
        """Apply Tick(now) to every due floor. Any node may call this at any time; a floor
        ticked by two nodes at once changes once (the loser re-reads and finds nothing due).
        Returns (floor id, outputs) for the floors that changed."""
        results: list[tuple[str, list[fl.FloorOutput]]] = []
        for floor_id in await self.due(now):
            try:
                outputs = await self._apply_id(floor_id, fl.Tick(now))
            except FloorContention:
                log.warning("floor tick contended", extra={"fields": {"floor": floor_id}})
                continue
            if outputs:
                results.append((floor_id, outputs))
        return results

    # -- patches ------------------------------------------------------------------------------
    async def patch(self, patch_id: str, talkgroups: list[str]) -> None:
        """Make the talkgroups share one floor, "patch:<patch_id>". Every one of their floors
        must be idle, and none may be in another patch."""
        if not patch_id or any(c.isspace() for c in patch_id):
            raise ValueError(f"invalid patch id {patch_id!r}")
        members = list(dict.fromkeys(talkgroups))
        if len(members) < 2:
            raise ValueError("a patch needs at least two talkgroups")
        for tg in members:
            _check_talkgroup(tg)
        status, which = await self._patch(
            keys=[self.patch_of_key, self._members_key(PATCH_PREFIX + patch_id),
                  *(self.floor_key(tg) for tg in members)],
            args=[patch_id, *members],
        )
        status, which = _text(status), _text(which)
        if status == "conflict":
            raise PatchConflict(f"'{which}' is already patched")
        if status == "busy":
            raise PatchBusy(f"the floor of '{which}' is taken")

    async def unpatch(self, patch_id: str) -> None:
        """Dissolve a patch; only while its shared floor is idle. Each talkgroup goes back to
        its own floor (idle, since it was idle when patched and unused since)."""
        floor_id = PATCH_PREFIX + patch_id
        for attempt in range(MAX_ATTEMPTS):
            current = await self.get_by_id(floor_id)
            reset = fl.Floor(fl.FloorState.IDLE, None, (), current.version + 1)
            status = _text(await self._unpatch(
                keys=[self.patch_of_key, self._members_key(floor_id), self.floor_key(floor_id),
                      self.deadlines_key],
                args=[floor_id, current.version, reset.to_json()],
            ))
            if status == "ok":
                return
            if status == "unknown":
                raise UnknownPatch(f"no patch '{patch_id}'")
            if status == "busy":
                raise PatchBusy(f"the floor of patch '{patch_id}' is taken")
            await self._backoff(attempt)
        raise FloorContention(f"patch '{patch_id}' is too busy")

    async def patch_members(self, patch_id: str) -> list[str]:
        members = await self.redis.smembers(self._members_key(PATCH_PREFIX + patch_id))
        return sorted(_text(m) for m in members)
