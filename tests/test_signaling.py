"""Signaling over the real WebSocket: auth failures refused, bad input answered, never fatal."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ptt_server.app.wiring import create_app
from ptt_server.core.config import ExternalIssuer

from .conftest import RunningServer, seed_directory, server_config

EXTERNAL_ISS = "https://sso.police.example"


@pytest.fixture(scope="module")
def sso_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.fixture
async def sso_server(
    data_dir: Path, redis_url: str, sso_key: rsa.RSAPrivateKey
) -> AsyncIterator[RunningServer]:
    seed_directory(data_dir)
    config = server_config(
        data_dir, redis_url,
        external_issuer=ExternalIssuer(issuer=EXTERNAL_ISS, public_key_pem=public_pem(sso_key),
                                       algorithms=("RS256",)),
    )
    app = create_app(config)
    ts = TestServer(app, host="127.0.0.1")
    await ts.start_server()
    yield RunningServer(url=str(ts.make_url("")).rstrip("/"), config=config, app=app)
    await ts.close()


async def first_reply(url: str, first: str | bytes) -> tuple[dict[str, object], int | None]:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url.replace("http://", "ws://") + "/ws") as ws:
            if isinstance(first, bytes):
                await ws.send_bytes(first)
            else:
                await ws.send_str(first)
            msg = await ws.receive(timeout=5)
            reply = json.loads(msg.data)
            closing = await ws.receive(timeout=5)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            return reply, ws.close_code


def claims(**over: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "sub": "u1", "role": "officer", "talkgroups": ["A"], "priority": 100,
        "alias": "Unit 1", "iat": now, "exp": now + 600, "iss": "ptt-server", "aud": "ptt",
    }
    base.update(over)
    return base


def b64(d: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


async def test_valid_token_is_welcomed(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.url.replace("http://", "ws://") + "/ws") as ws:
            await ws.send_str(json.dumps({"type": "auth", "token": server.token("u1")}))
            welcome = json.loads((await ws.receive(timeout=5)).data)
    assert welcome["type"] == "welcome"
    assert welcome["unit"] == "u1" and welcome["role"] == "officer"


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ('{"type":"join","talkgroup":"A"}', "not_authenticated"),
        ("not json", "bad_json"),
        ('{"type":"auth"}', "bad_message"),
        ('{"type":"auth","token":"abc.def"}', "token_malformed"),
    ],
)
async def test_unauthenticated_first_messages_are_refused(
    server: RunningServer, first: str, code: str
) -> None:
    reply, close_code = await first_reply(server.url, first)
    assert reply["type"] == "error" and reply["code"] == code
    assert close_code == 4401


async def test_forged_expired_and_misdirected_tokens_are_refused(
    sso_server: RunningServer, sso_key: rsa.RSAPrivateKey
) -> None:
    secret = (sso_server.config.data_dir / "jwt-signing.key").read_bytes()
    pem = public_pem(sso_key)
    cases = {
        "forged": (jwt.encode(claims(), "not-the-secret-at-all-0123456789ab", "HS256"),
                   "token_invalid_signature"),
        "expired": (jwt.encode(claims(exp=int(time.time()) - 60), secret, "HS256"),
                    "token_expired"),
        "wrong_audience": (jwt.encode(claims(aud="other"), secret, "HS256"),
                           "token_wrong_audience"),
        "wrong_issuer": (jwt.encode(claims(iss="someone-else"), secret, "HS256"),
                         "token_wrong_issuer"),
        "alg_none": (f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims())}.",
                     "token_algorithm_rejected"),
        # RFC 8725 section 2.1: an HMAC signed with the SSO's *public* key must not pass.
        "hs_rs_confusion": (
            f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims(iss=EXTERNAL_ISS))}."
            + base64.urlsafe_b64encode(
                __import__("hmac").new(
                    pem.encode(),
                    f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(claims(iss=EXTERNAL_ISS))}"
                    .encode(), "sha256").digest()).rstrip(b"=").decode(),
            "token_algorithm_rejected",
        ),
        "unknown_role": (jwt.encode(claims(role="mayor"), secret, "HS256"),
                         "token_claims_invalid"),
    }
    for name, (token, code) in cases.items():
        reply, close_code = await first_reply(
            sso_server.url, json.dumps({"type": "auth", "token": token})
        )
        assert (reply["type"], reply["code"], close_code) == ("error", code, 4401), name


async def test_external_issuer_token_is_accepted(
    sso_server: RunningServer, sso_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(claims(iss=EXTERNAL_ISS, sub="sso-77", alias="SSO 77"), sso_key, "RS256")
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(sso_server.url.replace("http://", "ws://") + "/ws") as ws:
            await ws.send_str(json.dumps({"type": "auth", "token": token}))
            welcome = json.loads((await ws.receive(timeout=5)).data)
            assert welcome["type"] == "welcome" and welcome["unit"] == "sso-77"
            await ws.send_str(json.dumps({"type": "join", "talkgroup": "A"}))
            joined = json.loads((await ws.receive(timeout=5)).data)
            assert joined["type"] == "joined"


async def test_bad_messages_get_errors_and_the_session_survives(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.url.replace("http://", "ws://") + "/ws") as ws:
            await ws.send_str(json.dumps({"type": "auth", "token": server.token("u1")}))
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "welcome"
            probes = [
                ("{oops", "bad_json"),
                ('["a list"]', "bad_message"),
                ('{"type":"teleport"}', "unknown_type"),
                ('{"type":"join"}', "bad_message"),
                ('{"type":"join","talkgroup":"../etc"}', "bad_message"),
                ('{"type":"join","talkgroup":"NOPE"}', "unknown_talkgroup"),
                ('{"type":"join","talkgroup":"CMD"}', "forbidden"),  # an officer, not command
                ('{"type":"floor_request","talkgroup":"A"}', "not_joined"),
                ('{"type":"offer","sdp":"hello"}', "bad_sdp"),
                ('{"type":"offer","sdp":"v=0\\r\\nm=audio 9 UDP 0\\r\\n"}', "bad_sdp"),
                ('{"type":"answer","sdp":"v=0"}', "bad_message"),
                ('{"type":"candidate","candidate":"candidate:1 1 udp 1 1.2.3.4 9 typ host"}',
                 "no_peer_connection"),
                ('{"type":"auth","token":"x"}', "already_authenticated"),
                ('{"type":"floor_revoke","talkgroup":"A"}', "forbidden"),
                (json.dumps({"type": "offer", "sdp": "v=0" + "x" * 70000}), "too_large"),
            ]
            for raw, code in probes:
                await ws.send_str(raw)
                reply = json.loads((await ws.receive(timeout=5)).data)
                assert (reply["type"], reply["code"]) == ("error", code), raw
            await ws.send_bytes(b"\x00\x01")
            reply = json.loads((await ws.receive(timeout=5)).data)
            assert reply["code"] == "bad_message"
            # Still alive and useful.
            await ws.send_str('{"type":"ping","id":7}')
            pong = json.loads((await ws.receive(timeout=5)).data)
            assert pong == {**pong, "type": "pong", "id": 7}
            await ws.send_str('{"type":"join","talkgroup":"A"}')
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "joined"


async def test_auditor_cannot_listen_live(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.url.replace("http://", "ws://") + "/ws") as ws:
            await ws.send_str(json.dumps({"type": "auth", "token": server.token("aud")}))
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "welcome"
            for mode in ("member", "monitor"):
                await ws.send_str(json.dumps({"type": "join", "talkgroup": "A", "mode": mode}))
                reply = json.loads((await ws.receive(timeout=5)).data)
                assert reply["code"] == "forbidden"


async def test_flooding_is_rate_limited_not_fatal(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.url.replace("http://", "ws://") + "/ws") as ws:
            await ws.send_str(json.dumps({"type": "auth", "token": server.token("u1")}))
            await ws.receive(timeout=5)
            for i in range(300):
                await ws.send_str(json.dumps({"type": "ping", "id": i}))
            codes = []
            for _ in range(300):
                codes.append(json.loads((await ws.receive(timeout=5)).data).get("code"))
            assert "rate_limited" in codes
            assert codes.count(None) >= 100


async def test_removed_user_is_refused_and_changes_apply_at_sign_in(
    server: RunningServer,
) -> None:
    from ptt_server.identity.directory import Directory

    directory = Directory(server.config.data_dir / "directory.sqlite3")
    old_token = server.token("u4")
    directory.add_user("u4", directory.get_user("u4").role, ["A"], "pw",  # type: ignore[union-attr]
                       alias="Unit 4 (moved)", replace=True)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.url.replace("http://", "ws://") + "/ws") as ws:
            await ws.send_str(json.dumps({"type": "auth", "token": old_token}))
            welcome = json.loads((await ws.receive(timeout=5)).data)
            assert welcome["talkgroups"] == ["A"] and welcome["alias"] == "Unit 4 (moved)"
    directory.remove_user("u4")
    reply, close_code = await first_reply(
        server.url, json.dumps({"type": "auth", "token": old_token})
    )
    assert (reply["code"], close_code) == ("token_revoked", 4401)
