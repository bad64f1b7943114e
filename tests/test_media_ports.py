"""--media-ports: every media socket of the server inside the range, and a clear refusal when
the range is used up.

The first test runs the real `ptt-server serve` command and looks at its sockets from outside
(psutil, as `ss -uanp` would); the second an in-process server with a range of two ports.
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp.test_utils import TestServer

from client_cli.client import ClientError, PttClient
from ptt_server.app.redis_embed import free_port
from ptt_server.app.wiring import create_app

from .conftest import RunningServer, seed_directory, server_config
from .test_multinode import token, wait_healthy


def free_udp_range(size: int) -> tuple[int, int]:
    """`size` consecutive UDP ports free on 127.0.0.1, below the kernel's ephemeral range
    (so nothing else of ours takes one meanwhile)."""
    for _ in range(200):
        low = random.randrange(10000, 32000 - size)
        socks: list[socket.socket] = []
        try:
            for port in range(low, low + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return low, low + size - 1
    raise RuntimeError("no free UDP port range")


def candidate_ports(sdp: str) -> list[int]:
    """Ports of the host candidates in an SDP (RFC 8839 section 5.1)."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if fields[fields.index("typ") + 1] == "host":
                out.append(int(fields[5]))
    return out


def start_server(data_dir: Path, redis_url: str, port: int, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ptt_server.app.cli", "--data-dir", str(data_dir),
         "--log-format", "text", "serve", "--http", "--host", "127.0.0.1", "--port", str(port),
         "--redis-url", redis_url, "--workers", "1", "--ice-address", "127.0.0.1",
         "--ice-allow-network", "127.0.0.0/8", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


@pytest.mark.parametrize("mux", ["on", "off"])
async def test_every_media_socket_of_the_server_is_in_the_range(
    data_dir: Path, redis_url: str, mux: str
) -> None:
    seed_directory(data_dir)
    low, high = free_udp_range(10)
    port = free_port()
    proc = start_server(data_dir, redis_url, port, "--media-ports", f"{low}-{high}",
                        "--ice-mux", mux)
    url = f"http://127.0.0.1:{port}"
    clients = [PttClient(url, token(data_dir, name), ice_addresses=("127.0.0.1",))
               for name in ("u1", "u2", "sup")]
    try:
        await wait_healthy(url, proc)
        for c in clients:
            await c.connect()
            await c.start_media()
            await c.join("CMD" if c is clients[-1] else "A")
        # A supervisor monitoring two more talkgroups: the server offers more transceivers.
        supervisor = clients[-1]
        for tg in ("A", "B"):
            await supervisor.join(tg, mode="monitor")
            await supervisor.wait_for(lambda m, tg=tg: m["type"] == "downlink"
                                      and m["talkgroup"] == tg)
        sdps = [m["sdp"] for c in clients for m in c.events if m["type"] in ("answer", "offer")]
        announced = {p for sdp in sdps for p in candidate_ports(sdp)}
        assert len(sdps) > 3 and announced and all(low <= p <= high for p in announced)
        bound = {conn.laddr.port for conn in psutil.Process(proc.pid).net_connections("udp")}
        assert bound and all(low <= p <= high for p in bound), (bound, low, high)
        assert announced <= bound  # every port announced is one of the server's sockets
        # The ICE mux: one socket for every client (one worker, one address); without it a
        # socket per client connection.
        assert len(bound) == 1 if mux == "on" else len(bound) >= len(clients), bound
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
async def two_ports(data_dir: Path, redis_url: str) -> AsyncIterator[RunningServer]:
    seed_directory(data_dir)
    # A socket per client (no ICE mux): two ports are two clients.
    config = server_config(data_dir, redis_url, media_ports=free_udp_range(2), ice_mux=False)
    app = create_app(config)
    ts = TestServer(app, host="127.0.0.1")
    await ts.start_server()
    yield RunningServer(url=str(ts.make_url("")).rstrip("/"), config=config, app=app)
    await ts.close()


async def test_a_used_up_range_is_refused_clearly_and_frees_up(
    two_ports: RunningServer,
) -> None:
    low, high = two_ports.config.media_ports or (0, 0)
    clients: list[PttClient] = []

    async def media_client(name: str) -> PttClient:
        c = PttClient(two_ports.url, two_ports.token(name), ice_addresses=("127.0.0.1",))
        clients.append(c)
        await c.connect()
        await c.start_media()
        return c

    try:
        first, second = await media_client("u1"), await media_client("u2")
        for c in (first, second):
            answer = next(m for m in c.events if m["type"] == "answer")
            assert all(low <= p <= high for p in candidate_ports(answer["sdp"]))
        with pytest.raises(ClientError) as refused:
            await media_client("u3")
        error = refused.value.message
        assert error["code"] == "media_ports_exhausted"  # a stable code, not `internal`
        assert "media ports" in error["message"]
        # The refused session goes on (signaling works), and a port freed is used again.
        third = clients[-1]
        assert (await third.join("A"))["type"] == "joined"
        await first.close()
        deadline = time.monotonic() + 10
        while True:
            retry = PttClient(two_ports.url, two_ports.token("u4"), ice_addresses=("127.0.0.1",))
            clients.append(retry)
            await retry.connect()
            try:
                await retry.start_media()
                break
            except ClientError as exc:
                assert exc.code == "media_ports_exhausted"
                assert time.monotonic() < deadline, "the closed client's port stayed taken"
                await retry.close()
                await asyncio.sleep(0.1)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def test_the_media_ports_option(tmp_path: Path) -> None:
    from ptt_server.app.cli import build_parser, serve_config
    from ptt_server.app.serve_options import OptionError

    def config(*args: str) -> Any:
        return serve_config(build_parser().parse_args(["--data-dir", str(tmp_path), "serve",
                                                       *args]))

    assert config("--media-ports", "40000-40999").media_ports == (40000, 40999)
    assert config("--media-ports", "40000").media_ports == (40000, 40000)
    assert config().media_ports is None
    assert config().ice_mux and not config("--ice-mux", "off").ice_mux
    for bad in ("40999-40000", "0-10", "40000-70000", "a-b", "40000-"):
        with pytest.raises(OptionError):
            config("--media-ports", bad)


def test_a_range_too_small_for_the_workers_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    # Two workers, two addresses: the ICE mux needs four ports; three are refused at once,
    # rather than a worker failing to bind and being started again and again.
    done = subprocess.run(
        [sys.executable, "-m", "ptt_server.app.cli", "--data-dir", str(tmp_path / "d"),
         "serve", "--http", "--host", "127.0.0.1", "--port", "0", "--workers", "2",
         "--ice-address", "127.0.0.1", "--ice-address", "127.0.0.2",
         "--media-ports", "40000-40002"],
        capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    assert "the ICE mux needs 4 ports" in done.stderr.decode()
    assert not (tmp_path / "d" / "redis").exists()  # refused before Redis started
