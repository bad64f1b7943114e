"""How far back the members of a talkgroup may replay its recordings (`replay_hours`).

Kept in the directory database beside the talkgroup, in a table of its own (`talkgroup_replay`),
so the policy travels with the directory (admin commands work with the server stopped, every
server process sees a change at the next request) without touching the talkgroups table's
schema. A talkgroup without a row has the default: 24 hours, one shift and the hand-over.

Through SQLite only (its own short connections): SQLite keeps a file's descriptors open while
another connection of the process holds locks on it, so this never drops the directory's locks.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Iterator

from ptt_server.identity.directory import BUSY_TIMEOUT_S, Directory, DirectoryError

DEFAULT_REPLAY_HOURS = 24.0
MAX_REPLAY_HOURS = 24.0 * 366

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS talkgroup_replay ("
    " talkgroup TEXT PRIMARY KEY REFERENCES talkgroups(id) ON DELETE CASCADE,"
    " hours REAL NOT NULL)"
)


def check_hours(value: object) -> float:
    """0 (members replay nothing) up to a year; DirectoryError otherwise."""
    if (isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            or not 0 <= value <= MAX_REPLAY_HOURS):
        raise DirectoryError("invalid_replay_hours",
                             f"replay window {value!r} must be in [0, {MAX_REPLAY_HOURS:g}] h")
    return float(value)


class ReplayPolicies:
    def __init__(self, directory: Directory) -> None:
        self._path = directory.path

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(_SCHEMA)
            yield conn
        finally:
            conn.close()

    def hours(self, talkgroup: str) -> float:
        with self._conn() as conn:
            row = conn.execute("SELECT hours FROM talkgroup_replay WHERE talkgroup = ?",
                               (talkgroup,)).fetchone()
        return DEFAULT_REPLAY_HOURS if row is None else float(row[0])

    def all(self) -> dict[str, float]:
        with self._conn() as conn:
            return {r[0]: float(r[1]) for r in conn.execute(
                "SELECT talkgroup, hours FROM talkgroup_replay")}

    def set_hours(self, talkgroup: str, hours: float) -> None:
        value = check_hours(hours)
        try:
            with self._conn() as conn:
                conn.execute(
                    "INSERT INTO talkgroup_replay (talkgroup, hours) VALUES (?, ?) "
                    "ON CONFLICT (talkgroup) DO UPDATE SET hours = excluded.hours",
                    (talkgroup, value))
        except sqlite3.IntegrityError:  # the foreign key: no such talkgroup
            raise DirectoryError("not_found", f"no talkgroup {talkgroup}") from None
