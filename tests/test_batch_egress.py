"""Batched egress: in-place SRTP and sendmmsg, with real sockets, real libsrtp, real peers.

The end-to-end cases (one stream across the public and direct paths, with and without the
batch) use test_egress's aiortc link over loopback (tests/rtp_support.py).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
from collections.abc import AsyncIterator

import pylibsrtp
import pytest

from ptt_server.media import batch, sendmmsg
from ptt_server.media.downlink import DownlinkTrack
from ptt_server.media.egress import DirectRtpWriter
from ptt_server.media.router import TalkgroupRouter

from .rtp_support import Link, assert_one_stream, negotiated, prime

KEY = bytes(range(30))  # AES-128 key and 14-byte salt


def session() -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    return pylibsrtp.Session(policy=policy)


def receiver() -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=KEY, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
    return pylibsrtp.Session(policy=policy)


def udp_pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    tx, rx = socket.socket(family, socket.SOCK_DGRAM), socket.socket(family, socket.SOCK_DGRAM)
    tx.bind((host, 0))
    rx.bind((host, 0))
    rx.settimeout(10)  # bounded: loopback delivers at once
    return tx, rx


HEADER = struct.pack("!BBHII", 0x80, 111, 0, 0, 0x1234ABCD)


async def test_in_place_srtp_is_what_protect_makes() -> None:
    """Byte for byte the packet pylibsrtp's protect() would make, from the same SRTP state;
    sent through sendmmsg, it decrypts to the header patched as asked and the payload."""
    assert batch.enabled()
    tx, rx = udp_pair()
    try:
        failures: list[int] = []
        packet = batch.InPlacePacket(session(), HEADER, tx.fileno(), rx.getsockname(),
                                     failures.append)
        reference, unprotect = session(), receiver()
        for seq, marker in ((7, True), (8, False), (9, False)):
            body = os.urandom(40 + seq)
            assert packet.send(body, marker, seq, seq * 960)
            assert len(batch.BATCH) == 1  # queued, not sent
            batch.flush()
            got = rx.recv(2048)
            want = bytearray(HEADER)
            want[1] |= 0x80 if marker else 0
            struct.pack_into("!HI", want, 2, seq, seq * 960)
            assert got == reference.protect(bytes(want) + body)
            assert unprotect.unprotect(got) == bytes(want) + body
        assert failures == []
    finally:
        tx.close()
        rx.close()


def test_a_payload_too_big_for_the_buffer_is_declined() -> None:
    tx, rx = udp_pair()
    try:
        packet = batch.InPlacePacket(session(), HEADER, tx.fileno(), rx.getsockname(), print)
        assert not packet.send(bytes(batch.BUFFER), False, 1, 960)
        assert len(batch.BATCH) == 0
    finally:
        tx.close()
        rx.close()


def test_one_socket_many_messages_is_one_call() -> None:
    """Messages for one socket, consecutive in the batch, go out in one sendmmsg call, in
    order, each to its own destination (IPv4 and IPv6)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        tx, rx1 = udp_pair(family)
        rx2 = socket.socket(family, socket.SOCK_DGRAM)
        rx2.bind((rx1.getsockname()[0], 0))
        rx2.settimeout(10)
        try:
            bufs = [bytearray(b"first"), bytearray(b"second"), bytearray(b"third")]
            keep = [(ctypes.c_char * len(b)).from_buffer(b) for b in bufs]
            msgs = [sendmmsg.Message(tx.fileno(), ctypes.addressof(k), dest)
                    for k, dest in zip(keep, (rx1.getsockname(), rx2.getsockname(),
                                              rx1.getsockname()), strict=True)]
            for m, b in zip(msgs, bufs, strict=True):
                m.set_length(len(b))
            out = sendmmsg.Batch()
            for m in msgs:
                out.add(m, lambda err: pytest.fail(f"send failed: {err}"))
            out.flush()
            assert (out.calls, out.sent) == (1, 3)
            assert [rx1.recv(64), rx1.recv(64), rx2.recv(64)] == [b"first", b"third", b"second"]
        finally:
            for s in (tx, rx1, rx2):
                s.close()


def test_a_failed_send_is_reported_to_its_owner_and_the_rest_still_go() -> None:
    tx, rx = udp_pair()
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead_fd = dead.fileno()
    dead.close()  # a descriptor that is no longer open: EBADF
    try:
        data = bytearray(b"alive")
        keep = (ctypes.c_char * len(data)).from_buffer(data)
        failed: list[tuple[str, int]] = []
        out = sendmmsg.Batch()
        for name, fd in (("dead", dead_fd), ("alive", tx.fileno())):
            msg = sendmmsg.Message(fd, ctypes.addressof(keep), rx.getsockname())
            msg.set_length(len(data))
            out.add(msg, lambda err, name=name: failed.append((name, err)))  # type: ignore[misc]
        out.flush()
        assert failed == [("dead", errno.EBADF)]
        assert rx.recv(64) == b"alive"
        assert sendmmsg.retry_later(errno.EAGAIN) and not sendmmsg.retry_later(errno.EBADF)
    finally:
        tx.close()
        rx.close()


def test_sockaddr_rejects_a_name() -> None:
    with pytest.raises(OSError):
        sendmmsg.sockaddr(("localhost", 5000))


# -- with real aiortc peers ------------------------------------------------------------------
@pytest.fixture
async def peer() -> AsyncIterator[Link]:
    async with negotiated(Link()) as lk:
        yield lk


async def test_batched_direct_path_is_one_stream_and_uses_sendmmsg(peer: Link) -> None:
    await peer.connect()
    sent = await prime(peer)
    peer.track.direct = DirectRtpWriter(peer.transceiver)
    calls = batch.BATCH.calls
    sent += peer.push(30)
    await peer.received(31)
    assert peer.writer.sent == 30
    assert batch.BATCH.calls - calls == 30  # one socket per connection: one call per packet
    assert_one_stream(peer, sent)


async def test_without_the_batch_the_direct_path_still_works(
    peer: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pylibsrtp's internals not as checked (or no sendmmsg): protect() and the transport's
    sendto, one stream all the same."""
    monkeypatch.setattr(batch, "enabled", lambda: False)
    await peer.connect()
    sent = await prime(peer)
    peer.track.direct = DirectRtpWriter(peer.transceiver)
    calls = batch.BATCH.calls
    sent += peer.push(20)
    await peer.received(21)
    assert peer.writer.sent == 20 and batch.BATCH.calls == calls
    assert_one_stream(peer, sent)


async def test_the_router_flushes_each_packet_to_every_listener(peer: Link) -> None:
    """Through the router: the copies are built in its loop and leave at its end."""
    await peer.connect()
    sent = await prime(peer)
    peer.track.direct = DirectRtpWriter(peer.transceiver)
    router = TalkgroupRouter("TG")
    router.add_listener("listener", peer.track)
    router.add_listener("idle", DownlinkTrack())  # no writer: the public path's queue
    router.open("talker", "tx1")
    for seq in range(10):
        assert router.forward("talker", "tx1", b"\xf8" + bytes(30), seq * 960, seq)
        assert len(batch.BATCH) == 0  # nothing waits for the next loop turn
    await peer.received(len(sent) + 10)
    assert peer.writer.sent == 10
