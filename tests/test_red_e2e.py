"""RED (RFC 2198) end to end: negotiated per peer connection, forwarded as it came to listeners
that negotiated it, its primary block to the others and to the recording, malformed RED dropped.

Real parts only: the whole server (aiohttp, real Redis, the recorder), real aiortc peers over
loopback (client_cli/client.py). A RED talker offers `red/48000/2` at 63 over its Opus 96, as
Chromium numbers it, and sends RED payloads built here through its own track; the client labels
them with the answered RED payload type on their way into SRTP.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from client_cli.client import OPUS_PT, RED_PT, PttClient, Received
from ptt_server.core import red
from ptt_server.core.red import Block
from ptt_server.recording.ogg_reader import read_ogg_opus_file
from ptt_server.recording.opus import is_plc_filler
from ptt_server.service.keys import NODE

from .conftest import RunningServer
from .test_lossy_listener import chromium_style_offer
from .test_recording_e2e import wait_for_entries

FRAME = 960
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32
TIMEOUT = 20.0

Connect = Callable[..., Awaitable[PttClient]]


def opus(k: int) -> bytes:
    """An Opus-looking frame (TOC: CELT FB 20 ms, mono) that names packet k, of varying size."""
    return b"\xf8" + k.to_bytes(4, "big") + bytes((k * 7 + i) % 251 for i in range(20 + k % 13))


def red_stream(n: int, pt: int = OPUS_PT) -> list[bytes]:
    """What a RED encoder sends: each frame with the previous one as redundancy (one block,
    960 samples back, RFC 2198 section 3), the first one alone."""
    return [red.build(opus(k), pt, (Block(pt, FRAME, opus(k - 1)),) if k else ())
            for k in range(n)]


async def ready(c: PttClient, *talkgroups: str, send: bool = True) -> PttClient:
    """`c` connected, its media up, joined to `talkgroups` with a downlink for each."""
    await c.connect()
    await c.start_media(send=send)
    for tg in talkgroups:
        await c.join(tg)
        await c.wait_for(lambda m, tg=tg: m["type"] == "downlink" and m["talkgroup"] == tg)
    return c


@pytest.fixture
async def connect(server: RunningServer) -> AsyncIterator[Connect]:
    clients: list[PttClient] = []

    async def make(name: str, *talkgroups: str, send: bool = True, red: bool = False
                   ) -> PttClient:
        c = PttClient(server.url, server.token(name), ice_addresses=("127.0.0.1",), red=red)
        clients.append(c)
        return await ready(c, *talkgroups, send=send)

    yield make
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def until(pred: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


def assert_truthful(got: list[Received], ks: list[int]) -> None:
    """One offset for sequence numbers and one for timestamps: the talker's own numbering."""
    assert len({(r.sequence_number - k) % SEQ_MOD for r, k in zip(got, ks, strict=True)}) == 1
    assert len({(r.rtp_timestamp - k * FRAME) % TS_MOD
                for r, k in zip(got, ks, strict=True)}) == 1


def assert_split(red_listener: PttClient, plain_listener: PttClient, sent: list[bytes],
                 ks: list[int]) -> None:
    """Packets `ks` of `sent` reached both: the RED listener as sent, at its RED payload type;
    the plain one their primary block alone, as Opus at its Opus payload type; each numbered
    with the talker's own sequence numbers and timestamps."""
    got_red = red_listener.received("A")
    assert [r.payload for r in got_red] == [sent[k] for k in ks]
    assert {r.payload_type for r in got_red} == {RED_PT}
    assert_truthful(got_red, ks)
    got = plain_listener.received("A")
    assert [r.payload for r in got] == [opus(k) for k in ks]
    assert {r.payload_type for r in got} == {OPUS_PT}
    assert_truthful(got, ks)


