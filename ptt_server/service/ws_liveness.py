"""Whether each WebSocket's client is still there: one timer for every socket of the worker.

Why not aiohttp's heartbeat: per socket it arms a ping timer and a pong timer, starts a task
for every ping, and schedules a callback and re-arms a timer for every frame it reads. With
hundreds of connected listeners that was the largest single part of an idle worker's CPU
(about a third of the event loop's busy time at 400 idle listeners, py-spy), and the timer
and task churn fed the garbage collector besides.

Here one timer ticks every TICK_S for all sockets. A socket silent for `ping_after_s` gets a
ping written straight to its transport: a server's frames are unmasked (RFC 6455 section
5.1), so an empty ping is the two bytes 0x89 0x00 (section 5.5.2), and control frames may come
between the frames of a message (5.4), while each of aiohttp's own frames is written whole by
one synchronous call. A socket silent for longer than `ping_after_s + allowance_s` is lost:
its transport is aborted, no closing handshake, so the session keeps its grace as for any
dead spot. Any bytes received count as a sign of life, as in aiohttp, and they are seen as
they arrive (a thin protocol in front of aiohttp's, through the transport's public
`set_protocol`), not when the session's loop reads the next message: a message that takes its
handler a few seconds must not make the client look gone. Pacing and deadline are aiohttp's
(a ping after 0.75 s of silence, 1.2 s for its pong), to within a tick.

Our own lateness is not the client's: a tick that runs more than LOOP_LAG_S late (a burst of
work, a GC pass, no CPU on a loaded machine) pings but does not judge, because the pongs that
arrived meanwhile are still unread in the socket buffers (uvloop runs timers before it polls);
they are read before the next tick.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import WSMessage, WSMsgType, web

TICK_S = 0.25
LOOP_LAG_S = 0.25
PING_FRAME = b"\x89\x00"  # FIN, opcode 0x9 (ping); unmasked, no payload


class Watch:
    """One socket's signs of life. `lost` is set once, by the Liveness that gave up on it."""

    __slots__ = ("last_ping", "last_seen", "lost", "transport")

    def __init__(self, transport: asyncio.Transport, now: float) -> None:
        self.transport = transport
        self.last_seen = now
        self.last_ping = now
        self.lost = False

    def seen(self) -> None:
        self.last_seen = time.monotonic()


class _Tap(asyncio.Protocol):
    """In front of the connection's protocol: notes each arrival, passes everything on."""

    __slots__ = ("inner", "watch")

    def __init__(self, inner: asyncio.Protocol, watch: Watch) -> None:
        self.inner = inner
        self.watch = watch

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.watch.last_seen = time.monotonic()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class Liveness:
    """Pings silent sockets and aborts the ones that stay silent (see the module's text)."""

    def __init__(self, ping_after_s: float, allowance_s: float, tick_s: float = TICK_S) -> None:
        self.ping_after_s = ping_after_s
        self.deadline_s = ping_after_s + allowance_s
        self.tick_s = tick_s
        self.pings = 0
        self.lost = 0
        self._watches: set[Watch] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    def watch(self, transport: asyncio.Transport) -> Watch:
        """Start watching a socket's connection (from its handshake on); starts the timer."""
        w = Watch(transport, time.monotonic())
        inner = transport.get_protocol()
        if isinstance(inner, asyncio.Protocol) and not isinstance(inner, _Tap):
            transport.set_protocol(_Tap(inner, w))
        self._watches.add(w)
        if self._timer is None:
            self._due = time.monotonic() + self.tick_s
            self._timer = asyncio.get_running_loop().call_later(self.tick_s, self._tick)
        return w

    def forget(self, w: Watch) -> None:
        self._watches.discard(w)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._watches.clear()

    def __len__(self) -> int:
        return len(self._watches)

    def _tick(self) -> None:
        now = time.monotonic()
        judge = now - self._due <= LOOP_LAG_S
        ping_after, deadline = self.ping_after_s, self.deadline_s
        gone: list[Watch] = []
        for w in self._watches:
            silent = now - w.last_seen
            if silent < ping_after:
                continue
            transport = w.transport
            if transport.is_closing():
                continue  # ending already; its handler forgets it
            if judge and silent > deadline:
                gone.append(w)
            elif now - w.last_ping >= ping_after:
                w.last_ping = now
                transport.write(PING_FRAME)
                self.pings += 1
        for w in gone:
            w.lost = True
            self._watches.discard(w)
            self.lost += 1
            w.transport.abort()
        if not self._watches:
            self._timer = None  # started again by the next watch()
            return
        # On the grid while on time; after a stall, from now (no burst of catch-up ticks).
        self._due = max(self._due + self.tick_s, now + self.tick_s / 2)
        self._timer = asyncio.get_running_loop().call_later(self._due - now, self._tick)


async def receive(ws: web.WebSocketResponse, watch: Watch) -> WSMessage:
    """The next message that is not a ping or a pong (the socket is opened with autoping off:
    a ping is answered here). Reading also counts as a sign of life, for a connection whose
    protocol could not be tapped (watch(); aiohttp's always can)."""
    while True:
        msg = await ws.receive()
        watch.seen()
        if msg.type is WSMsgType.PING:
            await ws.pong(msg.data)
        elif msg.type is not WSMsgType.PONG:
            return msg


ENDED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)
