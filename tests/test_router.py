"""The fan-out router: gate, renumbering, bounded listener queues."""

from __future__ import annotations

import asyncio

from ptt_server.media.downlink import DownlinkTrack
from ptt_server.media.router import TalkgroupRouter


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def drain(track: DownlinkTrack) -> list[tuple[bytes, int]]:
    out = list(track._queue)
    track._queue.clear()
    return out


def test_gate_forwards_only_the_holder_and_not_to_itself() -> None:
    r = TalkgroupRouter("A", clock=Clock())
    talker, listener = DownlinkTrack(), DownlinkTrack()
    r.add_listener("s1", talker)
    r.add_listener("s2", listener)
    assert not r.forward("s1", "t1", b"x", 0)  # no grant yet
    r.open("s1", "t1")
    assert not r.forward("s2", "t1", b"y", 0)  # not the holder
    assert not r.forward("s1", "t0", b"y", 0)  # a stale transmission of the holder
    assert r.forward("s1", "t1", b"a", 1000)
    assert drain(listener) == [(b"a", 0)]
    assert drain(talker) == []
    assert not r.close("t0")  # closing another transmission leaves the gate open
    assert r.close("t1")
    assert not r.forward("s1", "t1", b"b", 1960)
    assert drain(listener) == []


def test_timestamps_stay_continuous_across_talkers() -> None:
    clock = Clock()
    r = TalkgroupRouter("A", clock=clock)
    listener = DownlinkTrack()
    r.add_listener("l", listener)
    r.open("s1", "t1")
    for i in range(3):
        r.forward("s1", "t1", b"p", 5000 + 960 * i)
        clock.t += 0.02
    r.close("t1")
    clock.t += 1.0  # one second of silence between the two talkers
    r.open("s2", "t2")
    r.forward("s2", "t2", b"q", (1 << 32) - 960)  # a talker whose timestamps wrap
    clock.t += 0.02
    r.forward("s2", "t2", b"q", 0)
    pts = [p for _, p in drain(listener)]
    assert pts[:3] == [0, 960, 1920]
    # The second talker's stream continues after the real gap, then wraps cleanly.
    assert 1920 + 48000 <= pts[3] <= 1920 + 48000 + 960 * 2
    assert pts[4] - pts[3] == 960


def test_listener_queue_drops_oldest() -> None:
    track = DownlinkTrack(queue_packets=3)
    for i in range(5):
        track.push(bytes([i]), i * 960)
    assert [p for p, _ in track._queue] == [b"\x02", b"\x03", b"\x04"]
    assert track.dropped == 2


async def test_downlink_recv_waits_for_packets_then_returns_them() -> None:
    track = DownlinkTrack()
    task = asyncio.create_task(track.recv())
    await asyncio.sleep(0.05)
    assert not task.done()  # between transmissions the track waits, it never ends
    track.push(b"opus", 960)
    packet = await asyncio.wait_for(task, 1)
    assert bytes(packet) == b"opus" and packet.pts == 960
