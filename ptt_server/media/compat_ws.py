"""The websocket part of the compat layer: aiohttp's heartbeat internals (3.14, pinned in
pyproject.toml). The names used here are probed at start with the rest, in compat.py
(feature `websocket`); without them aiohttp's own behaviour is kept."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

# How late a pong timer may fire before it is taken for our loop's lateness, not the client's.
LOOP_LAG_S = 0.25
_NAMES = ("_pong_not_received", "_need_heartbeat_reset", "_pong_response_cb", "_pong_heartbeat")


def tolerate_loop_lag(ws: web.WebSocketResponse) -> bool:
    """Do not drop a client for our own event loop's lateness.

    aiohttp arms a timer with each heartbeat ping and closes the socket (1006) when it fires
    before a pong was seen. When the loop falls behind (a burst of work, a GC pass, no CPU on
    a loaded machine), the pong is often in the socket buffer already when the late timer
    fires: asyncio runs the timer before the flush its read queued (`_need_heartbeat_reset`),
    and uvloop runs timers before it polls the sockets at all. Every client pinged just
    before a stall was cut at once. Here a pong timer that finds data received in this very
    tick leaves it to that flush, and one that fired late is re-armed once for the allowance,
    so the socket is read before the client is judged. A client that is really gone is still
    dropped, one allowance later at most. False if this aiohttp lacks the internals."""
    if not all(hasattr(ws, name) for name in _NAMES):
        return False
    give_up = ws._pong_not_received
    retried: list[Any] = []  # the re-armed timer of the ping being waited for, if any

    def pong_not_received() -> None:
        handle = ws._pong_response_cb
        if ws._need_heartbeat_reset:
            return  # data came in this tick: its flush resets the heartbeat
        if handle is not None and not any(h is handle for h in retried):
            loop = asyncio.get_running_loop()
            if loop.time() - handle.when() > LOOP_LAG_S:
                retried[:] = [loop.call_later(ws._pong_heartbeat, pong_not_received)]
                ws._pong_response_cb = retried[0]
                return
        give_up()

    ws._pong_not_received = pong_not_received  # type: ignore[method-assign]
    return True
