"""The ICE part of the compat layer: gathering on given addresses, and a connection's view of a
socket shared with others (icemux.py).

aioice 0.13 gives each ICE connection sockets of its own and gathers host candidates on every
address but loopback. `replace_gathering` replaces one connection's gathering step (its
`_local_candidates*`, `_components`, `_transport_policy` and `_protocols`, read in aioice
0.13.0; `compat.check()` probes them at start).

`SharedStunProtocol` is aioice's own `StunProtocol` for a connection whose datagrams arrive
through a socket shared with other connections: the shared socket has already parsed a STUN
message to know whose it is, so it hands over the parsed message (`stun_received`) rather than
the bytes, and the transactions this connection starts are announced to the socket, which
routes their responses by transaction ID (RFC 8489 section 6: the ID, not the sender's address,
pairs a response with its request). Only public names of aioice are used for it.

`answer_check` answers a client's plain check on a connection that is up straight from the
datagram's bytes (stun_check.py says why), reading the connection's credentials, role,
closing flag and nominated pair (`_closing`, `_nominated`, read in aioice 0.13.0;
`check_probe()` looks for them); whenever any of it is not as expected, the datagram goes to
aioice as before.

`keep_consent` hands a connection's consent freshness (RFC 7675) to the shared socket's
keeper (consent.py): aioice's connect() starts `self.query_consent()` once the checks succeed,
and close() cancels that task, so an instance attribute of the same name puts the keeper's
`hold` in its place; `consent_probe()` checks both calls are still there.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from aioice import stun
from aioice.ice import CandidatePair, Connection, StunProtocol, TransportPolicy

from ptt_server.media import stun_check

# bind(conn, component, addresses, protocols) -> the host candidates it made
Bind = Callable[[Any, int, list[str], list[Any]], Awaitable[list[Any]]]

_pinned: weakref.WeakSet[Any] = weakref.WeakSet()


def ice_connections(pc: Any) -> list[Any]:
    """The aioice connections of `pc`'s transceivers (one per transport: one with BUNDLE)."""
    found: dict[int, Any] = {}
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport
        conn = None if dtls is None else dtls.transport.iceGatherer._connection
        if conn is not None:
            found.setdefault(id(conn), conn)
    return list(found.values())


def replace_gathering(pc: Any, addresses: Sequence[str], bind: Bind | None = None,
                      prepare: Callable[[Any], None] | None = None) -> None:
    """Make each ICE agent of `pc` gather host candidates on `addresses` only (aioice's own
    gathering skips loopback and has no per-connection address list). STUN/TURN candidates
    are still gathered; under the relay-only policy no host candidate is offered (RFC 9429
    section 3.5.3), as aioice itself does. `bind(conn, component, addresses, protocols)`, if
    given, makes the host candidates on sockets of its own (a media port range, ice.py; the
    shared socket, icemux.py). `prepare(conn)` runs now, once per connection: before the
    description that carries its ICE parameters is made."""
    wanted = list(addresses)
    for conn in ice_connections(pc):
        if conn in _pinned:
            continue
        if prepare is not None:
            prepare(conn)

        async def gather(conn: Any = conn) -> None:
            if conn._local_candidates_start:
                return
            conn._local_candidates_start = True
            host = wanted if conn._transport_policy == TransportPolicy.ALL else []
            for component in sorted(conn._components):
                if bind is not None:
                    conn._local_candidates += await bind(conn, component, host, conn._protocols)
                conn._local_candidates += await conn.get_component_candidates(
                    component=component, addresses=[] if bind is not None else host)
            conn._local_candidates_end = True

        conn.gather_candidates = gather
        _pinned.add(conn)


def set_local_username(conn: Connection, ufrag: str) -> None:
    """Give the connection this ICE ufrag (RFC 8445 section 5.3), before its description is
    made: aioice reads `local_username` (a read-only property over `_local_username`) for the
    description and for every check it answers."""
    if not 4 <= len(ufrag) <= 256:  # RFC 8839 section 5.4
        raise ValueError("an ICE ufrag is 4 to 256 characters")
    conn._local_username = ufrag


def local_credentials(conn: Connection) -> tuple[str, str]:
    return conn.local_username, conn.local_password


