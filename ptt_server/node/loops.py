"""The node's background loops, each on its own task so one cannot starve another.

- floor ticker (every 0.2 s): deadlines that are due (transmit limit, holder lease, queue
  expiry) are stepped in Redis, and talkers near their limit are warned;
- lease refresher (every 0.5 s): the holder's lease for each local transmission. It runs alone
  so that presence work for many members never delays it: a lease is lost only when the
  holder's node has really stopped refreshing it (the 2 s lease frees the floor of a dead node).
  It also checks Redis's epoch: a Redis that restarted empty has forgotten every floor, so
  this node ends its own transmissions before anyone else can be granted one; and a Redis out
  of reach for longer than `LOCAL_HOLD_S` ends them too (until then audio keeps flowing to the
  talker's own node; control/floor_store.py fences new grants for longer than that);
- presence refresher (every 3 s): heartbeats for local members, and the sweep of stale ones.

Failures are logged through a throttle: one traceback, then a count per interval, so a Redis
outage cannot flood the log (and with it the event loop) with identical tracebacks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from ptt_server.control.floor_store import FENCE_S, EpochChanged, FloorStore
from ptt_server.control.presence import Member, Presence
from ptt_server.core import floor as fl
from ptt_server.core import messages as m
from ptt_server.core.config import Config
from ptt_server.core.logthrottle import FailureLog
from ptt_server.node.endpoint import Endpoint
from ptt_server.node.transmission import TransmissionTable

TICK_S = 0.2
LEASE_REFRESH_S = 0.5
PRESENCE_REFRESH_S = 3.0
REFUSED_REFRESHES_LOST = 2
LOCAL_HOLD_S = 3.0  # below FENCE_S: we stop before another node may grant
assert LOCAL_HOLD_S + LEASE_REFRESH_S < FENCE_S


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
    while True:
        await asyncio.sleep(TICK_S)
        now = time.time()
        try:
            await node.floors.tick_due(now)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures.failure(exc)
        else:
            failures.success()
        warn_time_limits(node, now)


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


async def lease_refresher(node: NodeState) -> None:
    failures = FailureLog(logging.getLogger("ptt.node"), "lease refresh")
    reached = time.monotonic()  # the last time Redis answered this loop
    while True:
        await asyncio.sleep(LEASE_REFRESH_S)
        try:
            await refresh_once(node, time.time())
        except asyncio.CancelledError:
            raise
        except EpochChanged:
            node.interrupted("redis_reset")
            reached = time.monotonic()
        except Exception as exc:
            failures.failure(exc)
            if time.monotonic() - reached > LOCAL_HOLD_S and len(node.transmissions):
                node.interrupted("redis_unreachable")
        else:
            failures.success()
            reached = time.monotonic()


async def refresh_once(node: NodeState, now: float) -> None:
    if not await node.floors.check_epoch(now):
        node.interrupted("redis_reset")
        return
    for tx in node.transmissions:
        try:
            await node.floors.apply(
                tx.talkgroup, fl.Refresh(tx.session, now, node.config.floor_lease_s)
            )
            tx.refused_refreshes = 0
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
