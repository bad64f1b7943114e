"""ICE consent kept as an ICE-lite server keeps it: from the client's checks, on one timer.

Why: aioice, as a full agent, runs a consent freshness task per connection (RFC 7675): every
4-6 s it builds, signs and sends a binding request and waits for the answer, while the client
does the same the other way. At a thousand connected listeners that is ~200 requests a second
of our own and their answers, about a sixth of an idle server's event loop, on top of the
client's checks the server must answer anyway.

A lite agent never sends checks (RFC 8445 section 2.5); mediasoup and Janus in lite mode keep
a connection alive for as long as the client's authenticated checks keep coming. So does this
keeper, on the shared socket (icemux.py), where every connection's STUN passes through code of
ours:
- each success answer the server gives to a client's binding request marks that connection
  fresh; aioice answers with success only when the USERNAME and MESSAGE-INTEGRITY verify (RFC
  8489 section 9.2), so a forged check refreshes nothing;
- a connection with no such check for `expiry_s` (30 s, RFC 7675 section 5.1) has lost
  consent: its ICE connection is closed as aioice's own expiry closes it, so aiortc reports the
  transport failed and the session tells the client (`media_state` `failed`);
- one timer per process looks every `tick_s`, and only while connections are kept. A tick
  that comes much later than due (the loop was stalled, the host suspended) judges nothing:
  the checks that arrived meanwhile may still be waiting in the socket's buffer.

Clients check far more often than the expiry (browsers every 2.5-6 s, aioice every 4-6 s),
so a live client is never near it. What changes for a client that vanishes without a word:
nothing measurable; the session's WebSocket liveness finds it in about 2 s either way.
docs/security.md says what a lite server gives up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("ptt.media")

EXPIRY_S = 30.0  # RFC 7675 section 5.1
TICK_S = 5.0


class ConsentKeeper:
    """The consent of every connection on this process's shared sockets."""

    def __init__(self, expiry_s: float = EXPIRY_S, tick_s: float = TICK_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.expiry_s = expiry_s
        self.tick_s = tick_s
        self._clock = clock
        self._fresh: dict[Any, float] = {}  # aioice Connection -> when last checked
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._closing: set[asyncio.Task[None]] = set()
        self.ticks = 0  # judged ticks (tests wait on them)
        self.late = 0  # ticks that came too late to judge
        self.expired = 0
        self.answered = 0

    def __len__(self) -> int:
        return len(self._fresh)

    async def hold(self, conn: Any) -> None:
        """Stands in for the connection's consent task (compat_ice.keep_consent): from
        connect()'s end until close() cancels it, the connection is kept here."""
        self._fresh[conn] = self._clock()
        self._arm()
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            self._fresh.pop(conn, None)

    def answered_check(self, conn: Any) -> None:
        """The server has just answered one of the client's checks with success."""
        if conn in self._fresh:
            self._fresh[conn] = self._clock()
            self.answered += 1

    def _arm(self) -> None:
        if self._timer is None and self._fresh:
            loop = asyncio.get_running_loop()
            self._due = self._clock() + self.tick_s
            self._timer = loop.call_later(self.tick_s, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = self._clock()
        late = now - self._due
        if late > self.tick_s:  # the loop stalled: judge at the next tick
            self.late += 1
        else:
            self.ticks += 1
            cutoff = now - self.expiry_s
            for conn, at in [(c, at) for c, at in self._fresh.items() if at < cutoff]:
                del self._fresh[conn]
                self.expired += 1
                log.info("ICE consent expired: no check from the client for %.0f s",
                         now - at)
                task = asyncio.get_running_loop().create_task(conn.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
