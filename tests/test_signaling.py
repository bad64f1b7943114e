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
        # Used to be an unhandled RecursionError in json.loads: close 1006 and a traceback.
        ("[" * 10_000 + "]" * 10_000, "bad_message"),
        ('{"type":"auth","token":' + "9" * 5000 + "}", "bad_message"),
        ('{"type":"auth","token":NaN}', "bad_json"),
    ],
)
async def test_unauthenticated_first_messages_are_refused(
    server: RunningServer, first: str, code: str
) -> None:
    reply, close_code = await first_reply(server.url, first)
    assert reply["type"] == "error" and reply["code"] == code
    assert close_code == 4401
    assert_generic(reply)


# Fragments of library exception texts that once reached clients.
LIBRARY_TEXT = ("NoneType", "attribute", "sys.", "Traceback", "Expecting", "line 1 column",
                "int_max_str_digits", "Exceeds the limit", "decode")


def assert_generic(reply: dict[str, object]) -> None:
    """An error's message is one of ours: short, and nothing a library said."""
    message = str(reply.get("message", ""))
    assert len(message) <= 120, message
    assert not any(fragment in message for fragment in LIBRARY_TEXT), message


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
    # An external issuer types its access tokens (RFC 9068) and gives each a jti; its users are
    # namespaced by issuer so they can never pass for a local user of the same name.
    token = jwt.encode(
        claims(iss=EXTERNAL_ISS, sub="sso-77", alias="SSO 77", jti="sso-jti-1"), sso_key,
        "RS256", headers={"typ": "at+jwt"},
    )
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(sso_server.url.replace("http://", "ws://") + "/ws") as ws:
            await ws.send_str(json.dumps({"type": "auth", "token": token}))
            welcome = json.loads((await ws.receive(timeout=5)).data)
            assert welcome["type"] == "welcome" and welcome["unit"] == "ext:sso:sso-77"
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


async def test_hostile_json_gets_specific_codes_not_internal(server: RunningServer) -> None:
    deep = "[" * 10_000 + "]" * 10_000
    probes = [
        (deep, "bad_message"),
        ('{"type":"ping","id":[[[[[[[[[1]]]]]]]]]}', "bad_message"),  # nine levels
        ('{"type":"ping","id":1' + "0" * 400 + "}", "bad_message"),  # 10^400
        ('{"type":"ping","id":' + "7" * 5000 + "}", "bad_message"),  # over int()'s limit
        ('{"type":"ping","id":1e400}', "bad_message"),  # a float that overflows
        ('{"type":"ping","id":9007199254740992}', "bad_message"),  # 2**53
        ('{"type":"emergency_start","talkgroup":"A",'
         '"location":{"lat":1,"lon":2,"accuracy":NaN}}', "bad_json"),
        ('{"type":"emergency_start","talkgroup":"A",'
         '"location":{"lat":1,"lon":2,"accuracy":-Infinity}}', "bad_json"),
        ('{"type":"emergency_start","talkgroup":"A",'
         '"location":{"lat":91,"lon":2}}', "bad_message"),
        ('{"type":"emergency_start","talkgroup":"A",'
         '"location":{"lat":1,"lon":2,"accuracy":-5}}', "bad_message"),
        ('{"type":"ping","type":"join"}', "bad_json"),  # duplicate names
        ('{"type":"ping","id":"\\ud800"}', "bad_message"),  # a lone surrogate
        ('{"type":"ping","id":"' + "x" * 65 + '"}', "bad_message"),
        ('{"type":"candidate","candidate":"","sdpMLineIndex":99}', "bad_message"),
        ('{"type":"candidate","candidate":"","sdpMid":"' + "m" * 33 + '"}', "bad_message"),
        ('{"type":"' + "t" * 1000 + '"}', "unknown_type"),
    ]
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.url.replace("http://", "ws://") + "/ws") as ws:
            await ws.send_str(json.dumps({"type": "auth", "token": server.token("u1")}))
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "welcome"
            for raw, code in probes:
                await ws.send_str(raw)
                reply = json.loads((await ws.receive(timeout=5)).data)
                assert (reply["type"], reply["code"]) == ("error", code), raw[:80]
                assert_generic(reply)
                assert "t" * 100 not in str(reply["message"])  # the client's text is not echoed
            await ws.send_str('{"type":"ping","id":1}')
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "pong"


async def aiortc_offer() -> str:
    from aiortc import RTCPeerConnection

    from ptt_server.media import ice

    pc = RTCPeerConnection(ice.rtc_configuration([]))
    try:
        pc.addTransceiver("audio", direction="sendrecv")
        ice.pin_host_addresses(pc, ["127.0.0.1"])
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


