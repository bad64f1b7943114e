"""Crash recovery: finish the recordings a dead process left unfinished on a data dir.

While a recording is written, a `<id>.json.partial` sidecar beside its audio file holds its
metadata, under an exclusive flock held by the writing process. A sidecar that can be locked
therefore belongs to a dead writer: its audio file is repaired (cut at the last complete
page, EOS set) and ledgered with end_reason "incomplete", then the sidecar goes.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ptt_server.recording import layout
from ptt_server.recording.files import file_sha256, fsync_dir
from ptt_server.recording.ledger import Ledger, iso_ms
from ptt_server.recording.meta import TransmissionMeta, ogg_serial, ogg_tags, transmission_fields
from ptt_server.recording.ogg_repair import repair_ogg_opus
from ptt_server.recording.opus import SAMPLE_RATE

log = logging.getLogger("ptt.recording")

INCOMPLETE = "incomplete"  # end_reason of a recording finished by crash recovery
_META_KEYS = ("transmission_id", "talkgroup", "unit", "alias", "role", "node_id", "started_at")


def recover(data_dir: Path, node_id: str, ledger: Ledger) -> int:
    """Finish recordings left unfinished by a dead process (any node on this data dir).
    Returns how many were recovered. Recordings still being written by a live process
    are skipped: their sidecar is locked."""
    root = layout.recordings_root(data_dir)
    count = 0
    if not root.is_dir():
        return 0
    for sidecar in sorted(root.glob(f"*/*/*/*{layout.PARTIAL_SUFFIX}")):
        try:
            if _recover_one(data_dir, node_id, ledger, sidecar):
                count += 1
        except Exception:
            log.exception("recovery of %s failed", sidecar)
    return count


def _recover_one(data_dir: Path, node_id: str, ledger: Ledger, sidecar: Path) -> bool:
    try:
        fd = os.open(sidecar, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        if not _claim(fd, sidecar):
            return False
        audio = layout.audio_for_sidecar(sidecar)
        rid = audio.name[: -len(layout.AUDIO_SUFFIX)]
        info = _sidecar_info(fd, sidecar, rid)
        if info is None:
            return False
        audio_ms, truncated = _finish(data_dir, node_id, ledger, fd, audio, rid, info)
        sidecar.unlink()
        fsync_dir(sidecar.parent)
        log.warning("recovered unfinished recording %s (%d ms, %d bytes cut)", rid, audio_ms,
                    truncated)
        return True
    finally:
        os.close(fd)


def _claim(fd: int, sidecar: Path) -> bool:
    """Lock the sidecar; False if a live process holds it or it was removed meanwhile."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live process is writing it
    try:
        if os.fstat(fd).st_ino != os.stat(sidecar).st_ino:
            return False  # finished and removed meanwhile
    except FileNotFoundError:
        return False
    return True


def _sidecar_info(fd: int, sidecar: Path, rid: str) -> dict[str, Any] | None:
    """The sidecar's metadata; a stand-in made from the file name if it is unreadable, and
    None if it is too new to have been written yet (leave it to its writer)."""
    raw = os.pread(fd, 1 << 20, 0)
    try:
        info = json.loads(raw)
    except ValueError:
        if time.time() - os.fstat(fd).st_mtime < 10:
            return None  # just created, its writer has not written it yet
        info = None
    if not isinstance(info, dict):
        log.error("recovery: sidecar %s unreadable; using the file name", sidecar)
        info = {"transmission_id": rid, "talkgroup": "", "unit": "", "alias": "",
                "role": "", "node_id": "", "started_at": os.fstat(fd).st_mtime}
    return info


def _finish(data_dir: Path, node_id: str, ledger: Ledger, fd: int, audio: Path, rid: str,
            info: dict[str, Any]) -> tuple[int, int]:
    """Repair the audio file and ledger it as an incomplete transmission.
    Returns (audio ms kept, bytes cut)."""
    relpath = audio.relative_to(data_dir).as_posix()
    meta = TransmissionMeta(**{k: info[k] for k in _META_KEYS},
                            emergency=bool(info.get("emergency")),
                            linked_id=info.get("linked_id"))
    tags = ogg_tags(meta, rid)
    try:
        ended_at = audio.stat().st_mtime  # the last flush: when the audio stops
    except FileNotFoundError:
        audio.touch()
        ended_at = os.fstat(fd).st_mtime
    result = repair_ogg_opus(audio, int(info.get("serial", ogg_serial(rid))), tags)
    fields = transmission_fields(info, rid, relpath, max(ended_at, meta.started_at),
                                 INCOMPLETE)
    fields.update(
        sha256=file_sha256(audio),
        file_size=result.file_size,
        audio_ms=result.duration_samples * 1000 // SAMPLE_RATE,
        packet_count=result.audio_packets,
        bytes=result.audio_bytes,
        recorder_node=info.get("recorder_node"),
        recovered_by=node_id,
        recovered_at=iso_ms(time.time()),
        truncated_bytes=result.truncated_bytes,
    )
    ledger.append("transmission", fields)
    return fields["audio_ms"], result.truncated_bytes