class SharedStunProtocol(StunProtocol):
    """One connection's protocol on a shared socket. `transactions_by_id` is the socket's
    routing table for responses; `claim(protocol, addr)` is called for each address this
    connection sends a request to (its own checks and consent, RFC 8445 section 7.2.5)."""

    def __init__(self, receiver: Connection, transactions_by_id: dict[bytes, Any],
                 claim: Callable[[Any, tuple[str, int]], None],
                 answered: Callable[[Connection], None] | None = None) -> None:
        super().__init__(receiver)
        self._by_id = transactions_by_id
        self._claim = claim
        self._answered = answered

    def send_stun(self, message: stun.Message, addr: tuple[str, int]) -> None:
        """What aioice's does, less its debug log; a success answer to a binding request is
        sent only for a check that authenticated (aioice's `request_received`), so it is what
        the consent keeper counts as the client's consent."""
        if message.message_class == stun.Class.RESPONSE and self._answered is not None:
            self._answered(self.receiver)
        if self.transport is not None:
            self.transport.sendto(bytes(message), addr)

    def stun_received(self, message: stun.Message, addr: tuple[str, int]) -> None:
        """A STUN message for this connection, parsed by the shared socket (what
        `StunProtocol.datagram_received` does after its own parse)."""
        if message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR):
            transaction = self.transactions.get(message.transaction_id)
            if transaction is not None:
                transaction.response_received(message, addr)
        elif message.message_class == stun.Class.REQUEST:
            self.receiver.request_received(message, addr, self)

    def answer_check(self, data: bytes, addr: tuple[str, int]) -> bool:
        """Answer a plain binding request from the nominated pair's remote address as
        aioice's `request_received` would (success, then its `check_incoming`, which for a
        nominated pair and no USE-CANDIDATE changes nothing). False: not such a check; the
        caller hands it to aioice, which answers it, errors included."""
        conn = self.receiver
        pair = conn._nominated.get(self.local_candidate.component)
        if (pair is None or pair.protocol is not self or pair.remote_addr != addr
                or conn._closing or conn.remote_username is None):
            return False
        check = stun_check.read_check(data)
        if check is None or check.controlling is conn.ice_controlling:  # a role conflict
            return False
        if check.username != f"{conn.local_username}:{conn.remote_username}".encode():
            return False
        key = conn.local_password.encode("utf8")
        if not stun_check.verify(data, check, key):
            return False  # aioice answers 401 (RFC 8489 section 9.2.4)
        if self._answered is not None:
            self._answered(conn)
        if self.transport is not None:
            self.transport.sendto(stun_check.response(data, addr, key), addr)
        return True

    def data_received(self, data: bytes) -> None:
        """DTLS, SRTP or SRTCP for this connection (RFC 7983 demultiplexing, done by the
        shared socket)."""
        self.receiver.data_received(data, self.local_candidate.component)

    async def request(
        self, request: stun.Message, addr: tuple[str, int],
        integrity_key: bytes | None = None, retransmissions: int | None = None,
    ) -> tuple[stun.Message, tuple[str, int]]:
        tid = request.transaction_id
        self._by_id[tid] = self
        self._claim(self, addr)
        try:
            return await super().request(request, addr, integrity_key, retransmissions)
        finally:
            if self._by_id.get(tid) is self:
                del self._by_id[tid]


def keep_consent(conn: Connection, hold: Callable[[Any], Coroutine[Any, Any, None]]) -> None:
    """From connect()'s end, `hold(conn)` runs as the connection's consent task instead of
    aioice's own checks (consent.py says why)."""
    conn.query_consent = functools.partial(hold, conn)  # type: ignore[method-assign]


def consent_probe() -> list[str]:
    """What `keep_consent` relies on that this aioice lacks (empty: all present)."""
    try:
        connect = inspect.getsource(Connection.connect)
        close = inspect.getsource(Connection.close)
    except (OSError, TypeError):
        return ["Connection.connect source"]
    missing = []
    if "self.query_consent()" not in connect:
        missing.append("Connection.connect -> self.query_consent()")
    if "_query_consent_task.cancel()" not in close:
        missing.append("Connection.close -> _query_consent_task.cancel()")
    return missing


def check_probe() -> list[str]:
    """What `answer_check` reads of a connection that this aioice lacks (empty: all present)."""
    conn = Connection(ice_controlling=False)  # no socket until it gathers
    missing = [f"Connection.{name}" for name in ("_nominated", "_closing", "remote_username",
                                                 "local_username", "local_password",
                                                 "ice_controlling")
               if not hasattr(conn, name)]
    if not isinstance(getattr(conn, "_nominated", None), dict):
        missing.append("Connection._nominated as a dict")
    try:
        pair_init = inspect.getsource(CandidatePair.__init__)
    except (OSError, TypeError):
        pair_init = ""
    missing += [f"CandidatePair.{name}" for name in ("protocol", "remote_addr")
                if f"self.{name}" not in pair_init and not hasattr(CandidatePair, name)]
    return missing


def probe() -> list[str]:
    """What the shared socket relies on that this aioice lacks (empty: all present)."""
    missing = [f"StunProtocol.{name}" for name in ("request", "send_stun", "close")
               if not hasattr(StunProtocol, name)]
    missing += [f"Connection.{name}" for name in ("request_received", "data_received",
                                                  "protocol_lost")
                if not hasattr(Connection, name)]
    conn = Connection(ice_controlling=False)  # no socket until it gathers
    if getattr(conn, "_local_username", None) != conn.local_username:
        missing.append("Connection._local_username")
    if not hasattr(stun.Message, "check_message_integrity"):
        missing.append("stun.Message.check_message_integrity")
    return missing
