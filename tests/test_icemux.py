"""The ICE mux (media/icemux.py): every client's media on one server socket, each datagram to
its own connection, nothing moved by a datagram that cannot prove whose it is.

Real server, real Redis, real aiortc clients over loopback; the forged and stray datagrams are
sent from plain UDP sockets of the test. Consent (media/consent.py) is tested with the
clients' aioice checking every 0.2 s and the server's keeper expiring after 1.5 s, so a lapse
shows in seconds.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import aioice.ice
import pytest
from aioice import stun

from client_cli.client import PttClient
from ptt_server.media import compat_ice, icemux
from ptt_server.media.consent import ConsentKeeper
from ptt_server.service.keys import ICE_MUX

from .conftest import RunningServer
from .polling import until
from .test_media_ports import candidate_ports

Connect = Callable[..., Awaitable[PttClient]]
PACKETS = [bytes([0xF8, 0xFF, 0xFE]) + bytes([i]) * 40 for i in range(25)]


@pytest.fixture
async def connect(server: RunningServer) -> AsyncIterator[Connect]:
    clients: list[PttClient] = []

    async def make(name: str, *talkgroups: str) -> PttClient:
        c = PttClient(server.url, server.token(name), ice_addresses=("127.0.0.1",))
        clients.append(c)
        await c.connect()
        await c.start_media()
        for tg in talkgroups:
            await c.join(tg)
            await c.wait_for(lambda m, tg=tg: m["type"] == "downlink" and m["talkgroup"] == tg)
        return c

    yield make
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def mux_of(server: RunningServer) -> icemux.UdpMux:
    return server.app[ICE_MUX]


def sdp_attr(sdp: str, name: str) -> str:
    prefix = f"a={name}:"
    return next(line[len(prefix):] for line in sdp.splitlines() if line.startswith(prefix))


def answer_sdp(client: PttClient) -> str:
    return str(next(m for m in client.events if m["type"] == "answer")["sdp"])


async def heard_all(talker: PttClient, listeners: list[PttClient]) -> None:
    grant = await talker.talk("A", PACKETS)
    assert grant["type"] == "floor_granted"
    tid = grant["transmission_id"]

    def done() -> bool:
        return all(tid in c.transmissions and len(c.transmissions[tid].packets) == len(PACKETS)
                   for c in listeners)

    await until(done, 15)
    for c in listeners:
        assert [p.payload for p in c.transmissions[tid].packets] == PACKETS


async def test_every_client_on_one_port_each_hears_its_own_talkgroup(
    server: RunningServer, connect: Connect
) -> None:
    mux = mux_of(server)
    (_host, port), = mux.local_addresses()
    talker = await connect("u1", "A")
    listeners = [await connect(name, "A") for name in ("u2", "u3")]
    other = await connect("u4", "B")
    clients = [talker, *listeners, other]
    # One candidate for all: the shared socket's address; distinct ufrags name the connections.
    for c in clients:
        assert candidate_ports(answer_sdp(c)) == [port]
    assert len({sdp_attr(answer_sdp(c), "ice-ufrag") for c in clients}) == len(clients)
    assert mux.stats().connections == len(clients)
    await heard_all(talker, listeners)
    # Nobody on B heard A's talker: the shared socket routed by connection, not by port.
    assert not other.transmissions
    # A client that leaves takes its routes with it.
    await other.close()
    await until(lambda: mux.stats().connections == len(clients) - 1, 15)
    await heard_all(talker, listeners)


def binding_request(username: str, password: str) -> stun.Message:
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1853824767
    request.attributes["ICE-CONTROLLING"] = 1
    request.add_message_integrity(password.encode("utf8"))
    request.add_fingerprint()
    return request


async def exchange(sock: socket.socket, data: bytes, to: tuple[str, int]) -> stun.Message:
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, data, to)
    reply = await asyncio.wait_for(loop.sock_recv(sock, 2048), 10)
    return stun.parse_message(reply)


async def test_a_forged_check_moves_nothing_and_a_stray_datagram_is_dropped(
    server: RunningServer, connect: Connect
) -> None:
    mux = mux_of(server)
    (host, port), = mux.local_addresses()
    talker = await connect("u1", "A")
    listener = await connect("u2", "A")
    assert listener.pc is not None
    ufrag = sdp_attr(answer_sdp(listener), "ice-ufrag")
    password = sdp_attr(answer_sdp(listener), "ice-pwd")
    client_ufrag = sdp_attr(listener.pc.localDescription.sdp, "ice-ufrag")
    routed = mux.stats().addresses
    intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    intruder.bind(("127.0.0.1", 0))
    intruder.setblocking(False)
    try:
        # A binding request naming the listener's connection, signed with a wrong password:
        # refused as unauthenticated (RFC 8489 section 9.1.3), and the address is not routed.
        forged = binding_request(f"{ufrag}:{client_ufrag}", "x" * 22)
        reply = await exchange(intruder, bytes(forged), (host, port))
        assert reply.message_class == stun.Class.ERROR
        assert reply.attributes["ERROR-CODE"][0] == 401
        assert mux.stats().addresses == routed
        # Audio and DTLS from an address no connection has are dropped and counted.
        before = mux.stats().unknown
        await asyncio.get_running_loop().sock_sendto(
            intruder, bytes([0x80, 111]) + bytes(40), (host, port))
        await until(lambda: mux.stats().unknown == before + 1, 10)
        # The listener still hears the talker on the address it proved.
        await heard_all(talker, [listener])
        # The same request signed with the connection's password (the client itself, moved
        # to a new address): answered with the address it came from, and routed there.
        genuine = binding_request(f"{ufrag}:{client_ufrag}", password)
        reply = await exchange(intruder, bytes(genuine), (host, port))
        assert reply.message_class == stun.Class.RESPONSE
        assert reply.attributes["XOR-MAPPED-ADDRESS"] == intruder.getsockname()
        assert mux.stats().addresses == routed + 1
    finally:
        intruder.close()


def test_ufrags_are_unique_and_long_enough() -> None:
    from aioice.ice import Connection

    mux = icemux.UdpMux(["127.0.0.1"])
    conns = [Connection(ice_controlling=False) for _ in range(2000)]
    for conn in conns:
        mux.prepare(conn)
    ufrags = {conn.local_username for conn in conns}
    assert len(ufrags) == len(conns)
    assert all(len(u) == icemux.UFRAG_LEN for u in ufrags)


@pytest.fixture
def quick_consent(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> ConsentKeeper:
    """The clients' aioice checks every 0.16-0.24 s (the server's connections do not use
    aioice's consent task any more, so only the clients are affected); the server's keeper
    looks every 0.25 s and lets 1.5 s without a check expire a connection."""
    keeper = mux_of(server).consent
    assert keeper is not None
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    monkeypatch.setattr(keeper, "expiry_s", 1.5)
    monkeypatch.setattr(keeper, "tick_s", 0.25)
    return keeper


def media_failed(client: PttClient) -> bool:
    return any(m["type"] == "media_state" and m["state"] == "failed" for m in client.events)


async def test_consent_comes_from_the_clients_checks_and_the_server_sends_none(
    server: RunningServer, connect: Connect, quick_consent: ConsentKeeper
) -> None:
    talker = await connect("u1", "A")
    listener = await connect("u2", "A")
    assert listener.pc is not None
    conn, = compat_ice.ice_connections(listener.pc)
    checks_from_server: list[stun.Message] = []
    received = conn.request_received

    def counting(message: stun.Message, addr: tuple[str, int], protocol: object) -> None:
        checks_from_server.append(message)
        received(message, addr, protocol)  # type: ignore[arg-type]

    conn.request_received = counting  # type: ignore[method-assign]
    answered, ticks = quick_consent.answered, quick_consent.ticks
    quickly = mux_of(server).stats().answered_quickly
    # Three expiry periods pass: the clients' checks keep both connections, and the server
    # never asked a client for consent itself (aioice's own task would check every 0.2 s here).
    await until(lambda: quick_consent.ticks >= ticks + 18, 30)
    assert quick_consent.expired == 0 and len(quick_consent) == 2
    assert quick_consent.answered > answered
    # The clients' checks were answered from their bytes (stun_check.py), and count.
    assert mux_of(server).stats().answered_quickly > quickly
    assert checks_from_server == []
    assert not media_failed(talker) and not media_failed(listener)
    await heard_all(talker, [listener])


async def test_a_client_whose_checks_stop_loses_its_media_connection_alone(
    server: RunningServer, connect: Connect, quick_consent: ConsentKeeper
) -> None:
    talker = await connect("u1", "A")
    listener = await connect("u2", "A")
    assert listener.pc is not None
    conn, = compat_ice.ice_connections(listener.pc)
    # The listener's client stops checking (its consent task ends; its WebSocket stays):
    # within the expiry the server closes that connection, and says so to that client only.
    task = conn._query_consent_task
    assert task is not None
    task.cancel()
    await listener.wait_for(lambda m: m["type"] == "media_state" and m["state"] == "failed", 20)
    assert quick_consent.expired == 1 and len(quick_consent) == 1
    assert not media_failed(talker)
    assert mux_of(server).stats().consent_expired == 1


async def test_a_late_tick_judges_nothing() -> None:
    now = [100.0]
    keeper = ConsentKeeper(expiry_s=1.0, tick_s=0.05, clock=lambda: now[0])

    class Conn:
        closed = asyncio.Event()

        async def close(self) -> None:
            self.closed.set()

    conn = Conn()
    held = asyncio.ensure_future(keeper.hold(conn))
    try:
        await until(lambda: len(keeper) == 1, 5)
        # The clock jumps by far more than the expiry before the tick runs (a stalled loop,
        # a suspended host): the tick is late, so it judges nothing.
        now[0] += 30.0
        await until(lambda: keeper.late == 1, 5)
        assert keeper.expired == 0 and len(keeper) == 1
        # Checks that were waiting arrive; the next ticks find the connection fresh.
        keeper.answered_check(conn)
        ticks = keeper.ticks
        await until(lambda: keeper.ticks >= ticks + 3, 5)
        assert keeper.expired == 0
        # No check for longer than the expiry, ticks on time: expired, and closed.
        for _ in range(40):
            now[0] += 0.05
            await until(lambda t=keeper.ticks: keeper.ticks > t or keeper.expired > 0, 5)
            if keeper.expired:
                break
        assert 1.0 < now[0] - 130.0 < 1.2  # the first tick past the expiry
        await asyncio.wait_for(Conn.closed.wait(), 5)
        assert keeper.expired == 1 and len(keeper) == 0
    finally:
        held.cancel()
        keeper.close()
