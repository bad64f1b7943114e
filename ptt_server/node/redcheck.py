"""The node's check of RED (RFC 2198) payloads, with its count of the refused ones.

Every RED payload is parsed once where it enters the node (core/red.py): from a talker, whose
blocks must all name its own Opus payload types, or from another node (already checked there).
`Node.forward_uplink(..., red_over)` says a talker's payload is RED and names the talker's
Opus payload types; the router gets it split, the recording its primary block as plain Opus
(RFC 7845), the media bus the payload whole (flagged RED). One that breaks a rule goes
nowhere, neither forwarded nor recorded nor published, and is counted; the log says so
through a throttle, since a broken sender repeats itself 50 times a second.
"""

from __future__ import annotations

import logging
from collections.abc import Container

from ptt_server.core import red
from ptt_server.core.logthrottle import FailureLog
from ptt_server.media.router import TalkgroupRouter
from ptt_server.node.mediabus import RemotePacket


class RedCheck:
    def __init__(self, log: logging.Logger) -> None:
        self.malformed = 0  # RED payloads refused
        self._failures = FailureLog(log, "RED payload check", level=logging.WARNING)

    def __call__(self, payload: bytes, opus_types: Container[int] | None) -> red.RedPayload | None:
        """The payload checked and split, or None (refused, counted)."""
        try:
            return red.parse(payload, opus_types)
        except red.MalformedRed as exc:
            self.malformed += 1
            self._failures.failure(exc)
            return None

    def forward_remote(self, router: TalkgroupRouter, packet: RemotePacket) -> None:
        """A packet from another node into the local router. Its RED was checked against its
        talker's Opus payload types there; split here again (the bus carries it whole)."""
        parsed = self(packet.payload, None) if packet.red else None
        if packet.red and parsed is None:
            return
        router.forward(packet.session, packet.transmission_id, packet.payload, packet.rtp_ts,
                       packet.seq, parsed)
