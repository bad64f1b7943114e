"""What is recorded about a transmission: its metadata, the Ogg tags and stream serial made
from it, and the metadata fields of its "transmission" ledger entry."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from ptt_server.recording.ledger import epoch_ms, iso_ms


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


def ogg_tags(meta: TransmissionMeta, recording_id: str) -> list[tuple[str, str]]:
    """The OpusTags comments of a recording: a file identifies itself without the ledger."""
    tags = [
        ("TRANSMISSION_ID", meta.transmission_id),
        ("RECORDING_ID", recording_id),
        ("TALKGROUP", meta.talkgroup),
        ("UNIT", meta.unit),
        ("ALIAS", meta.alias),
        ("ROLE", meta.role),
        ("NODE_ID", meta.node_id),
        ("START", iso_ms(meta.started_at)),
        ("EMERGENCY", "1" if meta.emergency else "0"),
    ]
    if meta.linked_id:
        tags.append(("LINKED_ID", meta.linked_id))
    return tags


def ogg_serial(recording_id: str) -> int:
    # RFC 3533 section 4: the serial only has to be unique within the physical stream; a
    # hash of the id makes files reproducible.
    return int.from_bytes(hashlib.sha256(recording_id.encode()).digest()[:4], "little")


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
