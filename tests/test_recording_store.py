"""RecordingStore (ledger + SQLite index), retention and exports, on real recordings."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import subprocess
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import opuslib
import pytest

from ptt_server.core.model import EndReason
from ptt_server.recording import export, layout, ogg
from ptt_server.recording.files import file_sha256
from ptt_server.recording.meta import TransmissionMeta
from ptt_server.recording.recorder import Recorder
from ptt_server.recording.retention import purge
from ptt_server.recording.store import RecordingStore, decode_cursor

T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z
DAY = 86400.0


def tone_packets(n: int, freq: float = 440.0) -> list[bytes]:
    """n x 20 ms of a tone, Opus-encoded with libopus (as a browser would)."""
    enc = opuslib.Encoder(48000, 1, opuslib.APPLICATION_VOIP)
    t = np.arange(n * 960) / 48000
    pcm = (np.sin(2 * np.pi * freq * t) * 8000).astype(np.int16)
    return [enc.encode(pcm[i * 960:(i + 1) * 960].tobytes(), 960) for i in range(n)]


PACKETS = tone_packets(50)

# (id, talkgroup, unit, start offset s, duration s)
SCHEDULE = [
    ("rec-aaaa-01", "patrol-1", "unit1", 0.0, 2.0),
    ("rec-aaaa-02", "patrol-1", "unit2", 5.0, 1.0),
    ("rec-aaaa-03", "patrol-2", "unit1", 6.0, 1.0),
    ("rec-aaaa-04", "patrol-1", "unit1", 10.0, 3.0),
    ("rec-aaaa-05", "patrol-1", "unit3", 20.0, 1.0),
]


async def make_recordings(
    data_dir: Path, schedule: list[tuple[str, str, str, float, float]] = SCHEDULE,
    t0: float = T0, linked_id: str | None = None,
) -> None:
    rec = Recorder(data_dir, "node-a")
    await rec.start()
    for rid, tg, unit, start, dur in schedule:
        h = rec.begin(TransmissionMeta(rid, tg, unit, unit.upper(), "officer", "node-a",
                                       t0 + start, linked_id=linked_id))
        for i, p in enumerate(PACKETS[: int(dur * 50)]):
            h.packet(p, i * 960, i, t0 + start + i * 0.02)
        h.finish(EndReason.RELEASED, t0 + start + dur)
    await rec.stop()


@pytest.fixture
async def store(data_dir: Path) -> RecordingStore:
    await make_recordings(data_dir)
    return RecordingStore(data_dir)


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [i["id"] for i in items]


def test_search_filters_and_pages(store: RecordingStore) -> None:
    page = store.search()
    assert ids(page.items) == ["rec-aaaa-05", "rec-aaaa-04", "rec-aaaa-03", "rec-aaaa-02",
                               "rec-aaaa-01"]  # newest first
    assert page.next_cursor is None
    first = page.items[-1]
    assert first["talkgroup"] == "patrol-1" and first["alias"] == "UNIT1"
    assert first["duration_ms"] == 2000 and first["ledger_seq"] == 1
    assert first["deleted"] is False and "entry_hash" not in first
    assert ids(store.search(talkgroup="patrol-1").items) == [
        "rec-aaaa-05", "rec-aaaa-04", "rec-aaaa-02", "rec-aaaa-01"]
    assert ids(store.search(unit="unit1").items) == ["rec-aaaa-04", "rec-aaaa-03",
                                                     "rec-aaaa-01"]
    start = int(T0 * 1000)
    assert ids(store.search(from_ms=start + 5000, to_ms=start + 10000).items) == [
        "rec-aaaa-03", "rec-aaaa-02"]
    seen: list[str] = []
    cursor = None
    while True:
        page = store.search(limit=2, cursor=cursor)
        seen += ids(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids(store.search().items)
    for bad in ("", "!!", "WzEsMiwzXQ", "bnVsbA"):
        with pytest.raises(ValueError):
            store.search(cursor=bad)
    assert decode_cursor(store.search(limit=1).next_cursor or "", 2)


def test_get_and_audio_path(store: RecordingStore, data_dir: Path) -> None:
    rec = store.get("rec-aaaa-04")
    assert rec is not None and rec.file == "recordings/2024/05/01/rec-aaaa-04.opus"
    path = store.audio_path(rec)
    assert path == (data_dir / rec.file).resolve()
    assert rec.sha256 == file_sha256(path)
    assert store.get("nope-nope") is None


def test_path_outside_store_is_refused(store: RecordingStore, data_dir: Path) -> None:
    rec = store.get("rec-aaaa-01")
    assert rec is not None
    for evil in ("../ledger/ledger.jsonl", "recordings/../../etc/passwd.opus",
                 "/etc/passwd.opus", "recordings/2024/05/01/x.json"):
        forged = type(rec)(rec.seq, {**rec.entry, "file": evil}, None)
        assert store.audio_path(forged) is None
    (data_dir / "recordings" / "link.opus").symlink_to("/etc/hostname")
    forged = type(rec)(rec.seq, {**rec.entry, "file": "recordings/link.opus"}, None)
    assert store.audio_path(forged) is None


def test_timeline_has_gaps(store: RecordingStore) -> None:
    start = int(T0 * 1000)
    tl = store.timeline("patrol-1", start - 1000, start + 15000)
    kinds = [(i["type"], i.get("id"), i["duration_ms"]) for i in tl["items"]]
    assert kinds == [
        ("gap", None, 1000),
        ("transmission", "rec-aaaa-01", 2000),
        ("gap", None, 3000),
        ("transmission", "rec-aaaa-02", 1000),
        ("gap", None, 4000),
        ("transmission", "rec-aaaa-04", 3000),
        ("gap", None, 2000),
    ]
    assert tl["transmissions"] == 3 and not tl["truncated"]


async def test_index_follows_other_writers(store: RecordingStore, data_dir: Path) -> None:
    assert len(store.search().items) == 5
    other = RecordingStore(data_dir)  # e.g. another server process
    await make_recordings(data_dir, [("rec-bbbb-01", "patrol-9", "u9", 30.0, 0.5)])
    assert store.search(talkgroup="patrol-9").items[0]["id"] == "rec-bbbb-01"
    assert other.get("rec-bbbb-01") is not None
    # concurrent refreshes from threads do not trip over each other
    await make_recordings(data_dir, [(f"rec-cccc-{i:02}", "patrol-9", "u9", 40.0 + i, 0.2)
                                     for i in range(10)])
    errors: list[BaseException] = []

    def query() -> None:
        try:
            RecordingStore(data_dir).search(talkgroup="patrol-9", limit=100)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=query) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(store.search(talkgroup="patrol-9", limit=100).items) == 11


def test_access_log(store: RecordingStore) -> None:
    for i in range(5):
        store.record_access({"action": "search", "by": f"aud{i}", "role": "auditor",
                             "remote": "127.0.0.1", "query": {"talkgroup": "patrol-1"}})
    page = store.access_log(limit=3)
    assert [i["by"] for i in page.items] == ["aud4", "aud3", "aud2"]
    assert page.items[0]["type"] == "access" and "ts" in page.items[0]
    rest = store.access_log(limit=3, cursor=page.next_cursor)
    assert [i["by"] for i in rest.items] == ["aud1", "aud0"] and rest.next_cursor is None


def test_reindex_rebuilds_from_ledger(store: RecordingStore, data_dir: Path) -> None:
    store.search()
    layout.index_path(data_dir).unlink()
    fresh = RecordingStore(data_dir)
    result = fresh.reindex()
    assert result.entries == 5 and result.recordings == 5
    assert result.missing_files == [] and result.unreferenced_files == []
    assert ids(fresh.search().items) == ids(store.search().items)
    (data_dir / "recordings/2024/05/01/rec-aaaa-02.opus").unlink()
    shutil.copy(data_dir / "recordings/2024/05/01/rec-aaaa-01.opus",
                data_dir / "recordings/2024/05/01/stray-0001.opus")
    result = fresh.reindex()
    assert result.missing_files == ["recordings/2024/05/01/rec-aaaa-02.opus"]
    assert result.unreferenced_files == ["recordings/2024/05/01/stray-0001.opus"]


def test_retention(store: RecordingStore, data_dir: Path) -> None:
    now = T0 + 30 * DAY + 12  # rec 01..04 started more than 30 days ago, 05 did not
    dry = purge(store, 30, now=now, dry_run=True)
    assert dry.deleted == ["rec-aaaa-01", "rec-aaaa-02", "rec-aaaa-03", "rec-aaaa-04"]
    assert all((data_dir / f"recordings/2024/05/01/rec-aaaa-0{i}.opus").exists()
               for i in range(1, 5))
    result = purge(store, 30, now=now)
    assert result.deleted == dry.deleted and not result.problems
    assert not (data_dir / "recordings/2024/05/01/rec-aaaa-01.opus").exists()
    assert (data_dir / "recordings/2024/05/01/rec-aaaa-05.opus").exists()
    deletions = [e.data for e in store.ledger.entries() if e.type == "deletion"]
    assert [(d["deleted_seq"], d["id"], d["found"]) for d in deletions] == [
        (1, "rec-aaaa-01", "ok"), (2, "rec-aaaa-02", "ok"), (3, "rec-aaaa-03", "ok"),
        (4, "rec-aaaa-04", "ok")]
    rec = store.get("rec-aaaa-01")
    assert rec is not None and rec.deleted_seq == 6 and store.audio_path(rec) is None
    assert rec.sha256 == deletions[0]["sha256"]
    assert store.search().items[-1]["deleted"] is True  # metadata stays
    assert purge(store, 30, now=now).deleted == []  # idempotent
    assert purge(store, 0, now=now + 1000 * DAY).deleted == []  # 0 = keep forever
    assert store.verify().ok


def test_retention_finishes_a_half_done_deletion(store: RecordingStore, data_dir: Path) -> None:
    # crash after ledgering the deletion, before unlinking: the next run removes the file
    rec = store.get("rec-aaaa-02")
    assert rec is not None
    store.ledger.append("deletion", {"deleted_seq": rec.seq, "id": rec.id,
                                     "sha256": rec.sha256, "file": rec.file,
                                     "reason": "retention", "found": "ok"})
    path = data_dir / "recordings/2024/05/01/rec-aaaa-02.opus"
    assert path.exists()
    purge(store, 10_000, now=T0 + DAY)
    assert not path.exists()
    assert store.verify().ok


def test_retention_does_not_launder_tampering(store: RecordingStore, data_dir: Path) -> None:
    (data_dir / "recordings/2024/05/01/rec-aaaa-01.opus").unlink()
    with open(data_dir / "recordings/2024/05/01/rec-aaaa-02.opus", "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 1]))
    result = purge(store, 1, now=T0 + 2 * DAY)
    assert result.problems == [
        "seq 1: audio of rec-aaaa-01 was already missing before retention",
        "seq 2: audio of rec-aaaa-02 was already altered before retention"]
    problems = store.verify().problems
    assert any("rec-aaaa-01" in p and "missing" in p for p in problems)
    assert any("rec-aaaa-02" in p and "altered" in p for p in problems)


def unzip(blob: bytes, dest: Path) -> Path:
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        names = zf.namelist()
        zf.extractall(dest)
    top = {n.split("/")[0] for n in names}
    assert len(top) == 1
    return dest / top.pop()


def test_export_checks_with_standard_tools(store: RecordingStore, tmp_path: Path) -> None:
    purge(store, 30, now=T0 + 30 * DAY + 5.5)  # rec 01 and 02 lose their audio
    recs, unknown = export.select(store, ids=["rec-aaaa-04", "rec-aaaa-01", "no-such-1"])
    assert unknown == ["no-such-1"]
    blob, info = export.build(store, recs, requested_by="auditor1", node="node-a")
    with blob:
        data = blob.read()
    assert len(data) == info.size and info.ids == ["rec-aaaa-01", "rec-aaaa-04"]
    assert info.missing_audio == ["rec-aaaa-01"]
    root = unzip(data, tmp_path / "x")
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert names == ["MANIFEST.sha256", "README.txt", "ledger-excerpt.jsonl",
                     "recordings/rec-aaaa-01.json", "recordings/rec-aaaa-04.json",
                     "recordings/rec-aaaa-04.opus"]
    check = subprocess.run(["sha256sum", "-c", "MANIFEST.sha256"], cwd=root,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == 5
    assert hashlib.sha256((root / "MANIFEST.sha256").read_bytes()).hexdigest() == \
        info.manifest_sha256
    meta = json.loads((root / "recordings/rec-aaaa-04.json").read_text())
    assert meta["sha256"] == file_sha256(root / "recordings/rec-aaaa-04.opus")
    assert ogg.read_ogg_opus((root / "recordings/rec-aaaa-04.opus").read_bytes()).eos
    excerpt = (root / "ledger-excerpt.jsonl").read_bytes().splitlines()
    assert [json.loads(line)["seq"] for line in excerpt] == [1, 4, 6]  # + rec 01's deletion
    # the README's commands, as written, succeed in the extracted directory
    readme = (root / "README.txt").read_text()
    assert "rec-aaaa-01" in readme and "sha256sum -c MANIFEST.sha256" in readme
    out = subprocess.run(
        "sed -E 's/\"entry_hash\":\"[0-9a-f]{64}\",//' recordings/rec-aaaa-04.json "
        "| tr -d '\\n' | sha256sum", shell=True, cwd=root, capture_output=True, text=True,
    ).stdout.split()[0]
    assert out == meta["entry_hash"]
    # tampering inside the export is caught by sha256sum
    opus = root / "recordings/rec-aaaa-04.opus"
    opus.write_bytes(opus.read_bytes()[:-1] + b"\0")
    assert subprocess.run(["sha256sum", "-c", "--quiet", "MANIFEST.sha256"], cwd=root,
                          capture_output=True).returncode != 0


def test_export_by_talkgroup_window(store: RecordingStore) -> None:
    start = int(T0 * 1000)
    recs, _ = export.select(store, talkgroup="patrol-1", from_ms=start + 4000,
                            to_ms=start + 12000)
    assert [r.id for r in recs] == ["rec-aaaa-02", "rec-aaaa-04"]
    with pytest.raises(ValueError):
        export.select(store, talkgroup="patrol-1")


def test_linked_recordings(data_dir: Path) -> None:
    asyncio.run(make_recordings(
        data_dir, [("all-call-tg1", "tg1", "disp", 0, 0.5), ("all-call-tg2", "tg2", "disp", 0,
                                                             0.5)], linked_id="allcall-77"))
    store = RecordingStore(data_dir)
    assert {i["linked_id"] for i in store.search().items} == {"allcall-77"}
