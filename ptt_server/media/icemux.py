"""One UDP socket per host address for every client's media: an ICE UDP mux.

Why: aioice binds a socket for each ICE connection, so a server with 1,500 listeners holds
1,500 sockets (1,500 file descriptors, past a default limit of 1,024; 1,500 kernel buffers;
a firewall rule per range). Worse for the fan-out: one incoming packet becomes one `sendmmsg`
call *per listener*, because a call writes to one socket. With every connection on one socket
the batch (sendmmsg.py) hands a whole fan-out to the kernel in one call.

All connections announce the same host candidate (address and port), which ICE allows: a
candidate pair is told apart by the remote side's address (RFC 8445 section 6.1.2.2), and the
first contact from a client is a binding request whose USERNAME begins with our ufrag for that
connection (RFC 8445 section 7.2.2), unique per process here (`prepare`). So a datagram is
routed by what it is (RFC 7983 section 7: a first byte of 0-3 is STUN, the rest is DTLS, SRTP
or SRTCP):
- STUN request: to the connection whose ufrag it names. Its source address becomes that
  connection's only if its MESSAGE-INTEGRITY verifies with that connection's password (RFC
  8489 section 9.2): a forged request is answered by aioice with 401 and moves nothing.
- STUN response: to the connection that sent the request with that transaction ID.
- anything else: to the connection its source address belongs to; otherwise dropped and
  counted (`unknown`).
An address also becomes a connection's when the connection sends a check to it (RFC 8445
section 7.2.5), unless another connection holds it already; a reply (aioice's 401 to a forged
request) takes nothing.

Consent freshness (RFC 7675) on the shared socket is the client's checks, as for a lite
agent: consent.py. A plain check from the address of a connection that is up is answered from
its bytes (stun_check.py); any other STUN goes through aioice.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import string
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import aioice
from aioice import stun
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.ice import get_host_addresses

from ptt_server.media import compat_ice
from ptt_server.media.compat_ice import SharedStunProtocol
from ptt_server.media.consent import ConsentKeeper

log = logging.getLogger("ptt.media")

Address = tuple[str, int]
# Kernel buffers of the shared socket: a fan-out to 1,500 listeners queues ~1,500 datagrams at
# once on a real NIC (each charged with its skb overhead, ~1 KiB), and every client's STUN,
# RTCP and the talkers' audio arrive on it. Raised past net.core.[rw]mem_max where the process
# may (CAP_NET_ADMIN); otherwise the kernel caps them (docs/operations.md says how to raise).
BUFFER_BYTES = 4 * 1024 * 1024
UFRAG_CHARS = string.ascii_letters + string.digits
UFRAG_LEN = 8  # 47 bits of randomness, RFC 8445 section 5.3 asks at least 24


@dataclass(frozen=True)
class MuxStats:
    sockets: int
    connections: int  # connections attached (one per client transport)
    addresses: int  # remote addresses routed
    unknown: int  # datagrams dropped: from no known address, or not STUN-parsable
    consent_expired: int  # connections closed: no check from the client for 30 s (consent.py)
    answered_quickly: int  # client checks answered from their bytes (stun_check.py)


class SharedSocket(asyncio.DatagramProtocol):
    """The shared socket of one host address and its routing tables."""

    def __init__(self, consent: ConsentKeeper | None = None, quick_checks: bool = True) -> None:
        self.consent = consent
        self.quick_checks = quick_checks  # compat_ice.answer_check for a connection that is up
        self.transport: asyncio.DatagramTransport | None = None
        self.by_addr: dict[Address, SharedStunProtocol] = {}
        self.by_ufrag: dict[str, SharedStunProtocol] = {}
        self.by_tid: dict[bytes, Any] = {}
        self._addrs: dict[SharedStunProtocol, set[Address]] = {}
        self.unknown = 0
        self.answered_quickly = 0  # checks answered from their bytes (stun_check.py)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        key = (addr[0], addr[1])  # an IPv6 4-tuple as aioice keeps it
        if data and data[0] < 4:
            self._stun(data, key)
            return
        protocol = self.by_addr.get(key)
        if protocol is None:
            self.unknown += 1
            return
        protocol.data_received(data)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for one destination (a client gone): consent checks find out.
        log.debug("ICE mux socket error: %s", exc)

    def _stun(self, data: bytes, addr: Address) -> None:
        if self.quick_checks and data[1:2] == b"\x01":  # a binding request, most likely
            protocol = self.by_addr.get(addr)
            if protocol is not None and protocol.answer_check(data, addr):
                self.answered_quickly += 1
                return
        try:
            message = stun.parse_message(data)
        except ValueError:
            self.unknown += 1
            return
        if message.message_class == stun.Class.REQUEST:
            protocol = self._requested(message, addr)
        elif message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR):
            protocol = self.by_tid.get(message.transaction_id)
        else:
            protocol = self.by_addr.get(addr)  # an indication
        if protocol is None:
            self.unknown += 1
            return
        protocol.stun_received(message, addr)

    def _requested(self, message: stun.Message, addr: Address) -> SharedStunProtocol | None:
        username = message.attributes.get("USERNAME")
        if not isinstance(username, str):
            return self.by_addr.get(addr)  # aioice answers 400 Bad Request
        protocol = self.by_ufrag.get(username.partition(":")[0])
        if protocol is None or self.by_addr.get(addr) is protocol:
            return protocol
        _, password = compat_ice.local_credentials(protocol.receiver)
        if message.check_message_integrity(password.encode("utf8")):
            self.route(addr, protocol)  # the client itself, from a new address (NAT, network)
        return protocol

    def claim(self, protocol: SharedStunProtocol, addr: tuple[Any, ...]) -> None:
        """The connection sends a check to `addr`: the answers and what follows are its own,
        unless the address is another connection's already."""
        key = (addr[0], addr[1])
        if key not in self.by_addr:
            self.route(key, protocol)

    def route(self, addr: Address, protocol: SharedStunProtocol) -> None:
        owned = self._addrs.get(protocol)
        if owned is None:
            return  # released: a late send from a closing connection takes nothing
        previous = self.by_addr.get(addr)
        if previous is not None and previous is not protocol:
            self._addrs[previous].discard(addr)
        self.by_addr[addr] = protocol
        owned.add(addr)

    def attach(self, conn: Any, component: int) -> SharedStunProtocol:
        assert self.transport is not None
        protocol = SharedStunProtocol(
            conn, self.by_tid, self.claim,
            None if self.consent is None else self.consent.answered_check)
        ufrag, _ = compat_ice.local_credentials(conn)
        self.by_ufrag[ufrag] = protocol
        self._addrs[protocol] = set()
        protocol.connection_made(_View(self, protocol))
        host, port = self.transport.get_extra_info("sockname")[:2]
        protocol.local_candidate = aioice.Candidate(
            foundation=candidate_foundation("host", "udp", host), component=component,
            transport="udp", priority=candidate_priority(component, "host"), host=host,
            port=port, type="host",
        )
        return protocol

    def release(self, protocol: SharedStunProtocol) -> None:
        for addr in self._addrs.pop(protocol, ()):
            if self.by_addr.get(addr) is protocol:
                del self.by_addr[addr]
        ufrag, _ = compat_ice.local_credentials(protocol.receiver)
        if self.by_ufrag.get(ufrag) is protocol:
            del self.by_ufrag[ufrag]
        for tid in [t for t, p in self.by_tid.items() if p is protocol]:
            del self.by_tid[tid]


