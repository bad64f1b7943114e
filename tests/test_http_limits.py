"""HTTP limits of the real `ptt-server serve` process: a client that never finishes its headers
is cut off at the header deadline, idle connections cannot lock out a new client even past the
file-descriptor limit, and aiohttp's request size limits are really in force."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import uvloop
from aiohttp import web

from ptt_server.app import tls
from ptt_server.app.httplimits import HEADER_TIMEOUT_S, GuardedSite
from ptt_server.app.redis_embed import free_port
from ptt_server.app.tls import ensure_dev_certificate

from .test_multinode import wait_healthy

pytestmark = pytest.mark.slow

# The server's file-descriptor limit in the lockout test: about 25 in use at rest, so the
# HTTP share (half) is 100 connections, and 300 idle sockets are far past all of it.
FD_LIMIT = 200
IDLE_SOCKETS = 300
DEADLINE_SLACK_S = 5.0  # a loaded machine: timers run late, never early


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    data_dir: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    data_dir: Path, redis_url: str, log: Path, *, tls: bool = False, fd_limit: int | None = None,
    workers: int = 1, log_format: str = "text",
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    preexec: Callable[[], None] | None = None
    if fd_limit is not None:
        def preexec() -> None:
            # Soft and hard: the server cannot raise it back.
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))
    args = [sys.executable, "-m", "ptt_server.app.cli", "--data-dir", str(data_dir),
            "--log-format", log_format, "serve", "--host", "127.0.0.1", "--port", str(port),
            "--redis-url", redis_url, "--workers", str(workers),
            "--ice-address", "127.0.0.1", "--ice-allow-network", "127.0.0.0/8"]
    if not tls:
        args.append("--http")
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                preexec_fn=preexec)
    return proc, port


def stop_server(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)


async def wait_tls_healthy(url: str, proc: subprocess.Popen[bytes], context: ssl.SSLContext,
                           timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "server exited"
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url + "/healthz", ssl=context) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise TimeoutError(url)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, redis_url: str, **kw: object) -> AsyncIterator[Server]:
    data_dir = tmp_path / "data"
    log = tmp_path / "server.log"
    proc, port = start_server(data_dir, redis_url, log, **kw)  # type: ignore[arg-type]
    scheme = "https" if kw.get("tls") else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        if kw.get("tls"):
            # The development CA appears once the server made it.
            ca = data_dir / "tls" / "ca.crt"
            deadline = time.monotonic() + 60
            while not ca.is_file():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.1)
            await wait_tls_healthy(url, proc, tls_context(data_dir))
        else:
            await wait_healthy(url, proc, timeout=30)
        yield Server(url, port, proc, log, data_dir)
    finally:
        stop_server(proc)


def tls_context(data_dir: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(data_dir / "tls" / "ca.crt"))


@contextlib.contextmanager
def sockets(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` connected TCP sockets that send nothing."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.setblocking(False)
            opened.append(s)
        yield opened
    finally:
        for s in opened:
            s.close()


async def closed_by_server(s: socket.socket, timeout: float) -> float:
    """Seconds until the server closes `s` (EOF or reset), reading whatever it sends."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    while True:
        try:
            data = await asyncio.wait_for(loop.sock_recv(s, 4096), timeout)
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started
        if not data:
            return time.monotonic() - started


async def get_status(url: str, path: str = "/healthz", context: ssl.SSLContext | None = None,
                     timeout: float = 10) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.get(url + path, ssl=context if context is not None else False) as r:
            return r.status


# -- the header deadline ---------------------------------------------------------------------
async def test_a_client_that_never_finishes_its_headers_is_cut_off(
    tmp_path: Path, redis_url: str
) -> None:
    async with running(tmp_path, redis_url) as server:
        loop = asyncio.get_running_loop()
        with sockets(server.port, 3) as (silent, half, dribble):
            started = time.monotonic()
            await loop.sock_sendall(half, b"GET /healthz HT")

            async def drip() -> None:
                # One byte a second: progress, but never a whole header. The deadline is from
                # the connection's start, so trickling does not extend it.
                for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100:
                    try:
                        await loop.sock_sendall(dribble, bytes([byte]))
                    except OSError:
                        return
                    await asyncio.sleep(1.0)

            dripping = asyncio.create_task(drip())
            # Meanwhile a real client is served at once.
            assert await get_status(server.url) == 200
            bound = HEADER_TIMEOUT_S + DEADLINE_SLACK_S
            waits = await asyncio.gather(*(closed_by_server(s, bound + 5)
                                           for s in (silent, half, dribble)))
            dripping.cancel()
            elapsed = time.monotonic() - started
        for waited in waits:
            assert HEADER_TIMEOUT_S - 0.5 <= waited <= bound, (waits, elapsed)
        assert server.proc.poll() is None


