"""A listener's outgoing audio track: already-encoded Opus in, RTP out, never transcoded.

aiortc's RTCRtpSender only packs (does not encode) what a track's recv() returns when it is an
av.Packet (aiortc 1.16, rtcrtpsender.py `_next_encoded_frame`). The track must never end between
transmissions: once recv() raises, the sender's loop stops for good. So recv() simply waits.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
from typing import Any

import av
from aiortc.mediastreams import MediaStreamTrack

from ptt_server.media.egress import DirectRtpWriter

OPUS_TIME_BASE = fractions.Fraction(1, 48000)
QUEUE_PACKETS = 25  # 500 ms of 20 ms packets: a listener further behind than this loses the oldest


class DownlinkTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, queue_packets: int = QUEUE_PACKETS) -> None:
        super().__init__()
        # Real-time queue: bounded, drops the oldest so a slow listener hears the present.
        self._queue: collections.deque[tuple[bytes, int]] = collections.deque(
            maxlen=queue_packets
        )
        # (router index, marker, payload type) of each queued packet, in step with _queue
        # (same length, same bound): what the public path needs to number and label it as
        # the direct path would.
        self._numbers: collections.deque[tuple[int | None, bool, int | None]] = (
            collections.deque(maxlen=queue_packets)
        )
        self._waiter: asyncio.Future[None] | None = None
        self.sent = 0
        self.dropped = 0
        # The fast path (egress.py), attached once the transceiver exists; the queue and
        # recv() below are the public path, used until it is ready or when it declines. Its
        # packets are numbered through the same writer, so both paths keep the router's
        # numbering; without a writer aiortc numbers them itself, contiguously.
        self.direct: DirectRtpWriter | None = None
        # RED (RFC 2198) on this listener's m-section: (RED payload type, Opus payload type)
        # when it negotiated RED and our RTP can carry another payload type than aiortc's
        # (the direct writer's numbering, compat check passed; signaling/peer.py sets it).
        # None: it gets the primary block of a RED packet as plain Opus (router.py).
        self.red: tuple[int, int] | None = None

    def push(
        self, payload: bytes, pts: int, marker: bool = False, ntp: int = 0,
        index: int | None = None, payload_type: int | None = None,
    ) -> None:
        """Called on the fan-out path for each packet: O(1), never blocks. `index` is the
        router's sequence index (router.py); None numbers the packet next in line.
        `payload_type`: this listener's RED payload type for a RED payload; None for Opus."""
        direct = self.direct
        if direct is not None and direct.send(payload, pts, marker, ntp, index, payload_type):
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # the oldest goes: its index is skipped, a gap the receiver sees
        self._queue.append((payload, pts))
        self._numbers.append((index, marker, payload_type))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        """The slot is free (or bound to another talkgroup, whose router numbers anew)."""
        self._queue.clear()
        self._numbers.clear()
        if self.direct is not None:
            self.direct.reanchor()

    async def recv(self) -> av.Packet[Any]:
        while True:
            while not self._queue:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            payload, pts = self._queue.popleft()
            index, marker, pt = self._numbers.popleft() if self._numbers else (None, False, None)
            labelled = self.direct is not None and self.direct.public(index, marker, pts, pt)
            if pt is None or labelled:
                break
            # A RED payload that aiortc would send under its Opus payload type: a decoder
            # would take RED headers for an Opus frame. Not sent (never expected: `red` is
            # set only where the numbering labels packets).
            self.dropped += 1
        packet = av.Packet(payload)
        packet.pts = pts
        packet.time_base = OPUS_TIME_BASE
        self.sent += 1
        return packet

    def stop(self) -> None:
        super().stop()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()
