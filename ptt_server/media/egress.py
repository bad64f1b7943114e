"""Direct RTP writer: the fan-out's fast path, below aiortc's public sender API.

Why: through RTCRtpSender each listener-packet costs an av.Packet, a queue hand-off, a task
wake-up, an RtpPacket object and its serialisation, and three awaits (about 50-60 us on a small
machine); the work that must be done is one SRTP encryption and one sendto (a few us each).
This writer keeps a prebuilt RTP header per listener, patches sequence number and timestamp in
place, encrypts with the DTLS transport's SRTP session and hands the datagram to the ICE pair's
UDP socket, synchronously, inside the fan-out loop.

One stream per SSRC, whichever path sends a packet. The direct writer and aiortc's sender
(the public path, used until this writer is ready and whenever it declines) write the same
SSRC through the same SRTP context. If each kept its own sequence numbers, the SRTP index
(rollover counter and sequence number, RFC 3711 section 3.3.1) of the one running behind would
fail the replay check (section 3.3.2): libsrtp applies it when protecting too, so with aiortc's
1024-packet window `protect()` raises "index too old", and a receiver would drop what got
through. Overlapping numbers would also encrypt two packets under one index, i.e. with the
same keystream (section 9.1). So the writer *takes over* the sender's state when it first
becomes ready: the next sequence number and the timestamp origin of aiortc's own send loop.
From then on one `StreamNumbering` per SSRC hands out sequence numbers: the direct path takes
them directly, and aiortc's packets are renumbered on their way into SRTP. Timestamps need no
rewrite: both paths add the same origin to the same pts (RFC 3550 section 5.1).

Every private access goes through `compat`. The fast path is used only when `compat.check()`
passed; whenever something is not as expected (not yet connected, a TURN relay, a closing
socket) `send` returns False and the caller uses the public path, so behaviour stays correct.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from aiortc.rtp import RtpPacket

from ptt_server.media import compat

log = logging.getLogger("ptt.media")

# A socket whose user-space buffer holds more than this is not keeping up: drop (real time).
MAX_WRITE_BUFFER = 64 * 1024
SEQ_TS = struct.Struct("!HI")
SEQ = struct.Struct("!H")


class StreamNumbering:
    """The sequence numbers of one SSRC, shared by the direct writer and aiortc's sender."""

    __slots__ = ("public_next", "renumbered", "retransmissions", "seq", "ts_origin")

    def __init__(self, seq: int, ts_origin: int) -> None:
        self.seq = seq  # next sequence number on the wire
        self.ts_origin = ts_origin  # aiortc's timestamp origin, kept so both paths agree
        # The sequence number aiortc's send loop will put in its next packet: a packet with any
        # other number is a retransmission from its history.
        self.public_next = seq
        self.renumbered = 0
        self.retransmissions = 0

    def __call__(self, packet: bytes) -> bytes | None:
        """Renumber one packet of aiortc's send loop (the public path) into this stream."""
        (theirs,) = SEQ.unpack_from(packet, 2)
        if theirs != self.public_next:
            # A NACK retransmission (RFC 4585) of a packet numbered in aiortc's own sequence:
            # it cannot be mapped onto ours, and resending under a fresh number would be a
            # duplicate. aiortc negotiates no NACK for audio, so this is not expected.
            self.retransmissions += 1
            return None
        self.public_next = (theirs + 1) & 0xFFFF
        out = bytearray(packet)
        SEQ.pack_into(out, 2, self.seq)
        self.seq = (self.seq + 1) & 0xFFFF
        self.renumbered += 1
        return bytes(out)


