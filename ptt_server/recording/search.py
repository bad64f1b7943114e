"""What the auditor searches beyond ids: aliases, talkgroup names, message texts, the ledger's
events on a channel's timeline, and the copies of one transmission. Tables of the search index
(recording/store.py), derived from the ledger like the rest of it:

    recording_extra  id -> alias folded for search, group (one per transmission: a patch or
                     all-call recorded per talkgroup gives copies sharing a linked_id)
    events           (seq, talkgroup) -> a ledger entry about that talkgroup that is not a
                     transmission: emergency, ack, clear, revoke, patch, incident, message...
    messages         status, text and alert messages, their text folded for search
    message_reads    who read which message, when
    talkgroup_names  names from the ledger (incidents): a closed incident keeps its name

Text matching is case-insensitive for every script (Python's casefold, stored beside the text:
SQLite's own lower() and LIKE fold ASCII only, and Bahasa Indonesia names are not all ASCII).
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Collection
from typing import Any

from ptt_server.recording.ledger import parse_iso

VERSION = "2"  # of these tables; an index built before them is rebuilt from the ledger
SCHEMA = """
CREATE TABLE IF NOT EXISTS recording_extra (
    id TEXT PRIMARY KEY, alias_folded TEXT NOT NULL, group_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS recording_extra_group ON recording_extra (group_id);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER NOT NULL, talkgroup TEXT NOT NULL, ts_ms INTEGER NOT NULL, kind TEXT NOT NULL,
    entry TEXT NOT NULL, PRIMARY KEY (seq, talkgroup));
CREATE INDEX IF NOT EXISTS events_tg ON events (talkgroup, ts_ms);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY, message_id TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    talkgroup TEXT, unit TEXT NOT NULL, alias_folded TEXT NOT NULL, to_unit TEXT,
    text_folded TEXT NOT NULL, entry TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS messages_time ON messages (ts_ms, seq);
CREATE TABLE IF NOT EXISTS message_reads (
    message_id TEXT NOT NULL, unit TEXT NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL,
    PRIMARY KEY (message_id, unit));
CREATE TABLE IF NOT EXISTS talkgroup_names (
    talkgroup TEXT PRIMARY KEY, name TEXT NOT NULL, name_folded TEXT NOT NULL);
"""
TABLES = ("recording_extra", "events", "messages", "message_reads", "talkgroup_names")
# Entries that are not events on a channel: the recordings themselves, who looked at them,
# retention, the ledger's own repairs; read receipts belong to their message.
NOT_EVENTS = frozenset({"transmission", "access", "deletion", "ledger_repair"})
HIDDEN = ("prev_hash", "entry_hash")


def fold(text: object) -> str:
    return str(text or "").casefold()


def group_of(d: dict[str, Any]) -> str:
    """One id for every recording of one transmission: a patched talkgroup's copy has the
    talker's transmission id as linked_id, an all-call's recordings share the call's id."""
    return str(d.get("linked_id") or d.get("transmission_id") or d.get("id"))


def _ts_ms(d: dict[str, Any]) -> int:
    try:
        return int(parse_iso(str(d.get("ts"))) * 1000)
    except ValueError:
        return 0


def apply(db: sqlite3.Connection, seq: int, d: dict[str, Any], line: bytes) -> None:
    """Index one ledger entry (after store.py indexed what it indexes)."""
    kind = d.get("type")
    text = line.decode()
    if kind == "transmission" and isinstance(d.get("id"), str):
        db.execute("INSERT OR REPLACE INTO recording_extra (id, alias_folded, group_id) "
                   "VALUES (?, ?, ?)", (d["id"], fold(d.get("alias")), group_of(d)))
        return
    if kind in NOT_EVENTS:
        return
    ts_ms = _ts_ms(d)
    if kind == "message":
        _message(db, seq, d, ts_ms, text)
        if d.get("action") == "read":
            return
    if kind == "incident" and d.get("action") == "create" and isinstance(d.get("name"), str):
        db.execute("INSERT OR REPLACE INTO talkgroup_names (talkgroup, name, name_folded) "
                   "VALUES (?, ?, ?)", (str(d.get("talkgroup")), d["name"], fold(d["name"])))
    many = d.get("talkgroups")
    for tg in many if isinstance(many, list) else [d.get("talkgroup")]:
        if isinstance(tg, str) and tg:
            db.execute("INSERT OR REPLACE INTO events (seq, talkgroup, ts_ms, kind, entry) "
                       "VALUES (?, ?, ?, ?, ?)", (seq, tg, ts_ms, str(kind), text))


