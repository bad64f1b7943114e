"""media/compat_rtcp.py: RTCP sender and receiver reports at RFC 3550's interval.

Real aiortc peers over loopback (tests/rtp_support.py): the server side's DownlinkTrack sends
to a recvonly listener, whose transport sees every SRTCP datagram (the RTCP header stays in
the clear, RFC 3711 section 3.4). With the interval installed, no two sender reports come
closer than half of it; with aiortc's own they come every 0.5-1.5 s. A sender that sent
nothing since its last report reports at three times the interval."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection, rtcrtpsender

from ptt_server.media import compat, compat_rtcp

from .rtp_support import Link


@pytest.fixture
def restore() -> Iterator[None]:
    yield
    assert compat_rtcp.install(1.0)  # aiortc's own again, for the rest of the process


def test_install_checks_and_undoes(restore: None) -> None:
    assert compat_rtcp.install(5.0) and compat_rtcp.installed_interval() == 5.0
    assert compat_rtcp.install(5.0)  # again is harmless
    for bad in (0.5, 61.0, float("nan")):
        with pytest.raises(ValueError):
            compat_rtcp.install(bad)
    assert compat_rtcp.install(1.0) and compat_rtcp.installed_interval() is None


async def sender_reports(want: int, receiver_reports: bool = False,
                         sending: bool = True) -> list[float]:
    """Arrival times of the first `want` sender reports a listener gets (bounded wait); or,
    with `receiver_reports`, of the listener's receiver reports at the sending side. With
    `sending`, the sender sends a packet every 20 ms throughout; without, 3 at the start."""
    link = Link()
    times: list[float] = []
    got = asyncio.Event()
    await link.negotiate()
    ssrc = compat.sender_ssrc(link.transceiver.sender)  # the stream the reports are about

    def on_rtcp(sender_report: bool, about: int | None) -> None:
        if sender_report != receiver_reports and (receiver_reports or about == ssrc):
            times.append(time.monotonic())
            if len(times) >= want:
                got.set()

    async def talk() -> None:
        while True:
            link.push(1)
            await asyncio.sleep(0.02)

    watched = (link.transceiver.sender if receiver_reports
               else link.client.getTransceivers()[0].receiver)
    compat_rtcp.on_rtcp(watched, on_rtcp)
    talking = None
    try:
        await link.connect()
        link.push(3)  # a stream to report on
        if sending:
            talking = asyncio.ensure_future(talk())
        per_report_s = 12.0 if sending else 12.0 * compat_rtcp.IDLE_FACTOR
        await asyncio.wait_for(got.wait(), per_report_s * want)
    finally:
        if talking is not None:
            talking.cancel()
        await link.close()
    return times


async def test_sender_reports_come_at_the_installed_interval(restore: None) -> None:
    assert compat_rtcp.install(4.0)  # [2, 6] s between reports
    times = await sender_reports(3)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # A loaded machine only makes them later; never closer than half the interval.
    assert min(gaps) >= 2.0 - 0.05, gaps


async def test_an_idle_sender_reports_at_three_times_the_interval(restore: None) -> None:
    """After its 3 packets the sender sends nothing: from its second report on, the gaps are
    [4.5, 13.5] s at a 3 s interval, where a sending one's are [1.5, 4.5] s."""
    assert compat_rtcp.install(3.0)
    times = await sender_reports(3, sending=False)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps[1:]) >= 4.5 - 0.05, gaps


async def test_the_idle_draw_follows_the_senders_own_count(restore: None) -> None:
    """The draw as aiortc's loop makes it, for a real sender: normal while its count moves
    (and on the first draw), three times longer when it stood still since the last."""
    assert compat_rtcp.install(2.0)
    pc = RTCPeerConnection()
    sender = pc.addTransceiver("audio", direction="sendonly").sender

    def draw(self: object) -> float:  # `self` is what the stand-in reads, as in _run_rtcp
        return 0.5 + rtcrtpsender.random.random()

    def record() -> None:
        compat.record_sent(sender, 100, 960, 1 << 32)

    for _ in range(50):
        assert 1.0 <= draw(sender) <= 3.0  # first draw, or after a packet
        assert 3.0 <= draw(sender) <= 9.0  # nothing sent since
        assert 3.0 <= draw(sender) <= 9.0
        record()
    other = pc.addTransceiver("audio", direction="sendonly").sender
    assert 1.0 <= draw(other) <= 3.0  # each sender's own count
    assert all(1.0 <= draw(object()) <= 3.0 for _ in range(50))  # a receiver's loop: normal
    await pc.close()


async def test_receiver_reports_come_at_the_installed_interval(restore: None) -> None:
    """A receiver (the server's, to a client that has talked) reports as rarely."""
    assert compat_rtcp.install(4.0)
    times = await sender_reports(3, receiver_reports=True)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 2.0 - 0.05, gaps


async def test_aiortcs_own_interval_is_about_a_second(restore: None) -> None:
    """The comparison: without it, reports come every 0.5-1.5 s (so the check above can fail)."""
    assert compat_rtcp.install(1.0)
    for receiver_reports in (False, True):
        times = await sender_reports(4, receiver_reports)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) < 2.0, (receiver_reports, gaps)


def test_serve_refuses_an_interval_out_of_range(tmp_path: Path) -> None:
    for bad in ("0.2", "abc", "nan"):
        done = subprocess.run(
            [sys.executable, "-m", "ptt_server.app.cli", "--data-dir", str(tmp_path / "d"),
             "serve", "--http", "--host", "127.0.0.1", "--port", "0"],
            env={**os.environ, "PTT_RTCP_INTERVAL": bad}, capture_output=True, timeout=60,
            stdin=subprocess.DEVNULL)
        assert done.returncode != 0
        assert f"PTT_RTCP_INTERVAL={bad!r}" in done.stderr.decode()
        assert not (tmp_path / "d" / "redis").exists()  # refused before anything started