class DirectRtpWriter:
    __slots__ = (
        "_addr",
        "_header",
        "_numbering",
        "_ready",
        "_sender",
        "_srtp",
        "_transceiver",
        "_udp",
        "dropped",
        "sent",
    )

    def __init__(self, transceiver: Any) -> None:
        self._transceiver = transceiver
        self._sender = transceiver.sender
        self._ready = False
        self._header = bytearray()
        self._numbering: StreamNumbering | None = None
        self._srtp: Any = None
        self._udp: Any = None
        self._addr: Any = None
        self.sent = 0
        self.dropped = 0

    @property
    def numbering(self) -> StreamNumbering | None:
        return self._numbering

    def _take_over(self, dtls: Any, ssrc: int) -> StreamNumbering | None:
        """Continue the SSRC's sequence: an existing numbering, else aiortc's send loop's.

        aiortc's loop must be parked waiting for the track. If it was woken for packets queued
        earlier in this same loop turn and has not sent them yet, they go out after the direct
        ones, renumbered: reordered by a few microseconds (a receiver's jitter buffer orders
        by timestamp), but never a sequence number used twice.
        """
        existing = compat.rtp_rewriter(dtls, ssrc)
        if isinstance(existing, StreamNumbering):
            return existing  # another writer (or an earlier transport hand-over) owns it
        state = compat.sender_rtp_state(self._sender)
        if state is None:
            return None  # its send loop has not started, or is inside a send: next packet
        numbering = StreamNumbering(*state)
        compat.intercept_rtp_out(dtls, ssrc, numbering)
        return numbering

    def _prepare(self) -> bool:
        """Resolve the internals once the connection is up; False until then."""
        if not compat.direct_path_enabled():
            return False
        sender = self._sender
        dtls = sender.transport
        if dtls is None or dtls.state != "connected":
            return False
        srtp = compat.dtls_tx_srtp(dtls)
        udp = compat.nominated_udp(dtls)
        if srtp is None or udp is None:
            return False  # not connected yet, or relayed through TURN: use the public path
        codecs = compat.negotiated_codecs(self._transceiver)
        mid = compat.sender_mid(sender)
        if not codecs or mid is None:
            return False  # the sender was never started: nothing negotiated to send on
        ssrc = compat.sender_ssrc(sender)
        numbering = self._numbering
        if numbering is None:
            numbering = self._take_over(dtls, ssrc)
            if numbering is None:
                return False
            self._numbering = numbering
        elif compat.rtp_rewriter(dtls, ssrc) is not numbering:
            compat.intercept_rtp_out(dtls, ssrc, numbering)  # the sender moved transports
        template = RtpPacket(payload_type=codecs[0].payloadType, ssrc=ssrc)
        # The mid extension lets a BUNDLE receiver route the stream (RFC 8843); abs-send-time
        # and audio level are optional and left out.
        template.extensions.mid = mid
        self._header = bytearray(template.serialize(compat.header_extensions_map(sender)))
        self._srtp = srtp
        self._udp, self._addr = udp
        self._ready = True
        return True

    def send(self, payload: bytes, pts: int, marker: bool, ntp: int) -> bool:
        """Encrypt and send one Opus payload; False if the public path must be used."""
        if not self._ready and not self._prepare():
            return False
        udp = self._udp
        if udp.is_closing():
            self._ready = False
            return False
        if udp.get_write_buffer_size() > MAX_WRITE_BUFFER:
            # Dropped on purpose: a listener behind by this much hears the present. No sequence
            # number is spent, so the receiver sees a timestamp gap, not a loss.
            self.dropped += 1
            return True
        numbering = self._numbering
        assert numbering is not None
        header = self._header
        seq = numbering.seq
        timestamp = (numbering.ts_origin + pts) & 0xFFFFFFFF
        SEQ_TS.pack_into(header, 2, seq, timestamp)
        header[1] = (header[1] & 0x7F) | (0x80 if marker else 0)
        # Spent before sending: a failed send leaves a gap, never an index used twice.
        numbering.seq = (seq + 1) & 0xFFFF
        try:
            udp.sendto(self._srtp.protect(b"".join((header, payload))), self._addr)
        except Exception:
            self._ready = False
            log.exception("direct RTP send failed; using the public path")
            return False
        # Keep the sender's RTCP sender reports truthful, as its own send loop would.
        compat.record_sent(self._sender, len(payload), timestamp, ntp)
        self.sent += 1
        return True
