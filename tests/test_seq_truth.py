"""Sequence numbers that tell the truth (RFC 3550 section 5.1), from router to listener.

A packet lost on the talker's uplink must be a gap on every listener's downlink too, and a late
one must keep its own place (its own sequence number and timestamp, shifted by the same
offsets), so a listener's jitter buffer can see loss and use Opus in-band FEC (RFC 6716
section 2.1.7) instead of playing contiguous numbers over a hole. Between transmissions the
numbering continues one after the last, with the marker bit on the first packet (RFC 3551
section 4.1), never reused and never going backwards.

Three levels: the router's numbering alone; the router feeding a real aiortc listener over
loopback through each egress path (direct writer, aiortc's sender after the writer took over,
aiortc's sender from the first packet); and the whole server with a real aiortc talker whose
uplink drops or reorders chosen packets.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from client_cli.client import PttClient
from ptt_server.media import compat
from ptt_server.media.egress import LATE_WINDOW, DirectRtpWriter
from ptt_server.media.router import TalkgroupRouter

from .conftest import RunningServer
from .polling import until
from .rtp_support import LOOPBACK, TIMEOUT, TappedLink

FRAME = 960
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32


def payload(k: int) -> bytes:
    """An Opus-looking payload (TOC: CELT FB 20 ms, mono) that names its source packet."""
    return b"\xf8" + k.to_bytes(4, "big") + bytes(12)


def source_of(data: bytes) -> int:
    return int.from_bytes(data[1:5], "big")


@dataclass
class Out:
    seq: int
    ts: int
    marker: bool
    k: int  # which source packet (from the payload)


def assert_truthful(out: list[Out], *, per_seq: int = FRAME) -> None:
    """One offset for sequence numbers and one for timestamps: wire = talker's + offset."""
    assert out
    seq_off = {(o.seq - o.k) % SEQ_MOD for o in out}
    ts_off = {(o.ts - o.k * per_seq) % TS_MOD for o in out}
    assert len(seq_off) == 1, f"sequence offsets {sorted(seq_off)[:5]}"
    assert len(ts_off) == 1, f"timestamp offsets {sorted(ts_off)[:5]}"


def assert_never_newer_number_older_time(out: list[Out]) -> None:
    """No packet carries a higher (extended) sequence number and an older timestamp than
    another: what renumbering in arrival order did to late packets."""
    first = out[0]
    ext = [((o.seq - first.seq + 0x8000) % SEQ_MOD - 0x8000,
            (o.ts - first.ts + (1 << 31)) % TS_MOD - (1 << 31)) for o in out]
    ext.sort()
    assert all(a[1] < b[1] for a, b in itertools.pairwise(ext)), ext


