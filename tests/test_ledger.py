"""The hash-chained ledger: chaining, concurrent processes, torn lines, standard-tool checks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptt_server.recording.ledger import (
    GENESIS_HASH,
    Ledger,
    RawLine,
    canonical_json,
    compute_entry_hash,
    iso_ms,
    parse_iso,
)
from ptt_server.recording.verify import check_chain


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger" / "ledger.jsonl")


def lines_of(ledger: Ledger) -> list[bytes]:
    return ledger.path.read_bytes().splitlines()


def raw(lines: list[bytes]) -> list[RawLine]:
    return [RawLine(offset=0, line=line) for line in lines]


def test_chain(ledger: Ledger) -> None:
    a = ledger.append("emergency", {"talkgroup": "tg1", "unit": "u1", "ünïcode": "ok"})
    b = ledger.append("floor_revoke", {"talkgroup": "tg1", "by": "sup1"})
    c = ledger.append("patch", {"talkgroups": ["a", "b"], "n": 3})
    assert [a.seq, b.seq, c.seq] == [1, 2, 3]
    stored = lines_of(ledger)
    assert stored == [a.line, b.line, c.line]
    first = json.loads(stored[0])
    assert first["prev_hash"] == GENESIS_HASH and first["type"] == "emergency"
    assert json.loads(stored[1])["prev_hash"] == hashlib.sha256(stored[0]).hexdigest()
    assert json.loads(stored[2])["prev_hash"] == hashlib.sha256(stored[1]).hexdigest()
    for line in stored:
        data = json.loads(line)
        assert canonical_json(data) == line  # stored canonically: hashes are reproducible
        assert data["entry_hash"] == compute_entry_hash(data)
        assert data["ts"].endswith("Z") and len(data["ts"]) == 24
    assert check_chain(raw(stored))[0] == []
    assert [e.seq for e in ledger.entries()] == [1, 2, 3]


def test_bad_appends_rejected(ledger: Ledger) -> None:
    with pytest.raises(ValueError):
        ledger.append("transmission", {"seq": 5})
    with pytest.raises(ValueError):
        ledger.append("Bad Type", {})
    with pytest.raises(ValueError):
        ledger.append("x", {"v": float("nan")})
    with pytest.raises(TypeError):
        ledger.append("x", {"v": object()})
    assert not ledger.path.exists() or ledger.path.read_bytes() == b""


def test_time_helpers() -> None:
    assert iso_ms(1714564800.1234) == "2024-05-01T12:00:00.123Z"
    assert parse_iso("2024-05-01T12:00:00.123Z") == pytest.approx(1714564800.123)
    assert parse_iso("2024-05-01T14:00:00+02:00") == 1714564800.0


WORKER = r"""
import sys
from pathlib import Path
from ptt_server.recording.ledger import Ledger
ledger = Ledger(Path(sys.argv[1]))
for i in range(int(sys.argv[3])):
    ledger.append("access", {"worker": sys.argv[2], "i": i})
"""


def test_concurrent_processes_keep_one_chain(ledger: Ledger) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(ledger.path), str(w), "60"], env=env)
        for w in range(4)
    ]
    for p in procs:
        assert p.wait(60) == 0
    stored = lines_of(ledger)
    assert len(stored) == 240
    assert [json.loads(line)["seq"] for line in stored] == list(range(1, 241))
    assert check_chain(raw(stored))[0] == []


def test_torn_last_line_is_cut_and_ledgered(ledger: Ledger) -> None:
    ledger.append("a", {})
    ledger.append("b", {})
    torn = b'{"seq":3,"type":"c","tor'
    with open(ledger.path, "ab") as f:
        f.write(torn)  # a writer died mid-line
    lines, end = ledger.read_raw()
    assert len(lines) == 2 and end < ledger.path.stat().st_size  # readers ignore it
    c = ledger.append("c", {})
    stored = lines_of(ledger)
    repair = json.loads(stored[2])
    assert repair["type"] == "ledger_repair" and repair["truncated_bytes"] == len(torn)
    assert repair["truncated_sha256"] == hashlib.sha256(torn).hexdigest()
    assert c.seq == 4 and check_chain(raw(stored))[0] == []


def test_documented_shell_checks(ledger: Ledger) -> None:
    """The commands in docs/recording.md and the export README, run for real."""
    ledger.append("transmission", {"id": "abc12345", "sha256": "00" * 32, "alias": "Ä"})
    ledger.append("deletion", {"deleted_seq": 1, "id": "abc12345"})
    path = ledger.path
    line1_hash = subprocess.run(
        f"sed -n 1p '{path}' | tr -d '\\n' | sha256sum", shell=True, check=True,
        capture_output=True, text=True,
    ).stdout.split()[0]
    assert json.loads(lines_of(ledger)[1])["prev_hash"] == line1_hash
    for n in (1, 2):
        recomputed = subprocess.run(
            f"sed -n {n}p '{path}' | sed -E 's/\"entry_hash\":\"[0-9a-f]{{64}}\",//' "
            "| tr -d '\\n' | sha256sum", shell=True, check=True, capture_output=True, text=True,
        ).stdout.split()[0]
        assert json.loads(lines_of(ledger)[n - 1])["entry_hash"] == recomputed


def make_lines(n: int, tmp_path: Path) -> list[bytes]:
    ledger = Ledger(tmp_path / "l.jsonl")
    for i in range(n):
        ledger.append("access", {"i": i})
    return lines_of(ledger)


def test_chain_problems_name_the_culprit(tmp_path: Path) -> None:
    lines = make_lines(8, tmp_path)
    # a line removed
    problems, _ = check_chain(raw(lines[:4] + lines[5:]))
    assert problems == ["seq 5: missing (ledger line removed)"]
    # two removed
    problems, _ = check_chain(raw(lines[:2] + lines[4:]))
    assert problems == ["seq 3-4: missing (2 ledger lines removed)"]
    # two swapped
    swapped = [*lines[:3], lines[4], lines[3], *lines[5:]]
    problems, _ = check_chain(raw(swapped))
    assert problems == ["seq 5 and seq 4: swapped (found at ledger lines 4 and 5)"]
    # an entry edited, entry_hash left alone
    data = json.loads(lines[5])
    data["i"] = 99
    problems, _ = check_chain(raw([*lines[:5], canonical_json(data), *lines[6:]]))
    assert problems == ["seq 6: entry edited (content does not match its entry_hash; "
                        "ledger line 6)"]
    # an entry edited and its entry_hash recomputed: the next line's prev_hash names it
    data["entry_hash"] = compute_entry_hash(data)
    problems, _ = check_chain(raw([*lines[:5], canonical_json(data), *lines[6:]]))
    assert problems == ["seq 6: entry edited or replaced (its line no longer matches the "
                        "prev_hash in seq 7)"]
    # garbage and a duplicate
    problems, _ = check_chain(raw([*lines[:2], b"hello", lines[1], *lines[2:]]))
    assert problems[:2] == ["ledger line 3: not a valid entry (damaged or inserted)",
                            "seq 2: appears 2 times (ledger lines 2, 4)"]
    # the first line removed
    problems, _ = check_chain(raw(lines[1:]))
    assert problems == ["seq 1: missing (ledger line removed)"]
