"""Stopping a loaded server: every client told, the talker's recording ended as server_stopped,
the embedded redis-server gone, exit 0 within the deadline. The real `ptt-server serve`
command, real clients, a real CPU burner competing for the cores, ten times over."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from client_cli.client import PttClient
from ptt_server.app.redis_embed import free_port
from ptt_server.core.model import Role
from ptt_server.identity.directory import Directory

from .audio import encode, make_speech, read_wav
from .conftest import seed_directory
from .test_multinode import token, wait_healthy

pytestmark = pytest.mark.slow

CLIENTS = 20
ROUNDS = 10
DEADLINE_S = 10.0
EXIT_SLACK_S = 3.0  # interpreter start-up of the signal handler and teardown after the deadline


@pytest.fixture
def burner() -> Iterator[None]:
    """One process spinning on a core for the whole test: the machine is loaded."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _start(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ptt_server.app.cli", "--data-dir", str(data_dir),
             "--log-format", "json", "serve", "--http", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1", "--ice-address", "127.0.0.1",
             "--ice-allow-network", "127.0.0.0/8",
             # Twenty clients sign in at once from one address: above the default cap.
             "--max-unauthenticated-per-address", "100"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )


def _embedded_redis(proc: subprocess.Popen[bytes]) -> psutil.Process:
    children = [c for c in psutil.Process(proc.pid).children() if "redis" in c.name()]
    assert len(children) == 1, children
    return children[0]


async def _one_round(data_dir: Path, tmp_path: Path, packets: list[bytes], n: int) -> None:
    port = free_port()
    log = tmp_path / f"server-{n}.log"
    proc = _start(data_dir, port, log)
    url = f"http://127.0.0.1:{port}"
    clients: list[PttClient] = []
    sender: asyncio.Task[None] | None = None
    try:
        await wait_healthy(url, proc, timeout=30)
        redis_proc = _embedded_redis(proc)
        talker = PttClient(url, token(data_dir, "u1"), ice_addresses=("127.0.0.1",))
        clients = [talker] + [
            PttClient(url, token(data_dir, f"c{i:02d}")) for i in range(CLIENTS - 1)
        ]
        await asyncio.gather(*(c.connect() for c in clients))
        await talker.start_media()
        await asyncio.gather(*(c.join("A") for c in clients))
        grant = await talker.request_floor("A")
        assert grant["type"] == "floor_granted"
        tid = grant["transmission_id"]
        sender = asyncio.create_task(talker.send_audio(packets))
        await clients[1].wait_for(
            lambda m: m["type"] == "floor_taken" and m["transmission_id"] == tid, timeout=10
        )
        await asyncio.sleep(0.2)  # a few packets on the air (the burner keeps the cores busy)

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(
            asyncio.to_thread(proc.wait), DEADLINE_S + EXIT_SLACK_S
        )
        elapsed = time.monotonic() - started
        assert code == 0, log.read_text()[-3000:]
        assert elapsed <= DEADLINE_S + EXIT_SLACK_S
        print(f"\nround {n}: SIGTERM to exit {elapsed:.2f} s with {CLIENTS} clients and a talker")

        for client in clients:
            stopping = await client.wait_for(lambda m: m["type"] == "server_stopping", 5)
            assert stopping["reason"] == "server_stopped"
            for _ in range(100):
                if client.closed_code is not None:
                    break
                await asyncio.sleep(0.05)
            assert client.closed_code == 1001, (client.welcome.get("unit"), client.closed_code)
        entries = [
            json.loads(line)
            for line in (data_dir / "ledger" / "ledger.jsonl").read_text().splitlines()
        ]
        entry = next(e for e in entries if e.get("id") == tid)
        assert entry["end_reason"] == "server_stopped"
        assert entry["packet_count"] > 0
        assert not redis_proc.is_running() or redis_proc.status() == psutil.STATUS_ZOMBIE
    finally:
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


async def test_sigterm_under_load_tells_everyone_and_ends_cleanly(
    data_dir: Path, tmp_path: Path, burner: None
) -> None:
    seed_directory(data_dir)
    directory = Directory(data_dir / "directory.sqlite3")
    for i in range(CLIENTS - 1):
        directory.add_user(f"c{i:02d}", Role.OFFICER, ["A"], f"pw-c{i:02d}")
    pcm = read_wav(make_speech(tmp_path / "s.wav", "all units stand by for the shutdown test"))
    packets = encode(pcm) * 5
    for n in range(ROUNDS):
        await _one_round(data_dir, tmp_path, packets, n)
