"""The uplink tap: takes a talker's Opus RTP packets before aiortc's jitter buffer.

aiortc routes each decrypted RTP packet to its receiver's handler; `compat.wrap_rtp_handler`
puts our callback in front of it on this receiver only: we see the packet first (the jitter
buffer would add 80 ms and stall on loss), then aiortc's own handler still runs so receiver
statistics and RTCP reports to the talker stay right. The decoder thread is stopped: nothing
here decodes audio.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpReceiver

from ptt_server.media import compat

log = logging.getLogger("ptt.media")

# payload, rtp ts, seq, arrival (s), payload type (the peer's number: Opus, or RED carrying it)
PacketCallback = Callable[[bytes, int, int, float, int], None]


def tap_receiver(receiver: RTCRtpReceiver, on_packet: PacketCallback) -> None:
    decoder_stopped = False

    def tap(packet: Any, arrival_time_ms: int) -> None:
        nonlocal decoder_stopped
        if not decoder_stopped:
            # The decoder thread starts when the transport connects, after the track event;
            # stop it at the first packet, before anything is queued for decoding.
            decoder_stopped = True
            compat.stop_decoder(receiver)
        if packet.payload:
            try:
                on_packet(
                    packet.payload, packet.timestamp, packet.sequence_number,
                    arrival_time_ms / 1000.0, packet.payload_type,
                )
            except Exception:  # a bug in forwarding must not kill the transport's receive loop
                log.exception("uplink tap failed")

    compat.wrap_rtp_handler(receiver, tap)
