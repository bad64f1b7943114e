"""The `ptt` command-line client against a real server: talk, listen (files), monitor."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from .audio import envelope_correlation, make_speech, read_wav
from .conftest import RunningServer


async def ptt(server: RunningServer, user: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client_cli.main", "--server", server.url,
        "--token", server.token(user), "--ice-address", "127.0.0.1", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


def events(out: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]


async def test_talk_listen_and_monitor(server: RunningServer, tmp_path: Path) -> None:
    wav = make_speech(tmp_path / "msg.wav", "dispatch to all units, the road is clear")
    out_dir = tmp_path / "heard"
    listener = await ptt(server, "u2", "listen", "A", "--out", str(out_dir), "--duration", "12")
    monitor = await ptt(server, "sup", "monitor", "A", "--duration", "12")
    await asyncio.sleep(4)  # both connected and joined
    talker = await ptt(server, "u1", "talk", "A", str(wav))
    t_out, t_err = await asyncio.wait_for(talker.communicate(), 30)
    assert talker.returncode == 0, t_err.decode()
    talked = events(t_out)
    granted = next(e for e in talked if e["type"] == "floor_granted")
    tid = granted["transmission_id"]

    l_out, l_err = await asyncio.wait_for(listener.communicate(), 30)
    assert listener.returncode == 0, l_err.decode()
    heard = events(l_out)
    assert any(e["type"] == "floor_taken" and e["unit"] == "u1" for e in heard)
    saved = next(e for e in heard if e["type"] == "saved")
    assert saved["transmission_id"] == tid
    path = out_dir / f"{tid}.wav"
    assert path.exists()
    assert envelope_correlation(read_wav(path), read_wav(wav)) >= 0.9

    m_out, _ = await asyncio.wait_for(monitor.communicate(), 30)
    seen = events(m_out)
    kinds = [e["type"] for e in seen]
    # The listener and the talker joined after the monitor: it was told, as deltas.
    assert "presence_delta" in kinds and "floor_taken" in kinds and "floor_idle" in kinds
    idle = next(e for e in seen if e["type"] == "floor_idle")
    assert (idle["transmission_id"], idle["reason"]) == (tid, "released")


async def test_talk_is_refused_for_a_foreign_talkgroup(
    server: RunningServer, tmp_path: Path
) -> None:
    wav = make_speech(tmp_path / "x.wav", "test")
    proc = await ptt(server, "u4", "talk", "A", str(wav))
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode != 0
    assert "forbidden" in (out + err).decode()


async def test_a_silently_vanished_talker_loses_the_floor(
    server: RunningServer, tmp_path: Path
) -> None:
    """No FIN, no RST: the talker's process freezes (as a phone whose network vanished).
    The server's ping goes unanswered and the floor is freed for the others."""
    import signal
    import time

    from client_cli.client import PttClient

    wav = make_speech(tmp_path / "long.wav", "this is a long message " * 12)
    listener = PttClient(server.url, server.token("u2"))
    await listener.connect()
    await listener.join("A")
    talker = await ptt(server, "u1", "talk", "A", str(wav))
    try:
        await listener.wait_for(lambda m: m["type"] == "floor_taken", timeout=30)
        talker.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        idle = await listener.wait_for(lambda m: m["type"] == "floor_idle", timeout=10)
        assert idle["reason"] == "disconnected"
        assert time.monotonic() - frozen < 3.0
        assert (await listener.request_floor("A"))["type"] == "floor_granted"
    finally:
        talker.send_signal(signal.SIGKILL)
        await talker.wait()
        await listener.close()
