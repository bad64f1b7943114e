"""A server whose event loop falls behind must not drop the clients it pinged just before.

The clients run in a thread with an event loop of their own, so they answer pings while the
server's loop (the test's) is held up: a 2 s stall is injected right after the liveness
timer pinged them, longer than the 1.2 s pong allowance. Their pongs are then in the socket buffers
when the late timers fire; the sessions must stay up (the same socket, not a resume) and
work afterwards. A client that really stops answering is still dropped."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import aiohttp
import pytest

from client_cli.client import PttClient
from ptt_server.service import ws_liveness

from .conftest import RunningServer

STALL_S = 2.0  # longer than service/ws.py's PONG_TIMEOUT_S (1.2 s)
UNITS = ("u1", "u2", "u3")


class ClientThread:
    """PttClients on an event loop in a thread of their own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 20) -> Any:
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout), self.loop)
        return await asyncio.wrap_future(future)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def clients_thread() -> Iterator[ClientThread]:
    t = ClientThread()
    yield t
    t.stop()


@pytest.fixture
def stall_after_ping(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Arm with state["armed"] = n: the next liveness tick that pings a socket is followed by a
    STALL_S block of the server's event loop (n times in all)."""
    state = {"armed": 0, "stalls": 0}
    tick = ws_liveness.Liveness._tick

    def tick_then_stall(self: ws_liveness.Liveness) -> None:
        before = self.pings
        tick(self)
        if state["armed"] > 0 and self.pings > before:
            state["armed"] -= 1
            state["stalls"] += 1
            # After the pings went out, before any pong can be read: the loop is busy.
            asyncio.get_running_loop().call_soon(time.sleep, STALL_S)

    monkeypatch.setattr(ws_liveness.Liveness, "_tick", tick_then_stall)
    return state


async def test_clients_pinged_before_a_stall_stay_connected(
    server: RunningServer, clients_thread: ClientThread, stall_after_ping: dict[str, int]
) -> None:
    clients = [PttClient(server.url, server.token(u)) for u in UNITS]

    async def connect_all() -> list[str]:
        welcomes = [await c.connect() for c in clients]
        for c in clients:
            await c.join("A")
        return [w["session"] for w in welcomes]

    sessions = await clients_thread.run(connect_all())
    stall_after_ping["armed"] = 2
    deadline = time.monotonic() + 30
    while stall_after_ping["stalls"] < 2:  # two stalls, each right after a ping
        assert time.monotonic() < deadline, "no heartbeat ping was sent"
        await asyncio.sleep(0.05)
    await asyncio.sleep(2 * 0.75 + 1.2)  # two more heartbeat rounds after the last stall

    async def closed_codes() -> list[int | None]:
        return [c.closed_code for c in clients]

    async def talk() -> str:
        grant = await clients[0].request_floor("A")
        await clients[0].release_floor("A")
        return str(grant["type"])

    assert await clients_thread.run(closed_codes()) == [None, None, None]
    assert await clients_thread.run(talk()) == "floor_granted"
    # The same sessions, never dropped and resumed.
    assert [c.welcome["session"] for c in clients] == sessions

    async def close_all() -> None:
        await asyncio.gather(*(c.close() for c in clients))

    await clients_thread.run(close_all())


async def test_a_client_that_stops_answering_is_still_dropped(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http:
        # No automatic pongs and nothing read: to the server, a phone that went silent.
        ws = await http.ws_connect(f"{server.url.replace('http', 'ws', 1)}/ws", autoping=False)
        await ws.send_json({"type": "auth", "token": server.token("u1")})
        started = time.monotonic()
        async with asyncio.timeout(15):
            while True:
                msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                    break
        assert time.monotonic() - started < 10


async def test_a_client_that_only_answers_pings_stays_and_its_pings_are_answered(
    server: RunningServer,
) -> None:
    """Signs of life are frames of any kind: a signed-in client that sends nothing but the
    pongs aiohttp answers with stays connected past several deadlines, and a ping of its own
    gets a pong (the server reads pings itself, service/ws_liveness.py)."""
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"{server.url.replace('http', 'ws', 1)}/ws")
        await ws.send_json({"type": "auth", "token": server.token("u1")})
        welcome = await ws.receive_json(timeout=10)
        assert welcome["type"] == "welcome"
        with contextlib.suppress(TimeoutError):  # only the automatic pongs go back
            async with asyncio.timeout(3 * (0.75 + 1.2)):
                msg = await ws.receive()
                pytest.fail(f"unexpected {msg.type}: {msg.data!r}")
        assert not ws.closed
        await ws.send_json({"type": "join", "talkgroup": "A"})
        while (await ws.receive_json(timeout=10))["type"] != "joined":
            pass
        await ws.close()
        # Its own ping answered, on a client that reads control frames itself.
        raw = await http.ws_connect(f"{server.url.replace('http', 'ws', 1)}/ws", autoping=False)
        await raw.send_json({"type": "auth", "token": server.token("u2")})
        await raw.ping(b"still here")
        async with asyncio.timeout(10):
            while True:
                msg = await raw.receive()
                if msg.type == aiohttp.WSMsgType.PING:
                    await raw.pong(msg.data)
                elif msg.type == aiohttp.WSMsgType.PONG:
                    break
                else:
                    assert msg.type == aiohttp.WSMsgType.TEXT, msg
        assert msg.data == b"still here"
        await raw.close()
