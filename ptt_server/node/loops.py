"""The node's background loops, each on its own task so one cannot starve another.

- floor ticker (every 0.2 s): deadlines that are due (transmit limit, holder lease, queue
  expiry) are stepped in Redis, and talkers near their limit are warned. Right after this
  node could not reach Redis, or while its own loop is behind, lapsed leases are spared for
  a lease time (the holders could not refresh meanwhile either);
- lease refresher (every 0.5 s): the holder's lease for each local transmission, all of them
  at once. It runs alone so that presence work for many members never delays it: a lease is
  lost only when the holder's node has really stopped refreshing it (the lease frees the
  floor of a dead node). It also checks Redis's epoch: a Redis that restarted empty has
  forgotten every floor, so this node ends its own transmissions before anyone else can be
  granted one. And it ends them when Redis has been out of reach until the lease it last
  wrote is nearly over (`LEASE_SAFETY_S` before): until then audio keeps flowing to the
  talker's own node; after that another node that still reaches Redis (this one alone was cut
  off) may grant the floor, and control/floor_store.py fences new grants after a reset for
  longer. A round that hangs is cut off on time; time the process itself was not running
  (`LoopDelay`) does not count as Redis being away;
- presence refresher (every 3 s): heartbeats for local members, and the sweep of stale ones.

Failures are logged through a throttle: one traceback, then a count per interval, so a Redis
outage cannot flood the log (and with it the event loop) with identical tracebacks.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from typing import Any, Protocol

from ptt_server.control.floor_store import EpochChanged, FloorStore
from ptt_server.control.presence import Member, Presence
from ptt_server.core import floor as fl
from ptt_server.core import messages as m
from ptt_server.core.config import Config
from ptt_server.core.logthrottle import FailureLog
from ptt_server.node.endpoint import Endpoint
from ptt_server.node.transmission import Transmission, TransmissionTable

TICK_S = 0.2
LEASE_REFRESH_S = 0.5
PRESENCE_REFRESH_S = 3.0
REFUSED_REFRESHES_LOST = 2
# A node cut off from Redis stops its talkers this long before the lease it last wrote
# lapses: for the clocks of the nodes to differ (leases are wall-clock times that another
# node's ticker reads) and for packets already on their way out.
LEASE_SAFETY_S = 0.5
OUTAGE_S = 1.0  # a ticker round this late, or this long: Redis (or the loop) was not there
BEHIND_S = 0.5  # ticker rounds late by this much in all within a lease time: a starved loop


def local_hold_s(lease_s: float) -> float:
    """How long after sending its last refresh that Redis answered a node may keep its
    talkers on the air without Redis: never past the lease, which another node may expire."""
    return max(LEASE_REFRESH_S, lease_s - LEASE_SAFETY_S)


class NodeState(Protocol):
    """What the loops use of the node (node/node.py): a protocol, so the two modules do not
    import each other."""

    config: Config
    floors: FloorStore
    presence: Presence
    transmissions: TransmissionTable

    @property
    def members(self) -> dict[str, Any]: ...

    def local_member(self, talkgroup: str, session: str) -> Endpoint | None: ...

    def interrupted(self, cause: str) -> None: ...

    def lost_floor(self, talkgroup: str, session: str) -> None: ...

    def member_record(
        self, endpoint: Endpoint, talkgroup: str, mode: str | None = None
    ) -> Member: ...


async def floor_ticker(node: NodeState) -> None:
    failures = FailureLog(logging.getLogger("ptt.node"), "floor ticker")
    # After this node could not reach Redis (a round failed, or hung for OUTAGE_S; or its
    # floor events subscription was down), or while its own event loop is behind (one stall
    # of OUTAGE_S, or BEHIND_S of lateness within a lease time: a process short of CPU),
    # leases are spared for a lease time: holders' nodes could not refresh meanwhile either
    # (one Redis for all; a failover loses the last refreshes not yet replicated; this
    # node's own refresher runs on the same late loop), and expiring their leases the
    # moment the ticker runs again would cut every transmission that outlived the hiccup.
    # A node cut off alone, or behind alone, spares nothing for the others: their tickers
    # expire its leases on time.
    lease_s = node.config.floor_lease_s
    spare_until = 0.0
    next_round = time.monotonic() + TICK_S
    late: collections.deque[tuple[float, float]] = collections.deque()  # (round, lateness)
    while True:
        await asyncio.sleep(TICK_S)
        now = time.time()
        started = time.monotonic()
        late.append((started, max(0.0, started - next_round)))
        while late[0][0] < started - lease_s:
            late.popleft()
        if (late[-1][1] > OUTAGE_S or sum(x for _at, x in late) > BEHIND_S
                or not node.floors.listening):
            spare_until = started + lease_s
        try:
            await node.floors.tick_due(now, spare_leases=started < spare_until)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures.failure(exc)
            spare_until = time.monotonic() + lease_s
        else:
            failures.success()
            if time.monotonic() - started > OUTAGE_S:
                spare_until = time.monotonic() + lease_s
        warn_time_limits(node, now)
        next_round = time.monotonic() + TICK_S


def warn_time_limits(node: NodeState, now: float) -> None:
    """TS 24.380's stop-talking timer warning: tell a talker shortly before the limit."""
    for tx in node.transmissions:
        remaining = tx.expires_at - now
        if tx.warned or remaining > node.config.floor_warning_s:
            continue
        tx.warned = True
        endpoint = node.local_member(tx.talkgroup, tx.session)
        if endpoint is not None:
            endpoint.send(m.FloorWarning(
                talkgroup=tx.talkgroup, transmission_id=tx.transmission_id,
                remaining_s=round(max(0.0, remaining), 1),
            ))


