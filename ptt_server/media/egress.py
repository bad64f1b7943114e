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
becomes ready: the next sequence number and the timestamp origin of aiortc's own send loop
(or, when aiortc's sender sends first, its first packet's). From then on one `StreamNumbering`
per SSRC hands out sequence numbers: the direct path takes them directly, and aiortc's packets
are renumbered on their way into SRTP. Timestamps need no rewrite: both paths add the same
origin to the same pts (RFC 3550 section 5.1).

The numbers are not handed out in arrival order: the router gives each packet an index (the
talker's own sequence number plus an offset per transmission, router.py) and the stream adds
one offset of its own, so a packet lost upstream is a gap here too and a late one goes out
under its own number (see StreamNumbering).

Batched (sendmmsg.py): for one incoming packet the router has every listener's packet built
first, then sent. Each writer owns a buffer with its RTP header in place; a packet is its
payload copied behind the header and encrypted in place by libsrtp (the same SRTP context
`protect()` would use, so the same index space), with no Python object per listener, and
its prebuilt message queued in a batch that `flush()` hands to the kernel with `sendmmsg`
once the fan-out loop is done (router.py; otherwise at the next turn of the event loop).

Every private access goes through `compat`. The fast path is used only when `compat.check()`
passed; whenever something is not as expected (not yet connected, a TURN relay, a closing
socket) `send` returns False and the caller uses the public path, so behaviour stays correct.
"""

from __future__ import annotations

import logging
import os
import struct
from typing import Any

from aiortc.rtp import RtpPacket

from ptt_server.media import batch, compat, sendmmsg

flush = batch.flush  # the router's call after each fan-out loop

log = logging.getLogger("ptt.media")

# A socket whose user-space buffer holds more than this is not keeping up: drop (real time).
MAX_WRITE_BUFFER = 64 * 1024
SEQ_TS = struct.Struct("!HI")
SEQ = struct.Struct("!H")
TS = struct.Struct("!I")
# A late packet is sent under its own (skipped) sequence number if it is at most this many
# numbers behind the newest one sent: about 1 s of 20 ms packets, inside any SRTP replay window
# (RFC 3711 section 3.3.2 asks for at least 64; aiortc's own protect keeps 1024), so neither
# our protect() nor the receiver's unprotect() rejects it as a replay. router.py applies the
# same bound once per packet; this one guards each stream.
LATE_WINDOW = 48


class StreamNumbering:
    """The sequence numbers of one SSRC, shared by the direct writer and aiortc's sender.

    Packets from the router carry an *index* (router.py: the talkgroup's extended sequence
    number, the talker's own plus an offset per transmission). The stream maps it with one
    offset of its own, `base`, fixed at the first such packet: gaps in the talker's numbering
    stay gaps on the wire and a late packet gets its own (skipped) number back, never a
    higher one with an older timestamp. A packet without an index (pushed by a caller that
    has none) takes the next number, and the offset is fixed again at the next indexed one.
    An index that would fall below the anchor (from before this listener's first packet, or
    before a re-anchor) or too far behind the newest is dropped and counted: its number could
    be one already used, which SRTP must never see twice (RFC 3711 sections 3.3.2 and 9.1).
    """

    __slots__ = (
        "anchor", "base", "late", "pending", "public_next", "renumbered", "retransmissions",
        "seq", "started", "ts_origin",
    )

    def __init__(self, seq: int, ts_origin: int, *, started: bool = True) -> None:
        self.seq = seq  # next sequence number on the wire: one after the highest used
        self.ts_origin = ts_origin  # aiortc's timestamp origin, kept so both paths agree
        self.started = started  # False until the first packet (either path) fixes both
        # The sequence number aiortc's send loop will put in its next packet: a packet with any
        # other number is a retransmission from its history.
        self.public_next = seq
        self.base: int | None = None  # wire number = base + index (mod 2^16)
        self.anchor = 0  # the lowest index `base` may number
        # (index, marker, pts, payload type or None) of the packet aiortc's send loop is about
        # to send, set by the track's recv(): the loop sends what recv() returned next, in
        # order, one at a time. aiortc labels every packet with its first codec (Opus); a RED
        # payload (RFC 2198) gets the listener's RED payload type here.
        self.pending: tuple[int | None, bool, int, int | None] | None = None
        self.renumbered = 0
        self.retransmissions = 0
        self.late = 0

    def start(self, seq: int, ts_origin: int) -> None:
        self.seq = self.public_next = seq
        self.ts_origin = ts_origin
        self.started = True

    def reanchor(self) -> None:
        """The next indexed packet comes from another numbering (another talkgroup)."""
        self.base = None

    def assign(self, index: int | None) -> int | None:
        """The wire sequence number for a packet (None: drop it). Spends it."""
        seq = self.seq
        if index is None:
            self.base = None
            self.seq = (seq + 1) & 0xFFFF
            return seq
        if self.base is None:
            self.base, self.anchor = seq - index, index
        elif index < self.anchor:
            self.late += 1
            return None
        wire = (self.base + index) & 0xFFFF
        ahead = (wire - seq) & 0xFFFF
        if ahead < 0x8000:
            self.seq = (wire + 1) & 0xFFFF  # the newest: a gap of `ahead` numbers is kept
        elif 0x10000 - ahead > LATE_WINDOW:
            self.late += 1
            return None
        return wire

    def __call__(self, packet: bytes) -> bytes | None:
        """Renumber one packet of aiortc's send loop (the public path) into this stream."""
        flush()  # direct packets numbered before this one, still batched, leave first
        (theirs,) = SEQ.unpack_from(packet, 2)
        pending, self.pending = self.pending, None
        if not self.started:
            # The public path sends first: continue aiortc's own numbering and origin
            # (its timestamp is origin + pts, RFC 3550 section 5.1).
            (ts,) = TS.unpack_from(packet, 4)
            self.start(theirs, (ts - (pending[2] if pending else 0)) & 0xFFFFFFFF)
        if theirs != self.public_next:
            # A NACK retransmission (RFC 4585) of a packet numbered in aiortc's own sequence:
            # it cannot be mapped onto ours, and resending under a fresh number would be a
            # duplicate. aiortc negotiates no NACK for audio, so this is not expected.
            self.retransmissions += 1
            return None
        self.public_next = (theirs + 1) & 0xFFFF
        wire = self.assign(pending[0] if pending else None)
        if wire is None:
            return None
        out = bytearray(packet)
        SEQ.pack_into(out, 2, wire)
        if pending is not None:
            # aiortc sets the marker on every audio packet; RFC 3551 section 4.1 wants it on
            # the first packet of a talkspurt only.
            pt = out[1] & 0x7F if pending[3] is None else pending[3]
            out[1] = pt | (0x80 if pending[1] else 0)
        self.renumbered += 1
        return bytes(out)


class DirectRtpWriter:
    __slots__ = (
        "_addr",
        "_header",
        "_in_place",
        "_numbering",
        "_opus_type",
        "_ready",
        "_sender",
        "_session",
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
        self._opus_type = 0
        self._numbering: StreamNumbering | None = None
        self._session: Any = None
        self._udp: Any = None
        self._addr: Any = None
        self._in_place: batch.InPlacePacket | None = None
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
        if isinstance(existing, StreamNumbering) and existing.started:
            return existing  # another writer, the public path, or an earlier transport's
        state = compat.sender_rtp_state(self._sender)
        if state is None:
            return None  # its send loop has not started, or is inside a send: next packet
        if isinstance(existing, StreamNumbering):
            existing.start(*state)  # intercepting, but nothing was sent through it yet
            return existing
        numbering = StreamNumbering(*state)
        compat.intercept_rtp_out(dtls, ssrc, numbering)
        return numbering

    def public(self, index: int | None, marker: bool, pts: int,
               payload_type: int | None = None) -> bool:
        """aiortc's send loop is about to send this packet (the public path): number it.

        When the direct path is usable at all (compat's check passed), the public path's
        packets go through the SSRC's numbering from the very first one, so they keep the
        router's gaps and marker bits too; the numbering starts from aiortc's own first
        number and origin. Otherwise (pinned versions not found) aiortc numbers them itself,
        contiguously: no internals are touched. False if the packet goes out unnumbered by
        us (so with aiortc's payload type too: a RED payload must not take that path).
        """
        numbering = self._numbering
        if numbering is None:
            if not compat.direct_path_enabled():
                return False
            dtls = self._sender.transport
            if dtls is None:
                return False
            ssrc = compat.sender_ssrc(self._sender)
            existing = compat.rtp_rewriter(dtls, ssrc)
            if isinstance(existing, StreamNumbering):
                numbering = existing
            else:
                numbering = StreamNumbering(0, 0, started=False)
                compat.intercept_rtp_out(dtls, ssrc, numbering)
            self._numbering = numbering
        else:
            dtls = self._sender.transport
            ssrc = compat.sender_ssrc(self._sender)
            if dtls is not None and compat.rtp_rewriter(dtls, ssrc) is not numbering:
                compat.intercept_rtp_out(dtls, ssrc, numbering)  # the sender moved transports
        numbering.pending = (index, marker, pts, payload_type)
        return True

    def reanchor(self) -> None:
        """The track now carries another talkgroup: its index space starts anew."""
        if self._numbering is not None:
            self._numbering.reanchor()

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
        if numbering is None or not numbering.started:
            numbering = self._take_over(dtls, ssrc)
            if numbering is None:
                return False
            self._numbering = numbering
        elif compat.rtp_rewriter(dtls, ssrc) is not numbering:
            compat.intercept_rtp_out(dtls, ssrc, numbering)  # the sender moved transports
        self._opus_type = codecs[0].payloadType  # Opus: media/compat_red.py keeps it first
        template = RtpPacket(payload_type=self._opus_type, ssrc=ssrc)
        # The mid extension lets a BUNDLE receiver route the stream (RFC 8843); abs-send-time
        # and audio level are optional and left out.
        template.extensions.mid = mid
        self._header = bytearray(template.serialize(compat.header_extensions_map(sender)))
        self._session = srtp
        self._udp, self._addr = udp
        self._in_place = self._batched(srtp)
        self._ready = True
        return True

    def _batched(self, srtp: Any) -> batch.InPlacePacket | None:
        """The in-place, batched send for this connection; None: protect() and sendto()."""
        if not batch.enabled():
            return None
        sock = self._udp.get_extra_info("socket")
        try:
            fd = sock.fileno()
            return batch.InPlacePacket(srtp, bytes(self._header), fd, self._addr,
                                       self._send_failed)
        except (AttributeError, OSError, ValueError):
            return None  # no socket object, or a destination that is not a numeric address

    def _send_failed(self, err: int) -> None:
        """The kernel refused a batched packet (called from the flush)."""
        udp, in_place = self._udp, self._in_place
        if sendmmsg.retry_later(err) and in_place is not None and not udp.is_closing():
            # The socket's send buffer is full: the transport keeps it until it is writable,
            # and writes later packets after it (they see a non-empty buffer, below).
            udp.sendto(in_place.datagram(), self._addr)
            return
        self.sent -= 1
        self.dropped += 1
        self._ready = False  # prepared again at the next packet: the connection may be gone
        log.warning("direct RTP send failed: %s", os.strerror(err))

    def send(
        self, payload: bytes, pts: int, marker: bool, ntp: int, index: int | None = None,
        payload_type: int | None = None,
    ) -> bool:
        """Encrypt and send one Opus payload; False if the public path must be used.

        `index` is the router's number for the packet (see StreamNumbering); None numbers it
        next in line. `payload_type`: the listener's RED payload type for a RED payload
        (RFC 2198); None is the negotiated Opus one in the prebuilt header.
        """
        if not self._ready and not self._prepare():
            return False
        udp = self._udp
        if udp.is_closing():
            self._ready = False
            return False
        if udp.get_write_buffer_size() > MAX_WRITE_BUFFER:
            # Dropped on purpose: a listener behind by this much hears the present. No number
            # is spent here, so for the router's packets the receiver sees the gap the index
            # leaves (a loss it can conceal or repair from FEC), and a packet without an index
            # leaves a timestamp gap only.
            self.dropped += 1
            return True
        numbering = self._numbering
        assert numbering is not None
        # Spent before sending: a failed send leaves a gap, never an index used twice.
        seq = numbering.assign(index)
        if seq is None:
            self.dropped += 1  # too late for this stream (counted in numbering.late too)
            return True
        timestamp = (numbering.ts_origin + pts) & 0xFFFFFFFF
        in_place = self._in_place
        try:
            # Batched only while the transport has nothing queued: the kernel then sees this
            # socket's datagrams in the order they were made.
            if (in_place is None or udp.get_write_buffer_size()
                    or not in_place.send(payload, marker, seq, timestamp, payload_type)):
                header = self._header
                SEQ_TS.pack_into(header, 2, seq, timestamp)
                header[1] = (0x80 if marker else 0) | (
                    self._opus_type if payload_type is None else payload_type)
                udp.sendto(self._session.protect(b"".join((header, payload))), self._addr)
        except Exception:
            # Lost, not handed to the public path: its number is spent (and maybe known to
            # libsrtp), and the public path would send it under the same one. Later packets
            # take the public path until the connection is ready again.
            self._ready = False
            self.dropped += 1
            log.exception("direct RTP send failed; using the public path")
            return True
        # Keep the sender's RTCP sender reports truthful, as its own send loop would.
        compat.record_sent(self._sender, len(payload), timestamp, ntp)
        self.sent += 1
        return True
