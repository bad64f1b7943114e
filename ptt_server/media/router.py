"""Per-talkgroup fan-out on one server node.

A router holds the local listeners of one talkgroup and the gate: the transmission that may be
forwarded right now. Packets are accepted only for the transmission that holds the floor
(grant/revoke gate forwarding; nothing is renegotiated). Output timestamps are renumbered once
per packet here, so each listener's stream stays continuous across talker changes and all
listeners share the work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import clock

from ptt_server.media.downlink import DownlinkTrack

RTP_CLOCK = 48000
TS_MOD = 1 << 32


@dataclass(frozen=True, slots=True)
class Gate:
    session: str  # the holder's session id
    transmission_id: str


class TalkgroupRouter:
    def __init__(self, talkgroup: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.talkgroup = talkgroup
        self._clock = clock
        self.listeners: dict[str, DownlinkTrack] = {}  # session id -> track
        self.gate: Gate | None = None
        # Output timeline (48 kHz samples), continuous across transmissions.
        self._out_pts = 0
        self._segment_tid: str | None = None
        self._segment_in_base = 0
        self._segment_out_base = 0
        self._last_wall = 0.0
        self.forwarded = 0
        self.rejected = 0

    # -- gate ---------------------------------------------------------------
    def open(self, session: str, transmission_id: str) -> None:
        self.gate = Gate(session, transmission_id)

    def close(self, transmission_id: str | None = None) -> bool:
        """Close the gate (for that transmission only, if given). True if it was open for it."""
        if self.gate is None:
            return False
        if transmission_id is not None and self.gate.transmission_id != transmission_id:
            return False
        self.gate = None
        return True

    def allows(self, session: str, transmission_id: str | None = None) -> bool:
        gate = self.gate
        if gate is None or gate.session != session:
            return False
        return transmission_id is None or gate.transmission_id == transmission_id

    # -- listeners ----------------------------------------------------------
    def add_listener(self, session: str, track: DownlinkTrack) -> None:
        self.listeners[session] = track

    def remove_listener(self, session: str) -> DownlinkTrack | None:
        return self.listeners.pop(session, None)

    # -- media --------------------------------------------------------------
    def forward(
        self, session: str, transmission_id: str, payload: bytes, rtp_timestamp: int
    ) -> bool:
        """Fan one Opus payload out to every local listener but the talker. False if gated."""
        gate = self.gate
        if gate is None or gate.session != session or gate.transmission_id != transmission_id:
            self.rejected += 1
            return False
        now = self._clock()
        marker = transmission_id != self._segment_tid
        if marker:
            # New transmission: continue the listener timeline after the real silence since
            # the previous packet (at least one frame), so players keep their timing.
            gap = max(960, int((now - self._last_wall) * RTP_CLOCK)) if self._last_wall else 0
            self._segment_tid = transmission_id
            self._segment_in_base = rtp_timestamp
            self._segment_out_base = self._out_pts + gap
        delta = (rtp_timestamp - self._segment_in_base) % TS_MOD
        if delta >= TS_MOD // 2:  # a reordered packet from before the segment's first one
            delta -= TS_MOD
        pts = max(0, self._segment_out_base + delta)
        self._out_pts = pts
        self._last_wall = now
        ntp = clock.current_ntp_time()  # once per packet, for the listeners' sender reports
        for listener_session, track in self.listeners.items():
            if listener_session != session:
                # The marker bit flags the first packet of a talkspurt (RFC 3551 section 4.1).
                track.push(payload, pts, marker, ntp)
        self.forwarded += 1
        return True
