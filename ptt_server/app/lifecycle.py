"""The server's ordered shutdown, with one deadline for all of it.

Order (each step bounded; the whole within `Config.shutdown_timeout_s`):

1. stop taking sessions: new WebSockets are told `server_stopping` and closed (1001), `/readyz`
   answers 503 so a load balancer stops sending anyone;
2. tell every client, *while the HTTP layer still reads* (aiohttp stops reading input, pongs
   included, once its own shutdown begins): each session sends `server_stopping`, ends its
   transmissions as `server_stopped` (the recording says so), releases its floors in Redis and
   closes its WebSocket with 1001 "going away";
3. aiohttp's own cleanup: stop listening, close what is left, then the cleanup contexts in
   reverse order: node tasks, the recorder (recordings finished and synced), Redis;
4. the embedded redis-server, if this process started it, is stopped and waited for
   (app/serve.py).

A second SIGTERM or SIGINT ends the process at once (exit status 1): an operator who asks twice
means it. Recordings are synced to disk at least every 0.5 s, so that costs at most that much.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from aiohttp import web

from ptt_server.app.logs import stop_logging
from ptt_server.core.model import EndReason
from ptt_server.service import keys as K

log = logging.getLogger("ptt.lifecycle")

SESSIONS_SHARE = 0.5  # of the deadline, for closing sessions; the rest for cleanup
EXIT_HARD = 1


class Stopper:
    """SIGTERM/SIGINT handling for one worker process: the first starts the ordered
    shutdown, the second ends the process at once."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.signals = 0

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: int) -> None:
        self.signals += 1
        if self.signals == 1:
            log.info("stopping", extra={"fields": {"signal": signal.Signals(sig).name}})
            self.requested.set()
            return
        log.error("second stop signal: exiting at once", extra={"fields": {
            "signal": signal.Signals(sig).name}})
        stop_logging(0.5)
        os._exit(EXIT_HARD)


async def shutdown(app: web.Application, runner: web.AppRunner, deadline_s: float) -> bool:
    """Steps 1-3 above. True if everything finished within the deadline."""
    started = time.monotonic()
    node = app[K.NODE]
    node.stopping = True
    sessions = len(node.endpoints)
    ok = True
    try:
        await node.close_sessions(EndReason.SERVER_STOPPED, deadline_s * SESSIONS_SHARE)
    except Exception:
        ok = False
        log.exception("closing sessions failed")
    remaining = max(0.5, deadline_s - (time.monotonic() - started))
    try:
        await asyncio.wait_for(runner.cleanup(), remaining)
    except TimeoutError:
        ok = False
        log.error("shutdown deadline passed", extra={"fields": {"deadline_s": deadline_s}})
    log.info("stopped", extra={"fields": {
        "sessions": sessions, "seconds": round(time.monotonic() - started, 3)}})
    return ok
