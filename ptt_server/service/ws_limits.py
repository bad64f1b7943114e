"""Limits on what one address, one user and one process may hold on the signaling socket.

Used by service/ws.py. Each limit answers a resource someone could otherwise take from
everybody else: sockets held before signing in (10 s each, at most), sessions (each holds a
peer connection and its UDP sockets), messages (each is parsed and acted on), offers (each
makes aiortc build transceivers, sometimes a whole peer connection with a key pair).

In-process: with several workers (or nodes) each enforces its own, so the effective limits
are these times the number of processes an address or user can reach. Exact shared counts would
need Redis on every message; the login limit, which must hold across nodes, lives there
(identity/throttle.py).
"""

from __future__ import annotations

import ipaddress
import resource
import time
import weakref
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from ptt_server.core.config import Config
from ptt_server.service.keys import CONFIG

if TYPE_CHECKING:
    from ptt_server.node.node import Node
    from ptt_server.signaling.session import Session

CLOSE_TOO_MANY = 4429  # too many sessions of this user (4000-4999: private use, RFC 6455)
CLOSE_TRY_AGAIN = 1013  # "Try Again Later" (IANA WebSocket close code registry)
ORIGIN_FORBIDDEN = "origin_forbidden"
TOO_MANY_CONNECTIONS = "too_many_connections"
TOO_MANY_SESSIONS = "too_many_sessions"
SERVER_FULL = "server_full"
PRUNE_EVERY = 256


class _Bucket:
    """A token bucket: `burst` messages at once, `rate` per second after that."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def idle(self) -> bool:
        """Refilled: forgetting it loses nothing."""
        return self.tokens + (time.monotonic() - self.at) * self.rate >= self.burst


def address_key(remote: str | None) -> str:
    """Who an address limit counts: an IPv4 address, or an IPv6 /64 (RFC 4291 hosts are given
    a whole /64 and may pick any address in it)."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return remote or "?"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def session_capacity(config: Config) -> int:
    """Sessions one process takes: `max_sessions`, or what its open-file limit allows.

    HTTP connections (the WebSocket among them) have half of RLIMIT_NOFILE (app/httplimits.py);
    each session's peer connection holds a UDP socket per ICE address in the other half, which
    Redis, SQLite and open recordings share too.
    """
    if config.max_sessions > 0:
        return config.max_sessions
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    per_session = max(1, len(config.ice_addresses) or 2)
    return max(1, (soft // 2 - 64) // per_session)


class Limits:
    """What each address and user may hold on this process (see the module's docstring)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.max_sessions = session_capacity(config)
        self.unauthenticated = 0
        self._unauthenticated: dict[str, int] = {}
        self._sessions: dict[str, weakref.WeakSet[Session]] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._negotiation: dict[str, _Bucket] = {}
        self._opened = 0

    # -- before sign-in ---------------------------------------------------------------------
    def admit(self, address: str) -> tuple[type[web.HTTPException], str] | None:
        """Count a new connection not yet signed in, or say why not."""
        if self._unauthenticated.get(address, 0) >= self.config.max_unauthenticated_per_address:
            return web.HTTPTooManyRequests, "too many connections from this address"
        if self.unauthenticated >= self.config.max_unauthenticated:
            return web.HTTPServiceUnavailable, "too many connections; try again later"
        self._unauthenticated[address] = self._unauthenticated.get(address, 0) + 1
        self.unauthenticated += 1
        return None

    def signed_in_or_gone(self, address: str) -> None:
        self.unauthenticated -= 1
        left = self._unauthenticated[address] - 1
        if left:
            self._unauthenticated[address] = left
        else:
            del self._unauthenticated[address]

    # -- sessions -----------------------------------------------------------------------------
    def refuse_session(self, user: str, node: Node) -> tuple[str, str, int] | None:
        """(code, message, close code) if `user` may not open another session now."""
        live = self._sessions.get(user)
        if live is not None and sum(not s.closed for s in live) >= (
            self.config.max_sessions_per_user
        ):
            return (TOO_MANY_SESSIONS, "too many sessions of this user; close one first",
                    CLOSE_TOO_MANY)
        if len(node.endpoints) >= self.max_sessions:
            return SERVER_FULL, "the server is full; try again later", CLOSE_TRY_AGAIN
        return None

    def opened(self, user: str, session: Session) -> None:
        self._sessions.setdefault(user, weakref.WeakSet()).add(session)
        self._opened += 1
        if self._opened % PRUNE_EVERY == 0:
            self._prune()

    def messages(self, user: str) -> _Bucket:
        """The user's message bucket, shared by all the user's connections."""
        bucket = self._buckets.get(user)
        if bucket is None:
            bucket = self._buckets[user] = _Bucket(
                self.config.message_rate_per_s, self.config.message_burst)
        return bucket

    def negotiation(self, user: str) -> _Bucket:
        """The user's bucket for offers and answers (tighter than for other messages)."""
        bucket = self._negotiation.get(user)
        if bucket is None:
            bucket = self._negotiation[user] = _Bucket(
                self.config.offer_rate_per_s, self.config.offer_burst)
        return bucket

    def _prune(self) -> None:
        """Forget users with no live session whose buckets have refilled (nothing is lost:
        a refilled bucket is what a newcomer gets). Every PRUNE_EVERY sessions opened, so the
        maps stay within the users seen since, at a cost spread over those sign-ins."""
        active = {u for u, live in self._sessions.items() if any(not s.closed for s in live)}
        for user in list(self._sessions):
            if user not in active:
                del self._sessions[user]
        for buckets in (self._buckets, self._negotiation):
            for user in [u for u, b in buckets.items() if u not in active and b.idle()]:
                del buckets[user]


# One Limits per application (a test process runs several apps). Keyed weakly, so an app's
# counts go with it.
_LIMITS: weakref.WeakKeyDictionary[web.Application, Limits] = weakref.WeakKeyDictionary()


def limits_of(app: web.Application) -> Limits:
    found = _LIMITS.get(app)
    if found is None:
        found = _LIMITS[app] = Limits(app[CONFIG])
    return found


def _default_port(scheme: str) -> str:
    return {"http": ":80", "https": ":443", "ws": ":80", "wss": ":443"}.get(scheme, "")


def origin_allowed(origin: str | None, host: str, config: Config) -> bool:
    """Whether a browser page from `origin` may open a session (RFC 6455 section 10.2).

    No Origin: not a browser (the ptt client, a test), which cannot be made to send someone
    else's credentials, so there is nothing to hijack. "null" (sandboxed frames, file: pages,
    redirects) is refused. Otherwise the page's origin must be the server's own (the Host
    header it asked for, ports normalised) or one the operator listed.
    """
    if origin is None:
        return True
    origin = origin.strip().lower().rstrip("/")
    if origin == "null" or not origin:
        return False
    if origin in (o.strip().lower().rstrip("/") for o in config.ws_allowed_origins):
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
        return False
    default = _default_port(parts.scheme)
    return parts.netloc.removesuffix(default) == host.strip().lower().removesuffix(default)


def is_origin(text: str) -> bool:
    """An origin as browsers send it (RFC 6454 section 6.1): scheme, host, optional port."""
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname)
            and not parts.path and not parts.query and not parts.fragment
            and parts.username is None)