async def transmit(talker: PttClient, payloads: list[bytes], payload_type: int | None,
                   heard: Callable[[], bool]) -> str:
    grant = await talker.request_floor("A")
    assert grant["type"] == "floor_granted"
    await talker.send_audio(payloads, payload_type=payload_type)
    await until(heard, "the listeners' packets")
    await talker.release_floor("A")
    return str(grant["transmission_id"])


def recorded(server: RunningServer, entry: dict[str, Any]) -> list[bytes]:
    ogg = read_ogg_opus_file(server.config.data_dir / entry["file"])
    return [p for p in ogg.packets if not is_plc_filler(p)]


async def test_server_answers_red_at_the_offers_payload_type_and_fmtp(
    server: RunningServer,
) -> None:
    """Chromium's numbering (Opus 111, RED 63 `111/111` after it, or first when a page
    prefers it): the answer has RED at 63 with the offer's fmtp, in the offer's order."""
    c = PttClient(server.url, server.token("u1"))
    try:
        await c.connect()
        for first in (False, True):
            offer = await chromium_style_offer()
            if first:
                offer = offer.replace("UDP/TLS/RTP/SAVPF 111 63", "UDP/TLS/RTP/SAVPF 63 111")
            since = len(c.events)
            await c.send({"type": "offer", "sdp": offer, "restart": first})
            answer = (await c.wait_for(lambda m: m["type"] in ("answer", "error"),
                                       since=since))
            assert answer["type"] == "answer", answer
            text = answer["sdp"]
            assert "a=rtpmap:63 red/48000/2" in text and "a=fmtp:63 111/111" in text
            assert ("UDP/TLS/RTP/SAVPF 63 111" if first else "UDP/TLS/RTP/SAVPF 111 63") in text
            assert "useinbandfec=1" in text  # Opus keeps its FEC preference
    finally:
        await c.close()


async def test_red_is_forwarded_as_sent_and_split_for_the_others_and_the_recording(
    server: RunningServer, connect: Connect,
) -> None:
    talker = await connect("u1", "A", red=True)
    red_listener = await connect("u2", "A", send=False, red=True)
    plain_listener = await connect("u3", "A")  # sendrecv, never offered RED
    assert talker.red_pt == RED_PT and red_listener.red_pt == RED_PT
    assert plain_listener.red_pt is None
    n = 60
    sent = red_stream(n)

    def heard() -> bool:
        return all(len(c.received("A")) >= n for c in (red_listener, plain_listener))

    tid = await transmit(talker, sent, talker.red_pt, heard)
    ks = list(range(n))
    assert_split(red_listener, plain_listener, sent, ks)
    entry = (await wait_for_entries(server.config.data_dir, {tid}))[tid]
    assert recorded(server, entry) == [opus(k) for k in ks]  # the primaries, byte for byte
    assert entry["packet_count"] == n
    node = server.app[NODE]  # type: ignore[index]
    assert node.red_check.malformed == 0


async def test_plain_opus_from_a_red_talker_still_reaches_everyone(
    server: RunningServer, connect: Connect,
) -> None:
    """RED is negotiated, not required: Opus at the Opus payload type is forwarded as Opus,
    to RED listeners too."""
    talker = await connect("u1", "A", red=True)
    red_listener = await connect("u2", "A", send=False, red=True)
    n = 30
    await transmit(talker, [opus(k) for k in range(n)], None,
                   lambda: len(red_listener.received("A")) >= n)
    got = red_listener.received("A")
    assert [r.payload for r in got] == [opus(k) for k in range(n)]
    assert {r.payload_type for r in got} == {OPUS_PT}


def malformed() -> list[bytes]:
    """RED that breaks RFC 2198 or our rules, one of each (core/red.py says why each)."""
    good_header = bytes([0x80 | OPUS_PT]) + ((FRAME << 10) | 4).to_bytes(3, "big")
    return [
        bytes([0x80 | OPUS_PT, 0x3C]),  # a redundant block's header cut short
        bytes([0x80 | OPUS_PT]) + ((FRAME << 10) | 200).to_bytes(3, "big") + bytes([OPUS_PT])
        + opus(1),  # a block length past the end
        red.build(opus(2), OPUS_PT, (Block(0, FRAME, opus(1)),)),  # PCMU's number in a block
        red.build(opus(2), 9),  # G.722's number on the primary
        good_header * red.MAX_BLOCKS + bytes([OPUS_PT]) + opus(3),  # too many blocks
        red.build(b"", OPUS_PT, (Block(OPUS_PT, FRAME, opus(1)),)),  # no primary left
    ]


