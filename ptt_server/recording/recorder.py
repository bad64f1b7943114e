"""Records every transmission to its own Ogg Opus file, off the media path.

The media path calls `Recorder.begin()` at floor grant, `RecordingHandle.packet()` for every
forwarded Opus packet and `RecordingHandle.finish()` at the end (handle.py). None of these
touch the disk: they put a tuple on a bounded in-memory queue that one writer thread drains.
If that queue is full the packet is counted as dropped (the forwarded audio is unaffected)
and the gap is written to the ledger when the transmission ends.

This module is that writer thread and the files' lifecycle: create the audio file and its
sidecar, feed packets to each open recording (stream.py), flush, close, ledger.

Durability: while a recording is open its file grows page by page and is flushed and
fsync'ed every `flush_interval_s`; a `<id>.json.partial` sidecar (held under an exclusive
flock by the writing process) says the file is unfinished. A process that was SIGKILLed
leaves the sidecar behind unlocked; the next `Recorder.start()` on that data dir repairs the
file (cut at the last complete page, EOS set) and ledgers it with end_reason "incomplete"
(recovery.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ptt_server.core.model import EndReason
from ptt_server.recording import layout, recovery
from ptt_server.recording.files import file_sha256, fsync_dir
from ptt_server.recording.handle import (
    BEGIN,
    FINISH,
    PACKET,
    STOP,
    SYNC,
    RecordingHandle,
    WorkQueue,
)
from ptt_server.recording.ledger import DIR_MODE, FILE_MODE, Ledger, iso_ms
from ptt_server.recording.meta import TransmissionMeta, transmission_fields
from ptt_server.recording.ogg_repair import repair_ogg_opus
from ptt_server.recording.ogg_writer import OggOpusWriter
from ptt_server.recording.opus import PRE_SKIP, SAMPLE_RATE
from ptt_server.recording.stream import REORDER_IDLE_S, OpenRecording

log = logging.getLogger("ptt.recording")


class Recorder:
    def __init__(
        self, data_dir: Path, node_id: str, *, flush_interval_s: float = 0.5,
        queue_max: int = 4096,
    ) -> None:
        self.data_dir = data_dir
        self.node_id = node_id
        self.flush_interval_s = flush_interval_s
        self.ledger = Ledger(layout.ledger_path(data_dir))
        self._queue = WorkQueue(queue_max)
        self._thread: threading.Thread | None = None
        self._handles: set[RecordingHandle] = set()
        self._open: dict[int, OpenRecording] = {}
        self._pending_ledger: list[tuple[str, dict[str, Any], Callable[[], None] | None]] = []
        self._stopped = False
        self.recovered = 0  # recordings finished as "incomplete" by start()
        # Recordings that failed (disk full, I/O error): node/health.py reports it. Written by
        # the writer thread, read by the event loop: an int that only grows.
        self.failures = 0

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
        self._queue.put((STOP,), False)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        else:  # never started: process what was queued so nothing is lost
            await asyncio.to_thread(self._run)

    async def flush(self) -> None:
        """Wait until everything queued so far is written, flushed and fsync'ed."""
        if self._thread is None or not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put((SYNC, done), False)
        await asyncio.to_thread(done.wait)

    def begin(self, meta: TransmissionMeta) -> RecordingHandle:
        if self._stopped:
            log.error("recording %s not started: recorder stopped", meta.transmission_id)
            return RecordingHandle(None, meta, None)
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
        rec = OpenRecording(meta, rid, self._fail)
        handle = RecordingHandle(rec, meta, self._queue, self._handles.discard)
        self._handles.add(handle)
        self._queue.put((BEGIN, rec), False)
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
                    if kind == PACKET:
                        item[1].on_packet(item[2], item[3], item[4], item[5], item[6])
                    elif kind == BEGIN:
                        self._open_recording(item[1])
                    elif kind == FINISH:
                        self._finish(item[1], item[2], item[3], item[4])
                    elif kind == SYNC:
                        syncs.append(item[1])
                    elif kind == STOP:
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

    def _open_recording(self, rec: OpenRecording) -> None:
        self._open[id(rec)] = rec
        try:
            self._create_files(rec)
        except OSError as exc:
            self._fail(rec, f"cannot create recording file: {exc}")

    def _create_files(self, rec: OpenRecording) -> None:
        base = rec.recording_id
        for attempt in range(100):
            rid = base if attempt == 0 else f"{base[:60]}-{attempt}"
            relpath = layout.audio_relpath(rid, rec.meta.started_at)
            audio = self.data_dir / relpath
            sidecar = layout.sidecar_for(audio)
            _private_dirs(self.data_dir, audio.parent)
            try:
                sfd = os.open(sidecar, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                              FILE_MODE)
            except FileExistsError:
                continue
            try:
                fcntl.flock(sfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                afd = os.open(audio, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                              FILE_MODE)
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
            fsync_dir(audio.parent)
            return
        raise OSError(errno.EEXIST, f"no free recording name for {base}")

    def _flush_all(self, now: float, force: bool) -> None:
        for rec in list(self._open.values()):
            if rec.failed is not None or rec.writer is None or rec.file is None:
                continue
            if rec.buf and (force or now - rec.last_packet_mono >= REORDER_IDLE_S):
                rec.drain()
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

    def _fail(self, rec: OpenRecording, reason: str) -> None:
        if rec.failed is not None:
            return
        rec.failed = reason
        self.failures += 1
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
        self, rec: OpenRecording, reason: str, ended_at: float,
        drops: tuple[int, float | None, float | None],
    ) -> None:
        if rec.finished:
            return
        rec.finished = True
        self._open.pop(id(rec), None)
        while rec.buf and rec.failed is None:
            rec.emit_next()
        sha, file_size, audio_samples = self._close(rec)
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
            recovered_packets=rec.recovered,
            invalid_packets=rec.invalid,
            early_packets=rec.early,
            recorder_node=self.node_id,
        )
        if rec.failed is not None:
            fields["recording_failed"] = rec.failed
            fields["unrecorded_packets"] = rec.unrecorded
        if drops[0]:
            self._ledger_gap(rec, drops)
        # The sidecar goes only once the entry is in the ledger: until then a crash leaves it
        # for recovery, and its lock keeps other processes' recovery away.
        self._ledger("transmission", fields, on_done=lambda: self._release(rec))

    def _close(self, rec: OpenRecording) -> tuple[str | None, int, int]:
        """Close the audio file: (sha256, file size, audio samples). The partial file of a
        failed recording is made valid and hashed as it is, if that can be done."""
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
                sha = file_sha256(rec.audio)
                file_size = result.file_size
                audio_samples = result.duration_samples
            except (OSError, ValueError) as exc:
                log.error("recording %s: partial file not repairable: %s", rec.recording_id, exc)
        return sha, file_size, audio_samples

    def _ledger_gap(self, rec: OpenRecording, drops: tuple[int, float | None, float | None]
                    ) -> None:
        log.error("recording %s: %d packets dropped (writer queue full)",
                  rec.recording_id, drops[0])
        self._ledger("recording_gap", {
            "id": rec.recording_id, "transmission_id": rec.meta.transmission_id,
            "talkgroup": rec.meta.talkgroup, "unit": rec.meta.unit,
            "reason": "recorder queue full", "dropped_packets": drops[0],
            "first_dropped_arrival": drops[1], "last_dropped_arrival": drops[2],
        })

    def _release(self, rec: OpenRecording) -> None:
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
        """Finish recordings left unfinished by a dead process (recovery.py); returns how
        many. Those a live process is still writing are skipped."""
        count = recovery.recover(self.data_dir, self.node_id, self.ledger)
        self.recovered += count
        return count


def _private_dirs(root: Path, path: Path) -> None:
    """Create `path` and any missing directories between it and `root`, each DIR_MODE
    (Path.mkdir(parents=True) gives the parents the default mode instead)."""
    missing = []
    while path != root and not path.is_dir():
        missing.append(path)
        path = path.parent
    if not missing:
        return
    root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another worker made it first
            directory.mkdir(mode=DIR_MODE)


@contextlib.contextmanager
def _log_errors(msg: str, *args: object) -> Iterator[None]:
    try:
        yield
    except Exception:
        log.exception(msg, *args)


# begin() takes a TransmissionMeta and returns a RecordingHandle: the media path's API.
__all__ = ["Recorder", "RecordingHandle", "TransmissionMeta"]
