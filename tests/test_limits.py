"""Limits on the signaling socket (service/ws.py, service/ws_limits.py), against the real
server: origins, connections not yet signed in (per address and in total), sessions per user
and per process, messages and offers per user across all of the user's connections."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from ptt_server.app.wiring import create_app
from ptt_server.core.config import Config
from ptt_server.service.keys import NODE
from ptt_server.service.ws_limits import limits_of, origin_allowed

from .conftest import RunningServer, seed_directory, server_config
from .polling import until

MakeServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def make_server(data_dir: Path, redis_url: str) -> AsyncIterator[MakeServer]:
    """A real server with some limits changed (one per test)."""
    started: list[TestServer] = []

    async def make(**limits: Any) -> RunningServer:
        seed_directory(data_dir)
        config = server_config(data_dir, redis_url, **limits)
        app = create_app(config)
        ts = TestServer(app, host="127.0.0.1")
        await ts.start_server()
        started.append(ts)
        return RunningServer(url=str(ts.make_url("")).rstrip("/"), config=config, app=app)

    yield make
    for ts in started:
        await ts.close()


def ws_url(server: RunningServer) -> str:
    return server.url.replace("http://", "ws://") + "/ws"


async def signed_in(
    stack: AsyncExitStack, server: RunningServer, name: str
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    http = await stack.enter_async_context(aiohttp.ClientSession())
    ws = await stack.enter_async_context(http.ws_connect(ws_url(server)))
    await ws.send_str(json.dumps({"type": "auth", "token": server.token(name)}))
    return ws, json.loads((await ws.receive(timeout=5)).data)


async def refusal(server: RunningServer, **kw: Any) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of a WebSocket upgrade the server refuses."""
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", **kw.pop("headers", {})}
    async with aiohttp.ClientSession(**kw) as http, http.get(
        server.url + "/ws", headers=headers
    ) as response:
        return response.status, await response.json()


# -- origins ------------------------------------------------------------------------------------
async def test_foreign_and_null_origins_are_refused_before_the_upgrade(
    server: RunningServer,
) -> None:
    host = server.url.removeprefix("http://")
    for origin in ("https://evil.example", "null", f"http://{host.split(':')[0]}:1",
                   f"file://{host}", "http://127.0.0.1.evil.example"):
        status, body = await refusal(server, headers={"Origin": origin})
        assert (status, body["error"]["code"]) == (403, "origin_forbidden"), origin
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(ws_url(server), origin=origin)
            assert err.value.status == 403
    # The page's own origin (what the browser sends for the server's own web client).
    for origin in (f"http://{host}", f"HTTP://{host.upper()}/"):
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(ws_url(server), origin=origin) as ws:
                await ws.send_str(json.dumps({"type": "auth", "token": server.token("u1")}))
                assert json.loads((await ws.receive(timeout=5)).data)["type"] == "welcome"


async def test_an_operator_listed_origin_is_allowed(make_server: MakeServer) -> None:
    server = await make_server(ws_allowed_origins=("https://Console.police.example:8443",))
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(
            ws_url(server), origin="https://console.police.example:8443"
        ) as ws:
            await ws.send_str(json.dumps({"type": "auth", "token": server.token("u1")}))
            assert json.loads((await ws.receive(timeout=5)).data)["type"] == "welcome"
    status, _ = await refusal(server, headers={"Origin": "https://console.police.example"})
    assert status == 403


def test_origin_rules() -> None:
    config = Config(data_dir=Path("."), ws_allowed_origins=("https://a.example",))
    assert origin_allowed(None, "x:1", config)  # not a browser
    assert origin_allowed("https://x", "x:443", config)  # default ports normalised
    assert origin_allowed("http://x:80", "X", config)
    assert origin_allowed("https://a.example/", "x", config)
    assert not origin_allowed("null", "x", config)
    assert not origin_allowed("", "x", config)
    assert not origin_allowed("https://x:8443", "x:443", config)
    assert not origin_allowed("https://x/path", "x", config)
    assert not origin_allowed("chrome-extension://abc", "abc", config)


