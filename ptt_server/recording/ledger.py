"""The append-only, hash-chained audit ledger: `<data_dir>/ledger/ledger.jsonl`.

One JSON object per line, written in canonical form (sorted keys, no whitespace, UTF-8), so
anyone can recompute the hashes with standard tools:

- `prev_hash` is the SHA-256 of the previous line's bytes (without its newline); the first
  entry has 64 zeros. Removing, reordering or editing any line breaks the next line's link.
- `entry_hash` is the SHA-256 of the canonical JSON of the entry without `entry_hash`, so an
  edited line is caught even when it is the last one.

Several server processes share a data dir: appends take an exclusive `fcntl.flock` on the
ledger file and read the last line under it, so seq and prev_hash are never raced. Readers
take a shared lock and ignore a partially written last line.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("ptt.recording")

GENESIS_HASH = "0" * 64
RESERVED_KEYS = frozenset({"seq", "ts", "type", "prev_hash", "entry_hash"})
TYPE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TAIL_CHUNK = 64 * 1024
# Modes of everything the recording store creates (ledger, index, recordings and their
# directories): it is evidence, and names every unit and talkgroup and when they spoke, so it
# is the server's own user's only. Set at creation, so no umask can widen it.
FILE_MODE = 0o600
DIR_MODE = 0o700


def canonical_json(obj: Any) -> bytes:
    """The one serialisation that is hashed: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def compute_entry_hash(entry: Mapping[str, Any]) -> str:
    return sha256_hex(canonical_json({k: v for k, v in entry.items() if k != "entry_hash"}))


