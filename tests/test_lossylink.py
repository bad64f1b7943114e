"""The user-space lossy link (tests/lossylink.py): UDP echo from namespace B to namespace A.

An echo server runs on an event-loop thread inside A, a prober inside B sends numbered
datagrams at a steady pace and times the replies. Loss, delay, reordering and outages are
judged from what comes back, and checked against the forwarder's own counters.
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from .lossylink import LossyLink

PORT = 9000
PROBE = struct.Struct("!Id")  # index, send time (monotonic)


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


@dataclass
class Probe(asyncio.DatagramProtocol):
    replies: dict[int, float] = field(default_factory=dict)  # index -> round trip (s)
    order: list[int] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        index, sent = PROBE.unpack_from(data)
        if index not in self.replies:
            self.replies[index] = time.monotonic() - sent
            self.order.append(index)
            self.changed.set()


async def start_echo(host: str) -> Any:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=(host, PORT))
    return transport


async def probe(host: str, count: int, interval: float, linger: float) -> Probe:
    """Send `count` datagrams, one per `interval`, then wait up to `linger` for late replies
    (stopping early once every one came back)."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(Probe, remote_addr=(host, PORT))
    try:
        start = time.monotonic()
        for i in range(count):
            transport.sendto(PROBE.pack(i, time.monotonic()) + bytes(100))
            pause = start + (i + 1) * interval - time.monotonic()
            await asyncio.sleep(max(0.0, pause))  # pacing, not waiting for a condition
        deadline = time.monotonic() + linger
        while len(proto.replies) < count and (left := deadline - time.monotonic()) > 0:
            proto.changed.clear()
            try:
                await asyncio.wait_for(proto.changed.wait(), left)
            except TimeoutError:
                break
        return proto
    finally:
        transport.close()


@pytest.fixture
async def echo(lossy_link: LossyLink) -> LossyLink:
    await lossy_link.loop("a").run(start_echo(lossy_link.addr_a), 10)
    return lossy_link


async def run_probe(link: LossyLink, count: int = 300, interval: float = 0.004,
                    linger: float = 1.5) -> Probe:
    return await link.loop("b").run(probe(link.addr_a, count, interval, linger), 60)


async def test_clean_link_echoes_everything_quickly(echo: LossyLink) -> None:
    got = await run_probe(echo)
    assert len(got.replies) == 300
    rtts = sorted(got.replies.values())
    assert rtts[len(rtts) // 2] < 0.02  # median: user-space forwarding adds little
    stats = echo.stats()
    assert stats["ba"]["forwarded"] >= 300 and stats["ab"]["forwarded"] >= 300
    assert stats["ab"]["dropped"] == stats["ba"]["dropped"] == 0


async def test_random_loss_is_observed_within_tolerance(echo: LossyLink) -> None:
    echo.set(loss=0.2, direction="ba")  # requests only: each loss is one missing reply
    echo.reset_stats()
    got = await run_probe(echo, count=600, linger=0.6)
    lost = 1 - len(got.replies) / 600
    # binomial sd at n=600, p=0.2 is 1.6 %: +-6 % is well over three sd
    assert 0.14 <= lost <= 0.26, lost
    ba = echo.stats()["ba"]
    assert ba["dropped_loss"] == 600 - len(got.replies)  # the forwarder counted each one
    assert ba["forwarded"] == len(got.replies)


async def test_burst_loss_keeps_the_average_and_comes_in_runs(echo: LossyLink) -> None:
    echo.set(loss=0.2, burst=5, direction="ba")
    got = await run_probe(echo, count=800, linger=0.6)
    lost = sorted(set(range(800)) - set(got.replies))
    runs = sum(1 for i, n in enumerate(lost) if i == 0 or lost[i - 1] != n - 1)
    assert 0.08 <= len(lost) / 800 <= 0.35
    assert len(lost) / runs >= 2.5  # mean burst length near 5, far above random's 1.25


async def test_added_delay_shows_in_the_round_trip(echo: LossyLink) -> None:
    echo.set(delay_ms=50, direction="ab")
    got = await run_probe(echo, count=100, interval=0.01)
    assert len(got.replies) == 100
    rtts = sorted(got.replies.values())
    assert rtts[0] >= 0.049
    assert rtts[len(rtts) // 2] < 0.05 + 0.03  # a loaded machine adds some, not tens of ms


async def test_jitter_reorders_unless_order_is_kept(echo: LossyLink) -> None:
    echo.set(delay_ms=30, jitter_ms=25, direction="ba")
    got = await run_probe(echo, count=200, interval=0.004)
    assert len(got.replies) == 200
    assert got.order != sorted(got.order)
    assert echo.stats()["ba"]["reordered"] > 0
    rtts = sorted(got.replies.values())
    assert rtts[0] >= 0.004 and rtts[-1] >= 0.05  # spread over 5..55 ms

    echo.set(reorder=False, direction="ba")
    echo.reset_stats()
    got = await run_probe(echo, count=200, interval=0.004)
    assert got.order == sorted(got.order)
    assert echo.stats()["ba"]["reordered"] == 0


async def test_cut_passes_nothing_and_restore_brings_it_back(echo: LossyLink) -> None:
    echo.cut()
    got = await run_probe(echo, count=100, linger=0.5)
    assert got.replies == {}
    stats = echo.stats()
    assert stats["ba"]["cut"] and stats["ba"]["dropped_cut"] >= 100
    echo.restore()
    got = await run_probe(echo, count=100)
    assert len(got.replies) == 100


async def test_a_timed_cut_ends_by_itself(echo: LossyLink) -> None:
    echo.cut(seconds=1.0)
    started = time.monotonic()
    got = await run_probe(echo, count=400, interval=0.005, linger=1.0)  # 2 s of probes
    assert got.replies, "the outage never ended"
    first = min(got.replies)
    # Probes of the first second were lost, those after it came back.
    assert 0.8 <= first * 0.005 <= 1.5, first
    assert all(i in got.replies for i in range(first + 20, 400))
    assert time.monotonic() - started < 10


async def test_teardown_removes_namespaces_and_forwarder() -> None:
    link = LossyLink()
    names, forwarder = (link.ns_a, link.ns_b), link.forwarder
    assert forwarder is not None
    sleeper = link.popen("b", ["sleep", "60"])
    assert names[0] in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                      text=True, check=True).stdout
    started = time.monotonic()
    link.close()
    assert time.monotonic() - started < 15
    assert forwarder.poll() is not None and sleeper.poll() is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True).stdout
    assert not any(n in listed for n in names)
