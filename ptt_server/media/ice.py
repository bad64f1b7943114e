"""ICE for the server's peer connections: host addresses, a media port range, TURN.

aioice gathers host candidates from every interface address except loopback and offers no
per-connection setting for it (checked against aioice 0.13 / aiortc 1.16). A server needs to
announce exactly the addresses it is reachable on (a public address, or 127.0.0.1 in tests in a
network namespace that has only `lo`), so the gathering step of each connection's ICE agent is
replaced with one that uses a given address list (`compat_ice.replace_gathering`, where the aioice
internals it needs live).

aioice also binds a socket per connection, on port 0 (a kernel-chosen port). By default the
server instead puts every connection's host candidate on one shared socket per address
(icemux.py: one port per worker to open, one `sendmmsg` per fan-out). Without it (`--ice-mux
off`) and with a `PortRange` each connection's sockets are bound here, inside the range, and
handed to that same replaced gathering; with both, the shared sockets are bound in the range.

TURN (RFC 8656): `TurnRest` mints time-limited credentials from a secret shared with the TURN
server, the scheme of draft-uberti-behave-turn-rest ("TURN REST API", coturn's
`use-auth-secret`): username = "<expiry>:<user>", password = base64(HMAC-SHA1(secret,
username)). The TURN server recomputes the password from the username alone, so nothing has
to be stored or synchronised, and a credential is worthless after its expiry.

What the server's own connections use (the port range, TURN for the server itself) is the
app's `MediaPolicy`; the `/ws` handler runs under it (`media_policy`, app/wiring.py), so every
peer connection a session creates or renegotiates gathers by it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import functools
import hashlib
import hmac
import logging
import random
import socket
import time
import weakref
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aioice
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import StunProtocol, get_host_addresses
from aioice.turn import UDP_SOCKET_BUFFER_SIZE
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from ptt_server.core.errors import SignalingError
from ptt_server.media import compat_ice
from ptt_server.media.icemux import UdpMux

log = logging.getLogger("ptt.media")

# The error a client gets when every port of the range is taken: retryable, and not `internal`
# (the server is working as configured; it is full).
MEDIA_PORTS_EXHAUSTED = "media_ports_exhausted"
SERVER_TURN_USER = "ptt-server"


# -- TURN credentials ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TurnCredential:
    urls: tuple[str, ...]
    username: str
    credential: str
    expires_at: int  # epoch seconds

    def as_json(self) -> dict[str, Any]:
        """The WebRTC RTCIceServer dictionary (W3C webrtc-pc), ready for RTCPeerConnection."""
        return {"urls": list(self.urls), "username": self.username,
                "credential": self.credential}


@dataclass(frozen=True)
class TurnRest:
    """Mints credentials for `urls` from the shared secret (draft-uberti-behave-turn-rest)."""

    urls: tuple[str, ...]
    secret: bytes
    ttl_s: int

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("no TURN URL")
        if not self.secret:
            raise ValueError("empty TURN secret")
        if self.ttl_s <= 0:
            raise ValueError("TURN credential lifetime must be positive")

    def credential(self, user: str, now: float | None = None) -> TurnCredential:
        # The expiry first, then the user: coturn reads the timestamp before its separator,
        # and the user part is what its logs show for the allocation (who relayed).
        expires_at = int(now if now is not None else time.time()) + self.ttl_s
        username = f"{expires_at}:{user}"
        digest = hmac.new(self.secret, username.encode(), hashlib.sha1).digest()
        return TurnCredential(self.urls, username, base64.b64encode(digest).decode("ascii"),
                              expires_at)

    def rtc_ice_servers(self, user: str) -> list[RTCIceServer]:
        cred = self.credential(user)
        return [RTCIceServer(urls=url, username=cred.username, credential=cred.credential)
                for url in cred.urls]


# -- the media port range ---------------------------------------------------------------------
class PortRange:
    """UDP ports `low`..`high` (inclusive) for media sockets.

    Nothing is reserved or counted: a port is free when binding it succeeds, so several worker
    processes (or servers) can share one range without talking to each other. The search
    starts where the previous one ended, so ports freed a moment ago (a client reconnecting)
    are not the first ones retried.
    """

    def __init__(self, low: int, high: int) -> None:
        if not 0 < low <= high <= 65535:
            raise ValueError(f"not a port range: {low}-{high}")
        self.low, self.high = low, high
        self._next = random.randrange(low, high + 1)

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """"40000-40999" (or one port, "40000")."""
        low, sep, high = text.partition("-")
        try:
            return cls(int(low), int(high) if sep else int(low))
        except ValueError:
            raise ValueError(f"not a port range LOW-HIGH: {text!r}") from None

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port <= self.high

    def bind(self, address: str) -> socket.socket:
        """A UDP socket bound to `address` and a free port of the range; SignalingError
        `media_ports_exhausted` when none is free, OSError when `address` cannot be bound."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        for i in range(self.size):
            port = self.low + (self._next - self.low + i) % self.size
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((address, port))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            self._next = port + 1 if port < self.high else self.low
            sock.setblocking(False)
            return sock
        log.warning("media port range exhausted", extra={"fields": {
            "ports": f"{self.low}-{self.high}", "address": address}})
        raise SignalingError(
            MEDIA_PORTS_EXHAUSTED,
            f"all {self.size} media ports of this server are in use; try again shortly",
        )

    def bind_all(self, addresses: Sequence[str]) -> list[socket.socket]:
        """One socket per address, or none at all (an address that cannot be bound is
        skipped, as aioice does; running out of ports closes what was bound and raises)."""
        socks: list[socket.socket] = []
        try:
            for address in addresses:
                try:
                    socks.append(self.bind(address))
                except OSError as exc:
                    log.info("could not bind media socket on %s: %s", address, exc)
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        return socks


