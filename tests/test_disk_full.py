"""A full disk is visible: /healthz says degraded (disk low, recording failing) before and when
it fills, and the supervisors on duty get a system_alert. The data directory is a real, small
tmpfs filled with a file until ENOSPC; audio keeps flowing."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from client_cli.client import PttClient

from .audio import encode, make_speech, read_wav
from .conftest import RunningServer, seed_directory, server_config

SIZE_MB = 24
MIN_FREE_MB = 8


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(mount)],
                   check=True, timeout=30)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


@pytest.fixture
async def disk_server(small_disk: Path, redis_url: str) -> AsyncIterator[RunningServer]:
    from ptt_server.app.wiring import create_app

    data = small_disk / "data"
    data.mkdir()
    seed_directory(data)
    config = server_config(data, redis_url, disk_min_free_mb=MIN_FREE_MB)
    app = create_app(config)
    ts = TestServer(app, host="127.0.0.1")
    await ts.start_server()
    yield RunningServer(url=str(ts.make_url("")).rstrip("/"), config=config, app=app)
    await ts.close()


def _fill(path: Path, leave_bytes: int) -> None:
    """Write until only `leave_bytes` are left (0: until ENOSPC)."""
    import shutil

    with path.open("ab") as f:
        chunk = b"\0" * (256 * 1024)
        while True:
            free = shutil.disk_usage(path.parent).free
            if free <= leave_bytes:
                return
            try:
                f.write(chunk[: max(1, min(len(chunk), free - leave_bytes))])
                f.flush()
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    return
                raise


async def _health(url: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as r:
        assert r.status == 200  # alive, whatever it says
        return dict(await r.json())


async def _wait_problem(url: str, alert: str, timeout: float = 20) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        health = await _health(url)
        problems = {str(p["alert"]) for p in health["problems"]}  # type: ignore[attr-defined]
        if alert in problems:
            return health
        assert loop.time() < deadline, health
        await asyncio.sleep(0.2)


async def test_a_filling_disk_is_reported_before_and_when_full(
    disk_server: RunningServer, small_disk: Path, tmp_path: Path
) -> None:
    url = disk_server.url
    assert (await _health(url))["status"] == "ok"
    sup = PttClient(url, disk_server.token("sup"))
    talker = PttClient(url, disk_server.token("u1"), ice_addresses=("127.0.0.1",))
    listener = PttClient(url, disk_server.token("u2"), ice_addresses=("127.0.0.1",))
    filler = small_disk / "filler.bin"
    try:
        await sup.connect()
        for c in (talker, listener):
            await c.connect()
            await c.start_media()
            await c.join("A")
        # Nearly full: reported while recording still works.
        await asyncio.to_thread(_fill, filler, (MIN_FREE_MB - 2) * 2**20)
        health = await _wait_problem(url, "disk_low")
        assert health["status"] == "degraded"
        alert = await sup.wait_for(
            lambda m: m["type"] == "system_alert" and m["alert"] == "disk_low", 10)
        assert alert["active"] is True
        # Full: the next transmission cannot be recorded; audio still reaches the listener,
        # and supervisors hear that nothing is being recorded.
        await asyncio.to_thread(_fill, filler, 0)
        pcm = read_wav(make_speech(tmp_path / "s.wav", "recording on a full disk"))
        grant = await talker.talk("A", encode(pcm))
        await listener.wait_for(
            lambda m: m["type"] == "floor_idle"
            and m["transmission_id"] == grant["transmission_id"], 10)
        assert listener.transmissions[grant["transmission_id"]].packets
        await _wait_problem(url, "recording_failing")
        failing = await sup.wait_for(
            lambda m: m["type"] == "system_alert" and m["alert"] == "recording_failing", 10)
        assert failing["active"] is True
        # Space again: disk_low clears, and supervisors are told it is over.
        filler.unlink()
        cleared = await sup.wait_for(
            lambda m: m["type"] == "system_alert" and m["alert"] == "disk_low"
            and m["active"] is False, 15)
        assert cleared["node"] == alert["node"]
    finally:
        with contextlib.suppress(FileNotFoundError):
            filler.unlink()
        await asyncio.gather(*(c.close() for c in (sup, talker, listener)),
                             return_exceptions=True)
