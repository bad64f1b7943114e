"""Where things live under the data dir, and the id rule shared by recorder, store and API."""

from __future__ import annotations

import re
import time
from pathlib import Path

ID_RE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
RECORDINGS_DIR = "recordings"
AUDIO_SUFFIX = ".opus"
PARTIAL_SUFFIX = ".json.partial"  # sidecar present while a recording is being written


def valid_id(value: str) -> bool:
    return bool(ID_RE.fullmatch(value))


def recordings_root(data_dir: Path) -> Path:
    return data_dir / RECORDINGS_DIR


def ledger_path(data_dir: Path) -> Path:
    return data_dir / "ledger" / "ledger.jsonl"


def index_path(data_dir: Path) -> Path:
    return data_dir / "index.sqlite3"


def audio_relpath(transmission_id: str, started_at: float) -> str:
    """recordings/YYYY/MM/DD/<id>.opus, dated in UTC so every node files a recording alike."""
    day = time.strftime("%Y/%m/%d", time.gmtime(started_at))
    return f"{RECORDINGS_DIR}/{day}/{transmission_id}{AUDIO_SUFFIX}"


def sidecar_for(audio: Path) -> Path:
    return audio.with_name(audio.name[: -len(AUDIO_SUFFIX)] + PARTIAL_SUFFIX)


def audio_for_sidecar(sidecar: Path) -> Path:
    return sidecar.with_name(sidecar.name[: -len(PARTIAL_SUFFIX)] + AUDIO_SUFFIX)


def safe_audio_path(data_dir: Path, relpath: str) -> Path | None:
    """The absolute path of a recording, or None if `relpath` would leave the recordings
    store (a forged or corrupted ledger/index entry must never make us serve other files)."""
    root = recordings_root(data_dir).resolve()
    if not relpath.endswith(AUDIO_SUFFIX) or "\x00" in relpath:
        return None
    candidate = (data_dir / relpath).resolve()
    if not candidate.is_relative_to(root):
        return None
    return candidate