# -- connections not yet signed in --------------------------------------------------------
async def test_unauthenticated_connections_per_address_are_capped(
    server: RunningServer,
) -> None:
    """2,000 sockets that never sign in could be held open; now 20 per address."""
    cap = server.config.max_unauthenticated_per_address
    assert cap == 20
    limits = limits_of(server.app)  # type: ignore[arg-type]
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())
        held = [await stack.enter_async_context(http.ws_connect(ws_url(server)))
                for _ in range(cap)]
        await until(lambda: limits.unauthenticated == cap, 5.0, every=0.01)
        status, body = await refusal(server)
        assert (status, body["error"]["code"]) == (429, "too_many_connections")
        # Signing in frees the place: the cap is on sockets that have not.
        await held[0].send_str(json.dumps({"type": "auth", "token": server.token("u1")}))
        assert json.loads((await held[0].receive(timeout=5)).data)["type"] == "welcome"
        async with http.ws_connect(ws_url(server)) as extra:
            await extra.send_str(json.dumps({"type": "auth", "token": server.token("u2")}))
            assert json.loads((await extra.receive(timeout=5)).data)["type"] == "welcome"
    await until(lambda: limits.unauthenticated == 0, 5.0, every=0.01)


async def test_unauthenticated_connections_in_total_are_capped(
    make_server: MakeServer,
) -> None:
    server = await make_server(max_unauthenticated_per_address=2, max_unauthenticated=3)
    limits = limits_of(server.app)  # type: ignore[arg-type]

    def from_address(address: str) -> aiohttp.ClientSession:
        # The whole of 127.0.0.0/8 is this host: other source addresses, no other machine.
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))

    async with AsyncExitStack() as stack:
        one = await stack.enter_async_context(from_address("127.0.0.2"))
        two = await stack.enter_async_context(from_address("127.0.0.3"))
        for http in (one, one, two):
            await stack.enter_async_context(http.ws_connect(ws_url(server)))
        await until(lambda: limits.unauthenticated == 3, 5.0, every=0.01)
        status, body = await refusal(
            server, connector=aiohttp.TCPConnector(local_addr=("127.0.0.4", 0)))
        assert (status, body["error"]["code"]) == (503, "too_many_connections")
        status, body = await refusal(
            server, connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))
        assert (status, body["error"]["code"]) == (429, "too_many_connections")
    # A socket that goes away without signing in gives its place back.
    await until(lambda: limits.unauthenticated == 0, 5.0, every=0.01)
    async with AsyncExitStack() as stack:
        _, welcome = await signed_in(stack, server, "u3")
        assert welcome["type"] == "welcome"


# -- sessions -----------------------------------------------------------------------------------
async def test_sessions_per_user_are_capped(server: RunningServer) -> None:
    """300 peer connections for one user were possible: now 4 sessions, one each."""
    cap = server.config.max_sessions_per_user
    assert cap == 4
    node = server.app[NODE]  # type: ignore[index]
    async with AsyncExitStack() as stack:
        held = []
        for _ in range(cap):
            ws, welcome = await signed_in(stack, server, "u1")
            assert welcome["type"] == "welcome"
            held.append(ws)
        ws, reply = await signed_in(stack, server, "u1")
        assert (reply["type"], reply["code"]) == ("error", "too_many_sessions")
        await ws.receive(timeout=5)
        assert ws.close_code == 4429
        # Another user is not affected.
        _, other = await signed_in(stack, server, "u2")
        assert other["type"] == "welcome"
        # A session closed normally frees its place.
        await held.pop().close()
        await until(lambda: sum(
            1 for e in node.endpoints.values() if getattr(e, "claims", None)
            and e.claims.sub == "u1") == cap - 1, 5.0, every=0.01)  # type: ignore[attr-defined]
        _, again = await signed_in(stack, server, "u1")
        assert again["type"] == "welcome"


