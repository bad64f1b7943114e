"""Recorder: real files, real threads, real processes (SIGKILL), real full disks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptt_server.core.model import EndReason
from ptt_server.recording import layout, ogg
from ptt_server.recording.files import file_sha256
from ptt_server.recording.handle import RecordingHandle
from ptt_server.recording.ledger import Ledger
from ptt_server.recording.meta import TransmissionMeta
from ptt_server.recording.recorder import Recorder
from ptt_server.recording.recovery import INCOMPLETE

from .audio import encode, make_speech, read_wav

T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    wav = make_speech(tmp_path_factory.mktemp("rec") / "s.wav",
                      "Dispatch, unit nine, traffic stop on fifth avenue, plate alpha bravo")
    return encode(read_wav(wav))


def meta(tid: str = "tx-00000001", **kw: Any) -> TransmissionMeta:
    base: dict[str, Any] = dict(
        transmission_id=tid, talkgroup="patrol-1", unit="unit9", alias="Nine", role="officer",
        node_id="node-a", started_at=T0,
    )
    base.update(kw)
    return TransmissionMeta(**base)


def feed(
    h: RecordingHandle, pkts: list[bytes], *, ts0: int = 123456, seq0: int = 500,
    skip: range | set[int] = frozenset(), t0: float = 1000.0,  # type: ignore[assignment]
) -> None:
    for i, p in enumerate(pkts):
        if i in skip:
            continue
        h.packet(p, (ts0 + i * 960) & 0xFFFFFFFF, (seq0 + i) & 0xFFFF, t0 + i * 0.02)


def ledger_entries(data_dir: Path) -> list[dict[str, Any]]:
    return [e.data for e in Ledger(layout.ledger_path(data_dir)).entries()]


def transmission(data_dir: Path, rid: str) -> dict[str, Any]:
    found = [e for e in ledger_entries(data_dir)
             if e["type"] == "transmission" and e["id"] == rid]
    assert len(found) == 1, found
    return found[0]


def partials(data_dir: Path) -> list[Path]:
    return list(data_dir.rglob("*" + layout.PARTIAL_SUFFIX))


def decode_len(path: Path, tmp: Path) -> int:
    out = tmp / (path.stem + ".wav")
    proc = subprocess.run(["opusdec", "--quiet", str(path), str(out)], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    with wave.open(str(out), "rb") as w:
        return int(w.getnframes())


async def record(data_dir: Path, pkts: list[bytes], **kw: Any) -> dict[str, Any]:
    rec = Recorder(data_dir, "node-a", flush_interval_s=0.1)
    await rec.start()
    h = rec.begin(meta())
    feed(h, pkts, **kw)
    h.finish(EndReason.RELEASED, T0 + 5)
    await rec.stop()
    return transmission(data_dir, "tx-00000001")


async def test_records_packets_verbatim(data_dir: Path, packets: list[bytes],
                                       tmp_path: Path) -> None:
    entry = await record(data_dir, packets)
    assert entry["file"] == "recordings/2024/05/01/tx-00000001.opus"
    path = data_dir / entry["file"]
    info = ogg.read_ogg_opus(path.read_bytes())
    assert info.packets == packets
    assert info.final_granule == len(packets) * 960
    assert entry["sha256"] == file_sha256(path)
    assert entry["file_size"] == path.stat().st_size
    assert entry["packet_count"] == len(packets)
    assert entry["bytes"] == sum(map(len, packets))
    assert entry["audio_ms"] == (len(packets) * 960 - 312) * 1000 // 48000
    assert entry["end_reason"] == "released"
    assert entry["start"] == "2024-05-01T12:00:00.000Z" and entry["start_ms"] == T0 * 1000
    assert entry["end"] == "2024-05-01T12:00:05.000Z" and entry["duration_ms"] == 5000
    assert entry["talkgroup"] == "patrol-1" and entry["unit"] == "unit9"
    assert entry["alias"] == "Nine" and entry["role"] == "officer"
    assert entry["node_id"] == "node-a" and entry["emergency"] is False
    assert entry["linked_id"] is None and entry["plc_packets"] == 0
    tags = info.tags
    assert tags["TRANSMISSION_ID"] == "tx-00000001" and tags["TALKGROUP"] == "patrol-1"
    assert tags["UNIT"] == "unit9" and tags["ALIAS"] == "Nine"
    assert decode_len(path, tmp_path) == len(packets) * 960 - 312
    assert not partials(data_dir)


async def test_rtp_gap_is_silence_of_the_same_length(
    data_dir: Path, packets: list[bytes], tmp_path: Path
) -> None:
    lost = range(40, 65)  # 25 packets = 500 ms lost
    entry = await record(data_dir, packets, skip=lost)
    path = data_dir / entry["file"]
    info = ogg.read_ogg_opus(path.read_bytes())
    assert info.final_granule == len(packets) * 960  # time kept
    assert entry["plc_packets"] == 25 and entry["gap_ms"] == 500
    real = [p for p in info.packets if not ogg.is_plc_filler(p)]
    assert real == [p for i, p in enumerate(packets) if i not in lost]
    assert info.packets[40:65] == [bytes([packets[39][0]])] * 25  # TOC-only, same config
    assert decode_len(path, tmp_path) == len(packets) * 960 - 312


async def test_dtx_gap_uses_arrival_clock_only_as_a_bound(
    data_dir: Path, packets: list[bytes]
) -> None:
    rec = Recorder(data_dir, "node-a")
    await rec.start()
    h = rec.begin(meta())
    for i in range(10):  # speech, then 2 s of DTX silence, then speech again
        h.packet(packets[i], 1000 + i * 960, i, 50.0 + i * 0.02)
    for i in range(10, 20):
        h.packet(packets[i], 1000 + (i + 100) * 960, i, 50.0 + (i + 100) * 0.02)
    # the sender restarted its RTP clock: a jump of ~12 h that arrived 20 ms later
    h.packet(packets[20], 0x7FFF0000, 20, 50.0 + 120 * 0.02)
    h.packet(packets[21], 0x7FFF0000 + 960, 21, 50.0 + 121 * 0.02)
    h.finish(EndReason.RELEASED, T0 + 3)
    await rec.stop()
    entry = transmission(data_dir, "tx-00000001")
    assert entry["plc_packets"] == 100
    info = ogg.read_ogg_opus((data_dir / entry["file"]).read_bytes())
    assert info.final_granule == 122 * 960


async def test_wraparound_reordering_and_duplicates(data_dir: Path,
                                                    packets: list[bytes]) -> None:
    n = 60
    ts0 = 0xFFFFFFFF - 20 * 960  # the 32-bit RTP timestamp wraps after 20 packets
    seq0 = 0xFFFF - 30  # and the 16-bit sequence number after 30
    order = list(range(n))
    order[10], order[11] = order[11], order[10]  # swapped in flight
    order[30], order[32] = order[32], order[30]
    order.insert(20, 19)  # a duplicate
    rec = Recorder(data_dir, "node-a")
    await rec.start()
    h = rec.begin(meta())
    for i in order:
        h.packet(packets[i], (ts0 + i * 960) & 0xFFFFFFFF, (seq0 + i) & 0xFFFF, 10 + i * 0.02)
    h.finish(EndReason.TIMEOUT, T0 + 2)
    await rec.stop()
    entry = transmission(data_dir, "tx-00000001")
    info = ogg.read_ogg_opus((data_dir / entry["file"]).read_bytes())
    assert info.packets == packets[:n]  # back in order, duplicate dropped, no fillers
    assert entry["duplicate_packets"] == 1 and entry["plc_packets"] == 0
    assert entry["end_reason"] == "timeout" and entry["late_packets"] == 0


async def test_frames_recovered_from_red_count_only_when_their_packet_never_came(
        data_dir: Path, packets: list[bytes]) -> None:
    """5 and 12 come from a later packet's redundancy; 12 then arrives itself (late, not lost):
    neither a duplicate nor a recovery. The file is the 20 packets in order either way."""
    rec = Recorder(data_dir, "node-a")
    await rec.start()
    h = rec.begin(meta())
    for i in range(20):
        if i in (6, 13):
            h.packet(packets[i - 1], (i - 1) * 960, i - 1, 10 + i * 0.02, recovered=True)
        if i in (5, 12):
            continue
        h.packet(packets[i], i * 960, i, 10 + i * 0.02)
        if i == 14:
            h.packet(packets[12], 12 * 960, 12, 10 + i * 0.02)
    h.finish(EndReason.RELEASED, T0 + 2)
    await rec.stop()
    entry = transmission(data_dir, "tx-00000001")
    info = ogg.read_ogg_opus((data_dir / entry["file"]).read_bytes())
    assert info.packets == packets[:20]
    assert entry["recovered_packets"] == 1 and entry["duplicate_packets"] == 0
    assert entry["packet_count"] == 20 and entry["plc_packets"] == 0


async def test_very_late_packet_takes_its_fillers_place(data_dir: Path,
                                                       packets: list[bytes]) -> None:
    """Later than the reorder window, but its PLC filler is not on disk yet: swapped in."""
    rec = Recorder(data_dir, "node-a", flush_interval_s=60)
    await rec.start()
    h = rec.begin(meta())
    for i in [i for i in range(30) if i != 5] + [5]:
        h.packet(packets[i], i * 960, i, i * 0.02)
    h.finish(EndReason.RELEASED, T0 + 1)
    await rec.stop()
    entry = transmission(data_dir, "tx-00000001")
    info = ogg.read_ogg_opus((data_dir / entry["file"]).read_bytes())
    assert entry["late_packets"] == 1 and entry["packet_count"] == 30
    assert entry["plc_packets"] == 0
    assert info.packets == packets[:30]


async def test_late_packet_after_its_filler_was_flushed_is_appended(
    data_dir: Path, packets: list[bytes]
) -> None:
    rec = Recorder(data_dir, "node-a", flush_interval_s=60)
    await rec.start()
    h = rec.begin(meta())
    for i in range(30):
        if i != 5:
            h.packet(packets[i], i * 960, i, i * 0.02)
    await rec.flush()  # the filler for packet 5 is on disk now
    h.packet(packets[5], 5 * 960, 5, 0.7)
    h.finish(EndReason.RELEASED, T0 + 1)
    await rec.stop()
    entry = transmission(data_dir, "tx-00000001")
    info = ogg.read_ogg_opus((data_dir / entry["file"]).read_bytes())
    assert entry["late_packets"] == 1 and entry["packet_count"] == 30
    assert entry["plc_packets"] == 1
    assert info.packets == [*packets[:5], bytes([packets[4][0]]), *packets[6:30], packets[5]]


async def test_all_end_reasons_and_metadata(data_dir: Path, packets: list[bytes]) -> None:
    rec = Recorder(data_dir, "node-a")
    await rec.start()
    for n, reason in enumerate(EndReason):
        h = rec.begin(meta(f"tx-reason-{n}", emergency=True, linked_id="all-call-1"))
        feed(h, packets[:5])
        h.finish(reason, T0 + 1)
    await rec.stop()
    for n, reason in enumerate(EndReason):
        e = transmission(data_dir, f"tx-reason-{n}")
        assert e["end_reason"] == reason.value
        assert e["emergency"] is True and e["linked_id"] == "all-call-1"


async def test_stop_finishes_open_recordings(data_dir: Path, packets: list[bytes]) -> None:
    rec = Recorder(data_dir, "node-a")
    await rec.start()
    h = rec.begin(meta())
    feed(h, packets[:20])
    await rec.stop()
    assert h.finished
    h.packet(packets[0], 0, 0, 0.0)  # after stop: ignored, no exception
    h.finish(EndReason.RELEASED, T0)
    assert transmission(data_dir, "tx-00000001")["end_reason"] == "server_stopped"
    late = rec.begin(meta("tx-after-stop"))
    late.packet(packets[0], 0, 0, 0.0)
    late.finish(EndReason.RELEASED, T0)


async def test_empty_transmission(data_dir: Path, tmp_path: Path) -> None:
    rec = Recorder(data_dir, "node-a")
    await rec.start()
    rec.begin(meta()).finish(EndReason.RELEASED, T0 + 0.2)
    await rec.stop()
    entry = transmission(data_dir, "tx-00000001")
    assert entry["packet_count"] == 0
    decode_len(data_dir / entry["file"], tmp_path)


async def test_id_collision_and_invalid_id(data_dir: Path, packets: list[bytes]) -> None:
    rec = Recorder(data_dir, "node-a")
    await rec.start()
    for _ in range(2):
        h = rec.begin(meta())
        feed(h, packets[:3])
        h.finish(EndReason.RELEASED, T0 + 1)
    bad = rec.begin(meta("../../etc"))
    feed(bad, packets[:3])
    bad.finish(EndReason.RELEASED, T0 + 1)
    await rec.stop()
    entries = [e for e in ledger_entries(data_dir) if e["type"] == "transmission"]
    ids = [e["id"] for e in entries]
    assert ids[:2] == ["tx-00000001", "tx-00000001-1"]
    assert entries[2]["transmission_id"] == "../../etc" and layout.valid_id(ids[2])
    assert all((data_dir / e["file"]).exists() for e in entries)


async def test_full_queue_drops_and_ledgers_the_gap(data_dir: Path,
                                                    packets: list[bytes]) -> None:
    rec = Recorder(data_dir, "node-a", queue_max=10)
    h = rec.begin(meta())  # writer not started yet: the queue fills up
    started = time.perf_counter()
    feed(h, packets[:40])
    assert time.perf_counter() - started < 0.05  # never blocks
    assert h.dropped == 30
    h.finish(EndReason.RELEASED, T0 + 1)  # finish still gets through
    await rec.start()
    await rec.stop()
    entry = transmission(data_dir, "tx-00000001")
    assert entry["dropped_packets"] == 30 and entry["packet_count"] == 10
    gaps = [e for e in ledger_entries(data_dir) if e["type"] == "recording_gap"]
    assert len(gaps) == 1 and gaps[0]["dropped_packets"] == 30
    assert gaps[0]["id"] == "tx-00000001" and gaps[0]["first_dropped_arrival"] == 1000.2


async def test_unwritable_directory_logs_and_ledgers(
    data_dir: Path, packets: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    (data_dir / "recordings").write_text("not a directory")  # even root cannot mkdir here
    rec = Recorder(data_dir, "node-a")
    await rec.start()
    with caplog.at_level(logging.ERROR, logger="ptt.recording"):
        h = rec.begin(meta())
        feed(h, packets[:20])
        h.finish(EndReason.RELEASED, T0 + 1)
        await rec.stop()
    assert any("tx-00000001" in r.getMessage() and r.name == "ptt.recording"
               for r in caplog.records)
    failed = [e for e in ledger_entries(data_dir) if e["type"] == "recording_failed"]
    assert len(failed) == 1 and "cannot create" in failed[0]["reason"]
    entry = transmission(data_dir, "tx-00000001")
    assert entry["file"] is None and entry["sha256"] is None
    assert "recording_failed" in entry and entry["unrecorded_packets"] == 20


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs) to fill up; skipped where mounting is not allowed."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0")
    finally:
        os.close(fd)


async def test_full_disk_mid_transmission(
    tiny_disk: Path, packets: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tiny_disk
    rec = Recorder(data_dir, "node-a", flush_interval_s=0.05)
    await rec.start()
    rec.ledger.append("boot", {"note": "ledger exists before the disk fills"})
    with caplog.at_level(logging.ERROR, logger="ptt.recording"):
        h = rec.begin(meta())
        feed(h, packets[:30])
        await rec.flush()
        fill(data_dir / "filler")  # the disk is now full
        feed(h, packets[30:] * 20, seq0=530, ts0=123456 + 30 * 960)  # keeps going: no raise
        await rec.flush()
        h.finish(EndReason.RELEASED, T0 + 10)
        await rec.flush()
        assert any("failed" in r.getMessage() for r in caplog.records)
        (data_dir / "filler").unlink()  # space again: the pending ledger entries go in
        await rec.flush()
    await rec.stop()
    types = [e["type"] for e in ledger_entries(data_dir)]
    assert "recording_failed" in types and "transmission" in types
    failed = next(e for e in ledger_entries(data_dir) if e["type"] == "recording_failed")
    assert "No space left" in failed["reason"]
    entry = transmission(data_dir, "tx-00000001")
    assert entry["recording_failed"] and entry["packet_count"] >= 30
    if entry["sha256"] is not None:  # what reached the disk was made playable
        path = data_dir / entry["file"]
        assert file_sha256(path) == entry["sha256"]
        # all flushed before the disk filled (one packet is held back for the EOS page)
        assert ogg.read_ogg_opus(path.read_bytes()).packets[:29] == packets[:29]


CHILD = r"""
import asyncio, pickle, sys, time
from pathlib import Path
from ptt_server.recording.meta import TransmissionMeta
from ptt_server.recording.recorder import Recorder