async def test_offers_aiortc_would_choke_on_get_bad_sdp_with_a_fixed_message(
    server: RunningServer,
) -> None:
    offer = await aiortc_offer()
    lines = offer.split("\r\n")
    fingerprints = [line for line in lines if line.startswith("a=fingerprint:")]
    mutations = {
        # aiortc's own error for this one was "'NoneType' object has no attribute 'role'".
        "no setup": [line for line in lines if not line.startswith("a=setup:")],
        "no fingerprint": [line for line in lines if line not in fingerprints],
        "PCMU only": [line.replace("opus/48000/2", "PCMU/8000") for line in lines],
        "bad c= line": [("c=IN IP9 x" if line.startswith("c=") else line) for line in lines],
    }
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(server.url.replace("http://", "ws://") + "/ws") as ws:
            await ws.send_str(json.dumps({"type": "auth", "token": server.token("u1")}))
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "welcome"
            for name, mutated in mutations.items():
                await ws.send_str(json.dumps({"type": "offer", "sdp": "\r\n".join(mutated)}))
                reply = json.loads((await ws.receive(timeout=10)).data)
                assert (reply["type"], reply["code"]) == ("error", "bad_sdp"), name
                assert_generic(reply)
            # The real offer still works afterwards: a refused first offer left nothing behind.
            await ws.send_str(json.dumps({"type": "offer", "sdp": offer}))
            answer = json.loads((await ws.receive(timeout=10)).data)
            assert answer["type"] == "answer", answer
            assert "PCMU" not in answer["sdp"] and "G722" not in answer["sdp"]


async def test_oversized_frames_are_answered_too_large(server: RunningServer) -> None:
    from ptt_server.service import ws as ws_module

    url = server.url.replace("http://", "ws://") + "/ws"
    between = json.dumps({"type": "ping", "id": "x" * (100 * 1024)})  # 64 KiB < it < 128 KiB
    beyond = json.dumps({"type": "ping", "id": "x" * (300 * 1024)})
    assert len(between) < ws_module.TRANSPORT_MAX_BYTES < len(beyond)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url) as ws:
            await ws.send_str(json.dumps({"type": "auth", "token": server.token("u1")}))
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "welcome"
            await ws.send_str(between)
            reply = json.loads((await ws.receive(timeout=5)).data)
            assert reply["code"] == "too_large"  # and the session goes on:
            await ws.send_str('{"type":"ping","id":2}')
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "pong"
            # Beyond what aiohttp reads: the error first, then close 1009 (RFC 6455 7.4.1).
            await ws.send_str(beyond)
            reply = json.loads((await ws.receive(timeout=5)).data)
            assert (reply["type"], reply["code"]) == ("error", "too_large")
            closing = await ws.receive(timeout=5)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 1009
    # Before signing in, the same.
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url) as ws:
            await ws.send_str(beyond)
            reply = json.loads((await ws.receive(timeout=5)).data)
            assert reply["code"] == "too_large"
            await ws.receive(timeout=5)
            assert ws.close_code == 1009


def test_the_parser_is_strict_and_stays_linear() -> None:
    """Pure: the strict JSON checks, and worst cases that would be quadratic with a naive scan
    (an unterminated string of escaped quotes makes a backtracking regex retry at every
    quote)."""
    from ptt_server.core import protocol as p
    from ptt_server.core.errors import SignalingError

    worst = [
        '"' + '\\"[' * 21_000,
        '["\\\\"' * 13_000,
        "[" * 65_000,
        "[]" * 32_000,
        '{"type":"ping","id":"' + "\\u00e9" * 10_000 + '"}',
    ]
    for raw in worst:
        start = time.perf_counter()
        with pytest.raises(SignalingError):
            p.parse(raw[: p.MAX_MESSAGE_BYTES])
        assert time.perf_counter() - start < 0.25, raw[:20]  # ~1 ms here; generous when loaded
    for raw in ('{"type":"ping","id":"é"}', b'{"type":"ping","id":7}',
                '{"type":"ping","x":[[[[[[["deep enough"]]]]]]]}'):  # 8 levels, unknown field
        assert isinstance(p.parse(raw), p.Ping)
    for raw, code in [
        (b"\xff\xfe{\x00}\x00", "bad_json"),  # UTF-16: RFC 8259 section 8.1 wants UTF-8
        ("\u00e9" * (p.MAX_MESSAGE_BYTES // 2 + 1), "too_large"),  # counted in UTF-8 bytes
        ('{"type":"ping","id":-9007199254740992}', "bad_message"),
        ('{"type":"ping","id":1.' + "0" * 40 + "}", "bad_message"),
    ]:
        with pytest.raises(SignalingError) as err:
            p.parse(raw)
        assert err.value.code == code, raw[:40]
