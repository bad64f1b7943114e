"""The recordings store: the ledger (evidence) plus a SQLite search index derived from it.

The index (`<data_dir>/index.sqlite3`) holds nothing that is not in the ledger: it is rebuilt
from it at any time (`audit reindex`), and every query first catches up with lines appended
since the last one (by any process on this data dir), so it is never stale. SQLite in WAL
mode lets several processes on the machine read and update it; it lives on the same disk as
the recordings, so it is backed up and restored with them.

All methods block (SQLite, file I/O): the HTTP layer calls them via asyncio.to_thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptt_server.recording import layout
from ptt_server.recording import search as search_index
from ptt_server.recording.ledger import (
    DIR_MODE,
    FILE_MODE,
    GENESIS_HASH,
    Ledger,
    LedgerEntry,
    RawLine,
    parse_line,
    sha256_hex,
)
from ptt_server.recording.search import decode_cursor as decode_cursor
from ptt_server.recording.search import encode_cursor as encode_cursor
from ptt_server.recording.verify import VerifyResult, verify

log = logging.getLogger("ptt.recording")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY, type TEXT NOT NULL, line_hash TEXT NOT NULL,
    offset INTEGER NOT NULL, length INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, talkgroup TEXT NOT NULL, unit TEXT NOT NULL,
    start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL, linked_id TEXT, file TEXT,
    sha256 TEXT, deleted_seq INTEGER, entry TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS recordings_time ON recordings (start_ms, seq);
CREATE INDEX IF NOT EXISTS recordings_tg ON recordings (talkgroup, start_ms);
CREATE INDEX IF NOT EXISTS recordings_unit ON recordings (unit, start_ms);
CREATE INDEX IF NOT EXISTS recordings_linked ON recordings (linked_id);
CREATE TABLE IF NOT EXISTS access (seq INTEGER PRIMARY KEY, entry TEXT NOT NULL);
-- First-seen hash of every ledger line ever indexed here; survives rebuilds, so verify can
-- notice lines cut from the end of the ledger or a rewritten last line.
CREATE TABLE IF NOT EXISTS witness (seq INTEGER PRIMARY KEY, line_hash TEXT NOT NULL);
"""
MAX_LIMIT = 500


@dataclass(frozen=True)
class Recording:
    seq: int
    entry: dict[str, Any]
    deleted_seq: int | None

    @property
    def id(self) -> str:
        return str(self.entry["id"])

    @property
    def file(self) -> str | None:
        f = self.entry.get("file")
        return f if isinstance(f, str) else None

    @property
    def sha256(self) -> str | None:
        s = self.entry.get("sha256")
        return s if isinstance(s, str) else None

    @property
    def start_ms(self) -> int:
        return int(self.entry["start_ms"])

    @property
    def end_ms(self) -> int:
        return int(self.entry["end_ms"])

    def public(self) -> dict[str, Any]:
        out = {k: v for k, v in self.entry.items() if k not in ("prev_hash", "entry_hash", "ts",
                                                                 "type", "seq")}
        out["ledger_seq"] = self.seq
        out["deleted"] = self.deleted_seq is not None
        return out


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True)
class ReindexResult:
    entries: int
    recordings: int
    deleted: int
    missing_files: list[str]
    unreferenced_files: list[str]


INIT_WAIT_S = 10.0  # how long opening a fresh index may wait for another process


class RecordingStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ledger = Ledger(layout.ledger_path(data_dir))
        self.index_path = layout.index_path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.ledger.path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        # Created before SQLite opens it, with our mode: SQLite makes a new file with the
        # process umask (0644 here), and gives its -wal and -shm files the database's mode.
        # Only if missing: closing a descriptor of an open database drops SQLite's locks.
        try:
            os.close(os.open(self.index_path,
                             os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))
        except FileExistsError:
            pass
        # Several processes may open a fresh index at once (workers, nodes on a shared store).
        # Turning WAL on can be refused at once, without the busy handler, while another
        # connection is turning it on or recovering: try again, for a bounded time.
        deadline = time.monotonic() + INIT_WAIT_S
        while True:
            try:
                with self._db() as db:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.executescript(SCHEMA + search_index.SCHEMA)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        # One connection per call: calls come from worker threads and other processes, and
        # opening SQLite is cheap next to the fsyncs around it.
        db = sqlite3.connect(self.index_path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=30000")
            yield db
        finally:
            db.close()

    # --- keeping the index in step with the ledger --------------------------------------
    def refresh(self) -> int:
        """Index ledger lines appended since the last call (by any process). Returns how
        many lines were applied."""
        size = self.ledger.size()
        with self._db() as db:
            current = _meta(db, "search_version") == search_index.VERSION
            if size == _meta_int(db, "ledger_offset") and current:
                return 0
            db.execute("BEGIN IMMEDIATE")
            try:
                applied = self._catch_up(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return applied

    def _catch_up(self, db: sqlite3.Connection) -> int:
        offset = _meta_int(db, "ledger_offset")
        last_hash = _meta(db, "last_line_hash") or GENESIS_HASH
        if self.ledger.size() < offset:
            log.error("ledger shrank below the indexed offset: rebuilding the index")
            return self._rebuild(db)
        if _meta(db, "search_version") != search_index.VERSION:
            return self._rebuild(db)  # an index from before aliases, events and messages
        lines, end = self.ledger.read_raw(offset)
        if lines and offset > 0:
            first = parse_line(lines[0].line)
            if first is None or first.get("prev_hash") != last_hash:
                log.error("ledger no longer continues the indexed chain: rebuilding the index "
                          "(run `audit verify`)")
                return self._rebuild(db)
        self._apply_all(db, lines)
        _set_meta(db, "ledger_offset", str(end))
        if lines:
            _set_meta(db, "last_line_hash", sha256_hex(lines[-1].line))
        return len(lines)

    def _rebuild(self, db: sqlite3.Connection) -> int:
        for table in ("entries", "recordings", "access", "meta", *search_index.TABLES):
            db.execute(f"DELETE FROM {table}")  # fixed names; the witness table stays
        _set_meta(db, "search_version", search_index.VERSION)
        lines, end = self.ledger.read_raw(0)
        self._apply_all(db, lines)
        _set_meta(db, "ledger_offset", str(end))
        if lines:
            _set_meta(db, "last_line_hash", sha256_hex(lines[-1].line))
        return len(lines)

    def _apply_all(self, db: sqlite3.Connection, lines: list[RawLine]) -> None:
        for raw in lines:
            data = parse_line(raw.line)
            if data is None:
                log.error("ledger line at byte %d is not a valid entry", raw.offset)
                continue
            self._apply(db, LedgerEntry(offset=raw.offset, line=raw.line, data=data))

    def _apply(self, db: sqlite3.Connection, e: LedgerEntry) -> None:
        db.execute(
            "INSERT OR REPLACE INTO entries (seq, type, line_hash, offset, length) "
            "VALUES (?, ?, ?, ?, ?)",
            (e.seq, str(e.data.get("type")), e.line_hash, e.offset, len(e.line)),
        )
        db.execute("INSERT OR IGNORE INTO witness (seq, line_hash) VALUES (?, ?)",
                   (e.seq, e.line_hash))
        d = e.data
        kind = d.get("type")
        if kind == "transmission" and isinstance(d.get("id"), str):
            try:
                db.execute(
                    "INSERT OR REPLACE INTO recordings (id, seq, talkgroup, unit, start_ms, "
                    "end_ms, linked_id, file, sha256, deleted_seq, entry) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, (SELECT deleted_seq FROM recordings "
                    "WHERE id = ?), ?)",
                    (d["id"], e.seq, str(d.get("talkgroup", "")), str(d.get("unit", "")),
                     int(d["start_ms"]), int(d["end_ms"]), d.get("linked_id"), d.get("file"),
                     d.get("sha256"), d["id"], e.line.decode()),
                )
            except (KeyError, TypeError, ValueError):
                log.error("ledger seq %d: transmission entry lacks fields; not indexed", e.seq)
        elif kind == "deletion":
            db.execute("UPDATE recordings SET deleted_seq = ? WHERE seq = ? OR id = ?",
                       (e.seq, d.get("deleted_seq"), d.get("id")))
        elif kind == "access":
            db.execute("INSERT OR REPLACE INTO access (seq, entry) VALUES (?, ?)",
                       (e.seq, e.line.decode()))
        search_index.apply(db, e.seq, d, e.line)

    def reindex(self) -> ReindexResult:
        """Rebuild the index from the ledger, and compare it with the files on disk."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                n = self._rebuild(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            rows = db.execute("SELECT file, deleted_seq FROM recordings").fetchall()
        referenced = {f for f, _ in rows if f}
        missing = sorted(f for f, deleted in rows if f and deleted is None
                         and not (self.data_dir / f).exists())
        root = layout.recordings_root(self.data_dir)
        unreferenced: list[str] = []
        if root.is_dir():
            for path in root.glob(f"*/*/*/*{layout.AUDIO_SUFFIX}"):
                rel = path.relative_to(self.data_dir).as_posix()
                if rel not in referenced and not layout.sidecar_for(path).exists():
                    unreferenced.append(rel)
        return ReindexResult(
            entries=n, recordings=len(rows),
            deleted=sum(1 for _, deleted in rows if deleted is not None),
            missing_files=missing, unreferenced_files=sorted(unreferenced),
        )

    def indexed_hashes(self) -> dict[int, str]:
        """seq -> line hash when first indexed (without catching up first): verify's second
        witness for the end of the ledger."""
        with self._db() as db:
            return dict(db.execute("SELECT seq, line_hash FROM witness").fetchall())

    # --- queries ---------------------------------------------------------------------------
    def get(self, recording_id: str) -> Recording | None:
        self.refresh()
        with self._db() as db:
            row = db.execute("SELECT seq, entry, deleted_seq FROM recordings WHERE id = ?",
                             (recording_id,)).fetchone()
        return None if row is None else Recording(row[0], json.loads(row[1]), row[2])

    def search(
        self, *, talkgroup: str | None = None, unit: str | None = None,
        from_ms: int | None = None, to_ms: int | None = None, limit: int = 50,
        cursor: str | None = None, talkgroups: Collection[str] | None = None,
        who: str | None = None,
    ) -> Page:
        """Newest first; `from`/`to` bound the start time ([from, to)); `talkgroups`: any of
        them; `who`: a unit id, or a piece of an alias. Each item has its `group_id` and the
        other recordings of its transmission (`linked`). Raises ValueError for a bad cursor."""
        self.refresh()
        limit = max(1, min(limit, MAX_LIMIT))
        where: list[str] = []
        args: list[Any] = []
        for cond, extra in ([search_index.in_filter("talkgroup", talkgroups)]
                            if talkgroups is not None else []) + (
                [search_index.who_filter("unit", "x.alias_folded", who)] if who else []):
            where.append(cond)
            args += extra
        if talkgroup is not None:
            where.append("talkgroup = ?")
            args.append(talkgroup)
        if unit is not None:
            where.append("unit = ?")
            args.append(unit)
        if from_ms is not None:
            where.append("start_ms >= ?")
            args.append(from_ms)
        if to_ms is not None:
            where.append("start_ms < ?")
            args.append(to_ms)
        if cursor is not None:
            start, seq = decode_cursor(cursor, 2)
            where.append("(start_ms < ? OR (start_ms = ? AND seq < ?))")
            args += [start, start, seq]
        sql = ("SELECT seq, entry, deleted_seq, start_ms FROM recordings "
               "LEFT JOIN recording_extra x ON x.id = recordings.id")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start_ms DESC, seq DESC LIMIT ?"
        with self._db() as db:
            rows = db.execute(sql, [*args, limit + 1]).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        items = [Recording(r[0], json.loads(r[1]), r[2]).public() for r in rows]
        with self._db() as db:
            search_index.linked(db, items)
        nxt = encode_cursor(rows[-1][3], rows[-1][0]) if more and rows else None
        return Page(items, nxt)

    def recordings_between(
        self, talkgroup: str, from_ms: int, to_ms: int, limit: int = 10_000
    ) -> list[Recording]:
        """Transmissions of a talkgroup overlapping [from, to), oldest first."""
        self.refresh()
        with self._db() as db:
            rows = db.execute(
                "SELECT seq, entry, deleted_seq FROM recordings WHERE talkgroup = ? AND "
                "start_ms < ? AND end_ms > ? ORDER BY start_ms, seq LIMIT ?",
                (talkgroup, to_ms, from_ms, limit),
            ).fetchall()
        return [Recording(r[0], json.loads(r[1]), r[2]) for r in rows]

    def timeline(self, talkgroup: str, from_ms: int, to_ms: int,
                 limit: int = 2000) -> dict[str, Any]:
        """Transmissions overlapping [from, to) in order, with the silent gaps between and the
        ledger's events about the talkgroup (recording/search.py)."""
        recs = self.recordings_between(talkgroup, from_ms, to_ms, limit + 1)
        with self._db() as db:
            return search_index.timeline(db, talkgroup, [r.public() for r in recs], from_ms,
                                         to_ms, limit)

    def messages(self, *, q: str | None = None, talkgroups: Collection[str] | None = None,
                 who: str | None = None, exact: bool = False, from_ms: int | None = None,
                 to_ms: int | None = None, limit: int = 50, cursor: str | None = None) -> Page:
        """Status, text and alert messages, newest first (recording/search.py)."""
        self.refresh()
        limit = max(1, min(limit, MAX_LIMIT))
        before = decode_cursor(cursor, 1)[0] if cursor is not None else None
        with self._db() as db:
            items = search_index.messages(db, q=q, talkgroups=talkgroups, who=who, exact=exact,
                                          from_ms=from_ms, to_ms=to_ms, limit=limit + 1,
                                          before_seq=before)
        more = len(items) > limit
        items = items[:limit]
        return Page(items, encode_cursor(items[-1]["ledger_seq"]) if more and items else None)

    def talkgroups_named(self, piece: str) -> list[str]:
        """Talkgroups the ledger names (incidents) with `piece` in their name."""
        self.refresh()
        with self._db() as db:
            return search_index.talkgroups_named(db, piece)

    def access_log(self, limit: int = 100, cursor: str | None = None) -> Page:
        self.refresh()
        limit = max(1, min(limit, MAX_LIMIT))
        args: list[Any] = []
        sql = "SELECT seq, entry FROM access"
        if cursor is not None:
            (before,) = decode_cursor(cursor, 1)
            sql += " WHERE seq < ?"
            args.append(before)
        sql += " ORDER BY seq DESC LIMIT ?"
        with self._db() as db:
            rows = db.execute(sql, [*args, limit + 1]).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        items = []
        for _seq, entry in rows:
            data = json.loads(entry)
            data.pop("prev_hash", None)
            data.pop("entry_hash", None)
            items.append(data)
        return Page(items, encode_cursor(rows[-1][0]) if more and rows else None)

    def ledger_lines(self, seqs: list[int]) -> list[bytes]:
        """The ledger lines of these seqs, exactly as stored (for exports)."""
        self.refresh()
        rows: list[tuple[int, int]] = []
        with self._db() as db:
            for seq in sorted(set(seqs)):
                row = db.execute("SELECT offset, length FROM entries WHERE seq = ?",
                                 (seq,)).fetchone()
                if row is not None:
                    rows.append((row[0], row[1]))
        out: list[bytes] = []
        with open(self.ledger.path, "rb") as f:
            for offset, length in rows:
                out.append(os.pread(f.fileno(), length, offset))
        return out

    def audio_path(self, rec: Recording) -> Path | None:
        """The recording's audio file if it exists inside the recordings store."""
        if rec.file is None or rec.deleted_seq is not None:
            return None
        path = layout.safe_audio_path(self.data_dir, rec.file)
        if path is None:
            log.error("recording %s: file path %r leaves the store; refusing it", rec.id,
                      rec.file)
            return None
        return path if path.is_file() else None

    # --- audit trail -----------------------------------------------------------------------
    def record_access(self, fields: dict[str, Any]) -> LedgerEntry:
        """Append an "access" entry (who, what, when, from where)."""
        return self.ledger.append("access", fields)

    def verify(self) -> VerifyResult:
        return verify(self.data_dir, self.indexed_hashes())


def _meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _meta_int(db: sqlite3.Connection, key: str) -> int:
    v = _meta(db, key)
    return int(v) if v is not None else 0


def _set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
