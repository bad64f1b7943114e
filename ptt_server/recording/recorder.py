"""Records every transmission to its own Ogg Opus file, off the media path.

The media path calls `Recorder.begin()` at floor grant, `RecordingHandle.packet()` for every
forwarded Opus packet and `RecordingHandle.finish()` at the end. None of these touch the
disk: they put a tuple on a bounded in-memory queue that one writer thread drains. If that
queue is full the packet is counted as dropped (the forwarded audio is unaffected) and the
gap is written to the ledger when the transmission ends.

Durability: while a recording is open its file grows page by page and is flushed and
fsync'ed every `flush_interval_s`; a `<id>.json.partial` sidecar (held under an exclusive
flock by the writing process) says the file is unfinished. A process that was SIGKILLed
leaves the sidecar behind unlocked; the next `Recorder.start()` on that data dir repairs the
file (cut at the last complete page, EOS set) and ledgers it with end_reason "incomplete".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import heapq
import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any

from ptt_server.core.model import EndReason
from ptt_server.recording import layout
from ptt_server.recording.ledger import Ledger, epoch_ms, iso_ms
from ptt_server.recording.ogg_repair import repair_ogg_opus
from ptt_server.recording.ogg_writer import OggOpusWriter
from ptt_server.recording.opus import PRE_SKIP, SAMPLE_RATE, opus_packet_samples, plc_packets

log = logging.getLogger("ptt.recording")

INCOMPLETE = "incomplete"  # end_reason of a recording finished by crash recovery
REORDER_DEPTH = 5  # packets held to put reordered RTP back in order (100 ms at 20 ms)
_REORDER_IDLE_S = 0.25  # a stream quiet for this long has its reorder buffer written out
_TS_SLACK = SAMPLE_RATE  # an RTP gap may exceed the arrival gap by 1 s (jitter) and no more
_RECENT_SEQS = 128  # window for duplicate detection

_PACKET, _BEGIN, _FINISH, _SYNC, _STOP = range(5)


@dataclass(frozen=True)
class TransmissionMeta:
    transmission_id: str  # [A-Za-z0-9_-]{8,64}
    talkgroup: str
    unit: str
    alias: str
    role: str
    node_id: str
    started_at: float  # epoch seconds (floor grant time)
    emergency: bool = False
    linked_id: str | None = None  # all-call / patch: groups recordings of one transmission


class _WorkQueue:
    """Many producers (the event loop), one consumer (the writer thread).

    Only packets count against the bound; begin/finish/stop always get through, so a full
    queue can lose audio packets but never the end of a recording.
    """

    def __init__(self, max_packets: int) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._items: deque[tuple[Any, ...]] = deque()
        self._packets = 0
        self._max = max_packets
        self._waiting = False

    def put(self, item: tuple[Any, ...], bounded: bool) -> bool:
        with self._lock:
            if bounded:
                if self._packets >= self._max:
                    return False
                self._packets += 1
            self._items.append(item)
            if self._waiting:
                self._wake.notify()
        return True

    def take_all(self, timeout: float) -> deque[tuple[Any, ...]]:
        with self._lock:
            if not self._items and timeout > 0:
                self._waiting = True
                self._wake.wait(timeout)
                self._waiting = False
            items = self._items
            self._items = deque()
            self._packets = 0
        return items


class RecordingHandle:
    """What the media path holds for one transmission. Methods never block and never raise."""

    __slots__ = (
        "_finished",
        "_first_drop",
        "_last_drop",
        "_queue",
        "_rec",
        "_recorder",
        "dropped",
        "meta",
    )

    def __init__(self, recorder: Recorder | None, rec: _Recording | None, meta: TransmissionMeta,
                 queue: _WorkQueue | None) -> None:
        self._recorder = recorder
        self._rec = rec
        self._queue = queue
        self.meta = meta
        self._finished = queue is None
        self.dropped = 0
        self._first_drop: float | None = None
        self._last_drop: float | None = None

    @property
    def transmission_id(self) -> str:
        return self.meta.transmission_id

    @property
    def finished(self) -> bool:
        return self._finished

    def packet(self, payload: bytes, rtp_timestamp: int, sequence: int, arrival: float) -> None:
        if self._finished or self._queue is None:
            return
        if not self._queue.put((_PACKET, self._rec, payload, rtp_timestamp, sequence, arrival),
                               True):
            self.dropped += 1
            if self._first_drop is None:
                self._first_drop = arrival
            self._last_drop = arrival

    def finish(self, reason: EndReason | str, ended_at: float) -> None:
        if self._finished or self._queue is None:
            return
        self._finished = True
        if self._recorder is not None:
            self._recorder._handles.discard(self)
        drops = (self.dropped, self._first_drop, self._last_drop)
        try:
            why = EndReason(reason).value
        except ValueError:
            why = str(reason)  # an unknown reason is still recorded, not lost
        self._queue.put((_FINISH, self._rec, why, ended_at, drops), False)


class _Recording:
    """Writer-thread state of one open recording. Only the writer thread touches it."""

    def __init__(self, meta: TransmissionMeta, recording_id: str) -> None:
        self.meta = meta
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
        self.late = 0
        self.invalid = 0
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
            self.recent.discard(self.recent_order.popleft())

    def tags(self) -> list[tuple[str, str]]:
        m = self.meta
        tags = [
            ("TRANSMISSION_ID", m.transmission_id),
            ("RECORDING_ID", self.recording_id),
            ("TALKGROUP", m.talkgroup),
            ("UNIT", m.unit),
            ("ALIAS", m.alias),
            ("ROLE", m.role),
            ("NODE_ID", m.node_id),
            ("START", iso_ms(m.started_at)),
            ("EMERGENCY", "1" if m.emergency else "0"),
        ]
        if m.linked_id:
            tags.append(("LINKED_ID", m.linked_id))
        return tags

    @property
    def serial(self) -> int:
        # RFC 3533 section 4: the serial only has to be unique within the physical stream; a
        # hash of the id makes files reproducible.
        return int.from_bytes(hashlib.sha256(self.recording_id.encode()).digest()[:4], "little")


def transmission_fields(
    meta: dict[str, Any], recording_id: str, relpath: str | None, ended_at: float,
    end_reason: str,
) -> dict[str, Any]:
    """The metadata part of a "transmission" ledger entry (counters are added by callers)."""
    started = float(meta["started_at"])
    return {
        "id": recording_id,
        "transmission_id": meta["transmission_id"],
        "talkgroup": meta["talkgroup"],
        "unit": meta["unit"],
        "alias": meta["alias"],
        "role": meta["role"],
        "node_id": meta["node_id"],
        "emergency": bool(meta.get("emergency", False)),
        "linked_id": meta.get("linked_id"),
        "start": iso_ms(started),
        "start_ms": epoch_ms(started),
        "end": iso_ms(ended_at),
        "end_ms": epoch_ms(ended_at),
        "duration_ms": max(0, epoch_ms(ended_at) - epoch_ms(started)),
        "end_reason": end_reason,
        "file": relpath,
    }


class Recorder:
    def __init__(
        self, data_dir: Path, node_id: str, *, flush_interval_s: float = 0.5,
        queue_max: int = 4096,
    ) -> None:
        self.data_dir = data_dir
        self.node_id = node_id
        self.flush_interval_s = flush_interval_s
        self.ledger = Ledger(layout.ledger_path(data_dir))
        self._queue = _WorkQueue(queue_max)
        self._thread: threading.Thread | None = None
        self._handles: set[RecordingHandle] = set()
        self._open: dict[int, _Recording] = {}
        self._pending_ledger: list[tuple[str, dict[str, Any], Callable[[], None] | None]] = []
        self._stopped = False
        self.recovered = 0  # recordings finished as "incomplete" by start()

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        if self._thread is not None:
            return
        await asyncio.to_thread(self.recover)
        self._thread = threading.Thread(target=self._run, name="ptt-recorder", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        now = time.time()
        for handle in list(self._handles):
            handle.finish(EndReason.SERVER_STOPPED, now)
        self._queue.put((_STOP,), False)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        else:  # never started: process what was queued so nothing is lost
            await asyncio.to_thread(self._run)

    async def flush(self) -> None:
        """Wait until everything queued so far is written, flushed and fsync'ed."""
        if self._thread is None or not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put((_SYNC, done), False)
        await asyncio.to_thread(done.wait)

    def begin(self, meta: TransmissionMeta) -> RecordingHandle:
        if self._stopped:
            log.error("recording %s not started: recorder stopped", meta.transmission_id)
            return RecordingHandle(None, None, meta, None)
        if not (isinstance(meta.started_at, int | float)
                and 0 <= meta.started_at < 1e11):  # finite, and before the year 5138
            log.error("transmission %s: bad started_at %r, using now", meta.transmission_id,
                      meta.started_at)
            meta = replace(meta, started_at=time.time())
        rid = meta.transmission_id
        if not isinstance(rid, str) or not layout.valid_id(rid):
            # The transmission still goes out; record it under a valid id and say so.
            rid = "x" + secrets.token_hex(8)
            log.error("invalid transmission id %r: recording as %s", meta.transmission_id, rid)
        rec = _Recording(meta, rid)
        handle = RecordingHandle(self, rec, meta, self._queue)
        self._handles.add(handle)
        self._queue.put((_BEGIN, rec), False)
        return handle

    # --- writer thread -------------------------------------------------------------------
    def _run(self) -> None:
        next_flush = time.monotonic() + self.flush_interval_s
        stop = False
        while not stop:
            items = self._queue.take_all(max(0.0, next_flush - time.monotonic()))
            syncs: list[threading.Event] = []
            for item in items:
                kind = item[0]
                try:
                    if kind == _PACKET:
                        self._on_packet(item[1], item[2], item[3], item[4], item[5])
                    elif kind == _BEGIN:
                        self._open_recording(item[1])
                    elif kind == _FINISH:
                        self._finish(item[1], item[2], item[3], item[4])
                    elif kind == _SYNC:
                        syncs.append(item[1])
                    elif kind == _STOP:
                        stop = True
                except Exception:  # the writer thread must survive anything
                    log.exception("recorder: failed to process %s", kind)
            now = time.monotonic()
            if syncs or stop or now >= next_flush:
                try:
                    self._flush_all(now, force=bool(syncs) or stop)
                    self._retry_ledger()
                except Exception:  # never let the writer thread die: later recordings need it
                    log.exception("recorder: periodic flush failed")
                next_flush = now + self.flush_interval_s
            for ev in syncs:
                ev.set()
        # Finish anything still open (finish() never came): ledger it as server_stopped.
        for rec in list(self._open.values()):
            with _log_errors("recorder: finishing %s at stop", rec.recording_id):
                self._finish(rec, EndReason.SERVER_STOPPED.value, time.time(), (0, None, None))
        self._retry_ledger()
        for kind, fields, _ in self._pending_ledger:
            log.error("ledger entry lost at shutdown (disk?): %s %s", kind,
                      json.dumps(fields, default=str))

    def _open_recording(self, rec: _Recording) -> None:
        self._open[id(rec)] = rec
        try:
            self._create_files(rec)
        except OSError as exc:
            self._fail(rec, f"cannot create recording file: {exc}")

    def _create_files(self, rec: _Recording) -> None:
        base = rec.recording_id
        for attempt in range(100):
            rid = base if attempt == 0 else f"{base[:60]}-{attempt}"
            relpath = layout.audio_relpath(rid, rec.meta.started_at)
            audio = self.data_dir / relpath
            sidecar = layout.sidecar_for(audio)
            audio.parent.mkdir(parents=True, exist_ok=True)
            try:
                sfd = os.open(sidecar, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            except FileExistsError:
                continue
            try:
                fcntl.flock(sfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                afd = os.open(audio, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            except (FileExistsError, BlockingIOError):
                os.close(sfd)
                with contextlib.suppress(OSError):
                    sidecar.unlink()
                continue
            except OSError:
                os.close(sfd)
                with contextlib.suppress(OSError):
                    sidecar.unlink()
                raise
            if rid != rec.recording_id:
                log.warning("recording id %s taken: recording as %s", rec.recording_id, rid)
                rec.recording_id = rid
                rec.relpath = relpath
            rec.audio, rec.sidecar, rec.sidecar_fd = audio, sidecar, sfd
            rec.file = os.fdopen(afd, "wb", buffering=64 * 1024)
            rec.writer = OggOpusWriter(sink=rec.file.write, serial=rec.serial,
                                       comments=rec.tags())
            info = {
                **asdict(rec.meta), "recording_id": rid, "file": relpath, "serial": rec.serial,
                "recorder_node": self.node_id, "pid": os.getpid(), "created": iso_ms(time.time()),
            }
            os.write(sfd, json.dumps(info, sort_keys=True).encode())
            os.fsync(sfd)
            _fsync_dir(audio.parent)
            return
        raise OSError(errno.EEXIST, f"no free recording name for {base}")

    def _on_packet(
        self, rec: _Recording, payload: bytes, ts: int, seq: int, arrival: float
    ) -> None:
        if rec.finished:
            return
        if rec.failed is not None:
            rec.unrecorded += 1
            return
        ext = rec.extend_seq(seq)
        if ext in rec.recent:
            rec.duplicates += 1
            return
        rec.remember(ext)
        rec.last_packet_mono = time.monotonic()
        if rec.last_emitted_seq is not None and ext < rec.last_emitted_seq:
            # Later than the reorder window: it replaces its PLC filler if that is not on
            # disk yet, else it is appended (it was forwarded, so it is recorded).
            self._write_packet(rec, payload, ts, arrival)
            return
        heapq.heappush(rec.buf, (ext, payload, ts, arrival))
        while len(rec.buf) > REORDER_DEPTH:
            self._emit_next(rec)

    def _emit_next(self, rec: _Recording) -> None:
        ext, payload, ts, arrival = heapq.heappop(rec.buf)
        rec.last_emitted_seq = ext
        self._write_packet(rec, payload, ts, arrival)

    def _write_packet(self, rec: _Recording, payload: bytes, ts32: int, arrival: float) -> None:
        if rec.writer is None or rec.failed is not None:
            return
        try:
            samples = opus_packet_samples(payload)
        except ValueError:
            rec.invalid += 1
            return
        ts32 &= 0xFFFFFFFF
        fillers: list[bytes] = []
        filler_ts: int | None = None  # RTP time of the first filler, when it is known
        if rec.next_ts is None:
            ext_ts = ts32
            rec.next_ts = ts32 + samples
        else:
            # RTP timestamps are 32-bit and wrap (RFC 3550 5.1): take the signed difference.
            delta = ((ts32 - rec.last_ts32 + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            ext_ts = rec.ext_ts + delta
            gap = ext_ts - rec.next_ts
            wall_gap = round((arrival - rec.last_arrival) * SAMPLE_RATE) - rec.last_samples
            if gap > max(0, wall_gap) + _TS_SLACK or gap < -_TS_SLACK:
                # The timestamp jumped (new encoder/SSRC): believe the arrival clock instead.
                gap = max(0, wall_gap)
                rec.next_ts = ext_ts + samples
                rec.fillers.clear()
            elif gap < 0:
                # Late: its time slot is already covered, most likely by a PLC filler.
                rec.late += 1
                rec.last_ts32, rec.ext_ts = ts32, ext_ts
                if self._fill_in(rec, ext_ts, payload, samples):
                    return
                gap = 0
                rec.next_ts = max(rec.next_ts, ext_ts + samples)
            else:
                filler_ts = rec.next_ts
                rec.next_ts = ext_ts + samples
            if gap > 0:
                fillers = plc_packets(rec.prev_toc, gap)
        rec.ext_ts = ext_ts
        rec.last_ts32 = ts32
        rec.last_arrival = arrival
        rec.last_samples = samples
        writer = rec.writer
        try:
            for filler in fillers:
                n = opus_packet_samples(filler)
                if filler_ts is not None:
                    rec.fillers[filler_ts] = (writer.packets_added, n)
                    filler_ts += n
                writer.add_packet(filler, n)
                rec.plc_packets += 1
                rec.gap_samples += n
            writer.add_packet(payload, samples)
        except OSError as exc:
            self._fail(rec, f"write failed: {exc}")
            return
        rec.packets += 1
        rec.bytes += len(payload)
        rec.prev_toc = payload[0]
        rec.dirty = True

    def _fill_in(self, rec: _Recording, ext_ts: int, payload: bytes, samples: int) -> bool:
        slot = rec.fillers.get(ext_ts)
        if slot is None or slot[1] != samples or rec.writer is None:
            return False
        if not rec.writer.replace_pending(slot[0], payload):
            return False
        del rec.fillers[ext_ts]
        rec.plc_packets -= 1
        rec.gap_samples -= samples
        rec.packets += 1
        rec.bytes += len(payload)
        rec.dirty = True
        return True

    def _flush_all(self, now: float, force: bool) -> None:
        for rec in list(self._open.values()):
            if rec.failed is not None or rec.writer is None or rec.file is None:
                continue
            if rec.buf and (force or now - rec.last_packet_mono >= _REORDER_IDLE_S):
                while rec.buf:
                    self._emit_next(rec)
            if not rec.dirty:
                continue
            try:
                rec.writer.flush(keep_last=True)
                if rec.fillers:  # written fillers can no longer be replaced
                    rec.fillers.clear()
                rec.file.flush()
                os.fsync(rec.file.fileno())
                rec.dirty = False
            except (OSError, ValueError) as exc:
                self._fail(rec, f"flush failed: {exc}")

    def _fail(self, rec: _Recording, reason: str) -> None:
        if rec.failed is not None:
            return
        rec.failed = reason
        log.error("recording %s (talkgroup %s, unit %s) failed: %s", rec.recording_id,
                  rec.meta.talkgroup, rec.meta.unit, reason)
        if rec.file is not None:
            with contextlib.suppress(OSError):
                rec.file.close()
            rec.file = None
        self._ledger(
            "recording_failed",
            {
                "id": rec.recording_id, "transmission_id": rec.meta.transmission_id,
                "talkgroup": rec.meta.talkgroup, "unit": rec.meta.unit,
                "node_id": self.node_id, "reason": reason,
                "file": rec.relpath if rec.audio is not None else None,
                "packets_recorded": rec.packets, "at": iso_ms(time.time()),
            },
        )

    def _finish(
        self, rec: _Recording, reason: str, ended_at: float,
        drops: tuple[int, float | None, float | None],
    ) -> None:
        if rec.finished:
            return
        rec.finished = True
        self._open.pop(id(rec), None)
        while rec.buf and rec.failed is None:
            self._emit_next(rec)
        sha: str | None = None
        file_size = 0
        audio_samples = 0
        writer = rec.writer
        if rec.failed is None and writer is not None and rec.file is not None:
            try:
                writer.close()
                rec.file.flush()
                os.fsync(rec.file.fileno())
                rec.file.close()
                rec.file = None
                sha = writer.sha256.hexdigest()
                file_size = writer.bytes_written
                audio_samples = max(0, writer.granule - PRE_SKIP)
            except OSError as exc:
                self._fail(rec, f"closing failed: {exc}")
        if rec.failed is not None and rec.audio is not None and sha is None:
            # Best effort: make what reached the disk a valid file and hash it as it is.
            try:
                result = repair_ogg_opus(rec.audio, rec.serial, rec.tags())
                sha = _file_sha256(rec.audio)
                file_size = result.file_size
                audio_samples = result.duration_samples
            except (OSError, ValueError) as exc:
                log.error("recording %s: partial file not repairable: %s", rec.recording_id, exc)
        fields = transmission_fields(
            asdict(rec.meta), rec.recording_id,
            rec.relpath if rec.audio is not None else None, ended_at, reason,
        )
        fields.update(
            sha256=sha,
            file_size=file_size,
            audio_ms=audio_samples * 1000 // SAMPLE_RATE,
            packet_count=rec.packets,
            bytes=rec.bytes,
            plc_packets=rec.plc_packets,
            gap_ms=rec.gap_samples * 1000 // SAMPLE_RATE,
            dropped_packets=drops[0],
            late_packets=rec.late,
            duplicate_packets=rec.duplicates,
            invalid_packets=rec.invalid,
            recorder_node=self.node_id,
        )
        if rec.failed is not None:
            fields["recording_failed"] = rec.failed
            fields["unrecorded_packets"] = rec.unrecorded
        if drops[0]:
            log.error("recording %s: %d packets dropped (writer queue full)",
                      rec.recording_id, drops[0])
            self._ledger("recording_gap", {
                "id": rec.recording_id, "transmission_id": rec.meta.transmission_id,
                "talkgroup": rec.meta.talkgroup, "unit": rec.meta.unit,
                "reason": "recorder queue full", "dropped_packets": drops[0],
                "first_dropped_arrival": drops[1], "last_dropped_arrival": drops[2],
            })
        # The sidecar goes only once the entry is in the ledger: until then a crash leaves it
        # for recovery, and its lock keeps other processes' recovery away.
        self._ledger("transmission", fields, on_done=lambda: self._release(rec))

    def _release(self, rec: _Recording) -> None:
        if rec.sidecar is not None:
            with _log_errors("recording %s: removing sidecar", rec.recording_id):
                rec.sidecar.unlink(missing_ok=True)
        if rec.sidecar_fd is not None:
            os.close(rec.sidecar_fd)
            rec.sidecar_fd = None

    def _ledger(
        self, kind: str, fields: dict[str, Any], on_done: Callable[[], None] | None = None
    ) -> None:
        try:
            self.ledger.append(kind, fields)
        except OSError as exc:
            log.error("ledger append (%s) failed, will retry: %s", kind, exc)
            self._pending_ledger.append((kind, fields, on_done))
            return
        if on_done is not None:
            on_done()

    def _retry_ledger(self) -> None:
        while self._pending_ledger:
            kind, fields, on_done = self._pending_ledger[0]
            try:
                self.ledger.append(kind, fields)
            except OSError:
                return
            self._pending_ledger.pop(0)
            if on_done is not None:
                on_done()

    # --- crash recovery ------------------------------------------------------------------
    def recover(self) -> int:
        """Finish recordings left unfinished by a dead process (any node on this data dir).
        Returns how many were recovered. Recordings still being written by a live process
        are skipped: their sidecar is locked."""
        root = layout.recordings_root(self.data_dir)
        count = 0
        if not root.is_dir():
            return 0
        for sidecar in sorted(root.glob(f"*/*/*/*{layout.PARTIAL_SUFFIX}")):
            try:
                if self._recover_one(sidecar):
                    count += 1
            except Exception:
                log.exception("recovery of %s failed", sidecar)
        self.recovered += count
        return count

    def _recover_one(self, sidecar: Path) -> bool:
        try:
            fd = os.open(sidecar, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a live process is writing it
            try:
                if os.fstat(fd).st_ino != os.stat(sidecar).st_ino:
                    return False  # finished and removed meanwhile
            except FileNotFoundError:
                return False
            raw = os.pread(fd, 1 << 20, 0)
            try:
                info = json.loads(raw)
            except ValueError:
                if time.time() - os.fstat(fd).st_mtime < 10:
                    return False  # just created, its writer has not written it yet
                info = None
            audio = layout.audio_for_sidecar(sidecar)
            rid = audio.name[: -len(layout.AUDIO_SUFFIX)]
            if not isinstance(info, dict):
                log.error("recovery: sidecar %s unreadable; using the file name", sidecar)
                info = {"transmission_id": rid, "talkgroup": "", "unit": "", "alias": "",
                        "role": "", "node_id": "", "started_at": os.fstat(fd).st_mtime}
            relpath = audio.relative_to(self.data_dir).as_posix()
            meta = TransmissionMeta(**{k: info[k] for k in (
                "transmission_id", "talkgroup", "unit", "alias", "role", "node_id",
                "started_at")}, emergency=bool(info.get("emergency")),
                linked_id=info.get("linked_id"))
            rec = _Recording(meta, rid)
            try:
                ended_at = audio.stat().st_mtime  # the last flush: when the audio stops
            except FileNotFoundError:
                audio.touch()
                ended_at = os.fstat(fd).st_mtime
            result = repair_ogg_opus(audio, int(info.get("serial", rec.serial)), rec.tags())
            fields = transmission_fields(info, rid, relpath, max(ended_at, meta.started_at),
                                         INCOMPLETE)
            fields.update(
                sha256=_file_sha256(audio),
                file_size=result.file_size,
                audio_ms=result.duration_samples * 1000 // SAMPLE_RATE,
                packet_count=result.audio_packets,
                bytes=result.audio_bytes,
                recorder_node=info.get("recorder_node"),
                recovered_by=self.node_id,
                recovered_at=iso_ms(time.time()),
                truncated_bytes=result.truncated_bytes,
            )
            self.ledger.append("transmission", fields)
            sidecar.unlink()
            _fsync_dir(sidecar.parent)
            log.warning("recovered unfinished recording %s (%d ms, %d bytes cut)", rid,
                        fields["audio_ms"], result.truncated_bytes)
            return True
        finally:
            os.close(fd)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    return _file_sha256(path)


def _fsync_dir(path: Path) -> None:
    # A new file's directory entry is only durable once the directory itself is fsync'ed.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _log_errors(msg: str, *args: object) -> Iterator[None]:
    try:
        yield
    except Exception:
        log.exception(msg, *args)


__all__ = ["INCOMPLETE", "Recorder", "RecordingHandle", "TransmissionMeta"]