async def test_a_full_server_says_so(make_server: MakeServer) -> None:
    server = await make_server(max_sessions=2)
    async with AsyncExitStack() as stack:
        for name in ("u1", "u2"):
            assert (await signed_in(stack, server, name))[1]["type"] == "welcome"
        ws, reply = await signed_in(stack, server, "u3")
        assert (reply["type"], reply["code"]) == ("error", "server_full")
        await ws.receive(timeout=5)
        assert ws.close_code == 1013


# -- messages -----------------------------------------------------------------------------------
async def replies(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    return [json.loads((await ws.receive(timeout=10)).data) for _ in range(count)]


async def test_the_message_rate_is_per_user_across_connections(
    make_server: MakeServer,
) -> None:
    """Ten connections used to get ten times the rate: the bucket is the user's."""
    server = await make_server(message_rate_per_s=5.0, message_burst=20.0)
    async with AsyncExitStack() as stack:
        first, _ = await signed_in(stack, server, "u1")
        second, _ = await signed_in(stack, server, "u1")
        bystander, _ = await signed_in(stack, server, "u2")
        start = time.monotonic()
        for ws in (first, second):
            for i in range(30):
                await ws.send_str(json.dumps({"type": "ping", "id": i}))
        got = await replies(first, 30) + await replies(second, 30)
        elapsed = time.monotonic() - start
        answered = sum(r["type"] == "pong" for r in got)
        limited = [r for r in got if r.get("code") == "rate_limited"]
        assert answered + len(limited) == 60
        # The burst plus what refilled meanwhile (and one for rounding), not 2 x 30.
        assert answered <= 20 + 5.0 * elapsed + 1, (answered, elapsed)
        assert limited and answered >= 20
        await bystander.send_str('{"type":"ping","id":"me"}')
        assert (await replies(bystander, 1))[0]["type"] == "pong"


async def test_offers_have_a_tighter_rate(server: RunningServer) -> None:
    burst = server.config.offer_burst
    async with AsyncExitStack() as stack:
        ws, _ = await signed_in(stack, server, "u1")
        start = time.monotonic()
        for _ in range(int(burst) + 10):
            await ws.send_str(json.dumps({"type": "offer", "sdp": "v=0\r\n"}))
        got = await replies(ws, int(burst) + 10)
        elapsed = time.monotonic() - start
        codes = [r["code"] for r in got]
        assert set(codes) == {"bad_sdp", "rate_limited"}
        assert codes.count("bad_sdp") <= burst + server.config.offer_rate_per_s * elapsed + 1


async def test_one_peer_connection_per_session(server: RunningServer) -> None:
    """A second offer renegotiates the same connection; a restart replaces it: never two."""
    from aiortc import RTCPeerConnection

    from ptt_server.media import ice

    async def offer() -> str:
        pc = RTCPeerConnection(ice.rtc_configuration([]))
        try:
            pc.addTransceiver("audio", direction="sendrecv")
            ice.pin_host_addresses(pc, ["127.0.0.1"])
            await pc.setLocalDescription(await pc.createOffer())
            return str(pc.localDescription.sdp)
        finally:
            await pc.close()

    node = server.app[NODE]  # type: ignore[index]
    async with AsyncExitStack() as stack:
        ws, welcome = await signed_in(stack, server, "u1")
        session = node.endpoints[welcome["session"]]

        async def negotiate(**extra: Any) -> Any:
            await ws.send_str(json.dumps({"type": "offer", "sdp": await offer(), **extra}))
            while (reply := json.loads((await ws.receive(timeout=10)).data))["type"] != "answer":
                assert reply["type"] != "error", reply
            return session.peer.pc

        first = await negotiate()
        assert await negotiate() is first  # a renegotiation: the same connection
        replaced = await negotiate(restart=True)
        assert replaced is not first and first.connectionState == "closed"
