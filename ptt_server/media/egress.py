"""Direct RTP writer: the fan-out's fast path, below aiortc's public sender API.

Why: through RTCRtpSender each listener-packet costs an av.Packet, a queue hand-off, a task
wake-up, an RtpPacket object and its serialisation, and three awaits (about 50-60 us on a small
machine); the work that must be done is one SRTP encryption and one sendto (a few us each).
This writer keeps a prebuilt RTP header per listener, patches sequence number and timestamp in
place, encrypts with the DTLS transport's SRTP session and hands the datagram to the ICE pair's
UDP socket, synchronously, inside the fan-out loop.

Everything that touches aiortc/aioice internals is in this module and was checked against
aiortc 1.16.0 and aioice 0.13.0 (PINNED below): the sender's SSRC, mid and header-extension map,
the transceiver's negotiated codecs, the DTLS transport's state and `_tx_srtp`, the ICE
connection's nominated pair. On any other version, or whenever something is not as expected
(not yet connected, a TURN relay, a full socket buffer), `send` returns False and the caller
uses the public path, so behaviour stays correct.
"""

from __future__ import annotations

import logging
import random
import struct
from typing import Any

import aioice
import aiortc
from aioice.ice import StunProtocol
from aiortc.rtcdtlstransport import State
from aiortc.rtp import RtpPacket

log = logging.getLogger("ptt.media")

PINNED = {"aiortc": "1.16.0", "aioice": "0.13.0"}
VERSIONS_OK = aiortc.__version__ == PINNED["aiortc"] and aioice.__version__ == PINNED["aioice"]
# A socket whose user-space buffer holds more than this is not keeping up: drop (real time).
MAX_WRITE_BUFFER = 64 * 1024
SEQ_TS = struct.Struct("!HI")


class DirectRtpWriter:
    __slots__ = (
        "_addr",
        "_header",
        "_ready",
        "_sender",
        "_seq",
        "_srtp",
        "_transceiver",
        "_ts_origin",
        "_udp",
        "dropped",
        "sent",
    )

    def __init__(self, transceiver: Any) -> None:
        self._transceiver = transceiver
        self._sender = transceiver.sender
        self._ready = False
        self._header = bytearray()
        self._srtp: Any = None
        self._udp: Any = None
        self._addr: Any = None
        self._seq = random.randrange(1 << 16)
        self._ts_origin = random.randrange(1 << 32)
        self.sent = 0
        self.dropped = 0

    def _prepare(self) -> bool:
        """Resolve the internals once the connection is up; False until then."""
        if not VERSIONS_OK:
            return False
        sender = self._sender
        dtls = sender.transport
        if dtls is None or dtls._state != State.CONNECTED or dtls._tx_srtp is None:
            return False
        pair = dtls.transport._connection._nominated.get(1)
        if pair is None or not isinstance(pair.protocol, StunProtocol):
            return False  # not connected yet, or relayed through TURN: use the public path
        codecs = self._transceiver._codecs
        mid = sender._RTCRtpSender__mid
        if not codecs or mid is None:
            return False
        template = RtpPacket(payload_type=codecs[0].payloadType, ssrc=sender._ssrc)
        # The mid extension lets a BUNDLE receiver route the stream (RFC 8843); abs-send-time
        # and audio level are optional and left out.
        template.extensions.mid = mid
        ext_map = sender._RTCRtpSender__rtp_header_extensions_map
        self._header = bytearray(template.serialize(ext_map))
        self._srtp = dtls._tx_srtp
        self._udp = pair.protocol.transport
        self._addr = pair.remote_addr
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
            self.dropped += 1
            return True  # dropped on purpose: a listener behind by this much hears the present
        header = self._header
        seq = self._seq
        timestamp = (self._ts_origin + pts) & 0xFFFFFFFF
        SEQ_TS.pack_into(header, 2, seq, timestamp)
        header[1] = (header[1] & 0x7F) | (0x80 if marker else 0)
        self._seq = (seq + 1) & 0xFFFF
        try:
            udp.sendto(self._srtp.protect(bytes(header) + payload), self._addr)
        except Exception:
            self._ready = False
            log.exception("direct RTP send failed; using the public path")
            return False
        sender = self._sender
        # Keep the sender's RTCP sender reports truthful (packet and octet counts, last
        # RTP timestamp), as its own send loop would.
        sender._RTCRtpSender__packet_count += 1
        sender._RTCRtpSender__octet_count += len(payload)
        sender._RTCRtpSender__rtp_timestamp = timestamp
        sender._RTCRtpSender__ntp_timestamp = ntp
        self.sent += 1
        return True