async def test_tls_handshake_is_under_the_same_deadline(tmp_path: Path, redis_url: str) -> None:
    """A TCP connection to the TLS port that never says hello is closed too (asyncio alone
    would hold it for 60 s), and an HTTPS client is served meanwhile."""
    async with running(tmp_path, redis_url, tls=True) as server:
        with sockets(server.port, 1) as (silent,):
            assert await get_status(server.url, context=tls_context(server.data_dir)) == 200
            waited = await closed_by_server(silent, HEADER_TIMEOUT_S + DEADLINE_SLACK_S + 5)
        assert HEADER_TIMEOUT_S - 0.5 <= waited <= HEADER_TIMEOUT_S + DEADLINE_SLACK_S


# -- the connection cap ------------------------------------------------------------------------
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_idle_connections_cannot_lock_out_a_new_client(
    tmp_path: Path, redis_url: str, tls: bool
) -> None:
    async with running(tmp_path, redis_url, tls=tls, fd_limit=FD_LIMIT) as server:
        context = tls_context(server.data_dir) if tls else None
        with sockets(server.port, IDLE_SOCKETS) as idle:
            # Far past the server's file descriptors, yet a new client is served, long before
            # any idle connection reaches its header deadline: idle ones made room.
            started = time.monotonic()
            for _ in range(5):
                assert await get_status(server.url, context=context) == 200
            assert time.monotonic() - started < HEADER_TIMEOUT_S / 2
            # The server let go of most of the idle sockets to stay within its limit.
            loop = asyncio.get_running_loop()
            closed = 0
            for s in idle:
                try:
                    data = await asyncio.wait_for(loop.sock_recv(s, 1), 0.01)
                    closed += not data
                except (ConnectionResetError, BrokenPipeError):
                    closed += 1
                except TimeoutError:
                    pass
            assert closed >= IDLE_SOCKETS - FD_LIMIT // 2
        assert server.proc.poll() is None
        assert "HTTP connection limit reached" in server.output()
        # And it is still healthy once they are gone.
        assert await get_status(server.url, context=context) == 200


# -- request limits --------------------------------------------------------------------------
async def test_request_size_limits_are_in_force(tmp_path: Path, redis_url: str) -> None:
    """aiohttp drops *all* handler arguments (with a warning) if one is wrong: so check that
    they hold, not only that they were passed."""
    async with running(tmp_path, redis_url) as server:

        async def status_of(request: bytes) -> int:
            r, w = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                w.write(request)
                await w.drain()
                line = await asyncio.wait_for(r.readline(), 10)
                return int(line.split()[1])
            finally:
                w.close()

        long_line = b"GET /healthz?" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert await status_of(long_line) in (400, 414)
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(80))
        assert await status_of(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n") == 400
        # A bearer token of several KB (an external SSO's) is still fine.
        big = b"Authorization: Bearer " + b"t" * 6000 + b"\r\n"
        ok = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + big + b"Connection: close\r\n\r\n"
        assert await status_of(ok) == 200


# -- TLS done by the guard -------------------------------------------------------------------
@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_a_tls_hello_sent_before_accept_is_kept(tmp_path: Path, loop_kind: str) -> None:
    """A client's hello already waiting when its connection is accepted is read, under
    uvloop, before start_tls takes the connection over (uvloop starts reading right after
    connection_made): it must reach the TLS layer, or the handshake stalls until the deadline.
    asyncio reads later; both must serve the client."""
    cert, key = ensure_dev_certificate(tmp_path)
    server_context = tls.ssl_context(cert, key)
    client_context = ssl.create_default_context(cafile=str(tmp_path / "tls" / "ca.crt"))

    async def scenario() -> tuple[int, int]:
        app = web.Application()

        async def ok(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app.router.add_get("/", ok)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        site = GuardedSite(runner, "127.0.0.1", port, ssl_context=server_context)
        await site.start()
        loop = asyncio.get_running_loop()
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = client_context.wrap_bio(incoming, outgoing, server_hostname="localhost")
        try:
            with contextlib.suppress(ssl.SSLWantReadError):
                client.do_handshake()
            # The kernel completes the connection; our loop has not run since: the hello is
            # there before the server sees the connection at all.
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(outgoing.read())
            sock.setblocking(False)

            async def exchange() -> None:
                if out := outgoing.read():
                    await loop.sock_sendall(sock, out)
                data = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
                assert data, "closed by the server"
                incoming.write(data)

            while True:
                try:
                    client.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await exchange()
            client.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            response = b""
            while b"\r\n" not in response:
                try:
                    response += client.read(65536)
                except ssl.SSLWantReadError:
                    await exchange()
            sock.close()
            assert site.guard is not None
            return int(response.split()[1]), site.guard.early_hellos
        finally:
            await runner.cleanup()

    run = uvloop.run if loop_kind == "uvloop" else asyncio.run
    status, early = run(scenario())
    assert status == 200
    if loop_kind == "uvloop":  # the server's loop: there the hello always comes early
        assert early == 1
