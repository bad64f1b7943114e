"""The RED part of the compat layer: RED (RFC 2198) on one transceiver of aiortc 1.16.

Why: aiortc answers only codecs of its module-level table (`aiortc.codecs.CODECS`: Opus,
G.722, G.711), so its answer drops the `red/48000/2` a browser offers, and its transport
routes RTP by payload type, so RED packets would be discarded before the uplink tap.
Registering RED in that table would change every peer connection in the process, at the
table's own payload type (aiortc adopts an offer's number only in 96-127; Chromium's RED is
63) and without the fmtp. Instead, after aiortc has read the offer, RED is appended to the
one transceiver's negotiated codec list (`_codecs`, what aiortc writes in the answer and gives
its sender and receiver), at the offer's payload type with the offer's fmtp:

- the answer lists it (m-line, rtpmap, fmtp: aiortc writes a parameter without "=" as is);
- the receiver registers its payload type: RED packets are routed to it, so our uplink tap
  sees them, and aiortc counts them in its receiver reports; its decoder is stopped
  (uplink.py), so nothing tries to decode RED;
- Opus stays first: aiortc's sender, and our direct writer, label what they send with the
  first codec, and RED is only ever sent by us, labelled per packet (egress.py).

`probe()` checks the shapes relied on, run from `compat.check()` at start-up.
"""

from __future__ import annotations

from typing import Any

from aiortc import RTCRtpCodecParameters
from aiortc.codecs import depayload
from aiortc.sdp import parameters_from_sdp, parameters_to_sdp

RED_MIME = "audio/red"
OPUS_MIME = "audio/opus"


def _codecs(transceiver: Any) -> list[Any] | None:
    codecs = getattr(transceiver, "_codecs", None)
    return codecs if isinstance(codecs, list) else None


def negotiate(transceiver: Any, payload_type: int, fmtp: str) -> bool:
    """Add RED at `payload_type` with `fmtp` (e.g. "111/111") to what this transceiver
    negotiated, once, after Opus. False (nothing changed) if aiortc's list is not as read or
    Opus is not first in it."""
    codecs = _codecs(transceiver)
    if not codecs or codecs[0].mimeType.lower() != OPUS_MIME:
        return False
    if any(c.payloadType == payload_type and c.mimeType.lower() != RED_MIME for c in codecs):
        return False  # the number is taken by another codec of this section
    codecs[:] = [c for c in codecs if c.mimeType.lower() != RED_MIME]
    codecs.append(RTCRtpCodecParameters(
        mimeType=RED_MIME, clockRate=48000, channels=2, payloadType=payload_type,
        parameters=parameters_from_sdp(fmtp),
    ))
    return True


def negotiated(transceiver: Any) -> tuple[int, int] | None:
    """(RED payload type, Opus payload type) if this transceiver has RED, else None."""
    codecs = _codecs(transceiver)
    if not codecs or codecs[0].mimeType.lower() != OPUS_MIME:
        return None
    red = next((c for c in codecs if c.mimeType.lower() == RED_MIME), None)
    return None if red is None else (int(red.payloadType), int(codecs[0].payloadType))


def probe(transceiver: Any) -> list[str]:
    """What is not as read in this aiortc (empty: RED can be negotiated per transceiver)."""
    missing = []
    if _codecs(transceiver) is None:
        missing.append("transceiver._codecs (a list)")
    if parameters_to_sdp(parameters_from_sdp("111/111")) != "111/111":
        missing.append("aiortc.sdp fmtp parameters without '=' written back as is")
    red = RTCRtpCodecParameters(mimeType=RED_MIME, clockRate=48000, channels=2, payloadType=63)
    if depayload(red, b"\x6f\xf8") != b"\x6f\xf8":
        missing.append("aiortc.codecs.depayload passing RED through")
    return missing
