"""/readyz (may a load balancer send sessions here?) and /healthz (is the process alive?).

Redis is a redis-server of the test's own, stopped mid-test; the stop is the node's own first
shutdown step; the recording store is broken by putting a file where its directory goes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from ptt_server.app.redis_embed import EmbeddedRedis
from ptt_server.app.wiring import create_app
from ptt_server.core.model import EndReason
from ptt_server.recording import layout
from ptt_server.service.keys import NODE

from .conftest import seed_directory, server_config

TOKEN = "readyz-metrics-token-0123"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    redis = EmbeddedRedis(tmp_path / "redis", persist=False)
    redis.start()
    yield redis
    redis.stop()


async def _start(data_dir: Path, redis_url: str, **kw: Any) -> tuple[TestServer, Any]:
    seed_directory(data_dir)
    app = create_app(server_config(data_dir, redis_url, metrics_token=TOKEN, **kw))
    ts = TestServer(app, host="127.0.0.1")
    await ts.start_server()
    return ts, app


async def get(ts: TestServer, path: str) -> tuple[int, dict[str, Any] | str]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http, http.get(ts.make_url(path),
                                                         headers=headers) as r:
        if r.content_type == "application/json":
            return r.status, await r.json()
        return r.status, await r.text()


async def until(ts: TestServer, path: str, status: int, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got, body = await get(ts, path)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"{path} still {got}: {body}"
        await asyncio.sleep(0.05)


async def metrics(ts: TestServer) -> dict[tuple[str, str], float]:
    """(name, the value of its one varying label or '') -> value."""
    status, text = await get(ts, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(str(text)):
        for s in family.samples:
            rest = [v for k, v in sorted(s.labels.items()) if k != "node"]
            out[(s.name, rest[0] if rest else "")] = s.value
    return out


async def test_not_ready_without_redis_but_alive(
    data_dir: Path, own_redis: EmbeddedRedis
) -> None:
    ts, _app = await _start(data_dir, own_redis.url)
    try:
        assert await get(ts, "/readyz") == (200, {"status": "ready", "warnings": []})
        assert own_redis.pid is not None
        os.kill(own_redis.pid, signal.SIGKILL)
        body = await until(ts, "/readyz", 503)
        assert body == {"status": "unavailable", "reason": "redis"}
        status, health = await get(ts, "/healthz")
        assert status == 200  # alive: a liveness probe must not restart it for Redis
        assert isinstance(health, dict) and health["status"] == "degraded"
        assert [p["alert"] for p in health["problems"]] == ["redis_unreachable"]
        # The metrics say so too, from the node's health and from their own probe.
        deadline = time.monotonic() + 10
        while (m := await metrics(ts))[("ptt_redis_up", "")] != 0:
            assert time.monotonic() < deadline, "the Redis probe did not notice"
            await asyncio.sleep(0.05)
        assert m[("ptt_health_problem", "redis_unreachable")] == 1
        assert sum(v for (name, _), v in m.items() if name == "ptt_redis_errors_total") >= 1
    finally:
        await ts.close()


async def test_not_ready_while_stopping_but_alive(data_dir: Path, redis_url: str) -> None:
    ts, app = await _start(data_dir, redis_url)
    try:
        assert (await get(ts, "/readyz"))[0] == 200
        # The ordered shutdown's first step (app/lifecycle.py): stop taking sessions.
        await app[NODE].close_sessions(EndReason.SERVER_STOPPED, 2.0)
        assert await get(ts, "/readyz") == (503, {"status": "stopping"})
        status, health = await get(ts, "/healthz")
        assert status == 200 and isinstance(health, dict) and health["status"] == "ok"
    finally:
        await ts.close()


async def test_not_ready_when_recordings_cannot_be_written(
    data_dir: Path, redis_url: str
) -> None:
    ts, _app = await _start(data_dir, redis_url)
    try:
        assert (await get(ts, "/readyz"))[0] == 200
        root = layout.recordings_root(data_dir)
        if root.exists():
            root.rmdir()  # nothing recorded yet: an empty directory
        root.write_text("not a directory")
        body = await until(ts, "/readyz", 503)
        assert body["reason"] == "recording_store" and "not a directory" in body["detail"]
        assert (await get(ts, "/healthz"))[0] == 200
        root.unlink()
        await until(ts, "/readyz", 200)
    finally:
        await ts.close()


async def test_low_disk_is_a_warning_not_unready(data_dir: Path, redis_url: str) -> None:
    ts, _app = await _start(data_dir, redis_url, disk_min_free_mb=10**9)
    try:
        status, health = await get(ts, "/healthz")  # runs the health check now
        assert status == 200 and isinstance(health, dict)
        assert "disk_low" in [p["alert"] for p in health["problems"]]
        assert await get(ts, "/readyz") == (200, {"status": "ready", "warnings": ["disk_low"]})
    finally:
        await ts.close()
