"""Media between nodes: a talker's packets for listeners on other server processes.

Each forwarded packet is published on Redis channel `ptt:media:{talkgroup}`; every node with
members of that talkgroup feeds it into its own router, whose gate decides as it does for local
talkers. Publishing is real time: a bounded queue that loses the oldest packet when the Redis
link backs up, so forwarding on the talker's own node never waits for Redis. Every frame is
sealed (core/sealing.py): a process that can reach Redis but lacks the data directory's secret
cannot inject audio into a transmission.

Wire format (inside the seal): a header, the publishing node's id, `session/transmission id`,
then the payload. Version 1: `!BHHIH` (version, id lengths, RTP timestamp, sequence number);
the payload is Opus. Version 2 adds one flags byte (`!BHHIHB`); flag 0x01: the payload is RED
(RFC 2198) carrying Opus, as the talker sent it, already checked by the talker's node. Plain
Opus is still published as version 1, so a node that knows only version 1 keeps hearing
everything but RED (which it refuses as another version, and could not have split anyway).
Any other version, or a version 2 frame with unknown flags, is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from dataclasses import dataclass

import redis.asyncio as aioredis

from ptt_server.core.logthrottle import FailureLog
from ptt_server.core.sealing import Sealer

# version, len(node), len(session/tid), rtp timestamp, rtp sequence number
MEDIA_HEADER = struct.Struct("!BHHIH")
MEDIA_VERSION = 1
# ... and a flags byte (FLAG_RED: the payload is RFC 2198 RED over Opus)
MEDIA_HEADER_V2 = struct.Struct("!BHHIHB")
MEDIA_VERSION_V2 = 2
FLAG_RED = 0x01
QUEUE_MAX = 512  # about 10 s of one talker: more than that is a Redis link that is gone
BATCH_MAX = 64


@dataclass(frozen=True, slots=True)
class RemotePacket:
    talkgroup: str
    session: str
    transmission_id: str
    payload: bytes
    rtp_ts: int
    seq: int
    red: bool = False  # the payload is RED (RFC 2198), to be split by the receiving node


class MediaBus:
    def __init__(self, redis: aioredis.Redis, node_id: str, prefix: str, sealer: Sealer) -> None:
        self._redis = redis
        self._sealer = sealer
        self._node = node_id.encode()
        self._channel_prefix = f"{prefix}:media:"
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_MAX)
        self.dropped = 0  # packets for other nodes lost to a backed-up Redis link
        self._failures = FailureLog(logging.getLogger("ptt.node"), "media publish")

    def channel(self, talkgroup: str) -> str:
        return self._channel_prefix + talkgroup

    def is_media_channel(self, channel: str) -> bool:
        return channel.startswith(self._channel_prefix)

    def publish(
        self, talkgroup: str, session: str, tid: str, payload: bytes, rtp_ts: int, seq: int,
        red: bool = False,
    ) -> None:
        """O(1) and never blocks: called on the fan-out path for each packet."""
        ident = f"{session}/{tid}".encode()
        header = (
            MEDIA_HEADER_V2.pack(MEDIA_VERSION_V2, len(self._node), len(ident), rtp_ts, seq,
                                 FLAG_RED) if red
            else MEDIA_HEADER.pack(MEDIA_VERSION, len(self._node), len(ident), rtp_ts, seq)
        )
        data = b"".join((header, self._node, ident, payload))
        channel = self.channel(talkgroup)
        item = (channel, self._sealer.seal(channel, data))
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
            self._queue.put_nowait(item)
            self.dropped += 1

    def decode(self, channel: str, data: bytes) -> RemotePacket | None:
        """A packet from another node, or None (ours, forged, malformed or another version)."""
        opened = self._sealer.open(channel, data)
        if opened is None:
            return None
        data = opened
        try:
            version, nlen, ilen, rtp_ts, seq = MEDIA_HEADER.unpack_from(data)
            flags = 0
            off = MEDIA_HEADER.size
            if version == MEDIA_VERSION_V2:
                flags = MEDIA_HEADER_V2.unpack_from(data)[5]
                off = MEDIA_HEADER_V2.size
        except struct.error:
            return None
        if version not in (MEDIA_VERSION, MEDIA_VERSION_V2) or flags & ~FLAG_RED:
            return None
        if len(data) < off + nlen + ilen:
            return None
        if data[off:off + nlen] == self._node:
            return None
        ident = data[off + nlen:off + nlen + ilen].decode(errors="replace")
        session, _, tid = ident.partition("/")
        return RemotePacket(
            talkgroup=channel.removeprefix(self._channel_prefix), session=session,
            transmission_id=tid, payload=data[off + nlen + ilen:], rtp_ts=rtp_ts, seq=seq,
            red=bool(flags & FLAG_RED),
        )

    async def run(self) -> None:
        """Publish queued packets in pipelined batches until cancelled."""
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < BATCH_MAX:
                batch.append(self._queue.get_nowait())
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for channel, data in batch:
                        pipe.publish(channel, data)
                    await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures.failure(exc)
                await asyncio.sleep(0.1)
            else:
                self._failures.success()
