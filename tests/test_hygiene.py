"""File and log hygiene of a real server: what it writes is private, what it serves is only the
web client, a user name cannot forge a log line, and a worker killed with -9 is logged and
replaced while the port keeps serving."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import signal
import stat
import time
from pathlib import Path

import aiohttp
import psutil
import pytest

from client_cli.client import PttClient
from ptt_server.app import logs
from ptt_server.core.model import Role
from ptt_server.identity.directory import Directory

from .conftest import RunningServer
from .test_http_limits import start_server, stop_server
from .test_multinode import token, wait_healthy

RECORDING = re.compile(r"recordings/\d{4}/\d{2}/\d{2}/[^/]+\.opus$")


# -- file modes --------------------------------------------------------------------------
@pytest.mark.slow
async def test_data_files_are_private_after_a_server_run(tmp_path: Path, redis_url: str) -> None:
    """The server makes its data directory from nothing (directory database with password
    hashes, signing key, index, ledger, a recording): all of it the server user's only."""
    data_dir = tmp_path / "fresh" / "data"  # not there yet: the server creates it
    log = tmp_path / "server.log"
    proc, port = start_server(data_dir, redis_url, log)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(url, proc, timeout=30)
        directory = Directory(data_dir / "directory.sqlite3")  # exists: its mode is the server's
        directory.add_talkgroup("A")
        directory.add_user("u1", Role.OFFICER, ["A"], "pw-u1")
        client = PttClient(url, token(data_dir, "u1"))
        try:
            await client.connect()
            await client.join("A")
            grant = await client.request_floor("A")
            assert grant["type"] == "floor_granted"
            await client.release_floor("A")
        finally:
            await client.close()
        ledger = data_dir / "ledger" / "ledger.jsonl"
        deadline = time.monotonic() + 10
        while grant["transmission_id"] not in (ledger.read_text() if ledger.exists() else ""):
            assert time.monotonic() < deadline, "no ledger entry"
            await asyncio.sleep(0.1)
    finally:
        assert stop_server(proc) == 0, log.read_text()[-3000:]

    found = {p.relative_to(data_dir).as_posix(): p.stat() for p in data_dir.rglob("*")}
    for name in ("directory.sqlite3", "jwt-signing.key", "index.sqlite3", "ledger/ledger.jsonl"):
        assert name in found, sorted(found)
    assert any(RECORDING.match(name) for name in found), sorted(found)
    loose = {
        name: oct(stat.S_IMODE(st.st_mode)) for name, st in found.items()
        # Content-bearing files and every directory: nobody else may even look. (An empty lock
        # file holds nothing; it still may not be open to others.)
        if stat.S_IMODE(st.st_mode) & (0o077 if st.st_size or stat.S_ISDIR(st.st_mode)
                                       else 0o007)
    }
    assert not loose, loose
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


# -- what is served ------------------------------------------------------------------------
async def test_only_the_web_client_is_served(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/index.html", "/console.html", "/audit.html", "/js/officer.js",
                     "/css/base.css", "/img/icon.svg"):
            async with http.get(server.url + path) as r:
                assert r.status == 200, path
        for path in ("/tools/screenshots.py", "/tools/", "/tools", "/js/../tools/screenshots.py",
                     "/js/%2e%2e/tools/screenshots.py", "/%2e%2e/pyproject.toml", "/README.md"):
            async with http.get(server.url + path) as r:
                assert r.status == 404, path
                assert b"browser_support" not in await r.read()
        async with http.get(server.url + "/js/") as r:
            assert r.status in (403, 404)  # no directory listings either


# -- logs --------------------------------------------------------------------------------
FORGED = "2026-12-01T00:00:00.000Z INFO ptt.access: login unit=admin"