# -- 1. the router's numbering -----------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Listener:
    """Stands in for a DownlinkTrack: keeps what the router pushes."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, int, bool, int | None]] = []

    def push(self, data: bytes, pts: int, marker: bool = False, ntp: int = 0,
             index: int | None = None) -> None:
        self.got.append((data, pts, marker, index))

    def out(self) -> list[Out]:
        return [Out(i or 0, p, m, source_of(d)) for d, p, m, i in self.got]


def router_with_listener() -> tuple[TalkgroupRouter, Listener, Clock]:
    clock = Clock()
    r = TalkgroupRouter("A", clock=clock)
    listener = Listener()
    r.add_listener("l", listener)  # type: ignore[arg-type]
    return r, listener, clock


def talk(r: TalkgroupRouter, clock: Clock, tid: str, ks: list[int], seq0: int, ts0: int,
         *, session: str = "s1") -> None:
    r.open(session, tid)
    for k in ks:
        r.forward(session, tid, payload(k), (ts0 + k * FRAME) % TS_MOD, (seq0 + k) % SEQ_MOD)
        clock.t += 0.02
    r.close(tid)


def test_router_keeps_uplink_gaps_across_the_sequence_wrap() -> None:
    r, listener, clock = router_with_listener()
    ks = [k for k in range(40) if k not in (3, 4, 17, 30)]
    talk(r, clock, "t1", ks, seq0=65520, ts0=TS_MOD - 5 * FRAME)
    out = listener.out()
    assert [o.k for o in out] == ks
    assert_truthful(out)
    assert [o.marker for o in out] == [True] + [False] * (len(ks) - 1)
    assert r.forwarded == len(ks) and r.late == r.duplicates == 0


def test_router_forwards_late_packets_in_their_own_place_and_drops_the_rest() -> None:
    r, listener, clock = router_with_listener()
    order = [0, 1, 2, 4, 5, 3, 6, 9, 7, 8, 8, 10, *range(11, 70), 12, 69]
    # 3, 7 and 8 are late but within the window; the second 8 and the second 69 are
    # duplicates; the second 12 is 57 packets late: beyond the window.
    talk(r, clock, "t1", order, seq0=100, ts0=5000)
    out = listener.out()
    assert [o.k for o in out] == [k for k in order[:10]] + list(range(10, 70))
    assert_truthful(out)
    assert_never_newer_number_older_time(out)
    assert r.duplicates == 2 and r.late == 1
    assert 57 > LATE_WINDOW


def test_router_drops_what_predates_the_transmission() -> None:
    r, listener, clock = router_with_listener()
    talk(r, clock, "t1", [2, 3, 1, 0, 4], seq0=7, ts0=0)  # 0 and 1 arrive after 2 began it
    assert [o.k for o in listener.out()] == [2, 3, 4]
    assert r.late == 2


def test_router_numbers_consecutive_transmissions_on_one_after_the_last() -> None:
    r, listener, clock = router_with_listener()
    talk(r, clock, "t1", [0, 1, 2, 5], seq0=1000, ts0=0)
    clock.t += 1.0
    talk(r, clock, "t2", [0, 1, 3], seq0=40000, ts0=123456, session="s2")
    clock.t += 1.0
    talk(r, clock, "t3", [0, 1], seq0=999, ts0=7, session="s1")  # lower talker numbers
    got = listener.got
    indices = [i for _, _, _, i in got]
    assert indices == [0, 1, 2, 5, 6, 7, 9, 10, 11]
    assert [m for _, _, m, _ in got] == [True, False, False, False, True, False, False,
                                         True, False]
    pts = [p for _, p, _, _ in got]
    assert pts == sorted(pts)  # timestamps continue too, after the real silence
    assert pts[4] - pts[3] >= 48000


def test_router_resynchronises_a_talker_whose_numbering_restarted() -> None:
    r, listener, clock = router_with_listener()
    r.open("s1", "t1")
    for k in range(5):
        r.forward("s1", "t1", payload(k), k * FRAME, 100 + k)
        clock.t += 0.02
    # The talker's device switched: a new sequence and timestamp origin mid-transmission.
    for k in range(5, 10):
        r.forward("s1", "t1", payload(k), 9_000_000 + k * FRAME, 30000 + k)
        clock.t += 0.02
    got = listener.got
    # The first packet of the new numbering is held on probation (RFC 3550 A.1), the second
    # confirms it: a new talkspurt, numbered on from the last index, timestamps continuing.
    assert [source_of(d) for d, _, _, _ in got] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert [i for _, _, _, i in got] == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert got[5][2] is True and r.resyncs == 1
    assert 0 < got[5][1] - got[4][1] < 48000


# -- 2. through the egress paths to a real aiortc listener -------------------------------------
class Pair(TappedLink[Out]):
    """A server-side peer sending one DownlinkTrack, through a DirectRtpWriter, to a
    client-side peer tapping RTP: `got` holds what the listener received."""

    def __init__(self) -> None:
        super().__init__()
        self.primed = 0

    def tap(self, receiver: Any) -> None:
        compat.wrap_rtp_handler(receiver, self._on_rtp)

    async def negotiate(self) -> None:
        await super().negotiate()
        self.track.direct = DirectRtpWriter(self.transceiver)

    def _on_rtp(self, packet: Any, arrival_time_ms: int) -> None:
        self.keep(Out(packet.sequence_number, packet.timestamp, bool(packet.marker),
                      source_of(packet.payload)))

    async def prime(self) -> None:
        """One packet through aiortc's own sender first (its send loop running and parked),
        as for a listener that joined while the direct path was not ready yet."""
        writer, self.track.direct = self.track.direct, None
        self.track.push(payload(10_000), 0, True, 0)
        await self.received(1)
        self.track.direct = writer
        self.got.clear()
        self.primed += 1


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    p = Pair()
    try:
        yield p
    finally:
        await p.close()


PATHS = ["direct", "public-after-take-over", "public-from-the-start"]


async def use_path(pair: Pair, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "public-from-the-start":
        # The writer never becomes ready (as with a TURN relay): aiortc's sender sends every
        # packet, numbered through the writer's numbering from its first one.
        monkeypatch.setattr(compat, "nominated_udp", lambda dtls: None)
    await pair.connect()
    if path == "public-after-take-over":
        await pair.prime()
        found = compat.nominated_udp(pair.transceiver.sender.transport)
        assert found is not None
        monkeypatch.setattr(found[0], "is_closing", lambda: True)  # the direct path declines


async def pace() -> None:
    """A few ms between packets, as a talker's 20 ms would: aiortc's send loop (the public
    path) takes one packet per turn of the event loop and its queue is bounded."""
    await asyncio.sleep(0.004)


def sent_by(pair: Pair, path: str) -> tuple[int, int]:
    writer = pair.track.direct
    assert writer is not None
    return writer.sent, pair.track.sent - pair.primed


@pytest.mark.parametrize("path", PATHS)
async def test_listener_sees_the_talkers_gaps_and_timing(
    pair: Pair, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await use_path(pair, path, monkeypatch)
    router = TalkgroupRouter("A")
    router.add_listener("l", pair.track)
    lost = {2, 9, 10, 11, 25}
    late = {14: 16, 30: 33}  # packet 14 arrives after 16, 30 after 33
    order = [k for k in range(40) if k not in lost and k not in late]
    for k, after in late.items():
        order.insert(order.index(after) + 1, k)
    router.open("talker", "t1")
    for k in order:
        router.forward("talker", "t1", payload(k), (70000 + k * FRAME) % TS_MOD,
                       (65500 + k) % SEQ_MOD)
        await pace()
    await pair.received(len(order))
    out = pair.got
    assert sorted(o.k for o in out) == sorted(order)
    assert_truthful(out)  # gaps where the uplink lost packets, late ones in their own place
    assert_never_newer_number_older_time(out)
    got = {o.k for o in out}
    assert not got & lost
    assert [o.marker for o in out] == [True] + [False] * (len(out) - 1)
    direct, public = sent_by(pair, path)
    assert (direct, public) == ((len(order), 0) if path == "direct" else (0, len(order)))


@pytest.mark.parametrize("path", PATHS)
async def test_consecutive_transmissions_continue_the_numbering(
    pair: Pair, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await use_path(pair, path, monkeypatch)
    router = TalkgroupRouter("A")
    router.add_listener("l", pair.track)
    sent = 0
    for n, (tid, seq0) in enumerate([("t1", 100), ("t2", 50000), ("t3", 7)]):
        router.open(f"talker{n}", tid)
        for k in range(n * 100, n * 100 + 20):
            router.forward(f"talker{n}", tid, payload(k), k * FRAME, (seq0 + k) % SEQ_MOD)
            sent += 1
            await pace()
        router.close(tid)
        await pair.received(sent)
    out = pair.got
    assert len(out) == 60
    steps = [(b.seq - a.seq) % SEQ_MOD for a, b in itertools.pairwise(out)]
    assert steps == [1] * 59  # monotonic, one after the other, across the transmissions
    assert [i for i, o in enumerate(out) if o.marker] == [0, 20, 40]
    assert_never_newer_number_older_time(out)


async def test_a_slot_bound_to_another_talkgroup_continues_its_own_numbering(
    pair: Pair,
) -> None:
    await pair.connect()
    first, second = TalkgroupRouter("A"), TalkgroupRouter("B")
    first.add_listener("l", pair.track)
    first.open("s1", "t1")
    for k in range(30):  # router A's indices reach 29
        first.forward("s1", "t1", payload(k), k * FRAME, k)
    await pair.received(30)
    first.remove_listener("l")
    pair.track.clear()  # what a slot's unbind does
    second.add_listener("l", pair.track)
    second.open("s2", "t2")
    for k in range(100, 110):  # router B numbers from 0
        second.forward("s2", "t2", payload(k), k * FRAME, k)
    await pair.received(40)
    steps = {(b.seq - a.seq) % SEQ_MOD for a, b in itertools.pairwise(pair.got)}
    assert steps == {1}


# -- 3. the whole server, a real talker whose uplink loses or reorders packets -----------------
class SeqListener(PttClient):
    """A listening client that keeps every RTP packet's number, timestamp and marker."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.rtp: list[Out] = []

    def _tap_new_receivers(self) -> None:
        assert self.pc is not None
        for transceiver in self.pc.getTransceivers():
            receiver = transceiver.receiver
            if receiver in self._tapped:
                continue
            self._tapped.append(receiver)

            def on_rtp(packet: Any, arrival_time_ms: int) -> None:
                if packet.payload:
                    self.rtp.append(Out(packet.sequence_number, packet.timestamp,
                                        bool(packet.marker), source_of(packet.payload)))

            compat.wrap_rtp_handler(receiver, on_rtp)


