"""The ICE mux (media/icemux.py): every client's media on one server socket, each datagram to
its own connection, nothing moved by a datagram that cannot prove whose it is.

Real server, real Redis, real aiortc clients over loopback; the forged and stray datagrams are
sent from plain UDP sockets of the test.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aioice import stun

from client_cli.client import PttClient
from ptt_server.media import icemux
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
