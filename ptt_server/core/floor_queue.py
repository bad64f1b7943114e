"""The floor's request queue: ordering by priority then arrival, expiry, position changes.

TS 24.380 clause 6.3.4.4 queues a request that cannot be granted at once; the queue is kept
sorted (priority desc, arrival asc) so its head is always the next talker.
"""

from __future__ import annotations

import bisect
from dataclasses import replace

from ptt_server.core.floor_events import FloorOutput, QueueExpired, QueuePosition
from ptt_server.core.floor_types import Floor, QueueEntry

# How long a queued request waits for the floor before it is dropped (QueueExpired). Long
# enough to outlast a typical transmission, short enough that a user who walked away does
# not suddenly get the floor minutes later.
QUEUE_TIMEOUT_S = 30.0
# Bounds the stored JSON (every step rewrites it) and the fan-out of position updates.
MAX_QUEUE = 32

Queue = tuple[QueueEntry, ...]


def enqueue(queue: Queue, entry: QueueEntry) -> Queue:
    """Insert keeping (priority desc, arrival asc); among equal keys the newcomer goes last."""
    keys = [e.sort_key for e in queue]
    i = bisect.bisect_right(keys, entry.sort_key)
    return (*queue[:i], entry, *queue[i:])


def without(queue: Queue, session: str) -> Queue:
    return tuple(e for e in queue if e.participant.session != session)


def find(queue: Queue, session: str) -> QueueEntry | None:
    return next((e for e in queue if e.participant.session == session), None)


def expire(floor: Floor, now: float) -> tuple[Floor, list[FloorOutput]]:
    """Drop the entries whose wait is over, telling each of them (QueueExpired)."""
    keep = tuple(e for e in floor.queue if e.expires_at > now)
    gone = [QueueExpired(e.participant.session) for e in floor.queue if e.expires_at <= now]
    return replace(floor, queue=keep), list(gone)


def position_updates(before: Floor, after: Floor, told: set[str]) -> list[FloorOutput]:
    """QueuePosition for every session still queued whose place changed, except those
    already `told` their position by another output of the same step."""
    old = {e.participant.session: i for i, e in enumerate(before.queue)}
    return [
        QueuePosition(s, i + 1)
        for i, e in enumerate(after.queue)
        if (s := e.participant.session) in old and old[s] != i and s not in told
    ]
