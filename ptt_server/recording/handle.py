"""The media path's side of the recorder: a RecordingHandle per transmission, and the queue
that carries its packets to the writer thread.

Nothing here touches the disk or blocks: a handle only puts tuples on the queue, and when the
queue is full the packet is counted as dropped (the forwarded audio is unaffected).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ptt_server.core.model import EndReason
from ptt_server.recording.meta import TransmissionMeta
from ptt_server.recording.stream import OpenRecording

# What the writer thread is asked to do; the first element of every queued tuple.
PACKET, BEGIN, FINISH, SYNC, STOP = range(5)


class WorkQueue:
    """Many producers (the event loop), one consumer (the writer thread).

    Only packets count against the bound; begin/finish/stop always get through, so a full
    queue can lose audio packets but never the end of a recording.
    """

    def __init__(self, max_packets: int) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._items: deque[tuple[Any, ...]] = deque()
        self._packets = 0
        self._max = max_packets
        self._waiting = False

    def put(self, item: tuple[Any, ...], bounded: bool) -> bool:
        with self._lock:
            if bounded:
                if self._packets >= self._max:
                    return False
                self._packets += 1
            self._items.append(item)
            if self._waiting:
                self._wake.notify()
        return True

    def take_all(self, timeout: float) -> deque[tuple[Any, ...]]:
        with self._lock:
            if not self._items and timeout > 0:
                self._waiting = True
                self._wake.wait(timeout)
                self._waiting = False
            items = self._items
            self._items = deque()
            self._packets = 0
        return items


class RecordingHandle:
    """What the media path holds for one transmission. Methods never block and never raise."""

    __slots__ = (
        "_finished",
        "_first_drop",
        "_last_drop",
        "_on_finish",
        "_queue",
        "_rec",
        "dropped",
        "meta",
    )

    def __init__(
        self, rec: OpenRecording | None, meta: TransmissionMeta, queue: WorkQueue | None,
        on_finish: Callable[[RecordingHandle], None] | None = None,
    ) -> None:
        self._rec = rec
        self._queue = queue
        self._on_finish = on_finish  # the recorder forgets the handle
        self.meta = meta
        self._finished = queue is None
        self.dropped = 0
        self._first_drop: float | None = None
        self._last_drop: float | None = None

    @property
    def transmission_id(self) -> str:
        return self.meta.transmission_id

    @property
    def finished(self) -> bool:
        return self._finished

    def packet(self, payload: bytes, rtp_timestamp: int, sequence: int, arrival: float,
               recovered: bool = False) -> None:
        """`recovered`: a frame taken from a later packet's RED redundancy (node/transmission.py),
        standing in for a packet that had not arrived."""
        if self._finished or self._queue is None:
            return
        if not self._queue.put((PACKET, self._rec, payload, rtp_timestamp, sequence, arrival,
                                recovered), True):
            self.dropped += 1
            if self._first_drop is None:
                self._first_drop = arrival
            self._last_drop = arrival

    def finish(self, reason: EndReason | str, ended_at: float) -> None:
        if self._finished or self._queue is None:
            return
        self._finished = True
        if self._on_finish is not None:
            self._on_finish(self)
        drops = (self.dropped, self._first_drop, self._last_drop)
        try:
            why = EndReason(reason).value
        except ValueError:
            why = str(reason)  # an unknown reason is still recorded, not lost
        self._queue.put((FINISH, self._rec, why, ended_at, drops), False)
