"""Load-generator peers: aiortc does ICE, DTLS and the SRTP key exchange, then we go lower.

A real aiortc listener costs its process a decrypt, a parse, a jitter buffer and a decoder per
packet; a few hundred of them would measure the generator, not the server. So once a
listener's connection is up, `LightListener` stops the transport's reads on its ICE socket and
reads the socket itself: STUN and DTLS still go to aioice/aiortc (consent freshness keeps the
connection alive), SRTCP is dropped, and each SRTP packet is counted from its clear RTP header
with the kernel's receive timestamp (SO_TIMESTAMPNS). Only the first packet of a run is
decrypted (with the connection's own SRTP session) to read the talker's tag; the index of the
others follows from the RTP timestamp. Every 64th packet is decrypted again as a check.

`Talker` does the same on the sending side: after the handshake it writes SRTP packets itself,
at an exact 20 ms cadence, noting each packet's send time just before `sendto`.

The aiortc/aioice internals this needs are reached through `ptt_server.media.compat` (checked
against the pinned versions by `compat.check()`); it needs
the default asyncio event loop (the generator does not use uvloop), whose datagram transports
can pause reading.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtp import RtpPacket

from ptt_server.media import compat, ice

from . import rtp

TS_MOD = 1 << 32
CHECK_EVERY = 64


class RunSink:
    """What the listeners of one generator process received in the current run."""

    def __init__(self) -> None:
        self.run = -1
        self.count = 0
        self.rx: np.ndarray = np.zeros((0, 0), dtype=np.int64)

    def arm(self, run: int, count: int, listeners: int) -> None:
        self.run = run
        self.count = count
        self.rx = np.zeros((listeners, count), dtype=np.int64)


class LightListener:
    def __init__(self, index: int, sink: RunSink, addresses: Sequence[str] = ("127.0.0.1",)):
        self.index = index
        self.sink = sink
        self.addresses = tuple(addresses)
        self.pc = RTCPeerConnection(ice.rtc_configuration([]))
        self._sock: socket.socket | None = None
        self._protocol: Any = None
        self._srtp: Any = None
        self._base: tuple[int, int, int] | None = None  # (run, index, rtp timestamp)
        self.first_rx_ns = 0  # first RTP packet ever (late-entry measurements)
        self.received = 0  # RTP packets this run
        self.received_total = 0
        self.rtcp = 0
        self.untagged = 0  # payloads without our tag (a transcoder re-encodes them)
        self.misaligned = 0
        self.late = 0  # packets of an earlier run
        self._since_check = 0

    # -- negotiation --------------------------------------------------------------------------
    async def make_offer(self) -> str:
        self.pc.addTransceiver("audio", direction="recvonly")
        ice.pin_host_addresses(self.pc, self.addresses)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))

    async def answer_offer(self, sdp: str) -> str:
        """Answer a server's offer (Janus; our server when it renegotiates), receiving only."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        for t in self.pc.getTransceivers():
            t.direction = "recvonly"
        ice.pin_host_addresses(self.pc, self.addresses)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        return str(self.pc.localDescription.sdp)

    async def wait_connected(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected":
            if self.pc.connectionState in ("failed", "closed") or time.monotonic() > deadline:
                raise ConnectionError(f"media connection {self.pc.connectionState}")
            await asyncio.sleep(0.02)

    # -- taking the socket over ---------------------------------------------------------------
    def take_over(self) -> None:
        transceiver = self.pc.getTransceivers()[0]
        receiver = transceiver.receiver
        dtls = receiver.transport
        pair = compat.nominated_pair(dtls)
        srtp = compat.dtls_rx_srtp(dtls)
        if pair is None or srtp is None:
            raise ConnectionError("no nominated pair / SRTP session")
        compat.stop_decoder(receiver)  # nothing will reach it: free its thread
        protocol = pair.protocol
        transport = protocol.transport
        fd = transport.get_extra_info("socket").fileno()
        transport.pause_reading()
        sock = socket.socket(fileno=os.dup(fd))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, rtp.SO_TIMESTAMPNS, 1)
        self._sock = sock
        self._protocol = protocol
        self._srtp = srtp
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            data, anc, _flags, addr = sock.recvmsg(2048, rtp.ANC_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop_socket()
            return
        if not data:
            return
        first = data[0]
        if first < 4 or 19 < first < 64:  # STUN or DTLS: aioice/aiortc handle it
            self._protocol.datagram_received(data, addr)
            return
        if not 127 < first < 192 or len(data) < 12:
            return
        if 191 < data[1] < 224:  # RTCP (RFC 5761 demultiplexing)
            self.rtcp += 1
            return
        now_ns = rtp.kernel_ns(anc) or time.time_ns()
        if not self.first_rx_ns:
            self.first_rx_ns = now_ns
        self.received += 1
        self.received_total += 1
        sink = self.sink
        (ts,) = struct.unpack_from("!I", data, 4)
        base = self._base
        index = -1
        if base is not None and base[0] == sink.run:
            q, r = divmod((ts - base[2]) % TS_MOD, rtp.FRAME)
            self._since_check += 1
            if r == 0 and q < TS_MOD // (2 * rtp.FRAME) and self._since_check < CHECK_EVERY:
                index = base[1] + q
        if index < 0:
            self._since_check = 0
            tag = self._decrypt_tag(data)
            if tag is None:
                return
            run, index = tag
            if run != (sink.run & 0xFFFF):
                self.late += 1
                return
            if base is not None and base[0] == sink.run:
                q, r = divmod((ts - base[2]) % TS_MOD, rtp.FRAME)
                if r or base[1] + q != index:
                    self.misaligned += 1
            self._base = (sink.run, index, ts)
        if 0 <= index < sink.count and self.index < sink.rx.shape[0]:
            row = sink.rx[self.index]
            if row[index] == 0:
                row[index] = now_ns

    def _decrypt_tag(self, data: bytes) -> tuple[int, int] | None:
        try:
            plain = self._srtp.unprotect(data)
        except Exception:
            return None
        tag = rtp.read_tag(rtp.rtp_payload(plain))
        if tag is None:
            self.untagged += 1
        return tag

    def _drop_socket(self) -> None:
        if self._sock is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def new_run(self) -> None:
        self.received = 0
        self._base = None

    async def close(self) -> None:
        self._drop_socket()
        try:
            await asyncio.wait_for(self.pc.close(), 5)
        except Exception:
            pass


def first_packet_probe(listener: LightListener) -> asyncio.Future[int]:
    """A future set to the wall-clock time (ns) of the next RTP packet the listener's
    aiortc connection decrypts (late-entry measurements, without taking the socket over).
    Call after the offer exists; every transceiver shares the bundled DTLS transport."""
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    dtls = listener.pc.getTransceivers()[0].receiver.transport
    listener._probe = fut  # type: ignore[attr-defined]
    if dtls not in _probed:

        def probe(data: bytes, arrival_time_ms: int) -> None:
            waiting = getattr(listener, "_probe", None)
            if waiting is not None and not waiting.done():
                waiting.set_result(time.time_ns())

        compat.wrap_rtp_data_handler(dtls, probe)
        _probed.add(dtls)
    return fut


_probed: weakref.WeakSet[Any] = weakref.WeakSet()  # DTLS transports with a probe installed


class SilentTrack(MediaStreamTrack):
    """A send track that never yields: aiortc negotiates sending, we write the packets."""

    kind = "audio"

    async def recv(self) -> Any:
        await asyncio.Event().wait()


class Talker:
    def __init__(self, addresses: Sequence[str] = ("127.0.0.1",)) -> None:
        self.addresses = tuple(addresses)
        self.pc = RTCPeerConnection(ice.rtc_configuration([]))
        self.transceiver: Any = None
        self.frames = rtp.opus_frames()
        # Lower half, as aiortc does: the first packets never wrap the 16-bit counter, which
        # some receivers mishandle before their SRTP rollover counter is settled (RFC 3711 3.3.1).
        self._seq = random.randrange(1 << 15)
        self._ts = random.randrange(1 << 32)
        self._header = bytearray()
        self._srtp: Any = None
        self._udp: Any = None
        self._addr: Any = None
        self.stop_sending = False

    async def make_offer(self, direction: str = "sendrecv") -> str:
        self.transceiver = self.pc.addTransceiver(SilentTrack(), direction=direction)
        ice.pin_host_addresses(self.pc, self.addresses)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def accept_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))

    async def wait_connected(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected":
            if self.pc.connectionState in ("failed", "closed") or time.monotonic() > deadline:
                raise ConnectionError(f"media connection {self.pc.connectionState}")
            await asyncio.sleep(0.02)
        self._prepare()

    def _prepare(self) -> None:
        sender = self.transceiver.sender
        dtls = sender.transport
        udp = compat.nominated_udp(dtls)
        srtp = compat.dtls_tx_srtp(dtls)
        if udp is None or srtp is None:
            raise ConnectionError("no nominated UDP pair / SRTP session")
        codecs = compat.negotiated_codecs(self.transceiver)
        template = RtpPacket(payload_type=codecs[0].payloadType,
                             ssrc=compat.sender_ssrc(sender))
        mid = compat.sender_mid(sender)
        if mid is not None:
            template.extensions.mid = mid
        self._header = bytearray(template.serialize(compat.header_extensions_map(sender)))
        self._srtp = srtp
        self._udp, self._addr = udp

    async def send_run(self, run: int, count: int, interval: float = 0.02) -> np.ndarray:
        """Send `count` tagged packets, one per `interval`; returns each one's send time (ns,
        CLOCK_REALTIME, taken just before sendto)."""
        sent = np.zeros(count, dtype=np.int64)
        header = self._header
        frames = self.frames
        start = time.monotonic() + 0.005
        self.stop_sending = False
        for i in range(count):
            if self.stop_sending:
                return sent[:i]
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            struct.pack_into("!HI", header, 2, self._seq, self._ts)
            header[1] = (header[1] & 0x7F) | (0x80 if i == 0 else 0)
            self._seq = (self._seq + 1) & 0xFFFF
            self._ts = (self._ts + rtp.FRAME) % TS_MOD
            packet = self._srtp.protect(bytes(header) + rtp.tag_payload(frames[i % len(frames)],
                                                                        run, i))
            sent[i] = time.time_ns()
            self._udp.sendto(packet, self._addr)
        return sent

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pc.close(), 5)
        except Exception:
            pass
