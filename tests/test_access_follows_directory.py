"""Access follows the directory, on every request: a deleted, demoted or changed user, a
revoked token, a signed media URL: the real app (create_app), real Redis, real recordings.

These are the regression tests for an adversarial finding: the HTTP side trusted a token for
its whole life (12 h, up to 366 d from the command line) while the WebSocket already refused
deleted users.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ptt_server.core.config import ExternalIssuer
from ptt_server.core.model import Role
from ptt_server.recording.store import RecordingStore
from ptt_server.service.http_auth import MEDIA_URLS
from ptt_server.service.keys import DIRECTORY, TOKENS

from .conftest import RunningServer, seed_directory, server_config
from .test_recording_store import T0, make_recordings

EXT_ISS = "https://sso.police.example"
REC = "rec-aaaa-04"


@pytest.fixture(scope="module")
def sso_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def app_server(
    data_dir: Path, redis_url: str, sso_key: rsa.RSAPrivateKey
) -> AsyncIterator[RunningServer]:
    from ptt_server.app.wiring import create_app

    seed_directory(data_dir)
    await make_recordings(data_dir)
    pem = sso_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    # retention_days=0: the recordings are from 2024 and must not be purged at start.
    config = server_config(data_dir, redis_url, retention_days=0,
                           external_issuer=ExternalIssuer(EXT_ISS, pem))
    app = create_app(config)
    ts = TestServer(app, host="127.0.0.1")
    await ts.start_server()
    yield RunningServer(url=str(ts.make_url("")).rstrip("/"), config=config, app=app)
    await ts.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(http: aiohttp.ClientSession, server: RunningServer, method: str, path: str,
               token: str | None = None, **kw: Any) -> tuple[int, str | None]:
    headers = bearer(token) if token else {}
    async with http.request(method, server.url + path, headers=headers, **kw) as resp:
        body = await resp.read()
        code = None
        if resp.content_type == "application/json" and resp.status >= 400:
            code = json.loads(body)["error"]["code"]
        return resp.status, code


AUDITOR_READS = [
    ("GET", "/api/recordings", {}), ("GET", f"/api/recordings/{REC}", {}),
    ("GET", f"/api/recordings/{REC}/audio", {}), ("GET", f"/api/recordings/{REC}/wav", {}),
    ("GET", f"/api/recordings/{REC}/waveform", {}),
    ("GET", "/api/talkgroups/patrol-1/timeline",
     {"params": {"from": str(int(T0 * 1000)), "to": str(int(T0 * 1000) + 60_000)}}),
    ("POST", "/api/exports", {"json": {"ids": [REC]}}), ("GET", "/api/audit/verify", {}),
    ("POST", f"/api/recordings/{REC}/media-url", {"json": {"kind": "audio"}}),
]


async def ws_first_reply(server: RunningServer, token: str) -> tuple[dict[str, Any], int | None]:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.url.replace("http://", "ws://") + "/ws") as ws:
            await ws.send_str(json.dumps({"type": "auth", "token": token}))
            reply = json.loads((await ws.receive(timeout=10)).data)
            if reply["type"] == "error":
                await ws.receive(timeout=10)
            return reply, ws.close_code


def access_entries(server: RunningServer) -> list[dict[str, Any]]:
    store = RecordingStore(server.config.data_dir)
    return [e.data for e in store.ledger.entries() if e.type == "access"]


async def test_deleted_auditor_loses_http_access_at_the_next_request(
    app_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    token = app_server.token("aud")
    for method, path, kw in AUDITOR_READS:
        assert (await call(http, app_server, method, path, token, **kw))[0] == 200, path
    app_server.app[DIRECTORY].remove_user("aud")  # type: ignore[index]
    for method, path, kw in [*AUDITOR_READS, ("GET", "/api/me", {})]:
        assert await call(http, app_server, method, path, token, **kw) == (
            401, "token_revoked"), path
    reply, close = await ws_first_reply(app_server, token)
    assert (reply["code"], close) == ("token_revoked", 4401)


async def test_demoted_auditor_loses_recordings_at_the_next_request(
    app_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    token = app_server.token("aud")
    assert (await call(http, app_server, "GET", f"/api/recordings/{REC}/audio", token))[0] == 200
    app_server.app[DIRECTORY].add_user(  # type: ignore[index]
        "aud", Role.OFFICER, ["A"], "pw-aud", alias="Auditor", replace=True)
    for method, path, kw in AUDITOR_READS:
        assert await call(http, app_server, method, path, token, **kw) == (
            403, "forbidden"), path
    # The ledger records the current role, not the token's.
    denied = [e for e in access_entries(app_server) if e["outcome"] == "denied"]
    assert denied and all(e["by"] == "aud" and e["role"] == "officer" for e in denied)


async def test_promotion_applies_at_once_too(
    app_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    token = app_server.token("u1")
    assert await call(http, app_server, "GET", "/api/recordings", token) == (403, "forbidden")
    app_server.app[DIRECTORY].add_user(  # type: ignore[index]
        "u1", Role.AUDITOR, [], "pw-u1", replace=True)
    assert (await call(http, app_server, "GET", "/api/recordings", token))[0] == 200


async def test_alias_priority_and_talkgroups_follow_the_directory(
    app_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    token = app_server.token("u4")
    directory = app_server.app[DIRECTORY]  # type: ignore[index]
    directory.add_user("u4", Role.OFFICER, ["A", "B"], "pw-u4", alias="Unit Four", priority=120,
                       replace=True)
    async with http.get(app_server.url + "/api/me", headers=bearer(token)) as resp:
        me = await resp.json()
    assert (me["alias"], me["priority"], me["talkgroups"]) == ("Unit Four", 120, ["A", "B"])
    async with http.get(app_server.url + "/api/talkgroups", headers=bearer(token)) as resp:
        assert [t["id"] for t in (await resp.json())["talkgroups"]] == ["A", "B"]


async def test_logged_out_token_is_refused_on_http_and_websocket(
    app_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(app_server.url + "/api/login",
                         json={"username": "sup", "password": "pw-sup"}) as resp:
        session = await resp.json()
    token = session["token"]
    assert (await ws_first_reply(app_server, token))[0]["type"] == "welcome"
    async with http.post(app_server.url + "/api/logout", headers=bearer(token),
                         json={"refresh_token": session["refresh_token"]}) as resp:
        assert resp.status == 204
    assert await call(http, app_server, "GET", "/api/me", token) == (401, "token_revoked")
    reply, close = await ws_first_reply(app_server, token)
    assert (reply["code"], close) == ("token_revoked", 4401)


async def test_long_lived_command_line_token_is_revocable(
    app_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    """`ptt-server token NAME --ttl` may mint a service token of months: deleting the user
    (or a logout with it) still ends it at the next request."""
    user = app_server.app[DIRECTORY].get_user("aud")  # type: ignore[index]
    token = app_server.app[TOKENS].issue(user, 180 * 86400)  # type: ignore[index]
    assert (await call(http, app_server, "GET", "/api/recordings", token))[0] == 200
    app_server.app[DIRECTORY].remove_user("aud")  # type: ignore[index]
    assert await call(http, app_server, "GET", "/api/recordings", token) == (
        401, "token_revoked")
    # And one far in the future is refused however it is signed.
    secret = (app_server.config.data_dir / "jwt-signing.key").read_bytes()
    forever = jwt.encode({"sub": "root", "role": "admin", "talkgroups": [], "priority": 150,
                          "alias": "Admin", "iat": int(time.time()), "exp": 253402300799,
                          "iss": "ptt-server", "aud": "ptt", "jti": "j"},
                         secret, algorithm="HS256", headers={"typ": "at+jwt"})
    assert await call(http, app_server, "GET", "/api/recordings", forever) == (
        401, "token_lifetime_invalid")


@pytest.mark.parametrize(("method", "path", "kw"), AUDITOR_READS)
async def test_token_in_the_url_is_refused_everywhere(
    app_server: RunningServer, http: aiohttp.ClientSession, method: str, path: str,
    kw: dict[str, Any],
) -> None:
    token = app_server.token("aud")
    kw = dict(kw)  # the parameter list is shared between tests
    params = {**kw.pop("params", {}), "token": token}
    assert await call(http, app_server, method, path, params=params, **kw) == (
        401, "token_missing")
    assert all("token=" not in e["path"] for e in access_entries(app_server))


# -- signed media URLs -------------------------------------------------------------------------
async def media_url(http: aiohttp.ClientSession, server: RunningServer, token: str,
                    rec: str = REC, **body: Any) -> dict[str, Any]:
    async with http.post(f"{server.url}/api/recordings/{rec}/media-url", headers=bearer(token),
                         json=body) as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def test_media_url_plays_without_a_header_and_carries_no_token(
    app_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    token = app_server.token("aud")
    data = next((app_server.config.data_dir / "recordings").rglob(f"{REC}.opus")).read_bytes()
    link = await media_url(http, app_server, token, kind="audio")
    assert token not in link["url"] and "token" not in link["url"]
    assert 0 < link["expires_at"] - time.time() <= app_server.config.media_url_ttl_s + 1
    async with http.get(app_server.url + link["url"]) as resp:
        assert resp.status == 200 and await resp.read() == data
        assert resp.headers["Cache-Control"] == "no-store"
    async with http.get(app_server.url + link["url"], headers={"Range": "bytes=10-19"}) as resp:
        assert resp.status == 206 and await resp.read() == data[10:20]
    wav = await media_url(http, app_server, token, kind="wav")
    async with http.get(app_server.url + wav["url"]) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "audio/wav"
    dl = await media_url(http, app_server, token, kind="audio", download=True)
    async with http.get(app_server.url + dl["url"]) as resp:
        assert "attachment" in resp.headers["Content-Disposition"]
    plays = [(e["action"], e["by"], e["role"]) for e in access_entries(app_server)
             if e.get("id") == REC]
    assert plays == [("play", "aud", "auditor"), ("play", "aud", "auditor"),
                     ("download", "aud", "auditor")]  # ranges after the first are not ledgered


async def test_media_url_opens_only_its_own_recording(
    app_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    link = (await media_url(http, app_server, app_server.token("aud")))["url"]
    path, _, query = link.partition("?")
    for other in (path.replace(REC, "rec-aaaa-05") + "?" + query,
                  path.replace("/audio", "/wav") + "?" + query,
                  link.replace("download=", "x=") + "&download=1",
                  f"/api/recordings/{REC}?{query}", f"/api/recordings/{REC}/waveform?{query}"):
        status, code = await call(http, app_server, "GET", other)
        assert status == 401 and code in ("media_url_invalid", "token_missing"), other


async def test_media_url_follows_the_directory_and_the_token(
    app_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    directory = app_server.app[DIRECTORY]  # type: ignore[index]
    token = app_server.token("aud")
    link = (await media_url(http, app_server, token))["url"]
    assert (await call(http, app_server, "GET", link))[0] == 200
    directory.add_user("aud", Role.OFFICER, [], "pw-aud", replace=True)
    assert await call(http, app_server, "GET", link) == (403, "forbidden")
    directory.add_user("aud", Role.AUDITOR, [], "pw-aud", replace=True)
    assert (await call(http, app_server, "GET", link))[0] == 200
    directory.remove_user("aud")
    assert await call(http, app_server, "GET", link) == (401, "token_revoked")
    # Bound to the access token it was asked with: a logout ends its links too.
    token = app_server.token("root")
    link = (await media_url(http, app_server, token))["url"]
    async with http.post(app_server.url + "/api/logout", headers=bearer(token), json={}):
        pass
    assert await call(http, app_server, "GET", link) == (401, "token_revoked")


async def test_media_url_expires(app_server: RunningServer, http: aiohttp.ClientSession) -> None:
    urls = app_server.app[MEDIA_URLS]  # type: ignore[index]
    claims = app_server.app[TOKENS].verify(app_server.token("aud"))  # type: ignore[index]
    old, _ = urls.sign(f"/api/recordings/{REC}/audio", sub="aud", role="auditor",
                       jti=claims.jti, now=time.time() - 120)
    assert await call(http, app_server, "GET", old) == (401, "media_url_expired")


async def test_media_url_only_for_auditors(
    app_server: RunningServer, http: aiohttp.ClientSession
) -> None:
    status, code = await call(http, app_server, "POST", f"/api/recordings/{REC}/media-url",
                              app_server.token("sup"), json={"kind": "audio"})
    assert (status, code) == (403, "forbidden")
    for body in ({"kind": "ogg"}, {"kind": "audio", "download": "yes"}):
        status, code = await call(http, app_server, "POST", f"/api/recordings/{REC}/media-url",
                                  app_server.token("aud"), json=body)
        assert (status, code) == (400, "bad_request")
    status, _ = await call(http, app_server, "POST", "/api/recordings/rec-none-99/media-url",
                           app_server.token("aud"), json={})
    assert status == 404


# -- external users are namespaced by issuer ---------------------------------------------------
def sso_token(key: rsa.RSAPrivateKey, sub: str, role: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "role": role, "talkgroups": [], "iss": EXT_ISS, "aud": "ptt",
                       "iat": now, "exp": now + 600, "jti": f"sso-{sub}"},
                      key, algorithm="RS256", headers={"typ": "at+jwt"})


async def test_external_user_is_not_the_local_user_of_the_same_name(
    app_server: RunningServer, http: aiohttp.ClientSession, sso_key: rsa.RSAPrivateKey
) -> None:
    # An SSO account called "root" (a local admin's name) with the SSO's officer role.
    token = sso_token(sso_key, "root", "officer")
    async with http.get(app_server.url + "/api/me", headers=bearer(token)) as resp:
        me = await resp.json()
    assert me["sub"] == "ext:sso:root" and me["role"] == "officer" and me["iss"] == EXT_ISS
    assert await call(http, app_server, "GET", "/api/audit/access", token) == (403, "forbidden")
    reply, _ = await ws_first_reply(app_server, token)
    assert reply["type"] == "welcome" and reply["unit"] == "ext:sso:root"
    # Deleting the local "root" does not touch it, nor the other way round.
    app_server.app[DIRECTORY].remove_user("root")  # type: ignore[index]
    assert (await call(http, app_server, "GET", "/api/me", token))[0] == 200
    # An external auditor's reads are ledgered under the namespaced name.
    auditor = sso_token(sso_key, "aud", "auditor")
    assert (await call(http, app_server, "GET", "/api/recordings", auditor))[0] == 200
    assert access_entries(app_server)[-1]["by"] == "ext:sso:aud"
