"""Users and talkgroups, kept in one SQLite file beside the server's other data.

Why SQLite: admin commands must work whether or not the server runs, several server processes
share the same directory, and a running server must see changes without a restart. So nothing
is cached: every lookup is a (tiny) query. WAL mode lets readers proceed while an admin command
writes, and a busy timeout makes concurrent writers wait instead of failing.

Every method is synchronous and cheap, except the ones that hash a password (`add_user`,
`set_password`, `verify_password`: tens of milliseconds of scrypt), which async callers should
run in an executor. Connections are per thread (and per process, so a fork never shares one).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ptt_server.core.model import ROLE_PRIORITY, Role, TalkgroupInfo, TalkgroupKind, User
from ptt_server.identity.passwords import (
    DUMMY_HASH,
    MAX_PASSWORD_LEN,
    check_password,
    hash_password,
)

FILENAME = "directory.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 10.0

NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_ALIAS_LEN = 64
MAX_TALKGROUP_NAME_LEN = 128
MAX_DURATION_S = 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS talkgroups (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    max_duration_s REAL
);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    alias TEXT NOT NULL,
    priority INTEGER NOT NULL,
    password_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS user_talkgroups (
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    talkgroup TEXT NOT NULL REFERENCES talkgroups(id),
    position INTEGER NOT NULL,
    PRIMARY KEY (user, talkgroup)
);
CREATE INDEX IF NOT EXISTS user_talkgroups_by_talkgroup ON user_talkgroups(talkgroup);
"""


class DirectoryError(Exception):
    """A refused directory operation; `code` is stable (clients and the CLI rely on it)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- validation --------------------------------------------------------------------------------
def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise DirectoryError(
            "invalid_name", f"invalid {what} {value!r}: use 1-64 of A-Z a-z 0-9 _ . -"
        )
    return value


def _check_text(value: object, what: str, max_len: int) -> str:
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > max_len
        or not value.isprintable()
    ):
        raise DirectoryError(
            f"invalid_{what}", f"invalid {what} {value!r}: 1-{max_len} printable characters"
        )
    return value


def _check_password(password: object) -> str:
    if not isinstance(password, str) or not password or len(password) > MAX_PASSWORD_LEN:
        raise DirectoryError(
            "invalid_password", f"the password must be 1-{MAX_PASSWORD_LEN} characters"
        )
    return password


def _check_role(role: object) -> Role:
    if isinstance(role, str) and role in Role._value2member_map_:
        return Role(role)
    choices = ", ".join(r.value for r in Role)
    raise DirectoryError("invalid_role", f"unknown role {role!r} (one of {choices})")


def _check_priority(priority: object) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 255:
        raise DirectoryError("invalid_priority", f"priority {priority!r} is not in 0..255")
    return priority


def _check_kind(kind: object) -> TalkgroupKind:
    if isinstance(kind, str) and kind in TalkgroupKind._value2member_map_:
        return TalkgroupKind(kind)
    choices = ", ".join(k.value for k in TalkgroupKind)
    raise DirectoryError("invalid_kind", f"unknown kind {kind!r} (one of {choices})")


def _check_duration(value: object) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= MAX_DURATION_S
    ):
        raise DirectoryError(
            "invalid_duration", f"transmit limit {value!r} must be in (0, {MAX_DURATION_S:g}] s"
        )
    return float(value)


# -- the directory -----------------------------------------------------------------------------
def create_private(path: Path, mode: int) -> None:
    """Create an empty file with `mode` if it is missing; never open an existing one."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode))
    except FileExistsError:
        pass


