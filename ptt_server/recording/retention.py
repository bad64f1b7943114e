"""Retention: delete audio older than N days, ledgering every deletion first.

Each deletion is a "deletion" ledger entry naming the transmission's seq, id and sha256,
appended *before* the file is unlinked: a crash in between leaves a ledgered deletion whose
file still exists, which the next run removes. So `audit verify` never sees an audio file
vanish without a deletion entry. The metadata stays in the ledger forever (it is the record
that the transmission happened). Before deleting, the file is hashed: a file already missing
or altered is ledgered as such (verify reports it) rather than silently purged.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass, field

from ptt_server.recording import layout
from ptt_server.recording.files import file_sha256
from ptt_server.recording.store import RecordingStore

log = logging.getLogger("ptt.recording")

DAY_S = 86400
RUN_INTERVAL_S = 3600.0


@dataclass
class PurgeResult:
    cutoff_ms: int
    deleted: list[str] = field(default_factory=list)  # recording ids
    problems: list[str] = field(default_factory=list)
    skipped: bool = False  # another process is purging this data dir right now


def purge(
    store: RecordingStore, days: int, *, now: float | None = None, dry_run: bool = False,
    actor: str = "retention",
) -> PurgeResult:
    """Delete the audio of transmissions that started more than `days` days ago.
    days <= 0 disables retention (keep everything)."""
    now = time.time() if now is None else now
    cutoff_ms = int((now - days * DAY_S) * 1000)
    result = PurgeResult(cutoff_ms=cutoff_ms)
    if days <= 0:
        return result
    lock_path = store.ledger.path.parent / "retention.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            result.skipped = True
            return result
        _purge_locked(store, days, cutoff_ms, dry_run, actor, result)
    finally:
        os.close(fd)
    return result


def _purge_locked(
    store: RecordingStore, days: int, cutoff_ms: int, dry_run: bool, actor: str,
    result: PurgeResult,
) -> None:
    store.refresh()
    with store._db() as db:
        expired = db.execute(
            "SELECT seq, id, file, sha256 FROM recordings WHERE start_ms < ? AND "
            "deleted_seq IS NULL AND file IS NOT NULL ORDER BY seq", (cutoff_ms,),
        ).fetchall()
        leftovers = db.execute(
            "SELECT id, file FROM recordings WHERE deleted_seq IS NOT NULL AND file IS NOT NULL"
        ).fetchall()
    # Files whose deletion was ledgered but not carried out (crash in between).
    for rid, rel in leftovers:
        path = layout.safe_audio_path(store.data_dir, rel)
        if path is not None and path.exists() and not dry_run:
            path.unlink()
            log.warning("retention: removed %s, deleted in the ledger earlier", rid)
    for seq, rid, rel, sha in expired:
        path = layout.safe_audio_path(store.data_dir, rel)
        if path is None:
            result.problems.append(f"{rid}: file path {rel!r} outside the store; not touched")
            continue
        if not path.exists():
            found = "missing"
        elif sha is not None and file_sha256(path) != sha:
            found = "altered"
        else:
            found = "ok"
        if found != "ok":
            msg = f"seq {seq}: audio of {rid} was already {found} before retention"
            log.error("retention: %s", msg)
            result.problems.append(msg)
        if dry_run:
            result.deleted.append(rid)
            continue
        store.ledger.append("deletion", {
            "deleted_seq": seq, "id": rid, "sha256": sha, "file": rel, "reason": "retention",
            "retention_days": days, "found": found, "by": actor,
        })
        if path.exists():
            path.unlink()
        result.deleted.append(rid)
        with contextlib.suppress(OSError):  # tidy empty day/month/year directories
            for parent in (path.parent, path.parent.parent, path.parent.parent.parent):
                parent.rmdir()
    if result.deleted and not dry_run:
        log.info("retention: deleted %d recordings older than %d days", len(result.deleted),
                 days)
        store.refresh()


async def retention_loop(
    store: RecordingStore, days: int, interval_s: float = RUN_INTERVAL_S, actor: str = "retention"
) -> None:
    """Run purge now and then every `interval_s` (the server runs this as a task)."""
    while True:
        try:
            await asyncio.to_thread(purge, store, days, actor=actor)
        except Exception:  # a failed run must not stop the next ones
            log.exception("retention run failed")
        await asyncio.sleep(interval_s)