class _View(asyncio.DatagramTransport):
    """The transport one connection's protocol sees: sends through the shared socket, closes
    only this connection's share."""

    def __init__(self, shared: SharedSocket, protocol: SharedStunProtocol) -> None:
        super().__init__()
        self._shared = shared
        self._protocol = protocol
        self._closed = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        shared = self._shared
        if self._closed or shared.transport is None or addr is None:
            return
        shared.transport.sendto(data, addr)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._shared.release(self._protocol)
        asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        transport = self._shared.transport
        return self._closed or transport is None or transport.is_closing()

    def get_write_buffer_size(self) -> int:
        transport = self._shared.transport
        # (typeshed's DatagramTransport lacks it; asyncio's and uvloop's have it)
        return 0 if transport is None else int(transport.get_write_buffer_size())  # type: ignore[attr-defined]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        transport = self._shared.transport
        return default if transport is None else transport.get_extra_info(name, default)


class UdpMux:
    """The shared sockets of one process, one per host address, and the ufrags handed out."""

    def __init__(self, addresses: Sequence[str], ports: Any = None) -> None:
        self._wanted = list(addresses)
        self._ports = ports  # ice.PortRange or None (a port the kernel picks)
        self._sockets: dict[str, SharedSocket] = {}
        self._ufrags: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        missing = compat_ice.consent_probe()
        if missing:
            log.warning("ICE consent: aioice's own checks, a task per client: aioice lacks %s",
                        ", ".join(missing))
        # None: aioice's own consent checks (an aioice this code does not know)
        self.consent: ConsentKeeper | None = None if missing else ConsentKeeper()
        unread = compat_ice.check_probe()
        if unread:
            log.warning("ICE checks: every one through aioice's parser: aioice lacks %s",
                        ", ".join(unread))
        self._quick_checks = not unread

    @property
    def is_open(self) -> bool:
        return bool(self._sockets)

    @property
    def addresses(self) -> list[str]:
        return list(self._sockets)

    def local_addresses(self) -> list[Address]:
        """(host, port) of each shared socket: what every connection announces."""
        return [s.transport.get_extra_info("sockname")[:2]
                for s in self._sockets.values() if s.transport is not None]

    async def open(self) -> None:
        """Bind a socket on each address (OSError when addresses were given and none could be
        bound; the port range's SignalingError when it has no free port)."""
        loop = asyncio.get_running_loop()
        # No address configured: every one aioice itself would gather on.
        wanted = self._wanted or get_host_addresses(use_ipv4=True, use_ipv6=True)
        if not wanted:
            # Only loopback here (a container, a namespace): nothing a client could reach, as
            # with aioice's own gathering. Signaling still works; say what media needs.
            log.warning("ICE mux: no address to announce for media (only loopback?); "
                        "give one with --ice-address")
            return
        for address in wanted:
            try:
                sock = self._bind(address)
            except OSError as exc:
                log.warning("ICE mux: cannot bind %s: %s", address, exc)
                continue
            _, shared = await loop.create_datagram_endpoint(
                lambda: SharedSocket(self.consent, self._quick_checks), sock=sock)
            self._sockets[address] = shared
            log.info("ICE mux listening", extra={"fields": {
                "address": address, "port": sock.getsockname()[1],
                "rcvbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                "sndbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)}})
        if not self._sockets:
            raise OSError(f"ICE mux: none of the addresses {wanted} could be bound")

    def _bind(self, address: str) -> socket.socket:
        if self._ports is not None:
            sock: socket.socket = self._ports.bind(address)
        else:
            sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET,
                                 socket.SOCK_DGRAM)
            try:
                sock.bind((address, 0))
            except OSError:
                sock.close()
                raise
            sock.setblocking(False)
        for force, plain in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                             (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force or plain, BUFFER_BYTES)
            except (OSError, TypeError):
                sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER_BYTES)  # capped by the kernel
        return sock

    def prepare(self, conn: Any) -> None:
        """Give the connection a ufrag no other connection of this process has, before its
        description is made: a binding request names its connection by it."""
        while True:
            ufrag = "".join(secrets.choice(UFRAG_CHARS) for _ in range(UFRAG_LEN))
            if ufrag not in self._ufrags:
                break
        compat_ice.set_local_username(conn, ufrag)
        self._ufrags[ufrag] = conn
        if self.consent is not None:
            compat_ice.keep_consent(conn, self.consent.hold)

    async def host_candidates(self, conn: Any, component: int, addresses: list[str],
                              protocols: list[Any]) -> list[Any]:
        """The gathering hook (compat_ice.replace_gathering): a host candidate on each shared
        socket of `addresses`, on the one component aiortc uses (RTCP multiplexed, RFC 5761)."""
        if component != 1:
            return []
        candidates = []
        for address in addresses:
            shared = self._sockets.get(address)
            if shared is None or shared.transport is None:
                continue
            protocol = shared.attach(conn, component)
            protocols.append(protocol)  # the connection closes it (aioice's own bookkeeping)
            candidates.append(protocol.local_candidate)
        return candidates

    def stats(self) -> MuxStats:
        socks = list(self._sockets.values())
        return MuxStats(sockets=len(socks), connections=sum(len(s.by_ufrag) for s in socks),
                        addresses=sum(len(s.by_addr) for s in socks),
                        unknown=sum(s.unknown for s in socks),
                        consent_expired=0 if self.consent is None else self.consent.expired,
                        answered_quickly=sum(s.answered_quickly for s in socks))

    def close(self) -> None:
        if self.consent is not None:
            self.consent.close()
        for shared in self._sockets.values():
            if shared.transport is not None:
                shared.transport.close()
        self._sockets.clear()
