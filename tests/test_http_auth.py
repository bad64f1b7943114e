"""Login, refresh, logout, /api/me, /api/talkgroups and require_claims on a real aiohttp app
and real Redis; the security headers of the wired app (create_app) on every response."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
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

from .conftest import RunningServer

TTL = 900  # a sign-in's sliding lifetime (the refresh token's)
ACCESS_TTL = 300


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
    config = Config(data_dir=data_dir, http=True, token_ttl_s=TTL, access_token_ttl_s=ACCESS_TTL)
    app = web.Application()
    app[CONFIG] = config
    app[REDIS] = redis
    app[DIRECTORY] = directory
    app[TOKENS] = TokenAuthority(
        load_or_create_signing_key(data_dir), issuer=config.jwt_issuer,
        audience=config.jwt_audience,
    )
    app[LOGIN_LIMITER] = LoginLimiter(redis, account_budget=3, base_delay_s=30, max_delay_s=60)
    add_routes(app)
    app.router.add_get("/api/audit-only", audit_only)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def error_code(resp: Any) -> str:
    body = await resp.json()
    assert set(body) == {"error"} and set(body["error"]) - {"retry_after"} == {"code", "message"}
    return str(body["error"]["code"])


async def login(client: TestClient[Any, Any], name: str, password: str) -> Any:
    return await client.post("/api/login", json={"username": name, "password": password})


async def session_for(client: TestClient[Any, Any], name: str) -> dict[str, Any]:
    resp = await login(client, name, "pw-" + name)
    assert resp.status == 200
    return dict(await resp.json())


async def token_for(client: TestClient[Any, Any], name: str) -> str:
    return str((await session_for(client, name))["token"])


async def refresh(client: TestClient[Any, Any], refresh_token: object) -> Any:
    return await client.post("/api/refresh", json={"refresh_token": refresh_token})


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
    # A short access token, and a refresh token for a sign-in that lasts TTL without use.
    assert before + ACCESS_TTL <= body["expires_at"] <= int(time.time()) + ACCESS_TTL
    assert before + TTL - 1 <= body["refresh_expires_at"] <= int(time.time()) + TTL
    assert body["token_type"] == "Bearer" and body["refresh_token"]
    claims = client.app[TOKENS].verify(body["token"])
    assert claims.sub == "u1" and claims.exp == body["expires_at"] and claims.jti
    assert claims.iat is not None and claims.exp - claims.iat == ACCESS_TTL


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


async def test_token_in_the_url_is_not_accepted(client: TestClient[Any, Any]) -> None:
    """URLs end up in histories, caches and logs (RFC 6750 section 5.3): header only."""
    token = await token_for(client, "aud")
    for name in ("token", "access_token"):
        resp = await client.get("/api/audit-only", params={name: token})
        assert resp.status == 401 and await error_code(resp) == "token_missing"
    resp = await client.get("/api/audit-only", headers=bearer(token))
    assert resp.status == 200 and (await resp.json()) == {"ok": "aud"}


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


# -- refresh and logout ------------------------------------------------------------------------
async def test_refresh_rotates_and_follows_the_directory(client: TestClient[Any, Any]) -> None:
    first = await session_for(client, "u1")
    client.app[DIRECTORY].add_user("u1", Role.OFFICER, ["north", "south"], "pw-u1",
                                   alias="Unit One", replace=True)
    resp = await refresh(client, first["refresh_token"])
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    second = await resp.json()
    assert second["refresh_token"] != first["refresh_token"]
    claims = client.app[TOKENS].verify(second["token"])
    # The new access token carries the directory's view now.
    assert claims.talkgroups == ("north", "south") and claims.alias == "Unit One"
    assert second["user"]["talkgroups"] == ["north", "south"]
    assert claims.jti != client.app[TOKENS].verify(first["token"]).jti
    third = await (await refresh(client, second["refresh_token"])).json()
    assert (await client.get("/api/me", headers=bearer(third["token"]))).status == 200


async def test_refresh_token_reuse_ends_the_sign_in(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 6819 section 5.2.2.3: a used refresh token means a copy exists; both parties lose."""
    stolen = await session_for(client, "u1")
    legit = await (await refresh(client, stolen["refresh_token"])).json()
    assert (await client.get("/api/me", headers=bearer(legit["token"]))).status == 200
    with caplog.at_level(logging.WARNING, logger="ptt.access"):
        resp = await refresh(client, stolen["refresh_token"])
    assert resp.status == 401 and await error_code(resp) == "refresh_invalid"
    assert any("reused" in r.getMessage() for r in caplog.records)
    # The chain is revoked, and with it the access token it issued last.
    resp = await refresh(client, legit["refresh_token"])
    assert resp.status == 401 and await error_code(resp) == "refresh_invalid"
    resp = await client.get("/api/me", headers=bearer(legit["token"]))
    assert resp.status == 401 and await error_code(resp) == "token_revoked"
    # Another sign-in of the same user is not affected.
    assert (await client.get("/api/me", headers=bearer(await token_for(client, "u1")))).status \
        == 200


async def test_refresh_refused_for_a_deleted_user(client: TestClient[Any, Any]) -> None:
    session = await session_for(client, "sup")
    client.app[DIRECTORY].remove_user("sup")
    resp = await refresh(client, session["refresh_token"])
    assert resp.status == 401 and await error_code(resp) == "token_revoked"
    client.app[DIRECTORY].add_user("sup", Role.SUPERVISOR, ["north"], "pw-sup")
    # Re-creating the name does not bring the old sign-in back.
    resp = await refresh(client, session["refresh_token"])
    assert resp.status == 401 and await error_code(resp) == "refresh_invalid"