def iso_ms(epoch_s: float) -> str:
    """UTC ISO 8601 with milliseconds and a Z: 2024-05-01T12:00:00.123Z."""
    dt = datetime.fromtimestamp(round(epoch_s * 1000) / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def epoch_ms(epoch_s: float) -> int:
    return round(epoch_s * 1000)


def parse_iso(text: str) -> float:
    """Epoch seconds from an ISO 8601 time (a missing zone means UTC)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


@dataclass(frozen=True)
class LedgerEntry:
    offset: int  # byte offset of the line in the ledger file
    line: bytes  # exactly as stored, without the newline
    data: dict[str, Any]

    @property
    def seq(self) -> int:
        return int(self.data["seq"])

    @property
    def type(self) -> str:
        return str(self.data["type"])

    @property
    def line_hash(self) -> str:
        return sha256_hex(self.line)


@dataclass(frozen=True)
class RawLine:
    offset: int
    line: bytes  # without the newline


class LedgerError(Exception):
    pass


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path

    # --- writing -------------------------------------------------------------------------
    def append(self, type: str, fields: Mapping[str, Any]) -> LedgerEntry:
        """Append one entry; returns it with its seq. Blocking (flock + fsync): call from a
        thread, or use append_async from the event loop."""
        if not TYPE_RE.match(type):
            raise ValueError(f"invalid ledger entry type {type!r}")
        clash = RESERVED_KEYS.intersection(fields)
        if clash:
            raise ValueError(f"reserved ledger keys in fields: {sorted(clash)}")
        body = dict(fields)
        canonical_json(body)  # fail on unserialisable fields before taking the lock
        self.path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            last_line = self._last_line_locked(fd)
            if last_line is None:
                seq, prev = 0, GENESIS_HASH
            else:
                seq, prev = _seq_of(fd, last_line), sha256_hex(last_line)
            entry = {**body, "seq": seq + 1, "ts": iso_ms(time.time()), "type": type,
                     "prev_hash": prev}
            entry["entry_hash"] = compute_entry_hash(entry)
            line = canonical_json(entry)
            offset = os.fstat(fd).st_size
            try:
                _write_all(fd, line + b"\n")
                os.fsync(fd)
            except OSError:
                # Never leave a torn line behind (e.g. the disk filled up mid-line).
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, offset)
                raise
            return LedgerEntry(offset=offset, line=line, data=entry)
        finally:
            os.close(fd)  # closing releases the flock

    async def append_async(self, type: str, fields: Mapping[str, Any]) -> LedgerEntry:
        return await asyncio.to_thread(self.append, type, fields)

    def _last_line_locked(self, fd: int) -> bytes | None:
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        if os.pread(fd, 1, size - 1) != b"\n":
            size = self._repair_torn_tail(fd, size)
            if size == 0:
                return None
        # find the newline before the final one
        end = size - 1
        pos = end
        chunk_end = end
        while chunk_end > 0:
            start = max(0, chunk_end - _TAIL_CHUNK)
            chunk = os.pread(fd, chunk_end - start, start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                pos = start + nl + 1
                break
            chunk_end = start
        else:
            pos = 0
        return os.pread(fd, end - pos, pos)

    def _repair_torn_tail(self, fd: int, size: int) -> int:
        """A line without its newline was never committed (its writer died mid-write, e.g. on
        a full disk). Cut it, and record the cut in the ledger so nothing vanishes silently."""
        start = max(0, size - 1024 * 1024)
        tail = os.pread(fd, size - start, start)
        nl = tail.rfind(b"\n")
        keep = start + nl + 1 if nl >= 0 else 0
        torn = os.pread(fd, size - keep, keep)
        os.ftruncate(fd, keep)
        log.error("ledger %s: cut a torn last line of %d bytes", self.path, len(torn))
        # The repair note is chained like any entry; written here, still under the lock.
        prev_line = self._last_line_locked(fd) if keep else None
        seq = _seq_of(fd, prev_line) if prev_line is not None else 0
        entry: dict[str, Any] = {
            "seq": seq + 1, "ts": iso_ms(time.time()), "type": "ledger_repair",
            "prev_hash": sha256_hex(prev_line) if prev_line is not None else GENESIS_HASH,
            "truncated_bytes": len(torn), "truncated_sha256": sha256_hex(torn),
        }
        entry["entry_hash"] = compute_entry_hash(entry)
        _write_all(fd, canonical_json(entry) + b"\n")
        os.fsync(fd)
        return os.fstat(fd).st_size

    # --- reading -------------------------------------------------------------------------
    def read_raw(self, offset: int = 0) -> tuple[list[RawLine], int]:
        """Complete lines from `offset` to the end, read under a shared lock; returns them and
        the offset after the last complete line (a torn last line is left for later)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return [], 0
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            size = os.fstat(fd).st_size
            data = os.pread(fd, max(0, size - offset), offset) if size > offset else b""
        finally:
            os.close(fd)
        end = data.rfind(b"\n") + 1
        lines: list[RawLine] = []
        pos = 0
        while pos < end:
            nl = data.index(b"\n", pos)
            lines.append(RawLine(offset=offset + pos, line=data[pos:nl]))
            pos = nl + 1
        return lines, offset + end

    def entries(self, offset: int = 0) -> Iterator[LedgerEntry]:
        """Parsed entries; lines that are not JSON objects are skipped (verify reports them)."""
        lines, _ = self.read_raw(offset)
        for raw in lines:
            data = parse_line(raw.line)
            if data is not None:
                yield LedgerEntry(offset=raw.offset, line=raw.line, data=data)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0


def parse_line(line: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("seq"), int):
        return None
    return data


def _seq_of(fd: int, line: bytes) -> int:
    data = parse_line(line)
    if data is not None:
        return int(data["seq"])
    # The last line is damaged (someone edited the file). Keep the chain going from the
    # highest seq that can be read; verify will name the damaged line.
    log.error("ledger: last line is not a valid entry; continuing from the highest seq")
    best = 0
    size = os.fstat(fd).st_size
    data_all = os.pread(fd, size, 0)
    for raw in data_all.split(b"\n"):
        parsed = parse_line(raw)
        if parsed is not None:
            best = max(best, int(parsed["seq"]))
    return best


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


@contextlib.contextmanager
def locked_shared(path: Path) -> Iterator[None]:
    """Hold a shared lock on the ledger: appends wait until the block ends."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)
