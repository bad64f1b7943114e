"""Members replay what their talkgroups said while they were away: real server, real Redis, a
real aiortc talker; the listing, the window policy, the signed replay URL (ranges: seekable),
the bytes against the recording, and the access ledger."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ptt_server.identity.replay_policy import ReplayPolicies
from ptt_server.service.keys import DIRECTORY

from .audio import encode, make_speech, read_wav
from .conftest import RunningServer
from .test_media_e2e import Connect, connect
from .test_recording_e2e import ledger_entries, wait_for_entries

__all__ = ["connect"]


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    path = make_speech(tmp_path_factory.mktemp("s") / "s.wav", "all units, road closed at km 4")
    return encode(read_wav(path))[:75]


def _auth(server: RunningServer, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token(name)}"}


async def _json(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Any:
    async with http.request(method, url, **kw) as resp:
        return resp.status, await resp.json()


async def test_missed_transmission_listed_and_replayed_within_the_window(
    server: RunningServer, connect: Connect, packets: list[bytes]
) -> None:
    talker = await connect("u1", "A")
    offline_since = int(time.time() * 1000)
    grant = await talker.talk("A", packets)  # u2 is not signed in: it misses this
    tid = grant["transmission_id"]
    entry = (await wait_for_entries(server.config.data_dir, {tid}))[tid]
    base = server.url
    async with aiohttp.ClientSession() as http:
        status, body = await _json(http, "GET", f"{base}/api/talkgroups/A/recent",
                                   headers=_auth(server, "u2"))
        assert status == 200 and body["replay_hours"] == 24
        [item] = body["recordings"]
        assert (item["id"], item["unit"], item["alias"]) == (tid, "u1", "Unit 1")
        assert item["start_ms"] >= offline_since and item["duration_ms"] > 1000

        status, signed = await _json(http, "POST", f"{base}/api/recordings/{tid}/replay-url",
                                     headers=_auth(server, "u2"))
        assert status == 200 and signed["url"].startswith(f"/api/recordings/{tid}/replay?")
        async with http.get(base + signed["url"]) as resp:  # no header: the URL is the grant
            assert resp.status == 200 and resp.headers["X-Integrity"] == "ok"
            whole = await resp.read()
        recorded = (Path(server.config.data_dir) / entry["file"]).read_bytes()
        assert whole == recorded
        async with http.get(base + signed["url"], headers={"Range": "bytes=100-"}) as resp:
            assert resp.status == 206 and await resp.read() == recorded[100:]  # seekable

        # Not a member of A: nothing; the auditor: everything.
        status, _ = await _json(http, "GET", f"{base}/api/talkgroups/A/recent",
                                headers=_auth(server, "u4"))
        assert status == 403
        status, _ = await _json(http, "POST", f"{base}/api/recordings/{tid}/replay-url",
                                headers=_auth(server, "u4"))
        assert status == 403
        # The window closes: members no longer reach it, the auditor still does.
        ReplayPolicies(server.app[DIRECTORY]).set_hours("A", 0)  # type: ignore[index]
        status, body = await _json(http, "GET", f"{base}/api/talkgroups/A/recent",
                                   headers=_auth(server, "u2"))
        assert status == 200 and body["recordings"] == []
        async with http.get(base + signed["url"]) as resp:
            assert resp.status == 403
        status, body = await _json(http, "GET", f"{base}/api/talkgroups/A/recent",
                                   headers=_auth(server, "aud"))
        assert status == 200 and [r["id"] for r in body["recordings"]] == [tid]

    access = [e for e in ledger_entries(server.config.data_dir) if e["type"] == "access"]
    replays = [e for e in access if e.get("action") == "replay"]
    assert [(e["by"], e["outcome"]) for e in replays] == [("u2", "ok"), ("u4", "denied"),
                                                          ("u2", "denied")]
    assert replays[0]["id"] == tid
    assert [(e["by"], e["outcome"]) for e in access if e.get("action") == "recent"] == [
        ("u2", "ok"), ("u4", "denied"), ("u2", "ok"), ("aud", "ok")]


def test_replay_hours_from_the_command_line(data_dir: Path) -> None:
    from ptt_server.app.cli import main
    from ptt_server.identity.directory import Directory

    assert main(["talkgroup", "add", "N", "--replay-hours", "6", "--data-dir",
                 str(data_dir)]) == 0
    policies = ReplayPolicies(Directory(data_dir))
    assert policies.hours("N") == 6 and policies.hours("other") == 24
    assert main(["talkgroup", "add", "M", "--replay-hours", "-1", "--data-dir",
                 str(data_dir)]) != 0
