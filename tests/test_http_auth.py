"""Login, /api/me, /api/talkgroups and require_claims on a real aiohttp app and real Redis."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from ptt_server.core.config import Config
from ptt_server.core.model import Role, TalkgroupKind, User
from ptt_server.identity.auth import LoginLimiter, TokenAuthority, load_or_create_signing_key
from ptt_server.identity.directory import Directory
from ptt_server.service.http_auth import add_routes, require_claims
from ptt_server.service.keys import CONFIG, DIRECTORY, LOGIN_LIMITER, REDIS, TOKENS

TTL = 900


async def audit_only(request: web.Request) -> web.Response:
    claims = await require_claims(request, roles={Role.AUDITOR, Role.ADMIN})
    return web.json_response({"ok": claims.sub})


@pytest.fixture
async def client(data_dir: Path, redis: aioredis.Redis) -> AsyncIterator[TestClient[Any, Any]]:
    directory = Directory(data_dir)
    directory.add_talkgroup("north", "North")
    directory.add_talkgroup("south", "South", max_duration_s=20)
    directory.add_talkgroup("cmd", "Command", kind=TalkgroupKind.COMMAND)
    directory.add_user("u1", Role.OFFICER, ["north"], "pw-u1", alias="Unit 1")
    directory.add_user("sup", Role.SUPERVISOR, ["north"], "pw-sup")
    directory.add_user("aud", Role.AUDITOR, [], "pw-aud")
    config = Config(data_dir=data_dir, http=True, token_ttl_s=TTL)
    app = web.Application()
    app[CONFIG] = config
    app[REDIS] = redis
    app[DIRECTORY] = directory
    app[TOKENS] = TokenAuthority(
        load_or_create_signing_key(data_dir), issuer=config.jwt_issuer,
        audience=config.jwt_audience,
    )
    app[LOGIN_LIMITER] = LoginLimiter(redis, max_failures=3, window_s=60)
    add_routes(app)
    app.router.add_get("/api/audit-only", audit_only)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def error_code(resp: Any) -> str:
    body = await resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return str(body["error"]["code"])


async def login(client: TestClient[Any, Any], name: str, password: str) -> Any:
    return await client.post("/api/login", json={"username": name, "password": password})


async def token_for(client: TestClient[Any, Any], name: str) -> str:
    resp = await login(client, name, "pw-" + name)
    assert resp.status == 200
    return str((await resp.json())["token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_login_success(client: TestClient[Any, Any]) -> None:
    before = int(time.time())
    resp = await login(client, "u1", "pw-u1")
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert body["user"] == {
        "name": "u1", "role": "officer", "alias": "Unit 1", "talkgroups": ["north"],
        "priority": 100,
    }
    assert before + TTL <= body["expires_at"] <= int(time.time()) + TTL
    claims = client.app[TOKENS].verify(body["token"])
    assert claims.sub == "u1" and claims.exp == body["expires_at"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'"u1"',
        b"{}",
        b'{"username": "u1"}',
        b'{"password": "pw-u1"}',
        b'{"username": 1, "password": "pw-u1"}',
        b'{"username": "u1", "password": null}',
        b'{"username": "", "password": "pw-u1"}',
        b'{"username": "u1", "password": ""}',
        json.dumps({"username": "x" * 65, "password": "pw"}).encode(),
        b"\xff\xfe",
    ],
)
async def test_login_bad_request(client: TestClient[Any, Any], body: bytes) -> None:
    resp = await client.post(
        "/api/login", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert await error_code(resp) == "bad_request"


async def test_login_failed_same_for_unknown_user(client: TestClient[Any, Any]) -> None:
    wrong = await login(client, "u1", "nope")
    unknown = await login(client, "ghost", "nope")
    assert wrong.status == unknown.status == 401
    a, b = await wrong.json(), await unknown.json()
    assert a == b and a["error"]["code"] == "login_failed"


async def test_login_rate_limited(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(3):
        assert (await login(client, "u1", "nope")).status == 401
    # Even the right password is refused now: guessing stops, whatever the guess.
    resp = await login(client, "u1", "pw-u1")
    assert resp.status == 429
    assert await error_code(resp) == "login_rate_limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    # Other accounts still work.
    assert (await login(client, "sup", "pw-sup")).status == 200
    assert any(r.name == "ptt.access" and "rate limited" in r.getMessage()
               for r in caplog.records)


async def test_success_clears_failures(client: TestClient[Any, Any]) -> None:
    for _ in range(2):
        await login(client, "u1", "nope")
    assert (await login(client, "u1", "pw-u1")).status == 200
    for _ in range(2):
        await login(client, "u1", "nope")
    assert (await login(client, "u1", "pw-u1")).status == 200


async def test_me(client: TestClient[Any, Any]) -> None:
    token = await token_for(client, "sup")
    resp = await client.get("/api/me", headers=bearer(token))
    assert resp.status == 200
    body = await resp.json()
    assert body["sub"] == body["name"] == "sup"
    assert body["role"] == "supervisor" and body["talkgroups"] == ["north"]
    assert body["priority"] == 150 and body["alias"] == "sup"
    assert body["iss"] == "ptt-server" and body["aud"] == "ptt" and body["exp"] > time.time()
    assert body["permissions"] == {"audit": False, "override": True}


async def test_me_requires_token(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/me")
    assert resp.status == 401 and await error_code(resp) == "token_missing"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = await client.get("/api/me", headers={"Authorization": "Basic dTE6cHc="})
    assert resp.status == 401 and await error_code(resp) == "token_missing"
    resp = await client.get("/api/me", headers=bearer("garbage"))
    assert resp.status == 401 and await error_code(resp) == "token_malformed"
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]


async def test_expired_and_forged_tokens(client: TestClient[Any, Any]) -> None:
    tokens = client.app[TOKENS]
    user = User("u1", Role.OFFICER, ("north",), "Unit 1", 100)
    old = tokens.issue(user, 60, now=time.time() - 3600)
    resp = await client.get("/api/me", headers=bearer(old))
    assert resp.status == 401 and await error_code(resp) == "token_expired"
    other = TokenAuthority(b"z" * 32, issuer="ptt-server", audience="ptt")
    resp = await client.get("/api/me", headers=bearer(other.issue(user, 60)))
    assert resp.status == 401 and await error_code(resp) == "token_invalid_signature"


async def test_token_query_parameter(client: TestClient[Any, Any]) -> None:
    token = await token_for(client, "aud")
    resp = await client.get("/api/audit-only", params={"token": token})
    assert resp.status == 200 and (await resp.json()) == {"ok": "aud"}
    # The header wins when both are present.
    resp = await client.get(
        "/api/audit-only", params={"token": token}, headers=bearer("garbage")
    )
    assert resp.status == 401


async def test_roles_enforced_and_logged(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    token = await token_for(client, "u1")
    caplog.set_level(logging.WARNING, logger="ptt.access")
    resp = await client.get("/api/audit-only", headers=bearer(token))
    assert resp.status == 403 and await error_code(resp) == "forbidden"
    [record] = [r for r in caplog.records if r.getMessage() == "forbidden"]
    assert record.name == "ptt.access"
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["unit"] == "u1" and fields["role"] == "officer"
    assert fields["method"] == "GET" and fields["path"] == "/api/audit-only"
    assert fields["remote"] == "127.0.0.1"
    assert (await client.get("/api/audit-only", headers=bearer(
        await token_for(client, "aud")))).status == 200


async def talkgroup_view(client: TestClient[Any, Any], name: str) -> list[dict[str, Any]]:
    resp = await client.get("/api/talkgroups", headers=bearer(await token_for(client, name)))
    assert resp.status == 200
    return list((await resp.json())["talkgroups"])


async def test_talkgroups_for_officer(client: TestClient[Any, Any]) -> None:
    assert await talkgroup_view(client, "u1") == [
        {"id": "north", "name": "North", "kind": "normal", "access": "member",
         "max_duration_s": None},
    ]


async def test_talkgroups_for_supervisor(client: TestClient[Any, Any]) -> None:
    view = {t["id"]: (t["access"], t["kind"]) for t in await talkgroup_view(client, "sup")}
    assert view == {
        "cmd": ("member", "command"), "north": ("member", "normal"),
        "south": ("monitor", "normal"),
    }


async def test_talkgroups_for_auditor(client: TestClient[Any, Any]) -> None:
    assert await talkgroup_view(client, "aud") == []


async def test_talkgroups_see_directory_changes(client: TestClient[Any, Any]) -> None:
    token = await token_for(client, "sup")
    client.app[DIRECTORY].add_talkgroup("ops", kind="command")
    resp = await client.get("/api/talkgroups", headers=bearer(token))
    ids = [t["id"] for t in (await resp.json())["talkgroups"]]
    assert "ops" in ids


async def test_talkgroups_requires_token(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/api/talkgroups")
    assert resp.status == 401 and await error_code(resp) == "token_missing"
