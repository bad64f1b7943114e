"""Two server processes (the real `ptt-server serve` command) sharing one Redis and data dir."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from client_cli.client import PttClient
from ptt_server.app.redis_embed import free_port
from ptt_server.identity.auth import TokenAuthority, load_or_create_signing_key
from ptt_server.identity.directory import Directory

from .audio import encode, make_speech, read_wav
from .conftest import seed_directory

pytestmark = pytest.mark.slow


def start_node(data_dir: Path, redis_url: str, port: int, node_id: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ptt_server.app.cli", "--data-dir", str(data_dir),
         "--log-format", "text", "serve", "--http", "--host", "127.0.0.1", "--port", str(port),
         "--redis-url", redis_url, "--workers", "1", "--node-id", node_id,
         "--ice-address", "127.0.0.1", "--ice-allow-network", "127.0.0.0/8"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"server exited: {out[-2000:]}")
            try:
                async with http.get(url + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(url)


@pytest.fixture
def shared_dir(data_dir: Path) -> Iterator[Path]:
    seed_directory(data_dir)
    yield data_dir


@pytest.fixture
async def two_nodes(
    shared_dir: Path, redis_url: str
) -> AsyncIterator[tuple[list[str], list[subprocess.Popen[bytes]]]]:
    ports = [free_port(), free_port()]
    procs = [start_node(shared_dir, redis_url, p, f"node{i}") for i, p in enumerate(ports)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for url, proc in zip(urls, procs, strict=True):
            await wait_healthy(url, proc)
        yield urls, procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def token(data_dir: Path, name: str) -> str:
    user = Directory(data_dir / "directory.sqlite3").get_user(name)
    assert user is not None
    auth = TokenAuthority(load_or_create_signing_key(data_dir), issuer="ptt-server",
                          audience="ptt")
    return auth.issue(user, 600)


async def test_two_nodes_share_floor_presence_and_audio(
    two_nodes: tuple[list[str], list[subprocess.Popen[bytes]]], shared_dir: Path, tmp_path: Path
) -> None:
    urls, _ = two_nodes
    pcm = read_wav(make_speech(tmp_path / "s.wav", "two nodes one floor"))
    packets = encode(pcm)
    clients = []
    try:
        talker = PttClient(urls[0], token(shared_dir, "u1"), ice_addresses=("127.0.0.1",))
        listener = PttClient(urls[1], token(shared_dir, "u2"),
                             ice_addresses=("127.0.0.1",))
        rival = PttClient(urls[1], token(shared_dir, "u3"), ice_addresses=("127.0.0.1",))
        clients = [talker, listener, rival]
        for c in clients:
            await c.connect()
            await c.start_media()
            await c.join("A")
        assert talker.welcome["node"] != listener.welcome["node"]
        # Presence crosses nodes.
        await talker.wait_members("A", lambda ms: {x["unit"] for x in ms} == {"u1", "u2", "u3"})
        grant = await talker.request_floor("A")
        assert grant["type"] == "floor_granted"
        denied = await rival.request_floor("A")
        assert denied["type"] == "floor_denied"
        assert denied["holder"]["unit"] == "u1"
        await talker.send_audio(packets)
        await asyncio.sleep(0.2)
        await talker.release_floor("A")
        await asyncio.sleep(0.3)
        heard = [r.payload for r in listener.transmissions[grant["transmission_id"]].packets]
        assert len(heard) >= len(packets) - 2
        assert heard == packets[: len(heard)]
        assert listener.transmissions[grant["transmission_id"]].ended == "released"
        # Now the other node's client can take the floor.
        assert (await rival.request_floor("A"))["type"] == "floor_granted"
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def test_sigterm_releases_the_floor_for_other_nodes(
    two_nodes: tuple[list[str], list[subprocess.Popen[bytes]]], shared_dir: Path
) -> None:
    urls, procs = two_nodes
    talker = PttClient(urls[0], token(shared_dir, "u1"))
    other = PttClient(urls[1], token(shared_dir, "u2"))
    try:
        for c in (talker, other):
            await c.connect()
            await c.join("A")
        grant = await talker.request_floor("A")
        assert grant["type"] == "floor_granted"
        await other.wait_for(lambda m: m["type"] == "floor_taken")
        # Stop node 0 cleanly: its talker's floor is released for everyone else...
        procs[0].send_signal(signal.SIGTERM)
        idle = await other.wait_for(lambda m: m["type"] == "floor_idle", timeout=10)
        assert idle["reason"] in ("disconnected", "released")
        assert (await other.request_floor("A"))["type"] == "floor_granted"
        assert await asyncio.wait_for(asyncio.to_thread(procs[0].wait), 20) == 0
        # ...and the recording is closed with the reason.
        ledger = (shared_dir / "ledger" / "ledger.jsonl").read_text().splitlines()
        entries = [json.loads(line) for line in ledger]
        entry = next(e for e in entries if e.get("id") == grant["transmission_id"])
        assert entry["end_reason"] == "server_stopped"
    finally:
        await asyncio.gather(talker.close(), other.close(), return_exceptions=True)
