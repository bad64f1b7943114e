"""Floor control shared by every server node: the pure rules of `floor.step`, applied to the
floor stored in Redis with optimistic concurrency.

apply() reads the floor, runs `step` in Python (the one place the rules live), and writes the
result with a Lua compare-and-set on the floor's version (the scripts are in
control/floor_lua.py). The same script, atomically with the write, publishes the outputs and
files the floor's next deadline, so a subscriber never sees an event for a state that was not
stored, and no stored deadline is ever lost. A lost race just means: read again, decide again.

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
from redis.exceptions import NoScriptError

from ptt_server.control import floor_lua as lua
from ptt_server.control.coalesce import Coalescer
from ptt_server.core import floor as fl
from ptt_server.core.sealing import Sealer

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

# After Redis comes back without the floor state, no floor is granted for a lease time and
# this much more: a node keeps a transmission going without reaching Redis for less than its
# lease (node/loops.py), counted from its last refresh, which Redis saw before it lost the
# state; so the talker of the lost state has been stopped by its own node before anyone else
# may talk (the "delayed restart" that distributed locks on a Redis without persistence need).
FENCE_MARGIN_S = 0.5

# The reason the rules give a floor revoked because its holder's lease lapsed (core/floor.py).
LEASE_LOST = "disconnected"


class EpochChanged(fl.FloorError):
    """Redis is not the one our floor state came from (restarted empty, or another epoch)."""

    code: ClassVar[str] = "unavailable"


class Fenced(fl.FloorError):
    """Floors are not granted yet: Redis lost its state a moment ago."""

    code: ClassVar[str] = "unavailable"


class NotListening(fl.FloorError):
    """This node is not subscribed to floor events right now (its Redis connection for them
    is being re-established): what a change would publish could reach neither the requester
    (a denial or a queue place is only delivered that way) nor this node's other members."""

    code: ClassVar[str] = "unavailable"


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
        sealer: Sealer | None = None,
    ) -> None:
        self.redis = redis
        # With a sealer (every server node) the outputs are published sealed, so a process
        # that reaches Redis cannot forge a grant for a session and open its gate.
        self.sealer = sealer
        self.sealed_scope = f"{prefix}:floor"
        self.lease_s = lease_s
        self.fence_s = lease_s + FENCE_MARGIN_S
        self.queue_timeout_s = queue_timeout_s
        self.max_queue = max_queue
        self.prefix = prefix
        self.deadlines_key = f"{prefix}:floor:deadlines"
        self.patch_of_key = f"{prefix}:patch_of"
        self.epoch_key = f"{prefix}:epoch"
        self.epoch: str | None = None  # the Redis epoch our view of the floors belongs to
        # False while the node's subscription to floor events is down (node/node.py sets it):
        # changes are refused meanwhile, since their outputs would be published to no one here.
        self.listening = True
        self.not_before = 0.0  # no grants before this (wall clock): the fence after a reset
        self.fence_waits = False  # a fresh Redis's fence: requests wait it out, not refused
        self._epoch = redis.register_script(lua.EPOCH)
        self._cas = redis.register_script(lua.CAS)
        self._patch = redis.register_script(lua.PATCH)
        self._unpatch = redis.register_script(lua.UNPATCH)
        # Reads and compare-and-sets of all floors changed in one loop turn share a pipeline
        # (control/coalesce.py): a burst over many talkgroups is a few round trips.
        self.batch = Coalescer(redis)
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
        patch_id, raw = await self.batch.run(("HGET", self.patch_of_key, talkgroup),
                                             ("GET", self.floor_key(talkgroup)))
        for reply in (patch_id, raw):
            if isinstance(reply, Exception):
                raise reply
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
        that knew another epoch creates it fenced; one that never knew one (it has just
        started) fences only a Redis that has itself just started: a node that was talking
        through the restart may not have noticed yet, and it stops within a lease time of its
        last refresh, which was before Redis started. Requests wait that fence out."""
        if self.epoch is not None:
            fence, kind = repr(self.fence_s), "reset"
        else:
            uptime = int((await self.redis.info("server")).get("uptime_in_seconds", 1e9))
            # Whole seconds: the start may have been up to one more second ago.
            left = self.fence_s + 1 - uptime
            fence, kind = (repr(left) if left > 0 else ""), "start"
        epoch_id, not_before, _created, kind = await self._epoch(
            keys=[self.epoch_key], args=[uuid.uuid4().hex, repr(now), fence, kind]
        )
        epoch_id = _text(epoch_id)
        changed = self.epoch is not None and epoch_id != self.epoch
        self.epoch = epoch_id
        self.not_before = float(_text(not_before))
        self.fence_waits = _text(kind) == "start"
        return not changed

    async def _epoch_is(self, epoch: str | None) -> bool:
        epoch_id = await self.redis.hget(self.epoch_key, "id")
        return epoch_id is not None and _text(epoch_id) == epoch

    # -- writing ------------------------------------------------------------------------------
    async def apply(
        self, talkgroup: str, event: fl.FloorInput
    ) -> tuple[fl.Floor, list[fl.FloorOutput]]:
        """Apply one input to a talkgroup's floor (its patch's, if patched), atomically across
        nodes. Returns the stored floor and the outputs, which were also published on the
        channel of each talkgroup sharing the floor. A FloorError from the rules propagates
        with nothing written; FloorContention if the floor kept changing under us."""
        if isinstance(event, fl.Refresh):
            # A lease refresh never waits in line: behind it may be hundreds of sessions of
            # one talkgroup leaving at once (a cell going down), each reading the floor in
            # turn, and the holder would lose the floor to that queue. Racing them is safe
            # (the compare-and-set); at worst it reads again.
            return await self._apply(talkgroup, event)
        async with self._lock(talkgroup):
            return await self._apply(talkgroup, event)

    async def _apply(
        self, talkgroup: str, event: fl.FloorInput
    ) -> tuple[fl.Floor, list[fl.FloorOutput]]:
        if self.epoch is None:
            await self.check_epoch(time.time())
        # The fence is judged, and the write made, against one epoch: a check_epoch that
        # adopts a new (fenced) epoch while this waits on Redis must not let a request that
        # passed the old epoch's fence be written under the new one.
        epoch = self.epoch
        if isinstance(event, fl.Request) and time.time() < self.not_before:
            if not self.fence_waits or self.not_before - time.time() > self.fence_s + 1:
                raise Fenced("floors are being restored after a service interruption; "
                             "try again")
            await asyncio.sleep(self.not_before - time.time())  # Redis has just started
        # A refresh publishes nothing; a session that is leaving awaits no answer, and its
        # floor is better freed for the other nodes than left to lapse.
        if not self.listening and not isinstance(event, fl.Refresh | fl.Disconnect):
            raise NotListening("the floor service is reconnecting; try again")
        for attempt in range(MAX_ATTEMPTS):
            floor_id, floor = await self._read(talkgroup)
            try:
                after, outputs = self.step(floor, event)
            except fl.FloorError:
                # A floor Redis has forgotten (restarted empty) reads as idle, and refreshing
                # or releasing it breaks the rules before any compare-and-set could tell that
                # the epoch is gone: say what really happened.
                if not await self._epoch_is(epoch):
                    raise EpochChanged("the floor service was interrupted; try again") from None
                raise
            if after is floor and not outputs:
                return floor, outputs
            result = await self._write(floor_id, talkgroup, floor, after, outputs, epoch)
            if result == _WRITTEN:
                return after, outputs
            if result == _FENCED:
                raise EpochChanged("the floor service was interrupted; try again")
            await self._backoff(attempt)
        raise FloorContention(f"floor of '{talkgroup}' is too busy, try again")

    async def _apply_id(
        self, floor_id: str, event: fl.FloorInput, spare_leases: bool = False
    ) -> list[fl.FloorOutput]:
        """Apply to a floor by id, as a deadline tick does; a floor whose id is no longer in
        use (its patch dissolved) is dropped from the deadlines instead."""
        if self.epoch is None:
            await self.check_epoch(time.time())
        async with self._lock(floor_id):
            return await self._apply_by_id(floor_id, event, spare_leases)

    async def _apply_by_id(
        self, floor_id: str, event: fl.FloorInput, spare_leases: bool = False
    ) -> list[fl.FloorOutput]:
        epoch = self.epoch  # one epoch for the whole step, as in _apply
        for attempt in range(MAX_ATTEMPTS):
            floor = await self.get_by_id(floor_id)
            after, outputs = self.step(floor, event)
            if after is floor and not outputs:
                return outputs
            if spare_leases and any(isinstance(o, fl.Revoked) and o.reason == LEASE_LOST
                                    for o in outputs):
                return []  # left as it is: the floor stays due and is looked at next tick
            result = await self._write(floor_id, "", floor, after, outputs, epoch)
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
        outputs: Sequence[fl.FloorOutput], epoch: str | None,
    ) -> int:
        deadline = after.deadline()
        changed = after.version != before.version
        encoded = (json.dumps([o.to_dict() for o in outputs], separators=(",", ":"))
                   if outputs else "")
        sealed = b""
        if outputs and self.sealer is not None:
            # Channel-independent (a patch publishes one frame on every member's channel):
            # the receiver takes the talkgroup from the channel it came on.
            body = (f'{{"floor_id":{json.dumps(floor_id)},"version":{after.version},'
                    f'"outputs":{encoded}}}')
            sealed = self.sealer.seal(self.sealed_scope, body.encode())
        keys = [self.floor_key(floor_id), self.deadlines_key, self.patch_of_key,
                self._members_key(floor_id), self.epoch_key]
        args: list[str | int | bytes] = [
            floor_id, talkgroup, before.version, after.to_json() if changed else "",
            after.version, encoded, repr(deadline) if deadline is not None else "",
            f"{self.prefix}:floor:", epoch or "", sealed]
        (result,) = await self.batch.run(("EVALSHA", self._cas.sha, len(keys), *keys, *args))
        if isinstance(result, NoScriptError):  # a Redis that has not seen it (restarted)
            result = await self._cas(keys=keys, args=args)  # loads it, then runs it
        elif isinstance(result, Exception):
            raise result
        return int(result)

    @staticmethod
    async def _backoff(attempt: int) -> None:
        await asyncio.sleep(random.uniform(0, _BACKOFF_S * min(attempt + 1, 10)))

    # -- deadlines ----------------------------------------------------------------------------
    async def due(self, now: float) -> list[str]:
        """Floor ids (a talkgroup, or "patch:<id>") whose deadline is at or before `now`."""
        ids = await self.redis.zrangebyscore(self.deadlines_key, "-inf", repr(now))
        return [_text(i) for i in ids]

    async def tick_due(
        self, now: float, *, spare_leases: bool = False
    ) -> list[tuple[str, list[fl.FloorOutput]]]:
        """Apply Tick(now) to every due floor. Any node may call this at any time; a floor
        ticked by two nodes at once changes once (the loser re-reads and finds nothing due).
        Returns (floor id, outputs) for the floors that changed.

        `spare_leases`: a grant that would end only because its holder's lease lapsed is
        left alone for now (transmit limits still end grants, other floors are ticked as
        usual). The caller asks for it right after it could not reach Redis itself: then
        neither could the holder's node refresh the lease, and a lease that lapsed during
        that outage says nothing about the holder."""
        results: list[tuple[str, list[fl.FloorOutput]]] = []
        if not self.listening:
            return results  # other nodes tick meanwhile; this one catches up once it hears again
        for floor_id in await self.due(now):
            try:
                outputs = await self._apply_id(floor_id, fl.Tick(now), spare_leases)
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