class _Reserved:
    """Sockets bound for one peer connection when its gathering is set up, one per address,
    taken by its ICE agents when they gather. Binding them first means a used-up range is
    refused right there, with its own code, rather than deep inside aiortc's negotiation."""

    def __init__(self, ports: PortRange, addresses: Sequence[str]) -> None:
        self.ports = ports
        self.socks: dict[str, socket.socket] = dict(
            zip(addresses, ports.bind_all(addresses), strict=False))

    def take(self, addresses: Sequence[str]) -> list[socket.socket]:
        """Sockets for `addresses`: reserved ones first, then newly bound (an agent beyond
        the first, for a client that does not bundle)."""
        reserved = [self.socks.pop(a) for a in addresses if a in self.socks]
        missing = [a for a in addresses if a not in {s.getsockname()[0] for s in reserved}]
        return reserved + self.ports.bind_all(missing)

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()
        self.socks.clear()


async def _range_host_candidates(
    reserved: _Reserved, conn: Any, component: int, addresses: list[str], protocols: list[Any]
) -> list[Any]:
    """Host candidates on sockets bound inside the range: what aioice does for the sockets it
    binds to port 0 itself (one StunProtocol each, kept by the connection, which closes it)."""
    loop = asyncio.get_running_loop()
    candidates = []
    for sock in reserved.take(addresses):
        # The receive buffer aioice gives its own sockets: bursts of a talker's packets and
        # STUN checks must not overflow it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_SOCKET_BUFFER_SIZE)
        _, protocol = await loop.create_datagram_endpoint(lambda: StunProtocol(conn), sock=sock)
        host, port = sock.getsockname()[:2]
        protocol.local_candidate = aioice.Candidate(
            foundation=candidate_foundation("host", "udp", host), component=component,
            transport="udp", priority=candidate_priority(component, "host"), host=host,
            port=port, type="host",
        )
        protocols.append(protocol)
        candidates.append(protocol.local_candidate)
    return candidates


_reserved: weakref.WeakKeyDictionary[RTCPeerConnection, _Reserved] = (
    weakref.WeakKeyDictionary())


def _reserve(pc: RTCPeerConnection, ports: PortRange, addresses: Sequence[str]) -> _Reserved:
    reserved = _reserved.get(pc)
    if reserved is not None:
        return reserved  # a renegotiation: new agents bind when they gather
    reserved = _reserved[pc] = _Reserved(ports, addresses)  # raises media_ports_exhausted

    @pc.on("connectionstatechange")
    def on_state() -> None:
        # What an agent never took (a relay-only gathering, a negotiation that failed) is
        # given back when the connection closes.
        if pc.connectionState == "closed":
            reserved.close()

    return reserved


# -- the app's policy -------------------------------------------------------------------------
@dataclass(frozen=True)
class MediaPolicy:
    """What the server's own peer connections gather with, beyond the config's addresses."""

    ports: PortRange | None = None
    turn: TurnRest | None = None  # TURN for the server's own ICE (turn_for_server)
    # Every connection's host candidates on the process's shared sockets (icemux.py); the
    # port range, if any, is where those sockets were bound.
    mux: UdpMux | None = None


_policy: ContextVar[MediaPolicy | None] = ContextVar("ptt_media_policy", default=None)


@contextlib.contextmanager
def media_policy(policy: MediaPolicy | None) -> Iterator[None]:
    """Run the enclosed code (and the tasks it starts) under `policy`. A context variable
    rather than a global: several apps in one process (tests, several nodes) each keep their
    own, and client code in the same process (tests) gathers as a plain client."""
    token = _policy.set(policy)
    try:
        yield
    finally:
        _policy.reset(token)


def current_policy() -> MediaPolicy | None:
    return _policy.get()


def rtc_configuration(
    ice_servers: Sequence[str], policy: MediaPolicy | None = None
) -> RTCConfiguration:
    # An empty list, not None: None makes aiortc use a public STUN server, which a closed
    # police network cannot reach and a server with a public address does not need.
    servers = [RTCIceServer(urls=url) for url in ice_servers]
    policy = policy or _policy.get()
    if policy is not None and policy.turn is not None:
        servers += policy.turn.rtc_ice_servers(SERVER_TURN_USER)
    return RTCConfiguration(iceServers=servers)


def pin_host_addresses(
    pc: RTCPeerConnection, addresses: Sequence[str], policy: MediaPolicy | None = None
) -> None:
    """Make every ICE agent of `pc` gather host candidates on `addresses` only, on ports of
    the policy's range if it has one.

    Call after the transceivers exist and before setLocalDescription (which gathers).
    An empty `addresses` keeps aioice's own choice of addresses. With a port range, its
    sockets are bound here: SignalingError `media_ports_exhausted` when none is free.
    """
    policy = policy or _policy.get()
    mux = policy.mux if policy is not None else None
    if mux is not None and mux.is_open:
        compat_ice.replace_gathering(pc, mux.addresses, mux.host_candidates, mux.prepare)
        return
    ports = policy.ports if policy is not None else None
    if ports is None:
        if addresses:
            compat_ice.replace_gathering(pc, addresses)
        return
    wanted = list(addresses) or get_host_addresses(use_ipv4=True, use_ipv6=True)
    reserved = _reserve(pc, ports, wanted)
    compat_ice.replace_gathering(pc, wanted, functools.partial(_range_host_candidates, reserved))
