"""What one HTTP client may hold: a deadline for its request headers, and a share of the file
descriptors (slowloris, connection floods).

aiohttp (3.14) has a keep-alive timeout but no header timeout, no connection limit, and leaves
a TLS handshake to asyncio's default of 60 s. A thousand sockets that connect and send nothing
used to hold a thousand file descriptors, and with the usual limit of 1,024 nobody else could
connect (accept fails, or libuv accepts and drops the connection at once).

So the listening socket is ours (`GuardedSite`, a `web.BaseSite`), and every accepted connection
is wrapped (`_Conn`) from its first moment, before any TLS handshake:

- it must finish its TLS handshake *and* its first request's headers within `HEADER_TIMEOUT_S`,
  else it is closed;
- at most `max_connections` are open (half the process's `RLIMIT_NOFILE`, so WebRTC sockets,
  Redis, SQLite and recordings keep the other half). At the limit a new connection evicts the
  oldest one that has not sent a complete request yet, else the one silent the longest (at
  least `IDLE_EVICT_S`: a keep-alive connection nobody uses, a stalled upload); a WebSocket
  session answers heartbeats every 0.75 s and is never silent that long. With nothing to evict
  the new connection is refused. Either way the limit is never exceeded, so a flood of idle
  connections can cost others at most a reconnect, never the service.

Once its headers are in, a connection is aiohttp's: the bytes pass through untouched.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

log = logging.getLogger("ptt.http")

# TLS handshake plus request line and headers: two round trips and a few hundred bytes. Ten
# seconds is generous on a congested cellular link and short enough that holding a connection
# costs an attacker a reconnect every ten seconds.
HEADER_TIMEOUT_S = 10.0
# aiohttp's own: a keep-alive connection with no request for this long is closed.
KEEPALIVE_TIMEOUT_S = 15.0
IDLE_EVICT_S = 5.0
FD_SHARE = 0.5  # of RLIMIT_NOFILE, for HTTP connections (WebSockets included)
MIN_CONNECTIONS = 16
# Pending connections the kernel queues before we accept them: room for every phone of a
# shift reconnecting at once after a network blip (the kernel caps it at somaxconn).
BACKLOG = 1024
# Data decrypted before the connection is handed to aiohttp (a client that talks before it has
# heard back from the handshake); more than this is not a browser.
_EARLY_MAX = 64 * 1024
_WARN_EVERY_S = 10.0
# The end of a request's headers; a bare-LF client's too (it is answered, so it must not be cut
# off as if it were still sending them).
_HEADERS_END = (b"\r\n\r\n", b"\n\n")

# aiohttp's request handler limits (passed to web.AppRunner). Ours are small: no URL of ours
# comes near 4 KiB (tokens travel in headers or the WebSocket, never in the URL); a header
# field may hold a bearer token from an external single sign-on, so aiohttp's 8 KiB stays; a
# browser sends about 20 headers.
HANDLER_ARGS: dict[str, Any] = {
    "keepalive_timeout": KEEPALIVE_TIMEOUT_S,
    "max_line_size": 4096,
    "max_field_size": 8190,
    "max_headers": 64,
    "read_bufsize": 64 * 1024,  # per connection: bounds the memory a thousand connections use
}


def connection_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(MIN_CONNECTIONS, int(soft * FD_SHARE))


class ConnectionGuard:
    """The open connections of one listening socket, oldest first."""

    def __init__(
        self, factory: Callable[[], asyncio.Protocol], ssl_context: ssl.SSLContext | None,
        max_connections: int, *, header_timeout_s: float = HEADER_TIMEOUT_S,
        idle_evict_s: float = IDLE_EVICT_S,
    ) -> None:
        self.factory = factory  # aiohttp's protocol for one connection (runner.server)
        self.ssl_context = ssl_context
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.idle_evict_s = idle_evict_s
        self._conns: dict[_Conn, None] = {}  # insertion order: accept order
        self.timed_out = 0
        self.evicted = 0
        self.refused = 0
        self.early_hellos = 0  # TLS hellos read before start_tls took over (handed on)
        self._warned_at: float | None = None

    def __len__(self) -> int:
        return len(self._conns)

    def protocol(self) -> asyncio.Protocol:
        """The protocol factory for loop.create_server."""
        return _Conn(self)

    def admit(self, conn: _Conn, now: float) -> bool:
        if len(self._conns) >= self.max_connections:
            victim = self._victim(now)
            if victim is None:
                self.refused += 1
                self._warn(now)
                return False
            self.evicted += 1
            self._warn(now)
            self.release(victim)
            victim.abort()
        self._conns[conn] = None
        return True

    def release(self, conn: _Conn) -> None:
        self._conns.pop(conn, None)

    def abort_pending(self) -> None:
        """Close the connections aiohttp has not seen yet (the listener is closing)."""
        for conn in [c for c in self._conns if c.inner is None]:
            self.release(conn)
            conn.abort()

    def _victim(self, now: float) -> _Conn | None:
        silent: _Conn | None = None
        for conn in self._conns:
            if conn.pending:
                return conn  # the oldest that never sent a whole request
            if now - conn.last_rx >= self.idle_evict_s and (
                    silent is None or conn.last_rx < silent.last_rx):
                silent = conn
        return silent

    def _warn(self, now: float) -> None:
        # Once per interval, with totals: a flood must not turn into a flood of log lines.
        if self._warned_at is not None and now - self._warned_at < _WARN_EVERY_S:
            return
        self._warned_at = now
        log.warning("HTTP connection limit reached", extra={"fields": {
            "limit": self.max_connections, "evicted": self.evicted, "refused": self.refused,
            "header_timeouts": self.timed_out}})


class _Conn(asyncio.Protocol):
    """One accepted connection: counted and timed from accept, TLS done here, then handed to
    aiohttp's protocol (`inner`), to which every later event is passed on as it comes."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self.inner: asyncio.Protocol | None = None
        self.pending = True  # no complete request header seen yet
        self.last_rx = 0.0
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, for a header end split across reads
        self._early: list[bytes] = []
        self._early_size = 0
        # TLS bytes that reach us before start_tls takes the transport over (uvloop starts
        # reading right after connection_made, whatever connection_made did): kept for it.
        self._raw_phase = guard.ssl_context is not None
        self._raw_early: list[bytes] = []
        self._eof = False
        self._closed = False
        self._handshake: asyncio.Task[None] | None = None

    # -- from the transport --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called once, for the TCP connection (start_tls does not call it again).
        loop = self._loop = asyncio.get_running_loop()
        self._transport = cast(asyncio.Transport, transport)
        self.last_rx = loop.time()
        if not self.guard.admit(self, self.last_rx):
            self._closed = True
            self._transport.abort()
            return
        self._timer = loop.call_later(self.guard.header_timeout_s, self._header_timeout)
        if self.guard.ssl_context is None:
            self._attach(self._transport)
            return
        self._handshake = loop.create_task(self._start_tls(self._transport,
                                                           self.guard.ssl_context))

    def data_received(self, data: bytes) -> None:
        if self._loop is not None:
            self.last_rx = self._loop.time()
        if self._raw_phase:
            # The start of the ClientHello, read before start_tls could take over: hold it
            # (and read no more) until it can be handed on.
            assert self._transport is not None
            self._transport.pause_reading()
            self._raw_early.append(data)
            self._early_size += len(data)
            if self._early_size > _EARLY_MAX:
                self.abort()
            return
        if self.pending:
            seen = self._tail + data
            if any(end in seen for end in _HEADERS_END):
                self.pending = False
                self._cancel_timer()
            self._tail = seen[-3:]
        if self.inner is not None:
            self.inner.data_received(data)
            return
        self._early.append(data)
        self._early_size += len(data)
        if self._early_size > _EARLY_MAX:
            self.abort()

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.eof_received()
        self._eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed and self.inner is None:
            return
        self._closed = True
        self._cancel_timer()
        self.guard.release(self)
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # -- ours ----------------------------------------------------------------------------------
    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    async def _start_tls(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        if self._closed or raw.is_closing():
            return  # evicted or timed out while the handshake waited to start
        assert self._loop is not None
        # start_tls swaps the transport's protocol for its TLS one at once (before its first
        # await) and then queues that protocol's connection_made and the resume of reading.
        # Queued first, this runs after the swap and before both.
        self._loop.call_soon(self._tls_took_over, raw)
        try:
            tls = await self._loop.start_tls(
                raw, self, context, server_side=True,
                ssl_handshake_timeout=self.guard.header_timeout_s,
            )
        except Exception as exc:  # a failed handshake is the client's problem, not ours
            log.debug("TLS handshake failed", extra={"fields": {"error": repr(exc)}})
            raw.abort()
            return
        if self._closed or tls is None:
            return
        self._attach(tls)

    def _tls_took_over(self, raw: asyncio.Transport) -> None:
        tls_protocol = raw.get_protocol()
        if tls_protocol is self:
            return  # start_tls failed before it took over: it raises, and that aborts
        self._raw_phase = False
        early, self._raw_early = b"".join(self._raw_early), []
        if early:
            # Ahead of any byte read later (reading stayed paused since they came). Both
            # asyncio's and uvloop's TLS protocol keep what they receive before their
            # connection_made and start the handshake with it: under uvloop a hello that was
            # waiting when the connection was accepted comes this way, see
            # tests/test_http_limits.py::test_a_tls_hello_sent_before_accept_is_kept.
            self.guard.early_hellos += 1
            _feed(tls_protocol, early)

    def _attach(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        inner = self.inner = self.guard.factory()
        inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            if self.inner is not None:
                self.inner.data_received(data)
        if self._eof and self.inner is not None and not self.inner.eof_received():
            transport.close()

    def _header_timeout(self) -> None:
        self._timer = None
        if self.pending and not self._closed:
            self.guard.timed_out += 1
            self.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Deliver `data` to a protocol as its transport would."""
    if not hasattr(protocol, "buffer_updated"):  # uvloop's are not registered subclasses
        cast(asyncio.Protocol, protocol).data_received(data)
        return
    buffered = cast(asyncio.BufferedProtocol, protocol)
    view = memoryview(data)
    while view:
        buffer = memoryview(buffered.get_buffer(len(view)))
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        buffered.buffer_updated(n)
        view = view[n:]


class GuardedSite(web.BaseSite):
    """web.TCPSite, with every connection under a ConnectionGuard (and TLS done by it)."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, *,
        ssl_context: ssl.SSLContext | None = None, reuse_port: bool | None = None,
        max_connections: int | None = None,
    ) -> None:
        super().__init__(runner, backlog=BACKLOG)
        self._app_runner = runner
        self._listen_host = host
        self._listen_port = port
        self._tls = ssl_context
        self._reuse_port = reuse_port
        self._max_connections = max_connections
        self.guard: ConnectionGuard | None = None

    @property
    def name(self) -> str:
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://{self._listen_host}:{self._listen_port}"

    async def start(self) -> None:
        await super().start()  # registers the site with its runner
        factory = self._app_runner.server
        assert factory is not None, "runner.setup() first"
        limit = self._max_connections or connection_limit()
        self.guard = ConnectionGuard(factory, self._tls, limit)
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.protocol, self._listen_host, self._listen_port, backlog=BACKLOG,
            reuse_port=self._reuse_port,
        )
        log.info("HTTP limits", extra={"fields": {
            "max_connections": limit, "header_timeout_s": HEADER_TIMEOUT_S,
            "keepalive_timeout_s": KEEPALIVE_TIMEOUT_S}})

    async def stop(self) -> None:
        await super().stop()  # stops listening
        if self.guard is not None:
            self.guard.abort_pending()
