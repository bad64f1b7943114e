"""Every transmission recorded: real server, real Redis, real aiortc peers; files checked with
ffprobe and opusdec, packets compared byte for byte with what listeners received."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from client_cli.client import PttClient
from ptt_server.app.redis_embed import free_port
from ptt_server.recording.ogg_reader import read_ogg_opus_file
from ptt_server.recording.opus import is_plc_filler

from .audio import encode, make_speech, read_wav
from .conftest import RunningServer, seed_directory
from .test_media_e2e import Connect, connect, settle
from .test_multinode import start_node, token, wait_healthy

__all__ = ["connect"]


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    path = make_speech(tmp_path_factory.mktemp("s") / "s.wav",
                       "control, unit four, traffic stop completed, resuming patrol")
    return encode(read_wav(path))


def ledger_entries(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / "ledger" / "ledger.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def wait_for_entries(data_dir: Path, tids: set[str], timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = {e["id"]: e for e in ledger_entries(data_dir)
                 if e.get("type") == "transmission" and e.get("id") in tids}
        if set(found) == tids:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"ledger has {sorted(found)} of {sorted(tids)}")
        await asyncio.sleep(0.1)


def check_playable(path: Path, tmp: Path) -> float:
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name:format=duration",
         "-of", "json", str(path)], capture_output=True, text=True, check=True,
    )
    info = json.loads(probe.stdout)
    assert info["streams"][0]["codec_name"] == "opus"
    out = tmp / (path.stem + ".wav")
    subprocess.run(["opusdec", "--quiet", str(path), str(out)], check=True,
                   capture_output=True)
    assert out.stat().st_size > 44
    return float(info["format"]["duration"])


async def test_three_transmissions_are_recorded_as_forwarded(
    server: RunningServer, connect: Connect, packets: list[bytes], tmp_path: Path
) -> None:
    u1 = await connect("u1", "A")
    u4 = await connect("u4", "B")
    u2 = await connect("u2", "A")
    u3 = await connect("u3", "B")
    plan = [(u1, "A", packets[:100], u2), (u4, "B", packets[40:160], u3),
            (u1, "A", packets[100:175], u2)]
    heard: dict[str, list[bytes]] = {}
    sent: dict[str, list[bytes]] = {}
    for talker, tg, burst, listener in plan:
        grant = await talker.talk(tg, burst)
        assert grant["type"] == "floor_granted"
        await settle(0.2)
        tid = grant["transmission_id"]
        heard[tid] = [r.payload for r in listener.transmissions[tid].packets]
        sent[tid] = burst
    entries = await wait_for_entries(server.config.data_dir, set(heard))
    for tid, entry in entries.items():
        assert entry["end_reason"] == "released"
        path = server.config.data_dir / entry["file"]
        ogg = read_ogg_opus_file(path)
        recorded = [p for p in ogg.packets if not is_plc_filler(p)]
        # The very packets the listeners received, byte for byte and in order.
        assert recorded == heard[tid]
        assert len(recorded) >= len(sent[tid]) - 2
        assert entry["packet_count"] == len(recorded)
        duration = check_playable(path, tmp_path)
        assert abs(duration - len(sent[tid]) * 0.02) <= 0.04
        assert abs(ogg.duration_samples / 48000 - len(sent[tid]) * 0.02) <= 0.04
    units = {(e["unit"], e["talkgroup"]) for e in entries.values()}
    assert units == {("u1", "A"), ("u4", "B")}
    verify = subprocess.run(
        [sys.executable, "-m", "ptt_server.app.cli", "--data-dir", str(server.config.data_dir),
         "audit", "verify"], capture_output=True, text=True, check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.fixture
async def node_proc(data_dir: Path, redis_url: str) -> AsyncIterator[dict[str, Any]]:
    seed_directory(data_dir)
    state: dict[str, Any] = {"port": free_port(), "procs": []}

    async def start() -> str:
        proc = start_node(data_dir, redis_url, state["port"], "rec-node")
        state["procs"].append(proc)
        url = f"http://127.0.0.1:{state['port']}"
        await wait_healthy(url, proc)
        return url

    state["start"] = start
    yield state
    for proc in state["procs"]:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.slow
async def test_sigkill_mid_transmission_leaves_a_playable_incomplete_record(
    node_proc: dict[str, Any], data_dir: Path, packets: list[bytes], tmp_path: Path
) -> None:
    url = await node_proc["start"]()
    talker = PttClient(url, token(data_dir, "u1"), ice_addresses=("127.0.0.1",))
    try:
        await talker.connect()
        await talker.start_media()
        await talker.join("A")
        grant = await talker.request_floor("A")
        assert grant["type"] == "floor_granted"
        sending = asyncio.create_task(talker.send_audio(packets[:200]))
        await asyncio.sleep(3.0)  # about 150 packets sent
        node_proc["procs"][0].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        node_proc["procs"][0].wait(timeout=10)
        sending.cancel()
        sent_s = min(3.0, killed_at - grant["_at"])
    finally:
        await talker.close()
    await node_proc["start"]()  # the restart finishes the record
    tid = grant["transmission_id"]
    entry = (await wait_for_entries(data_dir, {tid}))[tid]
    assert entry["end_reason"] == "incomplete"
    path = data_dir / entry["file"]
    duration = check_playable(path, tmp_path)
    # Everything up to the last second before the kill is there.
    assert duration >= sent_s - 1.0 - 0.1
    ogg = read_ogg_opus_file(path)
    recorded = [p for p in ogg.packets if not is_plc_filler(p)]
    assert recorded == packets[: len(recorded)]
