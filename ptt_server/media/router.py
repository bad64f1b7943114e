"""Per-talkgroup fan-out on one server node.

A router holds the local listeners of one talkgroup and the gate: the transmission that may be
forwarded right now. Packets are accepted only for the transmission that holds the floor
(grant/revoke gate forwarding; nothing is renegotiated).

Numbering tells the truth (RFC 3550 section 5.1): within a transmission a listener gets the
talker's own sequence numbers and timestamps, each shifted by one offset per transmission, so
a packet lost on the talker's uplink is a gap downstream too, and a late packet keeps its own
place in both. A receiver's jitter buffer can then see loss and use Opus in-band FEC (the next
packet's LBRR copy of the lost one, RFC 6716 section 2.1.7; negotiated with useinbandfec=1,
RFC 7587 section 6.1) instead of playing contiguous numbers over a hole. Between transmissions
the output continues: the next transmission's first packet is numbered one after the highest
index used so far and carries the marker bit (a new talkspurt, RFC 3551 section 4.1); its
timestamp continues after the real silence, so players keep their timing.

The router computes, once per packet for all listeners, the timestamp offset from a 0-based
timeline (`pts`) and an *index*: a talkgroup-wide extended sequence number, monotonic across
transmissions. Each listener's egress maps the index onto its own SSRC's sequence space with
one offset (`egress.StreamNumbering`), so all listeners share this work.

RED (RFC 2198) is forwarded, never transcoded: a talker's RED packet (checked and split once,
core/red.py) goes as it came to each listener that negotiated RED, at that listener's RED
payload type, and its primary block (the last one, RFC 2198 section 3) as plain Opus to the
others. Both carry the same index and timestamp: the redundancy is the listener's to use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import clock

from ptt_server.core.red import RedPayload, with_block_type
from ptt_server.media.downlink import DownlinkTrack
from ptt_server.media.egress import LATE_WINDOW, flush

RTP_CLOCK = 48000
TS_MOD = 1 << 32
SEQ_MOD = 1 << 16
# Late (reordered) packets are forwarded, in their own place: with their own sequence number
# and timestamp, each shifted by the transmission's offsets, if at most LATE_WINDOW (48, about
# 1 s) packets behind the newest; older ones, and anything from before the transmission's first
# forwarded packet, are dropped and counted (`late`). Why forward rather than drop: a jitter
# buffer may still play a late packet, or take from it the FEC copy of the one before it
# (RFC 6716 section 2.1.7), so dropping would turn every reordering into a loss; and numbered
# in its own place it is just reordering to the receiver, which RTP expects (RFC 3550 section
# 5.1). Why the bounds: further behind it is past any playout point and its number would fall
# out of the receiver's SRTP replay window (egress.LATE_WINDOW); before the transmission's
# start its number would be one the previous transmission already used.
# Jumps bigger than these are not loss but a talker whose numbering restarted (a new SSRC
# after a device switch, say): after two consecutive packets agree, a new segment starts
# (after RFC 3550 appendix A.1's MAX_DROPOUT / MAX_MISORDER probation).
MAX_DROPOUT = 3000
MAX_MISORDER = 100


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
        # Output index (extended sequence number), monotonic across transmissions.
        self._next_index = 0  # one after the highest index used
        self._index_base = 0  # index = _index_base + (talker's extended seq - _seq_first)
        self._seq_first = 0  # the segment's first extended talker sequence number
        self._seq_max = 0  # the highest extended talker sequence number in the segment
        self._seen = 0  # bit i: _seq_max - i was forwarded (duplicates, late packets)
        self._bad_seq: int | None = None  # probation for a restarted talker numbering
        self._implicit = 0  # numbering for callers that pass no sequence number
        self.forwarded = 0
        self.rejected = 0
        self.late = 0  # dropped: older than the window or than the transmission's start
        self.duplicates = 0
        self.resyncs = 0
        self.red_forwarded = 0  # of `forwarded`: RED packets

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
        self, session: str, transmission_id: str, payload: bytes, rtp_timestamp: int,
        seq: int | None = None, red: RedPayload | None = None,
    ) -> bool:
        """Fan one Opus payload out to every local listener but the talker.

        `seq` is the talker's RTP sequence number (None: numbered in arrival order). `red`:
        the payload is RED, already checked and split (`payload` is then `red.payload`).
        False only if gated; a duplicate or too-late packet is accepted for this transmission
        (the recording and other nodes judge it themselves) but not forwarded here, and
        counted.
        """
        gate = self.gate
        if gate is None or gate.session != session or gate.transmission_id != transmission_id:
            self.rejected += 1
            return False
        if seq is None:
            seq = self._implicit
            self._implicit = (seq + 1) % SEQ_MOD
        now = self._clock()
        marker = transmission_id != self._segment_tid
        placed = (self._start if marker else self._place)(transmission_id, seq, rtp_timestamp, now)
        if placed is None:
            return True
        index, marker = placed
        delta = (rtp_timestamp - self._segment_in_base) % TS_MOD
        if delta >= TS_MOD // 2:  # before the segment's first packet (reordered)
            delta -= TS_MOD
        pts = max(0, self._segment_out_base + delta)
        self._out_pts = max(self._out_pts, pts)
        self._last_wall = now
        ntp = clock.current_ntp_time()  # once per packet, for the listeners' sender reports
        if red is None:
            for listener_session, track in self.listeners.items():
                if listener_session != session:
                    # The marker bit flags the first packet of a talkspurt (RFC 3551 4.1).
                    track.push(payload, pts, marker, ntp, index)
        else:
            self._fan_out_red(session, red, pts, marker, ntp, index)
        flush()  # the listeners' copies were built in the loop; they leave now (egress.py)
        self.forwarded += 1
        return True

    def _fan_out_red(
        self, session: str, red: RedPayload, pts: int, marker: bool, ntp: int, index: int
    ) -> None:
        """RED as is to listeners that negotiated it (block headers naming their own Opus
        payload type, made once per type), the primary as Opus to the others."""
        variants: dict[int, bytes] = {}
        for listener_session, track in self.listeners.items():
            if listener_session == session:
                continue
            negotiated = track.red
            if negotiated is None:
                track.push(red.primary, pts, marker, ntp, index)
                continue
            red_type, opus_type = negotiated
            data = variants.get(opus_type)
            if data is None:
                data = variants[opus_type] = with_block_type(red, opus_type)
            track.push(data, pts, marker, ntp, index, red_type)
        self.red_forwarded += 1

    def _start(self, tid: str, seq: int, rtp_timestamp: int, now: float) -> tuple[int, bool]:
        """Begin a segment (a transmission, or a talker whose numbering restarted): continue
        the timeline after the real silence since the previous packet (at least one frame),
        and the index one after the highest used."""
        gap = max(960, int((now - self._last_wall) * RTP_CLOCK)) if self._last_wall else 0
        self._segment_tid = tid
        self._segment_in_base = rtp_timestamp
        self._segment_out_base = self._out_pts + gap
        self._seq_first = self._seq_max = seq
        self._seen = 1
        self._bad_seq = None
        self._index_base = self._next_index
        self._next_index += 1
        return self._index_base, True

    def _place(
        self, tid: str, seq: int, rtp_timestamp: int, now: float
    ) -> tuple[int, bool] | None:
        """(index, starts a talkspurt) of a packet of the current segment; None: drop it."""
        ahead = (seq - self._seq_max) % SEQ_MOD
        if ahead >= SEQ_MOD // 2:
            ahead -= SEQ_MOD  # behind the newest: late, or a duplicate
        if ahead > MAX_DROPOUT or ahead < -MAX_MISORDER:
            if self._bad_seq == seq:
                self.resyncs += 1
                return self._start(tid, seq, rtp_timestamp, now)
            self._bad_seq = (seq + 1) % SEQ_MOD
            self.late += 1
            return None
        self._bad_seq = None
        ext = self._seq_max + ahead
        if ahead > 0:
            self._seq_max = ext
            self._seen = ((self._seen << ahead) | 1) & ((1 << LATE_WINDOW) - 1)
        else:
            bit = 1 << -ahead
            if -ahead >= LATE_WINDOW or ext < self._seq_first:
                self.late += 1
                return None
            if self._seen & bit:
                self.duplicates += 1
                return None
            self._seen |= bit
        index = self._index_base + (ext - self._seq_first)
        self._next_index = max(self._next_index, index + 1)
        return index, False
