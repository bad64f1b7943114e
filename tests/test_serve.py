"""`ptt-server serve` as `make run` starts it: HTTPS with a generated development certificate,
an embedded redis-server, a first-run admin, two worker processes, clean SIGTERM."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import ssl
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from ptt_server.app.redis_embed import free_port

pytestmark = pytest.mark.slow


async def read_until(stream: asyncio.StreamReader, pattern: str, timeout: float) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while (match := re.search(pattern, seen)) is None:
        line = await asyncio.wait_for(stream.readline(), max(0.1, deadline - time.monotonic()))
        if not line:
            raise EOFError(seen[-3000:])
        seen += line.decode(errors="replace")
    return match.group(1)


async def test_serve_https_embedded_redis_first_admin_and_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ptt_server.app.cli", "--data-dir", str(data), "--log-format", "text",
        "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
        "--ice-address", "127.0.0.1",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    try:
        password = await read_until(proc.stdout, r"created with password: (\S+)", 60)
        # Both workers' HTTP sites, not any other "listening" record (the ICE mux logs its own).
        await read_until(proc.stdout, r"(ptt\.serve: listening)(?:.|\n)*ptt\.serve: listening", 60)
        ca = data / "tls" / "ca.crt"
        context = ssl.create_default_context(cafile=str(ca))
        url = f"https://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/api/login", ssl=context,
                                 json={"username": "admin", "password": password}) as r:
                assert r.status == 200
                token = (await r.json())["token"]
            async with http.post(f"{url}/api/login", ssl=context,
                                 json={"username": "admin", "password": "wrong"}) as r:
                assert r.status == 401
            async with http.get(f"{url}/", ssl=context) as r:
                assert r.status == 200
                assert "script-src 'self'" in r.headers["Content-Security-Policy"]
            async with http.ws_connect(f"wss://127.0.0.1:{port}/ws", ssl=context) as ws:
                await ws.send_str(json.dumps({"type": "auth", "token": token}))
                welcome = json.loads((await ws.receive(timeout=10)).data)
                assert welcome["type"] == "welcome" and welcome["role"] == "admin"
        # The embedded Redis keeps its data in the data directory, with persistence on.
        assert (data / "redis").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stdout.read(), 30)
        code = await asyncio.wait_for(proc.wait(), 30)
    assert code == 0, rest.decode(errors="replace")[-3000:]
    assert any((data / "redis").glob("appendonly*")), "redis persistence files missing"