def test_text_log_fields_and_messages_stay_on_one_line() -> None:
    out = io.StringIO()
    logs.setup_logging("text", stream=out)
    try:
        log = logging.getLogger("ptt.test")
        log.warning("login failed for %s", "x\n" + FORGED, extra={"fields": {
            "unit": "x\r\n" + FORGED, "alias": "a b=c \"d\" \\e", "term": "\x1b[2J\x07",
            "sep": "x\u2028y\u0085z", "plain": "u12"}})
        try:
            raise ValueError("bad\n" + FORGED)
        except ValueError:
            log.exception("step failed")
    finally:
        logs.stop_logging(5.0)
    lines = out.getvalue().splitlines()
    records = [line for line in lines if not line.startswith(logs.CONTINUATION)]
    assert len(records) == 2, lines
    first = records[0]
    assert "login failed for x\\n" + FORGED in first
    assert 'unit="x\\r\\n' + FORGED + '"' in first
    assert 'alias="a b=c \\"d\\" \\\\e"' in first
    assert 'term="\\x1b[2J\\x07"' in first and 'sep="x\\u2028y\\x85z"' in first
    assert "plain=u12" in first
    assert "\x1b" not in out.getvalue() and "\u2028" not in out.getvalue()
    # The traceback is there, indented: its forged line cannot pass for a record.
    assert any(line == logs.CONTINUATION + FORGED for line in lines)


@pytest.mark.slow
async def test_a_forged_user_name_cannot_start_a_log_line(tmp_path: Path, redis_url: str) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "server.log"
    proc, port = start_server(data_dir, redis_url, log)
    url = f"http://127.0.0.1:{port}"
    names = ["x\n" + FORGED, "y\r" + FORGED, "\x1b[2K" + FORGED]
    try:
        await wait_healthy(url, proc, timeout=30)
        async with aiohttp.ClientSession() as http:
            for name in names:
                assert len(name) <= 64  # within the login's limit: it reaches the log
                async with http.post(url + "/api/login",
                                     json={"username": name, "password": "nope"}) as r:
                    assert r.status == 401
    finally:
        assert stop_server(proc) == 0
    text = log.read_text()
    lines = text.splitlines()
    assert not [line for line in lines if line.startswith(FORGED) or "\r" in line]
    assert "\x1b" not in text
    failed = [line for line in lines if "ptt.access: login failed" in line]
    assert len(failed) == len(names)
    assert sum(FORGED in line for line in failed) == len(names)


# -- worker supervision ----------------------------------------------------------------------
def _workers(proc: psutil.Process) -> set[int]:
    """The worker processes (multiprocessing's spawn children) of the server."""
    found = set()
    for child in proc.children():
        try:
            if "spawn_main" in " ".join(child.cmdline()) and child.status() != "zombie":
                found.add(child.pid)
        except psutil.Error:
            pass  # gone meanwhile
    return found


@pytest.mark.slow
async def test_a_killed_worker_is_logged_and_replaced_while_the_port_serves(
    tmp_path: Path, redis_url: str
) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "server.log"
    proc, port = start_server(data_dir, redis_url, log, workers=2)
    url = f"http://127.0.0.1:{port}"
    parent = psutil.Process(proc.pid)
    try:
        await wait_healthy(url, proc, timeout=60)
        deadline = time.monotonic() + 30
        while len(before := _workers(parent)) < 2 or "listening" not in _last_two(log):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        victim = min(before)
        psutil.Process(victim).send_signal(signal.SIGKILL)
        killed_at = time.monotonic()

        served: list[str] = []
        failures = 0
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=5),
            connector=aiohttp.TCPConnector(force_close=True),  # a new connection each time
        ) as http:
            restarted = None
            while restarted is None or len(served) < 20:
                assert time.monotonic() - killed_at < 60, log.read_text()[-3000:]
                try:
                    async with http.get(url + "/healthz") as r:
                        assert r.status == 200
                        served.append((await r.json())["node"])
                except aiohttp.ClientError:
                    failures += 1  # one in flight to the dying worker at most
                match = re.search(r"worker exited; starting it again worker=(\d+) "
                                  r"exitcode=(-?\d+)", log.read_text())
                if match and restarted is None:
                    assert match.group(2) == str(-signal.SIGKILL)
                    restarted = match.group(1)
                await asyncio.sleep(0.05)
            # The replacement takes its share of new connections once it listens.
            while f"-w{restarted}" not in " ".join(served[-20:]):
                assert time.monotonic() - killed_at < 60, (served, log.read_text()[-3000:])
                async with http.get(url + "/healthz") as r:
                    served.append((await r.json())["node"])
                await asyncio.sleep(0.05)
        assert failures <= 1, failures
        after = _workers(parent)
        assert victim not in after and len(after) == 2
    finally:
        code = stop_server(proc)
    assert code == 0, log.read_text()[-3000:]


def _last_two(log: Path) -> str:
    text = log.read_text()
    return text if text.count("ptt.serve: listening") >= 2 else ""