def _message(db: sqlite3.Connection, seq: int, d: dict[str, Any], ts_ms: int,
             text: str) -> None:
    mid = str(d.get("message_id", ""))
    if d.get("action") == "read":
        db.execute("INSERT OR IGNORE INTO message_reads (message_id, unit, seq, ts_ms) "
                   "VALUES (?, ?, ?, ?)", (mid, str(d.get("unit", "")), seq, ts_ms))
        return
    words = " ".join(str(d.get(k) or "") for k in ("text", "label", "status"))
    db.execute(
        "INSERT OR REPLACE INTO messages (seq, message_id, ts_ms, talkgroup, unit, "
        "alias_folded, to_unit, text_folded, entry) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, mid, ts_ms, d.get("talkgroup"), str(d.get("unit", "")), fold(d.get("alias")),
         d.get("to"), fold(words), text))


def public(entry: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(entry)
    for key in HIDDEN:
        data.pop(key, None)
    return data


# --- queries -----------------------------------------------------------------------------------
def encode_cursor(*values: int) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, n: int) -> list[int]:
    """Raises ValueError for anything that is not one of our cursors."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (ValueError, TypeError) as exc:
        raise ValueError("bad cursor") from exc
    if (not isinstance(values, list) or len(values) != n
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)):
        raise ValueError("bad cursor")
    return values


def who_filter(column_unit: str, column_alias: str, who: str) -> tuple[str, list[Any]]:
    """A unit by its id exactly, or by a piece of its alias ("unit 7", "bravo")."""
    return f"({column_unit} = ? OR instr({column_alias}, ?) > 0)", [who, fold(who)]


def in_filter(column: str, values: Collection[str]) -> tuple[str, list[Any]]:
    if not values:
        return "0", []  # nothing can match: a talkgroup name that names no talkgroup
    return f"{column} IN ({','.join('?' * len(values))})", list(values)


def talkgroups_named(db: sqlite3.Connection, piece: str) -> list[str]:
    """Talkgroups the ledger knows by a name containing `piece` (incidents, closed or not)."""
    return [r[0] for r in db.execute(
        "SELECT talkgroup FROM talkgroup_names WHERE instr(name_folded, ?) > 0", (fold(piece),))]


def linked(db: sqlite3.Connection, items: list[dict[str, Any]]) -> None:
    """Give each recording its `group_id` and the other recordings of the same transmission
    (`linked`: id and talkgroup), found wherever they are, not only among `items`."""
    ids = [i["id"] for i in items]
    if not ids:
        return
    marks = ",".join("?" * len(ids))
    groups = dict(db.execute(
        f"SELECT id, group_id FROM recording_extra WHERE id IN ({marks})", ids).fetchall())
    wanted = sorted(set(groups.values()))
    members: dict[str, list[dict[str, str]]] = {}
    if wanted:
        for rid, tg, gid in db.execute(
                "SELECT x.id, r.talkgroup, x.group_id FROM recording_extra x JOIN recordings r "
                f"ON r.id = x.id WHERE x.group_id IN ({','.join('?' * len(wanted))}) "
                "ORDER BY r.start_ms, r.seq", wanted):
            members.setdefault(gid, []).append({"id": rid, "talkgroup": tg})
    for item in items:
        gid = groups.get(item["id"], item["id"])
        item["group_id"] = gid
        item["linked"] = [m for m in members.get(gid, []) if m["id"] != item["id"]]


def events_between(db: sqlite3.Connection, talkgroup: str, from_ms: int, to_ms: int,
                   limit: int) -> list[dict[str, Any]]:
    rows = db.execute(
        "SELECT seq, ts_ms, kind, entry FROM events WHERE talkgroup = ? AND ts_ms >= ? AND "
        "ts_ms < ? ORDER BY ts_ms, seq LIMIT ?", (talkgroup, from_ms, to_ms, limit)).fetchall()
    return [{**public(entry), "type": "event", "event": kind, "ledger_seq": seq, "ts_ms": ts}
            for seq, ts, kind, entry in rows]


def timeline(db: sqlite3.Connection, talkgroup: str, recs: list[dict[str, Any]],
             from_ms: int, to_ms: int, limit: int) -> dict[str, Any]:
    """`recs` (public recordings overlapping the window, oldest first, up to limit + 1) with
    the silent gaps between them and the events, by time; an event at the moment a
    transmission starts comes first (an emergency, then its call)."""
    truncated = len(recs) > limit
    recs = recs[:limit]
    items: list[dict[str, Any]] = []
    covered = from_ms
    for r in recs:
        if r["start_ms"] > covered:
            items.append({"type": "gap", "start_ms": covered, "end_ms": r["start_ms"],
                          "duration_ms": r["start_ms"] - covered})
        items.append({"type": "transmission", **r})
        covered = max(covered, r["end_ms"])
    if not truncated and covered < to_ms:
        items.append({"type": "gap", "start_ms": covered, "end_ms": to_ms,
                      "duration_ms": to_ms - covered})
    linked(db, [i for i in items if i["type"] == "transmission"])
    events = events_between(db, talkgroup, from_ms, to_ms, limit)

    def at(item: dict[str, Any]) -> tuple[int, int]:
        if item["type"] == "event":
            return int(item["ts_ms"]), 0
        return int(item["start_ms"]), 1

    return {"talkgroup": talkgroup, "from_ms": from_ms, "to_ms": to_ms,
            "transmissions": len(recs), "events": len(events), "truncated": truncated,
            "items": sorted([*items, *events], key=at)}


def messages(db: sqlite3.Connection, *, q: str | None, talkgroups: Collection[str] | None,
             who: str | None, exact: bool, from_ms: int | None, to_ms: int | None,
             limit: int, before_seq: int | None) -> list[dict[str, Any]]:
    """Messages newest first, each with who read it (`read_by`). `who`: from or to that
    unit (`exact`), or from a unit whose alias contains it."""
    where: list[str] = []
    args: list[Any] = []
    if q:
        where.append("instr(text_folded, ?) > 0")
        args.append(fold(q))
    if talkgroups is not None:
        sql, more = in_filter("talkgroup", talkgroups)
        where.append(sql)
        args += more
    if who and exact:
        where.append("(unit = ? OR to_unit = ?)")
        args += [who, who]
    elif who:
        sql, more = who_filter("unit", "alias_folded", who)
        where.append(sql)
        args += more
    for cond, value in (("ts_ms >= ?", from_ms), ("ts_ms < ?", to_ms),
                        ("seq < ?", before_seq)):
        if value is not None:
            where.append(cond)
            args.append(value)
    sql = "SELECT seq, message_id, entry FROM messages"
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = db.execute(sql + " ORDER BY seq DESC LIMIT ?", [*args, limit]).fetchall()
    reads: dict[str, list[dict[str, Any]]] = {}
    mids = [r[1] for r in rows]
    if mids:
        for mid, unit, ts in db.execute(
                f"SELECT message_id, unit, ts_ms FROM message_reads WHERE message_id IN "
                f"({','.join('?' * len(mids))}) ORDER BY ts_ms", mids):
            reads.setdefault(mid, []).append({"unit": unit, "ts_ms": ts})
    return [{**public(entry), "ledger_seq": seq, "read_by": reads.get(mid, [])}
            for seq, mid, entry in rows]