async def test_malformed_red_is_dropped_counted_and_never_forwarded_or_recorded(
    server: RunningServer, connect: Connect,
) -> None:
    talker = await connect("u1", "A", red=True)
    red_listener = await connect("u2", "A", send=False, red=True)
    plain_listener = await connect("u3", "A", send=False)
    node = server.app[NODE]  # type: ignore[index]
    good = red_stream(40)
    bad = malformed()
    # Good and bad interleaved: 0-9 good, then each bad one after a good one, then the rest.
    plan: list[tuple[int | None, bytes]] = [(k, good[k]) for k in range(10)]
    for i, payload in enumerate(bad):
        plan += [(None, payload), (10 + i, good[10 + i])]
    plan += [(k, good[k]) for k in range(10 + len(bad), 40)]
    n = 40

    def heard() -> bool:
        return all(len(c.received("A")) >= n for c in (red_listener, plain_listener))

    tid = await transmit(talker, [p for _, p in plan], talker.red_pt, heard)
    # Each arrived before the last good packet, which both listeners have: all were judged.
    assert node.red_check.malformed == len(bad)
    ks = [k for k, _ in plan if k is not None]
    # Nothing of them went anywhere; the good ones around them did, in their own places
    # (each malformed packet took a sequence number: a gap the listeners see, RFC 3550).
    assert [r.payload for r in red_listener.received("A")] == [good[k] for k in ks]
    assert [r.payload for r in plain_listener.received("A")] == [opus(k) for k in ks]
    seqs = [r.sequence_number for r in plain_listener.received("A")]
    assert [(b - a) % SEQ_MOD for a, b in itertools.pairwise(seqs)].count(2) == len(bad)
    entry = (await wait_for_entries(server.config.data_dir, {tid}))[tid]
    assert recorded(server, entry) == [opus(k) for k in ks]
    # The session is still up and RED still flows after them.
    assert talker.pc is not None and talker.pc.connectionState == "connected"


async def test_the_recording_takes_lost_packets_back_from_the_next_packets_redundancy(
    server: RunningServer, connect: Connect,
) -> None:
    """The talker's uplink loses 10, 20 and 21, and 35 (they are numbered, never sent). Each
    next packet repeats the one before it: the recording has 10, 21 and 35 back from there,
    byte for byte and in place; 20 stays a gap (no packet repeats it). Listeners get what
    arrived: RED listeners repair it themselves, the others see the gaps (RFC 3550)."""
    talker = await connect("u1", "A", red=True)
    red_listener = await connect("u2", "A", send=False, red=True)
    plain_listener = await connect("u3", "A", send=False)
    lost = {10, 20, 21, 35}
    talker.lose_uplink = lambda index: index in lost
    n = 50
    sent = red_stream(n)
    arrived = [k for k in range(n) if k not in lost]

    def heard() -> bool:
        return all(len(c.received("A")) >= len(arrived) for c in (red_listener, plain_listener))

    tid = await transmit(talker, sent, talker.red_pt, heard)
    assert_split(red_listener, plain_listener, sent, arrived)
    entry = (await wait_for_entries(server.config.data_dir, {tid}))[tid]
    assert recorded(server, entry) == [opus(k) for k in range(n) if k != 20]
    assert entry["recovered_packets"] == 3
    assert entry["packet_count"] == n - 1
    assert entry["plc_packets"] == 1 and entry["gap_ms"] == 20  # 20's place, in time
    assert entry["duplicate_packets"] == 0
