"""Real aiortc peers over loopback, for the egress tests and bench/egress_micro.py.

A server-side peer sends one audio stream (a DownlinkTrack) to a client-side, recvonly peer
whose receiver is tapped: `PeerLink.tap` hooks what the listener receives before the offer is
made. `TappedLink` keeps what the tap saw and waits (bounded) for the n-th packet; `Link` is
test_egress's and test_batch_egress's link, which also counts the SRTP datagrams that reach
the client's transport before decryption.

No pytest here: the benchmark imports this module too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

from aiortc import RTCPeerConnection, RTCSessionDescription

from ptt_server.media import compat, ice
from ptt_server.media.downlink import DownlinkTrack
from ptt_server.media.egress import DirectRtpWriter
from ptt_server.media.uplink import tap_receiver

LOOPBACK = ("127.0.0.1",)
FRAME = 960  # 20 ms at 48 kHz
TIMEOUT = 30.0  # generous: a loaded 2-core machine

T = TypeVar("T")
L = TypeVar("L", bound="PeerLink")


async def connected(pc: RTCPeerConnection) -> None:
    done = asyncio.Event()

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState in ("connected", "failed", "closed"):
            done.set()

    if pc.connectionState != "connected":
        await done.wait()
    assert pc.connectionState == "connected"


class PeerLink:
    """A server-side peer sending one DownlinkTrack to a client-side peer over loopback."""

    def __init__(self) -> None:
        self.server = RTCPeerConnection(ice.rtc_configuration([]))
        self.client = RTCPeerConnection(ice.rtc_configuration([]))
        self.track = DownlinkTrack()
        self.transceiver: Any = None  # the server's

    def tap(self, receiver: Any) -> None:
        """Hook the client's receiver, before the offer: what the listener receives."""

    async def negotiate(self) -> None:
        """The listener's shape: a recvonly client offer, answered sendonly by the server."""
        self.client.addTransceiver("audio", direction="recvonly")
        self.tap(self.client.getTransceivers()[0].receiver)
        ice.pin_host_addresses(self.client, LOOPBACK)
        await self.client.setLocalDescription(await self.client.createOffer())
        await self.server.setRemoteDescription(self.client.localDescription)
        self.transceiver = self.server.getTransceivers()[0]
        direction = compat.offer_direction(self.transceiver)
        assert direction == "sendonly"
        self.transceiver.sender.replaceTrack(self.track)
        self.transceiver.direction = direction
        ice.pin_host_addresses(self.server, LOOPBACK)
        await self.server.setLocalDescription(await self.server.createAnswer())

    async def connect(self) -> None:
        """The answer to the client (negotiated first if not yet); both ends connected,
        bounded by TIMEOUT."""
        if self.transceiver is None:
            await self.negotiate()
        both = asyncio.gather(connected(self.server), connected(self.client))
        await self.client.setRemoteDescription(
            RTCSessionDescription(self.server.localDescription.sdp, "answer")
        )
        await asyncio.wait_for(both, TIMEOUT)

    async def close(self) -> None:
        for pc in (self.server, self.client):
            try:
                await asyncio.wait_for(pc.close(), 10)
            except Exception:
                pass


class TappedLink(PeerLink, Generic[T]):
    """A PeerLink that keeps what its tap saw, in arrival order."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list[T] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def keep(self, item: T) -> None:
        self.got.append(item)
        for n, fut in self._waiters:
            if len(self.got) >= n and not fut.done():
                fut.set_result(None)

    async def received(self, n: int) -> None:
        """Wait (bounded) until `n` packets in all were kept."""
        if len(self.got) >= n:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((n, fut))
        try:
            await asyncio.wait_for(fut, TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"received {len(self.got)} of {n} packets") from None


@contextlib.asynccontextmanager
async def negotiated(link: L) -> AsyncIterator[L]:
    """`link`, negotiated (not yet connected), closed on the way out."""
    try:
        await link.negotiate()
        yield link
    finally:
        await link.close()


# -- test_egress's link ----------------------------------------------------------------------
def payload(i: int) -> bytes:
    # Opus TOC byte (config 31, mono, one frame) and a recognisable body.
    return b"\xf8" + i.to_bytes(4, "big") + bytes(20 + i % 7)


class Link(TappedLink[tuple[int, int, bytes]]):
    """A connected sender (server side) and receiver (client side). `got` holds each
    decrypted packet's (seq, ts, payload); `datagrams` counts the SRTP datagrams arriving at
    the client, before decryption: a packet rejected by SRTP shows up as a difference."""

    def __init__(self) -> None:
        super().__init__()
        self.datagrams = 0
        self._next = 0

    def tap(self, receiver: Any) -> None:
        tap_receiver(receiver, self._on_packet)

    async def negotiate(self) -> None:
        await super().negotiate()
        receiver = self.client.getTransceivers()[0].receiver
        compat.wrap_rtp_data_handler(receiver.transport, self._on_datagram)

    def _on_datagram(self, data: bytes, arrival_time_ms: int) -> None:
        if len(data) >= 2 and not 191 < data[1] < 224:  # RTP, not RTCP (RFC 5761)
            self.datagrams += 1

    def _on_packet(self, data: bytes, ts: int, seq: int, arrival: float, *_: Any) -> None:
        self.keep((seq, ts, data))

    def push(self, count: int) -> list[int]:
        """Push `count` packets the way the router does; their indices."""
        out = []
        for _ in range(count):
            i = self._next
            self._next += 1
            self.track.push(payload(i), i * FRAME, i == 0, 0)
            out.append(i)
        return out

    @property
    def writer(self) -> DirectRtpWriter:
        assert self.track.direct is not None
        return self.track.direct

    def udp(self) -> Any:
        found = compat.nominated_udp(self.transceiver.sender.transport)
        assert found is not None
        return found[0]


def assert_one_stream(lk: Link, indices: list[int], *, in_order: bool = True) -> None:
    """Every pushed packet arrived, decrypted, as one stream: contiguous sequence numbers
    (mod 2^16), timestamps = one origin + pts, the payloads byte for byte."""
    got = lk.got
    assert lk.datagrams == len(got), "SRTP rejected packets"
    assert len(got) == len(indices)
    seq0, ts0 = got[0][0], (got[0][1] - indices[0] * FRAME) % (1 << 32)
    assert [s for s, _, _ in got] == [(seq0 + k) & 0xFFFF for k in range(len(got))]
    pairs = [(ts, data) for _, ts, data in got]
    want = [((ts0 + i * FRAME) % (1 << 32), payload(i)) for i in indices]
    if in_order:
        assert pairs == want
    else:
        assert sorted(pairs) == sorted(want)


async def prime(lk: Link) -> list[int]:
    """One packet through aiortc's own sender: its send loop is running and parked."""
    direct, lk.track.direct = lk.track.direct, None
    sent = lk.push(1)
    await lk.received(len(lk.got) + 1)
    lk.track.direct = direct
    return sent