class Directory:
    """`path` is the SQLite file (`DataDir.directory_db`), or an existing data directory."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        # Never guess "database file" for a mistyped data directory (app/datadir.py makes those).
        elif not (path.is_file() or (path.parent.is_dir() and path.suffix == ".sqlite3")):
            raise DirectoryError("invalid_path", f"{path}: not a data directory, nor a *.sqlite3 "
                                 "file in an existing directory")
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        # It holds password hashes: created private before SQLite opens it (SQLite would apply
        # the umask, 0644 here, and gives its -wal and -shm files the database's own mode).
        # Only when it does not exist yet: closing any descriptor of a file drops every POSIX
        # lock this process holds on it, including those of SQLite connections already open
        # (SQLite then fails with "disk I/O error").
        create_private(Path(path), 0o600)
        self._init_schema()

    # -- connections ----------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        pid = os.getpid()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == pid:
            return conn
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE for writes), so a writer
        # takes the write lock before reading what it checks, and two admin commands cannot
        # interleave between check and write.
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")  # durable enough in WAL mode
        self._local.conn = conn
        self._local.pid = pid
        with self._all_lock:
            self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        # A read transaction: several SELECTs see one consistent snapshot.
        conn = self._connect()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def _init_schema(self) -> None:
        conn = self._connect()
        # journal_mode is persistent in the file; setting it again is a no-op.
        row = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if row is None or str(row[0]).lower() != "wal":
            raise DirectoryError("storage", f"cannot use WAL mode on {self.path}")
        with self._write() as w:
            (version,) = w.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise DirectoryError(
                    "storage", f"{self.path} was written by a newer server (schema {version})"
                )
            # One statement at a time: executescript() would COMMIT our transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    w.execute(statement)
            w.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()

    # -- talkgroups -----------------------------------------------------------------------------
    def add_talkgroup(
        self,
        id: str,
        name: str | None = None,
        kind: TalkgroupKind | str = TalkgroupKind.NORMAL,
        max_duration_s: float | None = None,
        *,
        replace: bool = False,
    ) -> TalkgroupInfo:
        tg_id = _check_name(id, "talkgroup id")
        info = TalkgroupInfo(
            id=tg_id,
            name=_check_text(tg_id if name is None else name, "name", MAX_TALKGROUP_NAME_LEN),
            kind=_check_kind(kind),
            max_duration_s=_check_duration(max_duration_s),
        )
        with self._write() as conn:
            exists = conn.execute("SELECT 1 FROM talkgroups WHERE id = ?", (tg_id,)).fetchone()
            if exists and not replace:
                raise DirectoryError("exists", f"talkgroup {tg_id} already exists")
            conn.execute(
                "INSERT INTO talkgroups (id, name, kind, max_duration_s) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name, kind = excluded.kind, "
                "max_duration_s = excluded.max_duration_s",
                (info.id, info.name, info.kind.value, info.max_duration_s),
            )
        return info

    def get_talkgroup(self, id: str) -> TalkgroupInfo | None:
        row = self._connect().execute(
            "SELECT id, name, kind, max_duration_s FROM talkgroups WHERE id = ?", (id,)
        ).fetchone()
        return None if row is None else _talkgroup(row)

    def list_talkgroups(self) -> list[TalkgroupInfo]:
        rows = self._connect().execute(
            "SELECT id, name, kind, max_duration_s FROM talkgroups ORDER BY id"
        ).fetchall()
        return [_talkgroup(row) for row in rows]

    def remove_talkgroup(self, id: str, *, force: bool = False) -> None:
        """Refuses while users are assigned to it, unless `force` (then they lose it)."""
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM talkgroups WHERE id = ?", (id,)).fetchone() is None:
                raise DirectoryError("not_found", f"no talkgroup {id}")
            users = [
                r[0]
                for r in conn.execute(
                    "SELECT user FROM user_talkgroups WHERE talkgroup = ? ORDER BY user", (id,)
                )
            ]
            if users and not force:
                raise DirectoryError(
                    "in_use", f"talkgroup {id} is assigned to: {', '.join(users)}"
                )
            conn.execute("DELETE FROM user_talkgroups WHERE talkgroup = ?", (id,))
            conn.execute("DELETE FROM talkgroups WHERE id = ?", (id,))

    # -- assignments (incident talkgroups: service/incident_api.py) -----------------------------
    def assign(self, talkgroup: str, users: Sequence[str]) -> list[str]:
        """Give each user `talkgroup` (last in their list), all or none (an unknown user or
        talkgroup: DirectoryError); returns those that did not have it yet."""
        added = []
        try:
            with self._write() as conn:
                for name in dict.fromkeys(users):
                    if conn.execute(
                            "INSERT OR IGNORE INTO user_talkgroups (user, talkgroup, position) "
                            "SELECT ?, ?, COALESCE(MAX(position) + 1, 0) FROM user_talkgroups "
                            "WHERE user = ?", (name, talkgroup, name)).rowcount:
                        added.append(name)
        except sqlite3.IntegrityError:  # the foreign keys: no such user or talkgroup
            raise DirectoryError("not_found", "no such user or talkgroup") from None
        return added

    def unassign(self, talkgroup: str, users: Sequence[str]) -> list[str]:
        """Take `talkgroup` from these users; returns those that had it."""
        with self._write() as conn:
            return [name for name in dict.fromkeys(users) if conn.execute(
                "DELETE FROM user_talkgroups WHERE user = ? AND talkgroup = ?",
                (name, talkgroup)).rowcount]

    def users_of(self, talkgroup: str) -> list[str]:
        return [r[0] for r in self._connect().execute(
            "SELECT user FROM user_talkgroups WHERE talkgroup = ? ORDER BY user", (talkgroup,))]

    # -- users ----------------------------------------------------------------------------------
    def add_user(
        self,
        name: str,
        role: Role | str,
        talkgroups: Sequence[str],
        password: str,
        alias: str | None = None,
        priority: int | None = None,
        *,
        replace: bool = False,
    ) -> User:
        name = _check_name(name, "user name")
        role = _check_role(role)
        if isinstance(talkgroups, str):  # a lone string would be iterated letter by letter
            raise DirectoryError("invalid_talkgroups", "talkgroups must be a list of ids")
        groups = tuple(dict.fromkeys(talkgroups))  # de-duplicated, order kept
        user = User(
            name=name,
            role=role,
            talkgroups=groups,
            alias=_check_text(name if alias is None else alias, "alias", MAX_ALIAS_LEN),
            priority=_check_priority(ROLE_PRIORITY[role] if priority is None else priority),
        )
        # Hash before taking the write lock: scrypt is slow and must not hold up other writers.
        pw_hash = hash_password(_check_password(password))
        with self._write() as conn:
            known = {
                r[0]
                for r in conn.execute(
                    f"SELECT id FROM talkgroups WHERE id IN ({','.join('?' * len(groups))})",
                    groups,
                )
            }
            missing = [g for g in groups if g not in known]
            if missing:
                raise DirectoryError(
                    "unknown_talkgroup", f"unknown talkgroup(s): {', '.join(map(str, missing))}"
                )
            exists = conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone()
            if exists and not replace:
                raise DirectoryError("exists", f"user {name} already exists")
            # An UPDATE (not INSERT OR REPLACE): replacing the row would cascade-delete first.
            conn.execute(
                "INSERT INTO users (name, role, alias, priority, password_hash) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET role = excluded.role, "
                "alias = excluded.alias, priority = excluded.priority, "
                "password_hash = excluded.password_hash",
                (name, role.value, user.alias, user.priority, pw_hash),
            )
            conn.execute("DELETE FROM user_talkgroups WHERE user = ?", (name,))
            conn.executemany(
                "INSERT INTO user_talkgroups (user, talkgroup, position) VALUES (?, ?, ?)",
                [(name, g, i) for i, g in enumerate(groups)],
            )
        return user

    def get_user(self, name: str) -> User | None:
        with self._read() as conn:
            return self._get_user(conn, name)

    @staticmethod
    def _get_user(conn: sqlite3.Connection, name: str) -> User | None:
        row = conn.execute(
            "SELECT name, role, alias, priority FROM users WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            return None
        groups = tuple(
            r[0]
            for r in conn.execute(
                "SELECT talkgroup FROM user_talkgroups WHERE user = ? ORDER BY position", (name,)
            )
        )
        return User(name=row[0], role=Role(row[1]), talkgroups=groups, alias=row[2],
                    priority=int(row[3]))

    def list_users(self) -> list[User]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT name, role, alias, priority FROM users ORDER BY name"
            ).fetchall()
            groups: dict[str, list[str]] = {}
            for user, tg in conn.execute(
                "SELECT user, talkgroup FROM user_talkgroups ORDER BY user, position"
            ):
                groups.setdefault(user, []).append(tg)
        return [
            User(name=r[0], role=Role(r[1]), talkgroups=tuple(groups.get(r[0], ())),
                 alias=r[2], priority=int(r[3]))
            for r in rows
        ]

    def remove_user(self, name: str) -> None:
        with self._write() as conn:
            if conn.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise DirectoryError("not_found", f"no user {name}")

    def set_password(self, name: str, password: str) -> None:
        pw_hash = hash_password(_check_password(password))
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE users SET password_hash = ? WHERE name = ?", (pw_hash, name)
            )
            if cur.rowcount == 0:
                raise DirectoryError("not_found", f"no user {name}")

    def verify_password(self, name: str, password: str) -> User | None:
        """The user if the password is right, else None; the same work either way."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT password_hash FROM users WHERE name = ?", (name,)
            ).fetchone()
            user = self._get_user(conn, name) if row is not None else None
        stored = row[0] if row is not None else DUMMY_HASH
        ok = check_password(password, stored)
        return user if ok and user is not None else None


def _talkgroup(row: tuple[str, str, str, float | None]) -> TalkgroupInfo:
    return TalkgroupInfo(
        id=row[0], name=row[1], kind=TalkgroupKind(row[2]),
        max_duration_s=None if row[3] is None else float(row[3]),
    )
