"""A local process that reaches Redis but lacks the data directory's secret can neither inject
audio into a live transmission nor raise a forged emergency (core/sealing.py)."""

from __future__ import annotations

import asyncio
import hmac
import json
import time

import redis.asyncio as aioredis

from client_cli.client import PttClient
from ptt_server.core.sealing import MAX_AGE_S, Sealer
from ptt_server.node.mediabus import MEDIA_HEADER, MEDIA_VERSION
from ptt_server.service.keys import NODE

from .audio import encode, make_speech, read_wav
from .conftest import RunningServer

KEY = bytes(range(32))


def test_sealed_frames_open_only_on_their_channel_and_in_time() -> None:
    now = [1_000_000.0]
    sealer = Sealer(KEY, clock=lambda: now[0])
    frame = sealer.seal("ptt:media:A", b"opus")
    assert sealer.open("ptt:media:A", frame) == b"opus"
    assert sealer.open("ptt:media:B", frame) is None  # replayed onto another talkgroup
    assert Sealer(bytes(32), clock=lambda: now[0]).open("ptt:media:A", frame) is None
    damaged = frame[:-1] + bytes([frame[-1] ^ 1])
    assert sealer.open("ptt:media:A", damaged) is None
    assert sealer.open("ptt:media:A", b"opus") is None  # no seal at all
    now[0] += MAX_AGE_S + 1
    assert sealer.open("ptt:media:A", frame) is None  # replayed later
    assert sealer.rejected == 4  # the wrong key counted on its own sealer


def test_the_seal_is_hmac_sha256_over_channel_time_and_body() -> None:
    """The MAC is the one docs and other nodes expect (nodes of another version share a
    channel during a rolling upgrade): HMAC-SHA256 over channel, NUL, time and body, cut to
    128 bits, however the sealer computes it; and one sealer seals many frames alike."""
    sealer = Sealer(KEY, clock=lambda: 1_000_000.0)
    for channel, body in (("ptt:media:A", b"opus"), ("ptt:floor", b"{}"), ("ptt:alerts", b"")):
        frame = sealer.seal(channel, body)
        stamped = frame[:-16]
        assert stamped[8:] == body
        expected = hmac.digest(KEY, channel.encode() + b"\0" + stamped, "sha256")[:16]
        assert frame[-16:] == expected
        assert sealer.seal(channel, body) == frame


def _forged_media(session: str, tid: str, payload: bytes, seq: int) -> bytes:
    node = b"intruder"
    ident = f"{session}/{tid}".encode()
    return (MEDIA_HEADER.pack(MEDIA_VERSION, len(node), len(ident), seq * 960, seq)
            + node + ident + payload)


async def test_forged_audio_and_emergency_are_refused(
    server: RunningServer, redis_url: str, tmp_path: object
) -> None:
    talker = PttClient(server.url, server.token("u1"), ice_addresses=("127.0.0.1",))
    listener = PttClient(server.url, server.token("u2"), ice_addresses=("127.0.0.1",))
    supervisor = PttClient(server.url, server.token("sup"))
    intruder = aioredis.Redis.from_url(redis_url)
    clients = [talker, listener, supervisor]
    try:
        for c in clients:
            await c.connect()
        for c in (talker, listener):
            await c.start_media()
            await c.join("A")
        grant = await talker.request_floor("A")
        tid = grant["transmission_id"]
        forged = b"\xfc" + b"FORGED" * 10
        # The intruder knows everything on the wire: the talkgroup, the holder's session and
        # the transmission id. It publishes 100 packets and a fake emergency.
        for seq in range(100):
            await intruder.publish(
                "ptt:media:A", _forged_media(talker.welcome["session"], tid, forged, seq))
        await intruder.publish("ptt:alerts", json.dumps({
            "type": "emergency", "talkgroup": "A", "unit": "u9", "alias": "Fake",
            "location": None, "ts": time.time()}))
        # Real audio goes on around it, so the listener is certainly receiving.
        pcm = read_wav(make_speech(tmp_path / "s.wav", "real audio"))  # type: ignore[operator]
        await talker.send_audio(encode(pcm)[:25])
        await talker.release_floor("A")
        heard = listener.transmissions[tid].packets if tid in listener.transmissions else []
        await listener.wait_for(lambda m: m["type"] == "floor_idle", 10)
        assert heard, "the real talker was not heard"
        assert all(p.payload != forged for p in heard)
        # A real emergency still gets through (so the check below can fail).
        await supervisor.join("CMD")
        await talker.send({"type": "emergency_start", "talkgroup": "A"})
        real = await supervisor.wait_for(lambda m: m["type"] == "emergency", 10)
        assert real["unit"] == "u1"
        assert not [m for m in supervisor.events
                    if m["type"] == "emergency" and m["unit"] == "u9"]
        node = server.app[NODE]  # type: ignore[index]
        assert node.sealer.rejected >= 101
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        await intruder.aclose()


async def test_a_forged_grant_opens_no_gate(server: RunningServer, redis_url: str) -> None:
    """An intruder publishes a `granted` output for a session that asked for nothing: the
    session is not told it may talk and its gate stays shut."""
    officer = PttClient(server.url, server.token("u1"))
    intruder = aioredis.Redis.from_url(redis_url)
    try:
        await officer.connect()
        await officer.join("A")
        session = officer.welcome["session"]
        forged = {"talkgroup": "A", "version": 99, "outputs": [{
            "type": "granted", "session": session, "unit": "u1", "alias": "Unit 1",
            "transmission_id": "f" * 32, "max_duration_s": 60.0, "granted_at": time.time(),
            "emergency": False, "from_queue": False}]}
        await intruder.publish("ptt:floor:A", json.dumps(forged))
        # A real change on the floor still gets through (so the check below can fail).
        other = PttClient(server.url, server.token("u2"))
        await other.connect()
        await other.join("A")
        assert (await other.request_floor("A"))["type"] == "floor_granted"
        await officer.wait_for(lambda m: m["type"] == "floor_taken", 10)
        assert not [m for m in officer.events if m["type"] == "floor_granted"]
        node = server.app[NODE]  # type: ignore[index]
        assert not node.transmissions.of_session(session)
        await other.close()
    finally:
        await officer.close()
        await intruder.aclose()
