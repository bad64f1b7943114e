"""A small client of the server's signaling WebSocket (docs/protocol.md), for the generators.

Lighter than client_cli's PttClient: no event history. Messages are matched against waiters as
they arrive; `presence` messages (which carry the whole member list and arrive on every join)
are skipped unparsed. Every message gets a CLOCK_MONOTONIC arrival time in `_at` (ns), which
is comparable between the processes of one machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

Pred = Callable[[dict[str, Any]], bool]


class SignalError(Exception):
    pass


class PttSignal:
    def __init__(self, url: str, token: str, http: aiohttp.ClientSession,
                 on_message: Callable[[dict[str, Any]], None] | None = None,
                 on_offer: Callable[[str], Awaitable[str]] | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.http = http
        self.on_message = on_message
        self.on_offer = on_offer  # answers a server offer (renegotiation)
        self._tasks: set[asyncio.Task[None]] = set()
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.welcome: dict[str, Any] = {}
        self._waiters: list[tuple[Pred, asyncio.Future[dict[str, Any]]]] = []
        self._reader: asyncio.Task[None] | None = None
        self.closed = False
        self.skipped = 0

    async def connect(self, timeout: float = 20.0) -> dict[str, Any]:
        ws_url = "ws://" + self.url.removeprefix("http://") + "/ws"
        self.ws = await self.http.ws_connect(ws_url, heartbeat=None, autoping=True,
                                             max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        self.welcome = await self.request({"type": "auth", "token": self.token},
                                          lambda m: m["type"] == "welcome", timeout)
        return self.welcome

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                if raw.type != aiohttp.WSMsgType.TEXT:
                    continue
                at = time.monotonic_ns()
                text = raw.data
                if text.startswith('{"type":"presence"'):
                    self.skipped += 1
                    continue
                msg = json.loads(text)
                msg["_at"] = at
                if self.on_message is not None:
                    self.on_message(msg)
                if msg.get("type") == "offer" and self.on_offer is not None:
                    task = asyncio.create_task(self._answer(msg["sdp"]))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                for waiter in list(self._waiters):
                    pred, fut = waiter
                    if fut.done():
                        continue
                    if pred(msg) or msg.get("type") == "error":
                        fut.set_result(msg)
        finally:
            self.closed = True
            for _pred, fut in list(self._waiters):
                if not fut.done():
                    fut.set_exception(ConnectionError("signaling closed"))

    async def _answer(self, sdp: str) -> None:
        assert self.on_offer is not None
        with contextlib.suppress(Exception):
            await self.send({"type": "answer", "sdp": await self.on_offer(sdp)})

    def wait(self, pred: Pred) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        fut.add_done_callback(self._forget)
        if self.closed:
            fut.set_exception(ConnectionError("signaling closed"))
        return fut

    def _forget(self, fut: asyncio.Future[dict[str, Any]]) -> None:
        self._waiters = [w for w in self._waiters if w[1] is not fut]
        if not fut.cancelled():
            fut.exception()  # retrieved: a waiter nobody awaits any more is not an error

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(json.dumps(msg))

    async def request(self, msg: dict[str, Any], pred: Pred, timeout: float = 20.0,
                      ) -> dict[str, Any]:
        fut = self.wait(pred)
        await self.send(msg)
        reply = await asyncio.wait_for(fut, timeout)
        if reply.get("type") == "error":
            raise SignalError(f"{msg.get('type')}: {reply.get('code')} {reply.get('message')}")
        return reply

    async def offer(self, sdp: str, timeout: float = 20.0) -> str:
        reply = await self.request({"type": "offer", "sdp": sdp},
                                   lambda m: m["type"] == "answer", timeout)
        return str(reply["sdp"])

    async def join(self, talkgroup: str, timeout: float = 20.0, *, downlink: bool = False,
                   ) -> dict[str, Any]:
        """Join; with `downlink`, also wait for the `downlink` message naming the transceiver
        that carries the talkgroup (after a server offer, if the server renegotiates)."""
        slot = self.wait(lambda m: m["type"] == "downlink" and m.get("talkgroup") == talkgroup)
        try:
            joined = await self.request({"type": "join", "talkgroup": talkgroup},
                                        lambda m: m["type"] == "joined"
                                        and m.get("talkgroup") == talkgroup, timeout)
            if downlink:
                joined["_downlink"] = await asyncio.wait_for(slot, timeout)
            return joined
        finally:
            slot.cancel()

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
