"""A floor holder that floods is cut off; one that talks normally is never touched; a recording
never claims more audio than the time it took.

The policer's rules with plain numbers (media/policer.py), the recording's wall-clock bound
(recording/stream.py), and end to end: a real aiortc talker writing 5,000 RTP packets/s through
its own SRTP session, real listeners, real Redis, the ledger.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiortc.rtp import RtpPacket

from bench.rtp import opus_frames
from client_cli.client import PttClient
from ptt_server.core.model import EndReason
from ptt_server.media import compat
from ptt_server.media.policer import Limits, Policer, Verdict
from ptt_server.recording.meta import TransmissionMeta
from ptt_server.recording.recorder import Recorder
from ptt_server.recording.stream import AHEAD_SLACK_S
from ptt_server.service.keys import NODE, RECORDER

from .conftest import RunningServer

FRAMES = opus_frames(50)
LIMITS = Limits()


def run(policer: Policer, start: float, rate: float, seconds: float,
        size: int = 60) -> list[Verdict]:
    n = round(rate * seconds)
    return [policer.check(size, start + i / rate) for i in range(n)]


# -- the rules -----------------------------------------------------------------------------
def test_a_normal_talker_is_never_policed() -> None:
    # 20 ms frames for five minutes, 10 ms frames for a minute, the largest Opus frames at
    # Opus's own maximum bitrate: all pass.
    for rate, size in ((50, 120), (100, 60), (50, 1275)):
        policer = Policer()
        assert set(run(policer, 1000.0, rate, 300 if rate == 50 else 60, size)) == {
            Verdict.PASS}
        assert policer.dropped == 0


def test_jitter_bursts_pass() -> None:
    """A second of audio held back by the network and delivered at once loses nothing."""
    policer = Policer()
    verdicts = run(policer, 0.0, 50, 10)
    t = 10.0
    for _burst in range(5):
        t += 1.0  # a stall: nothing for a second...
        verdicts += [policer.check(100, t) for _ in range(50)]  # ...then all of it at once
        verdicts += run(policer, t + 0.02, 50, 3)
        t += 3.0
    assert set(verdicts) == {Verdict.PASS}


def test_a_fast_clock_loses_an_odd_packet_and_is_never_cut_off() -> None:
    policer = Policer()
    verdicts = run(policer, 0.0, LIMITS.packets_per_s * 1.01, 120)
    assert Verdict.CUT_OFF not in verdicts
    assert 0 < verdicts.count(Verdict.DROP) < 0.02 * len(verdicts)


def test_a_flood_is_cut_off_once_after_the_abuse_lasts() -> None:
    policer = Policer()
    verdicts = run(policer, 0.0, 5000, 4)
    passed = verdicts.count(Verdict.PASS)
    assert verdicts.count(Verdict.CUT_OFF) == 1
    cut_at = verdicts.index(Verdict.CUT_OFF) / 5000
    # The burst drains at once; drops from then on; cut off cut_off_after_s later.
    assert LIMITS.cut_off_after_s <= cut_at <= LIMITS.cut_off_after_s + 0.05
    # What passed: the bucket's depth plus its refill until the cut-off, nothing after.
    depth = LIMITS.packets_per_s * LIMITS.burst_s
    assert passed <= depth + LIMITS.packets_per_s * cut_at + 1
    assert Verdict.PASS not in verdicts[verdicts.index(Verdict.CUT_OFF):]
    assert policer.dropped == len(verdicts) - passed and policer.cut_off_at is not None


def test_oversized_packets_are_policed_by_bytes() -> None:
    """At 100 packets/s of 1,275-byte frames (twice Opus's maximum bitrate) the byte bucket
    is what says no."""
    policer = Policer()
    verdicts = run(policer, 0.0, 100, 6, size=1275)
    assert Verdict.CUT_OFF in verdicts
    assert verdicts[: int(100 * LIMITS.burst_s)].count(Verdict.PASS) >= 50


def test_a_clock_that_steps_back_refills_nothing() -> None:
    policer = Policer()
    run(policer, 100.0, 5000, 0.03)  # the burst spent
    assert policer.check(60, 50.0) is Verdict.DROP  # 50 s "earlier": no refill, no error
    assert policer.check(60, 100.05) is Verdict.PASS  # real time moving on refills again


# -- the recording ------------------------------------------------------------------------
async def test_recording_stays_within_its_wall_clock(data_dir: Path) -> None:
    """RTP timestamps say 20 ms per packet; packets come 100 times faster than that. The file
    ends up no longer than the time it took (plus the slack); the rest is counted."""
    rec = Recorder(data_dir, "node-a", flush_interval_s=0.1)
    await rec.start()
    t0 = 1_000_000.0
    flood = rec.begin(TransmissionMeta("tx-flood-001", "A", "u1", "Unit 1", "officer",
                                       "node-a", t0))
    normal = rec.begin(TransmissionMeta("tx-normal-01", "B", "u3", "Unit 3", "officer",
                                        "node-a", t0))
    for i in range(2000):  # 2,000 packets in 0.4 s (40 s of RTP time)
        flood.packet(FRAMES[i % 50], i * 960, i, t0 + i * 0.0002)
    for i in range(500):  # 10 s in real time
        normal.packet(FRAMES[i % 50], i * 960, i, t0 + i * 0.02)
    flood.finish(EndReason.REVOKED, t0 + 0.4)
    normal.finish(EndReason.RELEASED, t0 + 10)
    await rec.stop()
    entries = {e["id"]: e for e in ledger(data_dir) if e["type"] == "transmission"}
    flooded = entries["tx-flood-001"]
    assert flooded["audio_ms"] <= 400 + AHEAD_SLACK_S * 1000 + 20
    assert flooded["early_packets"] > 1900
    assert flooded["packet_count"] + flooded["early_packets"] == 2000
    kept = entries["tx-normal-01"]
    assert kept["early_packets"] == 0 and kept["packet_count"] == 500
    assert kept["audio_ms"] >= 9_990  # all of it (less the Opus pre-skip)


def ledger(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / "ledger" / "ledger.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- end to end ----------------------------------------------------------------------------
Connect = Callable[..., Awaitable[PttClient]]


@pytest.fixture
async def connect(server: RunningServer) -> AsyncIterator[Connect]:
    clients: list[PttClient] = []

    async def make(name: str, talkgroup: str, send: bool = True) -> PttClient:
        c = PttClient(server.url, server.token(name), ice_addresses=("127.0.0.1",))
        clients.append(c)
        await c.connect()
        await c.start_media(send=send)
        await c.join(talkgroup)
        await c.wait_for(lambda m: m["type"] == "downlink" and m["talkgroup"] == talkgroup)
        return c

    yield make
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


class RawRtp:
    """Writes RTP straight through a client's own SRTP session and ICE socket (as
    bench/peer.py does): as fast as we like, with whatever timestamps we like."""

    def __init__(self, client: PttClient) -> None:
        assert client.pc is not None
        transceiver = client.pc.getTransceivers()[0]
        sender = transceiver.sender
        udp = compat.nominated_udp(sender.transport)
        self._srtp = compat.dtls_tx_srtp(sender.transport)
        assert udp is not None and self._srtp is not None
        self._udp, self._addr = udp
        template = RtpPacket(payload_type=compat.negotiated_codecs(transceiver)[0].payloadType,
                             ssrc=compat.sender_ssrc(sender))
        mid = compat.sender_mid(sender)
        if mid is not None:
            template.extensions.mid = mid
        self._header = bytearray(template.serialize(compat.header_extensions_map(sender)))
        self._seq = 1000
        self._ts = 123_456
        self.sent = 0

    def send(self, payload: bytes) -> None:
        struct.pack_into("!HI", self._header, 2, self._seq, self._ts)
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + 960) & 0xFFFFFFFF  # each claims 20 ms, however fast it comes
        self._udp.sendto(self._srtp.protect(bytes(self._header) + payload), self._addr)
        self.sent += 1


async def flood(raw: RawRtp, rate: int, stop: asyncio.Event) -> None:
    """`rate` packets/s in 10 ms batches until `stop`."""
    start = time.monotonic()
    while not stop.is_set():
        due = int((time.monotonic() - start) * rate)
        while raw.sent < due:
            raw.send(FRAMES[raw.sent % 50])
        await asyncio.sleep(0.01)


async def test_a_flooding_talker_is_cut_off_and_a_normal_one_is_not(
    server: RunningServer, connect: Connect
) -> None:
    flooder = await connect("u1", "A")
    hears_flood = await connect("u2", "A", send=False)
    talker = await connect("u3", "B")
    hears_talker = await connect("u4", "B", send=False)

    grant = await flooder.request_floor("A")
    assert grant["type"] == "floor_granted"
    tid = grant["transmission_id"]
    tx = server.app[NODE].transmissions.get(tid, "A")  # type: ignore[index]
    assert tx is not None
    policer = tx.policer
    raw = RawRtp(flooder)
    stop = asyncio.Event()
    started = time.monotonic()
    flooding = asyncio.create_task(flood(raw, 5000, stop))
    # Meanwhile, on B, someone talks as a phone does: 50 packets/s, 6 s.
    normal = asyncio.create_task(talker.talk("B", [FRAMES[i % 50] for i in range(300)]))
    try:
        revoked = await flooder.wait_for(
            lambda m: m["type"] == "floor_revoked" and m["talkgroup"] == "A", timeout=15)
        cut_after = time.monotonic() - started
        heard_at_revoke = len(hears_flood.transmissions[tid].packets)
        assert revoked["reason"] == "policed" and revoked["transmission_id"] == tid
        idle = await hears_flood.wait_for(
            lambda m: m["type"] == "floor_idle" and m["talkgroup"] == "A", timeout=5)
        assert idle["reason"] == "policed"
        await asyncio.sleep(1.0)  # still flooding: none of it may get through now
    finally:
        stop.set()
        await flooding
    granted_b = await normal
    assert granted_b["type"] == "floor_granted"

    # The flood: the bucket's depth and its refill reached the listener, then nothing.
    heard = hears_flood.transmissions[tid].packets
    bound = LIMITS.packets_per_s * (LIMITS.burst_s + cut_after) + 5
    assert raw.sent > 5 * bound
    assert 0 < len(heard) <= min(bound, policer.passed), (len(heard), raw.sent, cut_after)
    # A second more of flooding after the revoke: at most what was in flight (a loaded loop
    # may hold a few tenths of a second of it), not the 5,000 sent.
    assert len(heard) - heard_at_revoke <= 25
    assert policer.cut_off_at is not None and policer.dropped > policer.passed
    assert cut_after < LIMITS.cut_off_after_s + 5  # the cut-off is prompt, even loaded

    # The phone-like talker on B: every packet forwarded, never revoked.
    await hears_talker.wait_for(
        lambda m: m["type"] == "floor_idle" and m["talkgroup"] == "B", timeout=5)
    heard_b = hears_talker.transmissions[granted_b["transmission_id"]].packets
    assert len(heard_b) >= 298
    assert not [m for m in talker.events if m["type"] == "floor_revoked"]

    # The ledger: the revoke is audited, and the flood's recording is no longer than the time
    # it took (the normal one is complete).
    await server.app[RECORDER].flush()  # type: ignore[index]
    deadline = time.monotonic() + 10
    while True:
        entries = ledger(server.config.data_dir)
        audit = [e for e in entries if e["type"] == "floor_revoke"]
        recs = {e["id"]: e for e in entries if e["type"] == "transmission"}
        if audit and tid in recs and granted_b["transmission_id"] in recs:
            break
        assert time.monotonic() < deadline, entries
        await asyncio.sleep(0.1)
    assert audit[0]["reason"] == "policed" and audit[0]["transmission_id"] == tid
    assert audit[0]["unit"] == "u1" and audit[0]["dropped_packets"] > 0
    flooded = recs[tid]
    assert flooded["audio_ms"] <= flooded["duration_ms"] + AHEAD_SLACK_S * 1000 + 100
    assert flooded["early_packets"] > 0
    normal_rec = recs[granted_b["transmission_id"]]
    assert normal_rec["early_packets"] == 0 and normal_rec["packet_count"] >= 298
