"""One open recording in the writer thread: RTP in, Ogg Opus packets out.

RTP arrives with duplicates, out of order, late and with gaps. This undoes what it can before
the packets reach the OggOpusWriter: a small reorder buffer and duplicate window (extended
sequence numbers), RTP timestamps extended to 64 bits across the 32-bit wrap, gaps in time
filled with PLC packets (RFC 7845 section 4.1), and a late packet put in place of the filler
that stood in for it while that filler is still unwritten. Only the writer thread touches it.

The file's timeline is bounded by the wall clock: a packet that would put the recording more
than `AHEAD_SLACK_S` ahead of the time since its first packet arrived is not written (counted
in `early`). RTP timestamps are the sender's word; a sender that stamps 20 ms on packets it
sends 100 times faster otherwise made a 15 s transmission claim 25 minutes of audio.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ptt_server.recording import layout
from ptt_server.recording.meta import TransmissionMeta, ogg_serial, ogg_tags
from ptt_server.recording.ogg_writer import OggOpusWriter
from ptt_server.recording.opus import SAMPLE_RATE, opus_packet_samples, plc_packets

REORDER_DEPTH = 5  # packets held to put reordered RTP back in order (100 ms at 20 ms)
REORDER_IDLE_S = 0.25  # a stream quiet for this long has its reorder buffer written out
_TS_SLACK = SAMPLE_RATE  # an RTP gap may exceed the arrival gap by 1 s (jitter) and no more
_RECENT_SEQS = 128  # window for duplicate detection
# How far the file may run ahead of the arrival clock: a sender whose sound card clock is
# fast by a whole 1% stays within it for a 100 s transmission; jitter only makes audio late.
AHEAD_SLACK_S = 1.0


class OpenRecording:
    """Writer-thread state of one open recording: its files, its writer, RTP timing."""

    def __init__(self, meta: TransmissionMeta, recording_id: str,
                 on_fail: Callable[[OpenRecording, str], None]) -> None:
        self.meta = meta
        self.on_fail = on_fail  # a write error: the recorder marks it failed and ledgers it
        self.recording_id = recording_id
        self.relpath = layout.audio_relpath(recording_id, meta.started_at)
        self.audio: Path | None = None
        self.sidecar: Path | None = None
        self.sidecar_fd: int | None = None
        self.file: IO[bytes] | None = None
        self.writer: OggOpusWriter | None = None
        self.failed: str | None = None
        self.finished = False
        self.dirty = False
        # RTP timing (timestamps extended to 64 bits to survive the 32-bit wrap)
        self.last_ts32 = 0
        self.ext_ts = 0
        self.next_ts: int | None = None
        self.last_arrival = 0.0
        self.last_samples = 0
        self.prev_toc: int | None = None
        # The wall-clock bound: when the first written packet arrived, and samples written
        # since (audio and PLC fillers alike).
        self.first_arrival: float | None = None
        self.timeline = 0
        # PLC fillers not yet flushed, by extended RTP timestamp -> (packet number, samples):
        # a late packet can still take its filler's place.
        self.fillers: dict[int, tuple[int, int]] = {}
        # reordering and duplicates
        self.buf: list[tuple[int, bytes, int, float]] = []
        self.max_seq16: int | None = None
        self.max_ext_seq = 0
        self.last_emitted_seq: int | None = None
        self.recent: set[int] = set()
        self.recent_order: deque[int] = deque()
        self.last_packet_mono = 0.0
        # counters
        self.packets = 0
        self.bytes = 0
        self.plc_packets = 0
        self.gap_samples = 0
        self.duplicates = 0
        # Frames taken from RED redundancy for packets that never arrived (RFC 2198); one
        # that arrives after all is not counted, nor as a duplicate (same frame, same place).
        self.recovered = 0
        self.recovered_seqs: set[int] = set()
        self.late = 0
        self.invalid = 0
        self.early = 0  # not written: they would have run ahead of the wall clock
        self.unrecorded = 0  # packets that arrived after the recording failed

    def extend_seq(self, seq16: int) -> int:
        seq16 &= 0xFFFF
        if self.max_seq16 is None:
            self.max_seq16 = seq16
            self.max_ext_seq = seq16
            return seq16
        delta = ((seq16 - self.max_seq16 + 0x8000) & 0xFFFF) - 0x8000
        ext = self.max_ext_seq + delta
        if delta > 0:
            self.max_seq16 = seq16
            self.max_ext_seq = ext
        return ext

    def remember(self, ext_seq: int) -> None:
        self.recent.add(ext_seq)
        self.recent_order.append(ext_seq)
        if len(self.recent_order) > _RECENT_SEQS:
            old = self.recent_order.popleft()
            self.recent.discard(old)
            self.recovered_seqs.discard(old)

    def tags(self) -> list[tuple[str, str]]:
        return ogg_tags(self.meta, self.recording_id)

    @property
    def serial(self) -> int:
        return ogg_serial(self.recording_id)

    # --- packets in ----------------------------------------------------------------------
    def on_packet(self, payload: bytes, ts: int, seq: int, arrival: float,
                  recovered: bool = False) -> None:
        if self.finished:
            return
        if self.failed is not None:
            self.unrecorded += 1
            return
        ext = self.extend_seq(seq)
        if ext in self.recent:
            if ext in self.recovered_seqs and not recovered:
                # The packet itself, after its copy from the redundancy was recorded: it was
                # late, not lost.
                self.recovered_seqs.discard(ext)
                self.recovered -= 1
            elif not recovered:
                self.duplicates += 1
            return
        self.remember(ext)
        if recovered:
            self.recovered += 1
            self.recovered_seqs.add(ext)
        self.last_packet_mono = time.monotonic()
        if self.last_emitted_seq is not None and ext < self.last_emitted_seq:
            # Later than the reorder window: it replaces its PLC filler if that is not on
            # disk yet, else it is appended (it was forwarded, so it is recorded).
            self.write_packet(payload, ts, arrival)
            return
        heapq.heappush(self.buf, (ext, payload, ts, arrival))
        while len(self.buf) > REORDER_DEPTH:
            self.emit_next()

    def emit_next(self) -> None:
        ext, payload, ts, arrival = heapq.heappop(self.buf)
        self.last_emitted_seq = ext
        self.write_packet(payload, ts, arrival)

    def drain(self) -> None:
        """Write out the whole reorder buffer."""
        while self.buf:
            self.emit_next()

    # --- packets out ---------------------------------------------------------------------
    def write_packet(self, payload: bytes, ts32: int, arrival: float) -> None:
        if self.writer is None or self.failed is not None:
            return
        try:
            samples = opus_packet_samples(payload)
        except ValueError:
            self.invalid += 1
            return
        ts32 &= 0xFFFFFFFF
        placed = self._place(payload, ts32, samples, arrival)
        if placed is None:
            return  # late, and it took the place of its filler
        ext_ts, fillers, filler_ts = placed
        self.ext_ts = ext_ts
        self.last_ts32 = ts32
        self.last_arrival = arrival
        self.last_samples = samples
        # The RTP state above moves on either way: a packet left out here is one the sender
        # sent too early, and the next one is still placed by its own timestamp.
        if not self._within_wall_clock(fillers, samples, arrival):
            self.early += 1
            return
        self._append(self.writer, payload, samples, fillers, filler_ts)

    def _place(
        self, payload: bytes, ts32: int, samples: int, arrival: float
    ) -> tuple[int, list[bytes], int | None] | None:
        """Where the packet goes in time: (extended RTP timestamp, PLC fillers to write before
        it, RTP time of the first filler when known); None if it filled in a late slot."""
        if self.next_ts is None:
            self.next_ts = ts32 + samples
            return ts32, [], None
        filler_ts: int | None = None
        # RTP timestamps are 32-bit and wrap (RFC 3550 5.1): take the signed difference.
        delta = ((ts32 - self.last_ts32 + 0x80000000) & 0xFFFFFFFF) - 0x80000000
        ext_ts = self.ext_ts + delta
        gap = ext_ts - self.next_ts
        wall_gap = round((arrival - self.last_arrival) * SAMPLE_RATE) - self.last_samples
        if gap > max(0, wall_gap) + _TS_SLACK or gap < -_TS_SLACK:
            # The timestamp jumped (new encoder/SSRC): believe the arrival clock instead.
            gap = max(0, wall_gap)
            self.next_ts = ext_ts + samples
            self.fillers.clear()
        elif gap < 0:
            # Late: its time slot is already covered, most likely by a PLC filler.
            self.late += 1
            self.last_ts32, self.ext_ts = ts32, ext_ts
            if self._fill_in(ext_ts, payload, samples):
                return None
            gap = 0
            self.next_ts = max(self.next_ts, ext_ts + samples)
        else:
            filler_ts = self.next_ts
            self.next_ts = ext_ts + samples
        fillers = plc_packets(self.prev_toc, gap) if gap > 0 else []
        return ext_ts, fillers, filler_ts

    def _within_wall_clock(self, fillers: list[bytes], samples: int, arrival: float) -> bool:
        """May this packet (and the PLC fillers before it) be written without the file running
        more than AHEAD_SLACK_S ahead of the time since the first packet? Fillers are trimmed
        first (from the end, so the ones kept still start where the gap does): a timestamp gap
        the wall clock did not see is not silence the recording should claim."""
        if self.first_arrival is None:
            self.first_arrival = arrival
        allowed = round((arrival - self.first_arrival + AHEAD_SLACK_S) * SAMPLE_RATE)
        room = allowed - self.timeline - samples
        gap = sum(opus_packet_samples(f) for f in fillers)
        while fillers and room < gap:
            gap -= opus_packet_samples(fillers.pop())
        return room >= 0

    def _append(self, writer: OggOpusWriter, payload: bytes, samples: int,
                fillers: list[bytes], filler_ts: int | None) -> None:
        try:
            for filler in fillers:
                n = opus_packet_samples(filler)
                if filler_ts is not None:
                    self.fillers[filler_ts] = (writer.packets_added, n)
                    filler_ts += n
                writer.add_packet(filler, n)
                self.plc_packets += 1
                self.gap_samples += n
                self.timeline += n
            writer.add_packet(payload, samples)
            self.timeline += samples
        except OSError as exc:
            self.on_fail(self, f"write failed: {exc}")
            return
        self.packets += 1
        self.bytes += len(payload)
        self.prev_toc = payload[0]
        self.dirty = True

    def _fill_in(self, ext_ts: int, payload: bytes, samples: int) -> bool:
        slot = self.fillers.get(ext_ts)
        if slot is None or slot[1] != samples or self.writer is None:
            return False
        if not self.writer.replace_pending(slot[0], payload):
            return False
        del self.fillers[ext_ts]
        self.plc_packets -= 1
        self.gap_samples -= samples
        self.packets += 1
        self.bytes += len(payload)
        self.dirty = True
        return True