@pytest.mark.parametrize("body", [b"{}", b'{"refresh_token": 5}', b'{"refresh_token": "x.1.y"}',
                                  b"[]", b"nope"])
async def test_refresh_bad_requests(client: TestClient[Any, Any], body: bytes) -> None:
    resp = await client.post("/api/refresh", data=body,
                             headers={"Content-Type": "application/json"})
    assert resp.status in (400, 401)
    assert await error_code(resp) in ("bad_request", "refresh_invalid")


@pytest.mark.parametrize("path", ["/api/refresh", "/api/logout"])
async def test_refresh_and_logout_take_json_only(client: TestClient[Any, Any], path: str) -> None:
    session = await session_for(client, "u1")
    resp = await client.post(path, data=json.dumps({"refresh_token": session["refresh_token"]}),
                             headers={"Content-Type": "text/plain"})
    assert resp.status == 415 and await error_code(resp) == "unsupported_media_type"
    assert (await refresh(client, session["refresh_token"])).status == 200  # nothing happened


async def test_logout_revokes_both_tokens(client: TestClient[Any, Any]) -> None:
    session = await session_for(client, "aud")
    other = await session_for(client, "aud")
    resp = await client.post("/api/logout", json={"refresh_token": session["refresh_token"]},
                             headers=bearer(session["token"]))
    assert resp.status == 204
    resp = await client.get("/api/me", headers=bearer(session["token"]))
    assert resp.status == 401 and await error_code(resp) == "token_revoked"
    assert (await refresh(client, session["refresh_token"])).status == 401
    # Only that sign-in: the same user elsewhere keeps working.
    assert (await client.get("/api/me", headers=bearer(other["token"]))).status == 200


async def test_logout_with_only_one_of_the_tokens(client: TestClient[Any, Any]) -> None:
    # The refresh token alone (the access token has expired): its chain ends, and the last
    # access token it issued is revoked too.
    session = await session_for(client, "u1")
    assert (await client.post("/api/logout",
                              json={"refresh_token": session["refresh_token"]})).status == 204
    assert (await client.get("/api/me", headers=bearer(session["token"]))).status == 401
    # The access token alone (e.g. a service token minted by the command line).
    user = User("u1", Role.OFFICER, ("north",), "Unit 1", 100)
    service = client.app[TOKENS].issue(user, 30 * 86400)
    assert (await client.get("/api/me", headers=bearer(service))).status == 200
    assert (await client.post("/api/logout", json={}, headers=bearer(service))).status == 204
    resp = await client.get("/api/me", headers=bearer(service))
    assert resp.status == 401 and await error_code(resp) == "token_revoked"
    # Nothing valid at all: still 204, nothing to learn.
    resp = await client.post("/api/logout", data=b"", headers={
        "Content-Type": "application/json", "Authorization": "Bearer garbage"})
    assert resp.status == 204


async def test_me_shows_current_claims(client: TestClient[Any, Any]) -> None:
    token = await token_for(client, "u1")
    client.app[DIRECTORY].add_user("u1", Role.SUPERVISOR, ["north"], "pw-u1", replace=True)
    body = await (await client.get("/api/me", headers=bearer(token))).json()
    assert body["role"] == "supervisor" and body["permissions"]["override"] is True


# -- security headers on every response (the wired app) ---------------------------------------
SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy",
                    "Permissions-Policy")


def assert_secure(headers: Any, path: str) -> None:
    for name in SECURITY_HEADERS:
        assert name in headers, (path, name)
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    server = headers.get("Server", "")
    assert not any(c.isdigit() for c in server) and "aiohttp" not in server.lower(), server


async def test_security_headers_on_every_response(server: RunningServer) -> None:
    tok = server.token("aud")
    cases = [
        ("GET", "/", None, 200), ("GET", "/js/auth.js", None, 200),
        ("GET", "/no/such/page", None, 404), ("GET", "/js/missing.js", None, 404),
        ("GET", "/api/me", None, 401), ("GET", "/api/me", tok, 200),
        ("GET", "/api/recordings", tok, 200), ("GET", "/api/recordings/nope", tok, 400),
        ("GET", "/api/recordings/rec-0000-0000", tok, 404),
        ("GET", "/api/audit/access", tok, 403), ("PUT", "/api/login", None, 405),
        ("POST", "/api/login", None, 415), ("GET", "/api/nothing-here", None, 404),
        ("GET", "/healthz", None, 200),
    ]
    async with aiohttp.ClientSession() as http:
        for method, path, token, status in cases:
            headers = {} if token is None else {"Authorization": f"Bearer {token}"}
            async with http.request(method, server.url + path, headers=headers) as resp:
                assert resp.status == status, (method, path, await resp.text())
                assert_secure(resp.headers, path)
                if path.startswith("/api/"):
                    assert resp.headers["Cache-Control"] == "no-store", path


async def test_security_headers_on_streamed_and_failed_responses(
    data_dir: Path, redis_url: str
) -> None:
    """Responses a handler prepares itself, and aiohttp's own 500 page."""
    from ptt_server.app.wiring import create_app

    from .conftest import seed_directory, server_config

    seed_directory(data_dir)
    app = create_app(server_config(data_dir, redis_url))

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    async def streamed(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"data")
        return resp

    app.router.add_get("/api/boom", boom)
    app.router.add_get("/api/streamed", streamed)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        for path, status in (("/api/boom", 500), ("/api/streamed", 200)):
            resp = await c.get(path)
            assert resp.status == status
            assert_secure(resp.headers, path)
            assert resp.headers["Cache-Control"] == "no-store"
            assert "a bug" not in await resp.text()