class LoopDelay:
    """How far behind this process's event loop has been since `reset()`: the sum of how
    late a 0.1 s timer fired, again and again. It tells a Redis that did not answer from a
    process that was not running (a stalled loop, or no CPU for it on a loaded machine):
    only the first says the floor service is gone."""

    PERIOD_S = 0.1

    def __init__(self) -> None:
        self.behind = 0.0  # seconds

    def reset(self) -> None:
        self.behind = 0.0

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.PERIOD_S)
            self.behind += max(0.0, time.monotonic() - started - self.PERIOD_S)


async def lease_refresher(node: NodeState) -> None:
    failures = FailureLog(logging.getLogger("ptt.node"), "lease refresh")
    delay = LoopDelay()
    monitor = asyncio.create_task(delay.run(), name="node-loop-delay")
    hold_s = local_hold_s(node.config.floor_lease_s)
    pause = LEASE_REFRESH_S
    try:
        while True:
            await asyncio.sleep(pause)
            pause = LEASE_REFRESH_S
            held = list(node.transmissions)
            sent = time.monotonic()
            # A round that hangs (Redis stopped, packets dropped, this node cut off) is cut
            # off when the oldest lease's hold ends, so its talker is stopped before the
            # lease lapses, not whenever socket timeouts fire (a connect that succeeds, then
            # a command timing out after 2 s, twice, is over 4 s).
            hold_until = _oldest_lease(held) + delay.behind + hold_s
            budget = max(0.05, hold_until - sent) if held else LEASE_REFRESH_S
            try:
                async with asyncio.timeout(budget):
                    await refresh_once(node, held, sent)
            except asyncio.CancelledError:
                raise
            except EpochChanged:
                node.interrupted("redis_reset")
                delay.reset()
            except Exception as exc:
                # Time this process spent not running is not time Redis failed to answer:
                # a node starved of CPU must not stop its own talkers for it.
                for tx in held:
                    tx.lease_written = min(sent, tx.lease_written + delay.behind)
                delay.reset()
                failures.failure(exc)
                left = _oldest_lease(list(node.transmissions)) + hold_s - time.monotonic()
                if left <= 0:
                    node.interrupted("redis_unreachable")
                else:
                    pause = min(LEASE_REFRESH_S, left)  # once more, just before the end
            else:
                failures.success()
                delay.reset()
    finally:
        monitor.cancel()


def _oldest_lease(held: list[Transmission]) -> float:
    return min((tx.lease_written for tx in held), default=math.inf)


async def refresh_once(node: NodeState, held: list[Transmission], sent: float) -> None:
    """Refresh every local holder's lease, all at once (a busy event loop makes each round
    trip slow; sequential refreshes would add them up), and notice a Redis that lost its
    floor state: the compare-and-set of a refresh checks the epoch, and without local
    holders the epoch is read directly. `sent`: when the round began (monotonic), which each
    refreshed lease is dated no earlier than."""
    if not held:
        if not await node.floors.check_epoch(time.time()):
            node.interrupted("redis_reset")
        return
    results = await asyncio.gather(*(_refresh(node, tx, sent) for tx in held),
                                   return_exceptions=True)
    if any(isinstance(r, EpochChanged) for r in results):
        node.interrupted("redis_reset")
        await node.floors.check_epoch(time.time())  # adopt (or create, fenced) the new epoch
        return
    for r in results:
        if isinstance(r, BaseException):
            raise r


async def _refresh(node: NodeState, tx: Transmission, sent: float) -> None:
    try:
        # The time of this very refresh: a round that waited on a stalled Redis must not
        # write a lease that began before the wait (it could lapse on arrival).
        await node.floors.apply(
            tx.talkgroup, fl.Refresh(tx.session, time.time(), node.config.floor_lease_s)
        )
        tx.refused_refreshes = 0
        tx.lease_written = sent
    except EpochChanged:
        raise
    except fl.IllegalTransition:
        # Not ours in Redis. Right after a release that is normal (the `idle` event is on
        # its way); twice in a row means the lease ran out while Redis was away and the
        # event never reached us: end it here.
        tx.refused_refreshes += 1
        if tx.refused_refreshes >= REFUSED_REFRESHES_LOST:
            node.lost_floor(tx.talkgroup, tx.session)
    except fl.FloorError:
        pass


async def presence_refresher(node: NodeState) -> None:
    failures = FailureLog(logging.getLogger("ptt.node"), "presence refresh")
    while True:
        await asyncio.sleep(PRESENCE_REFRESH_S)
        now = time.time()
        try:
            pairs = [(tg, sid) for tg, group in node.members.items() for sid in group]
            if pairs:
                missing = await node.presence.refresh(pairs, now)
                # Entries swept while this node could not refresh them (cut off from Redis
                # for a while): its members are still here, so they come back.
                for talkgroup, sid in missing:
                    endpoint = node.local_member(talkgroup, sid)
                    if endpoint is not None:
                        await node.presence.join(
                            talkgroup, node.member_record(endpoint, talkgroup), now
                        )
            await node.presence.sweep(now)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures.failure(exc)
        else:
            failures.success()