def talker_sender(client: PttClient) -> Any:
    assert client.pc is not None
    return client.pc.getTransceivers()[0].sender


def drop_uplink(client: PttClient, drop: Callable[[int], bool]) -> list[int]:
    """Make the talker's own transport lose the packets whose source index `drop` picks
    (its RTP never leaves the machine). Returns the list of dropped indices, filled as the
    packets go by."""
    sender = talker_sender(client)
    dropped: list[int] = []

    def rewrite(packet: bytes) -> bytes | None:
        k = source_of(packet[-17:])
        if drop(k):
            dropped.append(k)
            return None
        return packet

    compat.intercept_rtp_out(sender.transport, compat.sender_ssrc(sender), rewrite)
    return dropped


def reorder_uplink(client: PttClient, late: dict[int, int]) -> None:
    """Hold the packets named in `late` (source index -> the one they go out after)."""
    dtls = talker_sender(client).transport
    original = dtls._send_rtp
    held: dict[int, bytes] = {}

    async def send_rtp(data: bytes) -> None:
        if len(data) < 12 or 191 < data[1] < 224:  # RTCP (RFC 5761)
            await original(data)
            return
        k = source_of(data[-17:])
        if k in late:
            held[late[k]] = data
            return
        await original(data)
        if k in held:
            await original(held.pop(k))

    dtls._send_rtp = send_rtp


