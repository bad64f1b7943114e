"""The uplink tap: takes a talker's Opus RTP packets before aiortc's jitter buffer.

aiortc 1.16 routes each decrypted RTP packet to `receiver._handle_rtp_packet(packet,
arrival_time_ms=...)`, looked up per call on the receiver object. We wrap it on this receiver
only: our callback sees the packet first (the jitter buffer would add 80 ms and stall on loss),
then aiortc's own handler still runs so receiver statistics and RTCP reports to the talker stay
right. The decoder thread is stopped: nothing here decodes audio.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpReceiver

log = logging.getLogger("ptt.media")

PacketCallback = Callable[[bytes, int, int, float], None]  # payload, rtp ts, seq, arrival (s)


def tap_receiver(receiver: RTCRtpReceiver, on_packet: PacketCallback) -> None:
    original = receiver._handle_rtp_packet
    decoder_stopped = False

    async def handle(packet: Any, arrival_time_ms: int) -> None:
        nonlocal decoder_stopped
        if not decoder_stopped:
            # The decoder thread starts when the transport connects, after the track event;
            # stop it at the first packet, before anything is queued for decoding.
            decoder_stopped = True
            stop_decoder = getattr(receiver, "_RTCRtpReceiver__stop_decoder", None)
            if stop_decoder is not None:
                stop_decoder()
        if packet.payload:
            try:
                on_packet(
                    packet.payload, packet.timestamp, packet.sequence_number,
                    arrival_time_ms / 1000.0,
                )
            except Exception:  # a bug in forwarding must not kill the transport's receive loop
                log.exception("uplink tap failed")
        await original(packet, arrival_time_ms=arrival_time_ms)

    receiver._handle_rtp_packet = handle  # type: ignore[method-assign]
