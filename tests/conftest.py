"""Shared fixtures: a real redis-server on a free port (never a fake)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from ptt_server.app.redis_embed import EmbeddedRedis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """A clean database for each test on the shared real redis-server."""
    import redis as syncredis

    client = syncredis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


# --- a real server (in-process aiohttp, plain HTTP on loopback, real Redis) -----------------
import dataclasses  # noqa: E402

from aiohttp.test_utils import TestServer  # noqa: E402

from ptt_server.core.config import Config  # noqa: E402


@dataclasses.dataclass
class RunningServer:
    url: str
    config: Config
    app: object

    def token(self, name: str, ttl_s: int = 3600) -> str:
        from ptt_server.service.keys import DIRECTORY, TOKENS

        app = self.app
        user = app[DIRECTORY].get_user(name)  # type: ignore[index]
        assert user is not None, name
        return str(app[TOKENS].issue(user, ttl_s))  # type: ignore[index]


def seed_directory(data_dir: Path) -> None:
    """Talkgroups A, B (normal), CMD (command) and a few people."""
    from ptt_server.core.model import Role, TalkgroupKind
    from ptt_server.identity.directory import Directory

    d = Directory(data_dir / "directory.sqlite3")
    d.add_talkgroup("A", name="Alpha")
    d.add_talkgroup("B", name="Bravo")
    d.add_talkgroup("CMD", name="Command", kind=TalkgroupKind.COMMAND)
    d.add_talkgroup("SHORT", name="Short limit", max_duration_s=1.5)
    for name, role, tgs, alias in [
        ("u1", Role.OFFICER, ["A", "B", "SHORT"], "Unit 1"),
        ("u2", Role.OFFICER, ["A", "SHORT"], "Unit 2"),
        ("u3", Role.OFFICER, ["A", "B"], "Unit 3"),
        ("u4", Role.OFFICER, ["B"], "Unit 4"),
        ("sup", Role.SUPERVISOR, ["CMD"], "Sgt Stone"),
        ("disp", Role.DISPATCHER, ["CMD"], "Dispatch"),
        ("aud", Role.AUDITOR, [], "Auditor"),
        ("root", Role.ADMIN, [], "Admin"),
    ]:
        d.add_user(name, role, tgs, "pw-" + name, alias=alias)


def server_config(data_dir: Path, redis_url: str, **kw: object) -> Config:
    return Config(
        data_dir=data_dir, host="127.0.0.1", port=0, http=True, redis_url=redis_url,
        ice_addresses=("127.0.0.1",), ice_remote_networks=("127.0.0.0/8",),
        log_format="text", **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def server(data_dir: Path, redis_url: str) -> AsyncIterator[RunningServer]:
    from ptt_server.app.wiring import create_app

    seed_directory(data_dir)
    config = server_config(data_dir, redis_url)
    app = create_app(config)
    ts = TestServer(app, host="127.0.0.1")
    await ts.start_server()
    yield RunningServer(url=str(ts.make_url("")).rstrip("/"), config=config, app=app)
    await ts.close()


# --- a user-space lossy link between two network namespaces (tests/lossylink.py) ------------
from .lossylink import lossy_link  # noqa: E402,F401


# --- a Playwright driver for the browser tests (tests/browser_support.py launches Chromium) ----
@pytest.fixture
async def playwright() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        yield pw
