"""Evidence exports: a zip a third party can check with sha256sum, sed and a text editor.

Layout (under one top directory, `ptt-export-<export id>/`):

    README.txt               how to verify, with the exact commands
    MANIFEST.sha256          `sha256sum -c` format, covers every other file
    ledger-excerpt.jsonl     the ledger lines of the exported transmissions (and deletions)
    recordings/<id>.opus     the Ogg Opus audio exactly as recorded
    recordings/<id>.json     that transmission's ledger line, byte for byte
"""

from __future__ import annotations

import hashlib
import secrets
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from typing import IO

from ptt_server.recording.ledger import iso_ms, parse_line
from ptt_server.recording.store import Recording, RecordingStore

MAX_EXPORT = 1000

README = """\
PTT SERVER RECORDINGS EXPORT {export_id}
Created {created} by {requested_by} on {node}.
{count} transmission(s).{missing_note}

Every transmission is one Ogg Opus file (RFC 7845) made of the Opus packets the server
forwarded, unaltered. Play it with any Ogg Opus player (VLC, ffplay, opusdec).

HOW TO VERIFY (standard tools only; run the commands inside this directory)

1. Nothing in this export was changed since it was made:

       sha256sum -c MANIFEST.sha256

   Every line must say OK. The SHA-256 of MANIFEST.sha256 itself is recorded in the
   server's audit ledger (an "access" entry with export_id {export_id}), so the agency can
   confirm this is the export it produced:

       sha256sum MANIFEST.sha256

2. Each audio file is the one recorded at the time: its SHA-256 equals the "sha256" field
   of its ledger line, which was written when the transmission ended:

       sha256sum recordings/ID.opus
       grep -o '"sha256":"[0-9a-f]*"' recordings/ID.json

3. Each ledger line is intact: "entry_hash" is the SHA-256 of the line without its
   entry_hash field (the line is canonical JSON: sorted keys, no spaces, UTF-8):

       sed -E 's/"entry_hash":"[0-9a-f]{{64}}",//' recordings/ID.json | tr -d '\\n' | sha256sum
       grep -o '"entry_hash":"[0-9a-f]*"' recordings/ID.json

4. The lines belong to the agency's hash chain: the "prev_hash" of ledger entry N+1 is the
   SHA-256 of line N (without its newline). For consecutive seqs in ledger-excerpt.jsonl:

       sed -n 1p ledger-excerpt.jsonl | tr -d '\\n' | sha256sum
       sed -n 2p ledger-excerpt.jsonl | grep -o '"prev_hash":"[0-9a-f]*"'

   For any other line, ask the agency for entry N+1 of its ledger (or to run
   `ptt-server audit verify`, which checks the whole chain and every recording).

Times are UTC (ISO 8601 and epoch milliseconds). end_reason says why a transmission ended
(released, timeout, revoked, preempted, disconnected, server_stopped, left; "incomplete" means
the server stopped abruptly and the recording was closed at restart, keeping all audio
written until then). plc_packets/gap_ms count silence inserted where the radio sent nothing
(packet loss or discontinuous transmission) so that the audio keeps real time.
"""


@dataclass
class ExportInfo:
    export_id: str
    filename: str
    ids: list[str]
    manifest_sha256: str
    size: int
    missing_audio: list[str] = field(default_factory=list)


def select(
    store: RecordingStore, *, ids: list[str] | None = None, talkgroup: str | None = None,
    from_ms: int | None = None, to_ms: int | None = None,
) -> tuple[list[Recording], list[str]]:
    """The recordings to export and the requested ids that do not exist."""
    if ids is not None:
        found: list[Recording] = []
        unknown: list[str] = []
        for rid in dict.fromkeys(ids):
            rec = store.get(rid)
            if rec is None:
                unknown.append(rid)
            else:
                found.append(rec)
        return found, unknown
    if talkgroup is None or from_ms is None or to_ms is None:
        raise ValueError("give 'ids', or 'talkgroup', 'from' and 'to'")
    return store.recordings_between(talkgroup, from_ms, to_ms, MAX_EXPORT + 1), []


def build(
    store: RecordingStore, recordings: list[Recording], *, requested_by: str, node: str,
    export_id: str | None = None,
) -> tuple[IO[bytes], ExportInfo]:
    """Write the zip to a temporary file (rewound); the caller streams and closes it."""
    if len(recordings) > MAX_EXPORT:
        raise ValueError(f"at most {MAX_EXPORT} recordings per export")
    export_id = export_id or secrets.token_hex(8)
    top = f"ptt-export-{export_id}"
    recordings = sorted(recordings, key=lambda r: r.seq)
    out: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024)
    manifest: list[tuple[str, str]] = []
    missing: list[str] = []
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:

        def add(name: str, data: bytes, compress: bool = True) -> None:
            info = zipfile.ZipInfo(f"{top}/{name}", date_time=time.gmtime()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
            manifest.append((hashlib.sha256(data).hexdigest(), name))

        seqs = [r.seq for r in recordings] + [r.deleted_seq for r in recordings
                                               if r.deleted_seq is not None]
        lines = store.ledger_lines(seqs)
        by_seq: dict[int, bytes] = {}
        for line in lines:
            data = parse_line(line)
            if data is not None:
                by_seq[int(data["seq"])] = line
        for rec in recordings:
            own = by_seq.get(rec.seq)
            if own is not None:
                add(f"recordings/{rec.id}.json", own + b"\n")
            path = store.audio_path(rec)
            if path is None:
                missing.append(rec.id)
                continue
            # Stream large files into the zip rather than reading them whole.
            h = hashlib.sha256()
            info = zipfile.ZipInfo(f"{top}/recordings/{rec.id}.opus",
                                   date_time=time.gmtime()[:6])
            info.compress_type = zipfile.ZIP_STORED  # Opus is already compressed
            info.external_attr = 0o644 << 16
            with open(path, "rb") as src, zf.open(info, "w") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    dst.write(chunk)
            manifest.append((h.hexdigest(), f"recordings/{rec.id}.opus"))
        add("ledger-excerpt.jsonl", b"".join(by_seq[s] + b"\n" for s in sorted(by_seq)))
        note = ""
        if missing:
            note = ("\nNo audio for: " + ", ".join(missing) + " (deleted by retention, see "
                    "the deletion entries in ledger-excerpt.jsonl, or not recorded).")
        readme = README.format(
            export_id=export_id, created=iso_ms(time.time()), requested_by=requested_by,
            node=node, count=len(recordings), missing_note=note,
        ).encode()
        add("README.txt", readme)
        manifest_bytes = "".join(f"{digest}  {name}\n" for digest, name in manifest).encode()
        mi = zipfile.ZipInfo(f"{top}/MANIFEST.sha256", date_time=time.gmtime()[:6])
        mi.external_attr = 0o644 << 16
        zf.writestr(mi, manifest_bytes)
    size = out.tell()
    out.seek(0)
    return out, ExportInfo(
        export_id=export_id, filename=f"{top}.zip", ids=[r.id for r in recordings],
        manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest(), size=size,
        missing_audio=missing,
    )