async def main():
    data_dir, pk_file = Path(sys.argv[1]), sys.argv[2]
    packets = pickle.loads(Path(pk_file).read_bytes())
    rec = Recorder(data_dir, "node-child", flush_interval_s=0.5)
    await rec.start()
    h = rec.begin(TransmissionMeta("tx-killed-01", "patrol-1", "unit9", "Nine", "officer",
                                   "node-child", time.time()))
    t0 = time.monotonic()
    i = 0
    while True:  # real time, looping the speech: 20 ms per packet
        h.packet(packets[i % len(packets)], i * 960, i & 0xFFFF, time.time())
        print(i + 1, flush=True)
        i += 1
        await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))

asyncio.run(main())
"""


def test_sigkill_recovery(data_dir: Path, packets: list[bytes], tmp_path: Path) -> None:
    """A server process is kill -9'ed mid-transmission; the next start finishes the file."""
    pk_file = tmp_path / "packets.pickle"
    pk_file.write_bytes(pickle.dumps(packets))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(data_dir), str(pk_file)],
                             stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    sent = 0
    try:
        while sent < 150:  # 3 s of audio
            line = child.stdout.readline()
            assert line, "child died"
            sent = int(line)
        # While the child lives, its recording is locked: nobody may "recover" it.
        assert Recorder(data_dir, "node-b").recover() == 0
        assert partials(data_dir)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        rest = child.stdout.read().split()
        if rest:
            sent = int(rest[-1])
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL

    rec = Recorder(data_dir, "node-b")

    async def restart() -> None:
        await rec.start()
        await rec.stop()

    asyncio.run(restart())
    assert rec.recovered == 1
    assert not partials(data_dir)
    entry = transmission(data_dir, "tx-killed-01")
    assert entry["end_reason"] == INCOMPLETE
    assert entry["recovered_by"] == "node-b" and entry["recorder_node"] == "node-child"
    path = data_dir / entry["file"]
    assert file_sha256(path) == entry["sha256"]
    info = ogg.read_ogg_opus(path.read_bytes())  # valid: CRCs, EOS on the last page
    assert info.eos
    expected = [packets[i % len(packets)] for i in range(len(info.packets))]
    assert info.packets == expected
    sent_ms = sent * 20
    assert entry["audio_ms"] >= sent_ms - 1000, (entry["audio_ms"], sent_ms)
    assert entry["audio_ms"] <= sent_ms
    decoded = decode_len(path, tmp_path)
    assert decoded == info.final_granule - 312
    assert decoded >= (sent_ms - 1000) * 48
    pcm_path = tmp_path / (path.stem + ".wav")
    with wave.open(str(pcm_path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    assert np.abs(pcm.astype(np.int32)).max() > 1000
    # A second start finds nothing more to do.
    again = Recorder(data_dir, "node-c")
    assert again.recover() == 0
    assert sum(1 for e in ledger_entries(data_dir) if e["type"] == "transmission") == 1


async def test_recovery_of_torn_sidecar_and_missing_audio(data_dir: Path) -> None:
    day = data_dir / "recordings/2024/05/01"
    day.mkdir(parents=True)
    (day / "tx-nothing-1.json.partial").write_text(json.dumps({
        "transmission_id": "tx-nothing-1", "talkgroup": "tg", "unit": "u", "alias": "a",
        "role": "officer", "node_id": "n", "started_at": T0, "emergency": False,
        "linked_id": None,
    }))
    torn = day / "tx-torn-0001.json.partial"
    torn.write_text('{"transmission_id": "tx-to')
    os.utime(torn, (time.time() - 60, time.time() - 60))
    rec = Recorder(data_dir, "node-b")
    assert rec.recover() == 2
    for rid in ("tx-nothing-1", "tx-torn-0001"):
        e = transmission(data_dir, rid)
        assert e["end_reason"] == INCOMPLETE and e["packet_count"] == 0
        assert ogg.read_ogg_opus((data_dir / e["file"]).read_bytes()).eos


async def test_packet_path_is_cheap(data_dir: Path, packets: list[bytes]) -> None:
    rec = Recorder(data_dir, "node-a")
    await rec.start()
    h = rec.begin(meta())
    n = 20000
    t = time.perf_counter()
    for i in range(n):
        h.packet(packets[i % len(packets)], i * 960, i & 0xFFFF, i * 0.02)
    per_packet = (time.perf_counter() - t) / n
    h.finish(EndReason.RELEASED, T0 + 400)
    await rec.stop()
    assert per_packet < 50e-6, per_packet
    await asyncio.sleep(0)


async def test_begin_never_raises_on_bad_meta(data_dir: Path, packets: list[bytes]) -> None:
    rec = Recorder(data_dir, "node-a")
    await rec.start()
    h = rec.begin(meta("tx-nan-time-1", started_at=float("nan")))
    feed(h, packets[:3])
    h.finish("not-a-reason", T0)  # an unknown reason is still recorded, not raised
    await rec.stop()
    e = transmission(data_dir, "tx-nan-time-1")
    assert e["end_reason"] == "not-a-reason" and (data_dir / e["file"]).exists()
