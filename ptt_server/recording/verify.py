"""`audit verify`: check the ledger's hash chain and every recording's SHA-256.

Each problem is one line naming the culprit (a seq, a transmission id, a file). Safe to run
while servers are writing: files are listed before the ledger is read (so a recording that
finishes meanwhile is either still "in progress" or already in the ledger), and a file found
missing is checked again against a fresh read of the ledger (a retention job may have just
deleted it, after ledgering the deletion).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptt_server.recording import layout
from ptt_server.recording.files import file_sha256
from ptt_server.recording.ledger import (
    GENESIS_HASH,
    Ledger,
    LedgerEntry,
    RawLine,
    compute_entry_hash,
    parse_line,
)

log = logging.getLogger("ptt.recording")


@dataclass
class VerifyResult:
    entries: int = 0
    recordings: int = 0  # audio files whose SHA-256 matched the ledger
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return f"OK: {self.entries} entries, {self.recordings} recordings verified"
        return (f"FAILED: {len(self.problems)} problem(s); {self.entries} entries, "
                f"{self.recordings} recordings verified")

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "entries": self.entries, "recordings": self.recordings,
                "problems": list(self.problems), "summary": self.summary()}


def _ranges(values: Iterable[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for v in sorted(values):
        if out and v == out[-1][1] + 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return out


def check_chain(lines: list[RawLine]) -> tuple[list[str], dict[int, LedgerEntry]]:
    """Problems in the ledger itself, and the entries by seq (first occurrence)."""
    problems: list[str] = []
    entries: list[tuple[int, LedgerEntry]] = []  # (line number, entry)
    for lineno, raw in enumerate(lines, 1):
        data = parse_line(raw.line)
        if data is None:
            problems.append(f"ledger line {lineno}: not a valid entry (damaged or inserted)")
            continue
        entries.append((lineno, LedgerEntry(offset=raw.offset, line=raw.line, data=data)))

    edited: set[int] = set()
    for lineno, e in entries:
        if e.data.get("entry_hash") != compute_entry_hash(e.data):
            edited.add(e.seq)
            problems.append(f"seq {e.seq}: entry edited (content does not match its "
                            f"entry_hash; ledger line {lineno})")

    by_seq: dict[int, LedgerEntry] = {}
    lines_of: dict[int, list[int]] = {}
    for lineno, e in entries:
        by_seq.setdefault(e.seq, e)
        lines_of.setdefault(e.seq, []).append(lineno)
    for seq, where in sorted(lines_of.items()):
        if len(where) > 1:
            problems.append(f"seq {seq}: appears {len(where)} times (ledger lines "
                            f"{', '.join(map(str, where))})")

    if by_seq:
        missing = set(range(1, max(by_seq) + 1)) - by_seq.keys()
        for lo, hi in _ranges(missing):
            if lo == hi:
                problems.append(f"seq {lo}: missing (ledger line removed)")
            else:
                problems.append(f"seq {lo}-{hi}: missing ({hi - lo + 1} ledger lines removed)")

    file_order = [e.seq for _, e in entries]
    displaced = [(a, lineno) for (lineno, _), a, b in
                 zip(entries, file_order, sorted(file_order), strict=True) if a != b]
    if len(displaced) == 2:
        (a, la), (b, lb) = displaced
        problems.append(f"seq {a} and seq {b}: swapped (found at ledger lines {la} and {lb})")
    elif displaced:
        problems.append("seq " + ", ".join(str(s) for s, _ in displaced)
                        + ": out of order in the ledger")

    for seq in sorted(by_seq):
        e = by_seq[seq]
        if seq == 1:
            expected: str | None = GENESIS_HASH
        elif seq - 1 in by_seq:
            expected = by_seq[seq - 1].line_hash
        else:
            continue  # the gap is already reported
        if e.data.get("prev_hash") == expected or seq in edited or seq - 1 in edited:
            continue
        if seq == 1:
            problems.append("seq 1: prev_hash is not the genesis value (entries before it "
                            "removed or replaced)")
        else:
            problems.append(f"seq {seq - 1}: entry edited or replaced (its line no longer "
                            f"matches the prev_hash in seq {seq})")
    return problems, by_seq


def _scan_audio(data_dir: Path) -> dict[str, bool]:
    """relpath -> True if still being written (its sidecar exists)."""
    root = layout.recordings_root(data_dir)
    found: dict[str, bool] = {}
    if not root.is_dir():
        return found
    for path in root.glob(f"*/*/*/*{layout.AUDIO_SUFFIX}"):
        found[path.relative_to(data_dir).as_posix()] = layout.sidecar_for(path).exists()
    return found


def _deletions(entries: Iterable[LedgerEntry]) -> tuple[set[int], set[str]]:
    seqs: set[int] = set()
    ids: set[str] = set()
    for e in entries:
        if e.type == "deletion":
            if isinstance(e.data.get("deleted_seq"), int):
                seqs.add(e.data["deleted_seq"])
            if isinstance(e.data.get("id"), str):
                ids.add(e.data["id"])
    return seqs, ids


def verify(data_dir: Path, indexed: dict[int, str] | None = None) -> VerifyResult:
    """Full verification. `indexed` (seq -> line hash, from the search index) lets it also
    notice entries removed from the end of the ledger, which no chain can show by itself."""
    on_disk = _scan_audio(data_dir)
    ledger = Ledger(layout.ledger_path(data_dir))
    lines, _ = ledger.read_raw()
    problems, by_seq = check_chain(lines)
    result = VerifyResult(entries=len(lines), problems=problems)

    if indexed:
        last = max(by_seq) if by_seq else 0
        beyond = [s for s in indexed if s > last]
        if beyond:
            lo, hi = min(beyond), max(beyond)
            seqs = f"seq {lo}" if lo == hi else f"seq {lo}-{hi}"
            result.problems.append(
                f"{seqs}: missing from the end of the ledger (the index saw it; the ledger "
                f"now ends at seq {last})")
        e = by_seq.get(last)
        # Earlier entries are covered by the next one's prev_hash; the last one only here.
        if e is not None and last in indexed and indexed[last] != e.line_hash:
            result.problems.append(f"seq {last}: entry differs from the copy indexed when it "
                                   f"was written (edited)")

    deleted_seqs, deleted_ids = _deletions(by_seq.values())
    referenced: set[str] = set()
    missing: list[LedgerEntry] = []
    for seq in sorted(by_seq):
        e = by_seq[seq]
        if e.type == "deletion" and e.data.get("found") not in (None, "ok"):
            result.problems.append(
                f"seq {seq}: retention found the audio of transmission {e.data.get('id')} "
                f"{e.data.get('found')} before deleting it")
        if e.type != "transmission" or not isinstance(e.data.get("file"), str):
            continue
        rel = e.data["file"]
        tid = e.data.get("id")
        referenced.add(rel)
        path = layout.safe_audio_path(data_dir, rel)
        if path is None:
            result.problems.append(f"seq {seq}: transmission {tid}: file path {rel!r} is "
                                   f"outside the recordings store")
            continue
        if not path.exists():
            if seq not in deleted_seqs and tid not in deleted_ids:
                missing.append(e)
            continue
        expected = e.data.get("sha256")
        if expected is None:
            continue  # the recording failed (ledgered as recording_failed): nothing to match
        actual = file_sha256(path)
        if actual != expected:
            result.problems.append(
                f"seq {seq}: transmission {tid}: audio file {rel} altered (sha256 {actual} "
                f"!= {expected} in the ledger)")
        else:
            result.recordings += 1

    if missing:
        # A purge may have ledgered a deletion after we read the ledger: read it again.
        deleted_seqs, deleted_ids = _deletions(ledger.entries())
        for e in missing:
            if e.seq in deleted_seqs or e.data.get("id") in deleted_ids:
                continue
            result.problems.append(
                f"seq {e.seq}: transmission {e.data.get('id')}: audio file {e.data['file']} "
                f"missing (deleted without a deletion entry)")

    for rel, in_progress in sorted(on_disk.items()):
        if rel not in referenced and not in_progress:
            result.problems.append(f"audio file {rel}: not in the ledger (unreferenced)")
    return result
