"""Auditor API on a real aiohttp app, real tokens, real recordings, a real directory and Redis
(every request is checked against both: tests/test_access_follows_directory.py)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import subprocess
import wave
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ptt_server.core.config import Config
from ptt_server.core.model import Role, User
from ptt_server.identity.auth import TokenAuthority
from ptt_server.identity.directory import Directory
from ptt_server.recording import layout
from ptt_server.recording.retention import purge
from ptt_server.recording.store import RecordingStore
from ptt_server.service.keys import CONFIG, DIRECTORY, RECORDINGS, REDIS, TOKENS
from ptt_server.service.recording_api import add_routes

from .test_recording_store import DAY, PACKETS, T0, make_recordings

Client = TestClient[Any, Any]
Get = Callable[..., Awaitable[Any]]


def directory_of(data_dir: Path) -> Directory:
    """One user per role, named like token() names them."""
    directory = Directory(data_dir / "directory.sqlite3")
    for role in Role:
        directory.add_user(role.value + "1", role, [], "pw", alias=f"{role.value} one")
    return directory


def base_app(data_dir: Path, redis: aioredis.Redis, **config: Any) -> web.Application:
    application = web.Application()
    application[CONFIG] = Config(data_dir=data_dir, http=True, **config)
    application[TOKENS] = TokenAuthority(b"k" * 32, issuer="ptt-server", audience="ptt")
    application[RECORDINGS] = RecordingStore(data_dir)
    application[REDIS] = redis
    application[DIRECTORY] = directory_of(data_dir)
    add_routes(application)
    return application


@pytest.fixture
async def app(data_dir: Path, redis: aioredis.Redis) -> web.Application:
    await make_recordings(data_dir)
    return base_app(data_dir, redis, node_id="node-api", retention_days=0)


@pytest.fixture
async def client(app: web.Application) -> AsyncIterator[Client]:
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


def token(app: web.Application, role: Role, name: str | None = None) -> str:
    user = User(name or role.value + "1", role, (), f"{role.value} one", 100)
    return app[TOKENS].issue(user, 600)


def auth(app: web.Application, role: Role = Role.AUDITOR) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(app, role)}"}


def access_entries(data_dir: Path) -> list[dict[str, Any]]:
    return [e.data for e in RecordingStore(data_dir).ledger.entries() if e.type == "access"]


async def error_code(resp: Any) -> str:
    body = await resp.json()
    return str(body["error"]["code"])


ROUTES = [
    ("GET", "/api/recordings"), ("GET", "/api/recordings/rec-aaaa-01"),
    ("GET", "/api/recordings/rec-aaaa-01/audio"), ("GET", "/api/recordings/rec-aaaa-01/wav"),
    ("GET", "/api/recordings/rec-aaaa-01/waveform"),
    ("GET", "/api/talkgroups/patrol-1/timeline"), ("POST", "/api/exports"),
    ("GET", "/api/audit/verify"), ("GET", "/api/audit/access"),
    ("POST", "/api/recordings/rec-aaaa-01/media-url"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_only_auditors_and_admins(
    client: Client, app: web.Application, data_dir: Path, method: str, path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    resp = await client.request(method, path)
    assert resp.status == 401
    for role in (Role.OFFICER, Role.SUPERVISOR, Role.DISPATCHER):
        with caplog.at_level(logging.WARNING, logger="ptt.access"):
            resp = await client.request(method, path, headers=auth(app, role), json={})
        assert resp.status == 403 and await error_code(resp) == "forbidden"
        assert any(r.name == "ptt.access" and r.getMessage() == "forbidden"
                   for r in caplog.records)
    denied = access_entries(data_dir)
    assert [(e["role"], e["outcome"]) for e in denied] == [
        ("officer", "denied"), ("supervisor", "denied"), ("dispatcher", "denied")]
    assert all(e["path"] == path and e["remote"] == "127.0.0.1" for e in denied)


async def test_search_and_pages(client: Client, app: web.Application, data_dir: Path) -> None:
    resp = await client.get("/api/recordings", headers=auth(app))
    assert resp.status == 200
    body = await resp.json()
    assert [r["id"] for r in body["recordings"]] == [
        "rec-aaaa-05", "rec-aaaa-04", "rec-aaaa-03", "rec-aaaa-02", "rec-aaaa-01"]
    first = body["recordings"][0]
    assert first["links"]["audio"] == "/api/recordings/rec-aaaa-05/audio"
    assert first["sha256"] and first["end_reason"] == "released"
    resp = await client.get("/api/recordings", headers=auth(app), params={
        "talkgroup": "patrol-1", "from": "2024-05-01T12:00:04Z", "to": str(int(T0 * 1000) + 20000),
    })
    assert [r["id"] for r in (await resp.json())["recordings"]] == ["rec-aaaa-04", "rec-aaaa-02"]
    seen: list[str] = []
    params = {"limit": "2"}
    while True:
        page = await (await client.get("/api/recordings", headers=auth(app), params=params)).json()
        seen += [r["id"] for r in page["recordings"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert len(seen) == 5 and len(set(seen)) == 5
    for bad in ({"cursor": "garbage"}, {"limit": "0"}, {"limit": "x"}, {"from": "yesterday"}):
        resp = await client.get("/api/recordings", headers=auth(app), params=bad)
        assert resp.status == 400, bad
    searches = [e for e in access_entries(data_dir) if e["action"] == "search"]
    assert searches[1]["query"] == {"talkgroup": "patrol-1", "from_ms": int(T0 * 1000) + 4000,
                                    "to_ms": int(T0 * 1000) + 20000, "limit": 50,
                                    "page": False}
    assert searches[0]["by"] == "auditor1" and searches[0]["remote"] == "127.0.0.1"


async def test_metadata(client: Client, app: web.Application) -> None:
    resp = await client.get("/api/recordings/rec-aaaa-03", headers=auth(app, Role.ADMIN))
    body = await resp.json()
    assert resp.status == 200 and body["talkgroup"] == "patrol-2" and body["unit"] == "unit1"
    assert body["start"] == "2024-05-01T12:00:06.000Z" and body["ledger_seq"] == 3
    assert (await client.get("/api/recordings/no-such-rec", headers=auth(app))).status == 404
    resp = await client.get("/api/recordings/bad!id", headers=auth(app))
    assert resp.status == 400 and await error_code(resp) == "bad_id"
    assert (await client.get("/api/recordings/short", headers=auth(app))).status == 400


async def test_audio_with_ranges(client: Client, app: web.Application, data_dir: Path) -> None:
    data = (data_dir / "recordings/2024/05/01/rec-aaaa-04.opus").read_bytes()
    resp = await client.get("/api/recordings/rec-aaaa-04/audio", headers=auth(app))
    assert resp.status == 200 and resp.headers["Content-Type"] == "audio/ogg"
    assert await resp.read() == data
    assert resp.headers["X-Integrity"] == "ok"
    assert resp.headers["X-Recording-SHA256"] == hashlib.sha256(data).hexdigest()
    resp = await client.get("/api/recordings/rec-aaaa-04/audio",
                            headers={**auth(app), "Range": "bytes=100-199"})
    assert resp.status == 206 and await resp.read() == data[100:200]
    assert resp.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    # An <audio> element cannot send headers: it gets a signed media URL, never a token.
    tok = token(app, Role.AUDITOR)
    resp = await client.get("/api/recordings/rec-aaaa-04/audio",
                            params={"token": tok, "download": "1"})
    assert resp.status == 401 and await error_code(resp) == "token_missing"
    resp = await client.post("/api/recordings/rec-aaaa-04/media-url",
                             headers={"Authorization": f"Bearer {tok}"},
                             json={"kind": "audio", "download": True})
    link = (await resp.json())["url"]
    assert resp.status == 200 and tok not in link
    resp = await client.get(link)
    assert resp.status == 200 and "attachment" in resp.headers["Content-Disposition"]
    assert await resp.read() == data
    actions = [(e["action"], e.get("id")) for e in access_entries(data_dir)]
    assert actions == [("play", "rec-aaaa-04"), ("download", "rec-aaaa-04")]  # not the range
    assert all("token" not in e["path"] and "sig" not in e["path"]
               for e in access_entries(data_dir))


async def test_altered_audio_is_flagged(client: Client, app: web.Application,
                                        data_dir: Path) -> None:
    path = data_dir / "recordings/2024/05/01/rec-aaaa-04.opus"
    data = bytearray(path.read_bytes())
    data[500] ^= 1
    path.write_bytes(bytes(data))
    resp = await client.get("/api/recordings/rec-aaaa-04/audio", headers=auth(app))
    assert resp.status == 200 and resp.headers["X-Integrity"] == "altered"
    verify = await (await client.get("/api/audit/verify", headers=auth(app))).json()
    assert verify["ok"] is False
    assert verify["problems"][0].startswith("seq 4: transmission rec-aaaa-04: audio file")


async def test_deleted_audio_is_gone(client: Client, app: web.Application) -> None:
    purge(app[RECORDINGS], 1, now=T0 + 2 * DAY)
    resp = await client.get("/api/recordings/rec-aaaa-01/audio", headers=auth(app))
    assert resp.status == 410 and await error_code(resp) == "deleted"
    meta = await (await client.get("/api/recordings/rec-aaaa-01", headers=auth(app))).json()
    assert meta["deleted"] is True


async def test_wav_and_waveform(client: Client, app: web.Application, data_dir: Path) -> None:
    resp = await client.get("/api/recordings/rec-aaaa-04/wav", headers=auth(app))
    assert resp.status == 200 and resp.headers["Content-Type"] == "audio/wav"
    with wave.open(io.BytesIO(await resp.read()), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 48000)
        assert w.getnframes() == len(PACKETS) * 960 - 312
    resp = await client.get("/api/recordings/rec-aaaa-04/waveform", headers=auth(app),
                            params={"points": "100"})
    body = await resp.json()
    assert body["points"] == 100 and len(body["min"]) == len(body["max"]) == 100
    assert all(-1 <= lo <= hi <= 1 for lo, hi in zip(body["min"], body["max"], strict=True))
    assert max(body["max"]) > 0.1  # the 440 Hz tone at about a quarter of full scale
    assert body["duration_ms"] == (len(PACKETS) * 960 - 312) * 1000 // 48000
    for bad in ("0", "100000", "many"):
        resp = await client.get("/api/recordings/rec-aaaa-04/waveform", headers=auth(app),
                                params={"points": bad})
        assert resp.status == 400
    assert [e["action"] for e in access_entries(data_dir)] == ["play", "waveform"]


async def test_timeline(client: Client, app: web.Application) -> None:
    start = int(T0 * 1000)
    resp = await client.get("/api/talkgroups/patrol-1/timeline", headers=auth(app),
                            params={"from": str(start), "to": str(start + 12_000)})
    body = await resp.json()
    assert [(i["type"], i.get("id"), i["duration_ms"]) for i in body["items"]] == [
        ("transmission", "rec-aaaa-01", 2000), ("gap", None, 3000),
        ("transmission", "rec-aaaa-02", 1000), ("gap", None, 4000),
        ("transmission", "rec-aaaa-04", 3000)]
    for params in ({"from": str(start), "to": str(start)},
                   {"from": str(start), "to": str(start + 40 * 86_400_000)}):
        resp = await client.get("/api/talkgroups/patrol-1/timeline", headers=auth(app),
                                params=params)
        assert resp.status == 400
    resp = await client.get("/api/talkgroups/bad%20tg/timeline", headers=auth(app))
    assert resp.status == 400


async def test_export(client: Client, app: web.Application, data_dir: Path,
                      tmp_path: Path) -> None:
    resp = await client.post("/api/exports", headers=auth(app),
                             json={"ids": ["rec-aaaa-02", "rec-aaaa-05"]})
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/zip"
    blob = await resp.read()
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        zf.extractall(tmp_path)
        manifest = next(n for n in zf.namelist() if n.endswith("MANIFEST.sha256"))
    root = tmp_path / manifest.split("/")[0]
    assert subprocess.run(["sha256sum", "-c", "--quiet", "MANIFEST.sha256"],
                          cwd=root).returncode == 0
    assert {p.name for p in (root / "recordings").iterdir()} == {
        "rec-aaaa-02.opus", "rec-aaaa-02.json", "rec-aaaa-05.opus", "rec-aaaa-05.json"}
    entry = access_entries(data_dir)[-1]
    assert entry["action"] == "export" and entry["ids"] == ["rec-aaaa-02", "rec-aaaa-05"]
    manifest_sha = hashlib.sha256((root / "MANIFEST.sha256").read_bytes()).hexdigest()
    assert entry["manifest_sha256"] == manifest_sha == resp.headers["X-Manifest-SHA256"]
    assert entry["export_id"] == resp.headers["X-Export-Id"]
    # by talkgroup and time window
    resp = await client.post("/api/exports", headers=auth(app), json={
        "talkgroup": "patrol-1", "from": "2024-05-01T12:00:09Z", "to": int(T0 * 1000) + 30000})
    with zipfile.ZipFile(io.BytesIO(await resp.read())) as zf:
        assert sorted(n.split("/", 1)[1] for n in zf.namelist() if n.endswith(".opus")) == [
            "recordings/rec-aaaa-04.opus", "recordings/rec-aaaa-05.opus"]
    for body, status in [({"ids": ["no-such-rec"]}, 404), ({"ids": "rec-aaaa-01"}, 400),
                         ({"ids": ["../../x"]}, 400), ({}, 400), ([1], 400),
                         ({"talkgroup": "patrol-1", "from": "x", "to": 1}, 400),
                         ({"talkgroup": "patrol-1", "from": 5, "to": 1}, 400),
                         ({"talkgroup": "patrol-7", "from": 1, "to": 5}, 404)]:
        resp = await client.post("/api/exports", headers=auth(app), json=body)
        assert resp.status == status, body
    resp = await client.post("/api/exports", headers=auth(app), data=b"{not json")
    assert resp.status == 400


async def test_verify_endpoint(client: Client, app: web.Application, data_dir: Path) -> None:
    body = await (await client.get("/api/audit/verify", headers=auth(app))).json()
    assert body == {"ok": True, "entries": 5, "recordings": 5, "problems": [],
                    "summary": "OK: 5 entries, 5 recordings verified"}
    lines = layout.ledger_path(data_dir).read_bytes().splitlines(keepends=True)
    layout.ledger_path(data_dir).write_bytes(b"".join([lines[0], lines[2], lines[1],
                                                       *lines[3:]]))
    body = await (await client.get("/api/audit/verify", headers=auth(app))).json()
    assert body["ok"] is False and "seq 3 and seq 2: swapped" in body["problems"][0]


async def test_access_log_admin_only(client: Client, app: web.Application) -> None:
    await client.get("/api/recordings", headers=auth(app))
    await client.get("/api/recordings/rec-aaaa-01", headers=auth(app))
    resp = await client.get("/api/audit/access", headers=auth(app))
    assert resp.status == 403
    resp = await client.get("/api/audit/access", headers=auth(app, Role.ADMIN),
                            params={"limit": "2"})
    body = await resp.json()
    assert [(e["action"], e["by"], e["outcome"]) for e in body["entries"]] == [
        ("access_log", "auditor1", "denied"), ("metadata", "auditor1", "ok")]
    assert all("ts" in e and e["remote"] == "127.0.0.1" for e in body["entries"])
    rest = await (await client.get("/api/audit/access", headers=auth(app, Role.ADMIN),
                                   params={"cursor": body["next_cursor"]})).json()
    assert [e["action"] for e in rest["entries"]] == ["search"]
    assert rest["next_cursor"] is None


async def test_nothing_outside_the_store(client: Client, app: web.Application,
                                         data_dir: Path) -> None:
    store: RecordingStore = app[RECORDINGS]
    forged = dict(json.loads((data_dir / "ledger/ledger.jsonl").read_bytes().splitlines()[0]))
    for key in ("seq", "ts", "type", "prev_hash", "entry_hash"):
        forged.pop(key)
    for n, evil in enumerate(["recordings/../index.sqlite3.opus", "../../../etc/passwd.opus",
                              "recordings/escape.opus"]):
        store.ledger.append("transmission", {**forged, "id": f"forged-{n:04}", "file": evil})
    (data_dir / "recordings/escape.opus").symlink_to("/etc/hostname")
    for n in range(3):
        resp = await client.get(f"/api/recordings/forged-{n:04}/audio", headers=auth(app))
        assert resp.status == 404, n


async def test_ledger_unwritable_refuses_access(client: Client, app: web.Application,
                                                data_dir: Path) -> None:
    ledger = data_dir / "ledger/ledger.jsonl"
    ledger.rename(data_dir / "ledger.bak")
    (data_dir / "ledger").rmdir()
    (data_dir / "ledger").write_text("not a directory")
    resp = await client.get("/api/recordings/rec-aaaa-01/wav", headers=auth(app))
    assert resp.status == 503  # an access that cannot be audited does not happen


async def test_retention_runs_in_the_app(data_dir: Path, redis: aioredis.Redis) -> None:
    await make_recordings(data_dir)
    application = base_app(data_dir, redis, retention_days=1)
    async with TestClient(TestServer(application, host="127.0.0.1")):
        for _ in range(100):
            if not (data_dir / "recordings/2024/05/01").exists():
                break
            await asyncio.sleep(0.05)
    deletions = [e for e in application[RECORDINGS].ledger.entries() if e.type == "deletion"]
    assert len(deletions) == 5
