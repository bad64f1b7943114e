"""`ptt-server audit ...`: verify names every kind of tampering; the other subcommands work."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import wave
import zipfile
from pathlib import Path

import pytest

from ptt_server.core.model import EndReason
from ptt_server.recording import layout
from ptt_server.recording.cli import audit_main
from ptt_server.recording.ledger import canonical_json, compute_entry_hash
from ptt_server.recording.meta import TransmissionMeta
from ptt_server.recording.recorder import Recorder
from ptt_server.recording.store import RecordingStore

from .test_recording_store import PACKETS, T0, make_recordings

REC3 = "recordings/2024/05/01/rec-aaaa-03.opus"


@pytest.fixture
def recorded(data_dir: Path) -> Path:
    asyncio.run(make_recordings(data_dir))
    return data_dir


def audit(data_dir: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = audit_main(data_dir, list(argv))
    return code, capsys.readouterr().out.splitlines()


def ledger_lines(data_dir: Path) -> list[bytes]:
    return layout.ledger_path(data_dir).read_bytes().splitlines(keepends=True)


def write_ledger(data_dir: Path, lines: list[bytes]) -> None:
    layout.ledger_path(data_dir).write_bytes(b"".join(lines))


def test_clean(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert audit(recorded, capsys, "verify") == (0, ["OK: 5 entries, 5 recordings verified"])


def test_one_byte_of_audio_changed(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = recorded / REC3
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))
    code, out = audit(recorded, capsys, "verify")
    assert code == 1
    assert len(out) == 2 and out[-1].startswith("FAILED: 1 problem")
    assert out[0].startswith(f"seq 3: transmission rec-aaaa-03: audio file {REC3} altered")


def test_file_deleted(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (recorded / REC3).unlink()
    code, out = audit(recorded, capsys, "verify")
    assert code == 1
    assert out[:-1] == [f"seq 3: transmission rec-aaaa-03: audio file {REC3} missing "
                        "(deleted without a deletion entry)"]


def test_ledger_line_removed(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = ledger_lines(recorded)
    write_ledger(recorded, lines[:2] + lines[3:])
    code, out = audit(recorded, capsys, "verify")
    assert code == 1
    assert out[:-1] == ["seq 3: missing (ledger line removed)",
                        f"audio file {REC3}: not in the ledger (unreferenced)"]


def test_two_entries_swapped(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = ledger_lines(recorded)
    write_ledger(recorded, [lines[0], lines[2], lines[1], *lines[3:]])
    code, out = audit(recorded, capsys, "verify")
    assert code == 1
    assert out[:-1] == ["seq 3 and seq 2: swapped (found at ledger lines 2 and 3)"]


def test_entry_edited(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = ledger_lines(recorded)
    entry = json.loads(lines[1])
    entry["unit"] = "someone-else"
    write_ledger(recorded, [lines[0], canonical_json(entry) + b"\n", *lines[2:]])
    code, out = audit(recorded, capsys, "verify")
    assert code == 1
    assert out[:-1] == ["seq 2: entry edited (content does not match its entry_hash; "
                        "ledger line 2)"]
    # a careful forger recomputes entry_hash: the next entry's prev_hash still names it
    entry["entry_hash"] = compute_entry_hash(entry)
    write_ledger(recorded, [lines[0], canonical_json(entry) + b"\n", *lines[2:]])
    code, out = audit(recorded, capsys, "verify")
    assert code == 1
    assert out[:-1] == ["seq 2: entry edited or replaced (its line no longer matches the "
                        "prev_hash in seq 3)"]


def test_last_line_removed_is_caught_by_the_index(
    recorded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    RecordingStore(recorded).search()  # the index has seen seq 5
    lines = ledger_lines(recorded)
    write_ledger(recorded, lines[:-1])
    code, out = audit(recorded, capsys, "verify")
    assert code == 1
    assert out[0] == ("seq 5: missing from the end of the ledger (the index saw it; the "
                      "ledger now ends at seq 4)")


def test_deletion_entry_covers_a_missing_file(
    recorded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = audit(recorded, capsys, "purge", "--days", "1")
    assert code == 0 and out == ["deleted 5 recording(s) older than 1 days"]
    assert not (recorded / REC3).exists()
    assert audit(recorded, capsys, "verify") == (0, ["OK: 10 entries, 0 recordings verified"])
    assert audit(recorded, capsys, "purge", "--days", "1")[1] == [
        "deleted 0 recording(s) older than 1 days"]


def test_verify_while_recording(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario() -> tuple[int, list[str]]:
        rec = Recorder(recorded, "node-live", flush_interval_s=0.05)
        await rec.start()
        h = rec.begin(TransmissionMeta("live-0001", "patrol-1", "u1", "U1", "officer", "n",
                                       T0 + 100))
        for i, p in enumerate(PACKETS):
            h.packet(p, i * 960, i, i * 0.02)
        await rec.flush()
        result = await asyncio.to_thread(audit, recorded, capsys, "verify")
        h.finish(EndReason.RELEASED, T0 + 101)
        await rec.stop()
        return result

    assert asyncio.run(scenario()) == (0, ["OK: 5 entries, 5 recordings verified"])
    assert audit(recorded, capsys, "verify") == (0, ["OK: 6 entries, 6 recordings verified"])


def test_json_output(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (recorded / REC3).unlink()
    code, out = audit(recorded, capsys, "verify", "--json")
    result = json.loads("\n".join(out))
    assert code == 1 and result["ok"] is False and result["entries"] == 5
    assert result["recordings"] == 4 and len(result["problems"]) == 1


def test_reindex_search_show_wav_export(
    recorded: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert not layout.index_path(recorded).exists()  # nothing indexed yet
    code, out = audit(recorded, capsys, "reindex")
    assert code == 0 and out == ["reindexed: 5 ledger entries, 5 recordings (0 deleted by "
                                 "retention)"]
    code, out = audit(recorded, capsys, "search", "--talkgroup", "patrol-1", "--unit", "unit1")
    assert code == 0 and [line.split()[1] for line in out] == ["rec-aaaa-04", "rec-aaaa-01"]
    assert out[0].startswith("2024-05-01T12:00:10.000Z  rec-aaaa-04  patrol-1  unit1 (UNIT1)")
    code, out = audit(recorded, capsys, "search", "--from", "2024-05-01T12:00:05Z", "--to",
                      str(int(T0 * 1000) + 10_000), "--json")
    assert [r["id"] for r in json.loads("\n".join(out))] == ["rec-aaaa-03", "rec-aaaa-02"]
    code, out = audit(recorded, capsys, "show", "rec-aaaa-02")
    assert code == 0 and json.loads("\n".join(out))["unit"] == "unit2"
    assert audit(recorded, capsys, "show", "../etc")[0] == 2
    assert audit(recorded, capsys, "show", "unknown-id")[0] == 1
    wav_path = tmp_path / "a.wav"
    code, _ = audit(recorded, capsys, "wav", "rec-aaaa-04", "-o", str(wav_path))
    with wave.open(str(wav_path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 48000)
        assert w.getnframes() == len(PACKETS) * 960 - 312  # pre-skip removed (RFC 7845)
    zip_path = tmp_path / "e.zip"
    code, out = audit(recorded, capsys, "--data-dir", str(recorded), "export", "--ids",
                      "rec-aaaa-01,rec-aaaa-02", "-o", str(zip_path))
    assert code == 0 and out[0].startswith(f"wrote {zip_path}: 2 recording(s)")
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp_path / "x")
    (top,) = (tmp_path / "x").iterdir()
    check = subprocess.run(["sha256sum", "-c", "--quiet", "MANIFEST.sha256"], cwd=top)
    assert check.returncode == 0
    assert audit(recorded, capsys, "export", "--ids", "nope-nope", "-o", str(zip_path))[0] == 2
    # every read above is in the access log, and the chain still verifies
    actions = [e.data["action"] for e in RecordingStore(recorded).ledger.entries()
               if e.type == "access"]
    assert actions == ["search", "search", "metadata", "play", "export"]
    assert audit(recorded, capsys, "verify")[0] == 0


def test_through_the_ptt_server_command(recorded: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    cmd = [sys.executable, "-m", "ptt_server.app.cli", "--data-dir", str(recorded), "audit"]
    ok = subprocess.run([*cmd, "verify"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "OK: 5 entries, 5 recordings verified\n"
    (recorded / REC3).write_bytes(b"OggS")
    bad = subprocess.run([*cmd, "verify", "--data-dir", str(recorded)], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 1 and "rec-aaaa-03" in bad.stdout