Connect = Callable[..., Awaitable[PttClient]]


@pytest.fixture
async def connect(server: RunningServer) -> AsyncIterator[Connect]:
    clients: list[PttClient] = []

    async def make(name: str, cls: type[PttClient] = PttClient, send: bool = True) -> Any:
        c = cls(server.url, server.token(name), ice_addresses=LOOPBACK)
        clients.append(c)
        await c.connect()
        await c.start_media(send=send)
        await c.join("A")
        await c.wait_for(lambda m: m["type"] == "downlink" and m["talkgroup"] == "A")
        return c

    yield make
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def of(out: list[Out], ks: range) -> list[Out]:
    return [o for o in out if o.k in ks]


async def test_uplink_loss_is_a_gap_at_the_listener(connect: Connect) -> None:
    talker = await connect("u1")
    listener = await connect("u2", SeqListener, send=False)
    lost = {5, 6, 20, 33, 34, 35, 48}
    dropped = drop_uplink(talker, lambda k: k in lost)
    grant = await talker.talk("A", [payload(k) for k in range(60)])
    assert grant["type"] == "floor_granted"
    await until(lambda: len(listener.rtp) >= 60 - len(lost), TIMEOUT, every=0.02)
    out = listener.rtp
    assert sorted(dropped) == sorted(lost)
    assert [o.k for o in out] == [k for k in range(60) if k not in lost]
    assert_truthful(out)  # the listener's numbers have the talker's gaps, timing is its own
    assert out[0].marker and not any(o.marker for o in out[1:])


async def test_uplink_reordering_keeps_each_packet_in_its_place(connect: Connect) -> None:
    talker = await connect("u1")
    listener = await connect("u2", SeqListener, send=False)
    reorder_uplink(talker, {10: 12, 25: 26, 40: 44})
    await talker.talk("A", [payload(k) for k in range(60)])
    await until(lambda: len(listener.rtp) >= 60, TIMEOUT, every=0.02)
    out = listener.rtp
    arrival = [o.k for o in out]
    assert arrival != sorted(arrival)  # it did arrive out of order...
    assert sorted(arrival) == list(range(60))
    assert_truthful(out)  # ...each with its own number and time
    assert_never_newer_number_older_time(out)


async def test_consecutive_transmissions_are_monotonic_at_the_listener(
    connect: Connect,
) -> None:
    first = await connect("u1")
    second = await connect("u3")
    listener = await connect("u2", SeqListener, send=False)
    drop_uplink(first, lambda k: k == 39)  # the first transmission's last packet is lost
    await first.talk("A", [payload(k) for k in range(40)])
    await until(lambda: len(listener.rtp) >= 39, TIMEOUT, every=0.02)
    await second.talk("A", [payload(k) for k in range(100, 140)])
    await until(lambda: len(listener.rtp) >= 79, TIMEOUT, every=0.02)
    await first.talk("A", [payload(k) for k in range(200, 220)])
    await until(lambda: len(listener.rtp) >= 99, TIMEOUT, every=0.02)
    out = listener.rtp
    for block in (range(0, 40), range(100, 140), range(200, 220)):
        assert_truthful(of(out, block))
        assert of(out, block)[0].marker
    steps = [(b.seq - a.seq) % SEQ_MOD for a, b in itertools.pairwise(out)]
    assert all(0 < s < 0x8000 for s in steps)  # never reused, never backwards
    # Each transmission starts one after the last number sent.
    assert steps[38] == 1 and steps[78] == 1
    ts_steps = [(b.ts - a.ts) % TS_MOD for a, b in itertools.pairwise(out)]
    assert all(0 < s < 1 << 31 for s in ts_steps)
