"""The RTP-routing part of the compat layer: aiortc 1.16's `RtpRouter` (pinned in
pyproject.toml), reached through a receiver's DTLS transport.

Why: aiortc routes an incoming RTP packet by its SSRC *and* payload type, the SSRC learned
from the description or from the first packet of a payload type only one receiver has. A
receiver is registered once, with the payload types its transceiver's codecs had when the
connection first came up. A browser whose uplink started without a microphone (an offer
with no `a=ssrc`), then renegotiated (a server offer adds each further talkgroup's downlink),
can end up registered under payload types it never sends, and every uplink packet is then
dropped before our tap sees it: a supervisor on the air whom nobody hears. So after each
negotiation the receiving transceivers are routed by the payload types the peer's own
description uses, which is what its packets carry (RFC 3264 section 5.1: the offerer's
numbers are the ones it sends with). The others, send-only from our side, never receive."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("ptt.media")


def route_uplink(transceivers: Iterable[Any], payload_types: Iterable[int]) -> bool:
    """Route `payload_types` to the receivers of the transceivers we receive on (direction
    sendrecv or recvonly), and to no send-only one. False if aiortc's router is not as
    expected (nothing changed then; aiortc's own routing stays)."""
    listed = list(transceivers)
    receiving = [t.receiver for t in listed if t.direction in ("sendrecv", "recvonly")]
    others = {id(t.receiver) for t in listed if t.direction not in ("sendrecv", "recvonly")}
    if not receiving:
        return True
    router = getattr(getattr(receiving[0], "transport", None), "_rtp_router", None)
    table = getattr(router, "payload_type_table", None)
    if not isinstance(table, dict):
        log.warning("aiortc's RTP router is not as expected: uplink routing left to aiortc")
        return False
    for receivers in table.values():
        for r in [r for r in receivers if id(r) in others]:
            receivers.discard(r)
    for pt in payload_types:
        table.setdefault(pt, set()).update(receiving)
    return True
