"""End to end: real server, real Redis, real aiortc peers over loopback.

Who heard what, which bytes arrived, which error came back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import pytest

from client_cli.client import PttClient
from ptt_server.service.keys import NODE

from .audio import decode, encode, envelope_correlation, make_speech, read_wav
from .conftest import RunningServer

Connect = Callable[..., Awaitable[PttClient]]


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, list[bytes]]:
    path = make_speech(
        tmp_path_factory.mktemp("speech") / "speech.wav",
        "Unit twelve to control, suspect vehicle heading north on main street",
    )
    pcm = read_wav(path)
    return pcm, encode(pcm)


@pytest.fixture
async def connect(server: RunningServer) -> AsyncIterator[Connect]:
    """Connected test clients (aiortc peers gathering on loopback only)."""
    clients: list[PttClient] = []

    async def make(
        name: str, *talkgroups: str, send: bool = True, mode: str = "member",
        media: bool = True,
    ) -> PttClient:
        c = PttClient(server.url, server.token(name), ice_addresses=("127.0.0.1",))
        clients.append(c)
        await c.connect()
        if media:
            await c.start_media(send=send)
        for tg in talkgroups:
            await c.join(tg, mode=mode)
            if media:
                await c.wait_for(
                    lambda m, tg=tg: m["type"] == "downlink" and m["talkgroup"] == tg
                )
        return c

    yield make
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def settle(seconds: float = 0.3) -> None:
    await asyncio.sleep(seconds)


async def test_two_listeners_hear_the_talker_byte_for_byte(
    server: RunningServer, connect: Connect, speech: tuple[np.ndarray, list[bytes]]
) -> None:
    pcm, packets = speech
    talker = await connect("u1", "A")
    l1 = await connect("u2", "A", send=False)
    l2 = await connect("u3", "A")
    grant = await talker.talk("A", packets)
    assert grant["type"] == "floor_granted"
    tid = grant["transmission_id"]
    await settle()
    for listener in (l1, l2):
        t = listener.transmissions[tid]
        assert t.unit == "u1" and t.alias == "Unit 1"
        got = [r.payload for r in t.packets]
        # Forwarded, never transcoded: the very payloads, in order (loopback loses nothing).
        assert got == packets[: len(got)]
        assert len(got) >= len(packets) - 2
        assert envelope_correlation(decode(got), pcm) >= 0.9
        assert t.ended == "released"
    # The talker does not hear itself.
    assert talker.received("A") == []
    # The fan-out took the direct RTP path (sfu/direct.py), not aiortc's sender loop.
    node = server.app[NODE]  # type: ignore[index]
    for listener in (l1, l2):
        # Talkgroup A rides on the transceiver of the client's own offer (sendrecv or
        # recvonly): no renegotiation was needed.
        assert not [m for m in listener.events if m["type"] == "offer"]
        session = node.endpoints[listener.welcome["session"]]
        assert len(session.peer.slots) == 1
        direct = session.peer.slots[0].track.direct
        assert direct is not None and direct.sent >= len(packets) - 2
        assert session.peer.slots[0].track.sent == 0


async def test_second_talker_is_denied_with_the_holder_named(connect: Connect) -> None:
    first = await connect("u1", "A", media=False)
    second = await connect("u2", "A", media=False)
    granted = await first.request_floor("A")
    assert granted["type"] == "floor_granted"
    denied = await second.request_floor("A")
    assert denied["type"] == "floor_denied"
    assert denied["reason"] == "floor_taken"
    assert denied["holder"] == {"unit": "u1", "alias": "Unit 1"}
    taken = await second.wait_for(lambda m: m["type"] == "floor_taken")
    assert taken["transmission_id"] == granted["transmission_id"]
    await settle()
    # Each answer arrives once.
    assert [m["type"] for m in second.events].count("floor_denied") == 1
    assert [m["type"] for m in first.events].count("floor_granted") == 1


async def test_audio_without_the_floor_reaches_nobody(
    connect: Connect, speech: tuple[np.ndarray, list[bytes]]
) -> None:
    _, packets = speech
    rogue = await connect("u1", "A")
    listener = await connect("u2", "A")
    await rogue.send_audio(packets[:50])
    await settle(0.5)
    assert listener.received() == [] and listener.unattributed == []
    # ...and while someone else holds it, the rogue's audio is still dropped at the tap.
    holder = await connect("u3", "A")
    assert (await holder.request_floor("A"))["type"] == "floor_granted"
    await rogue.send_audio(packets[:50])
    await settle(0.5)
    assert listener.received() == [] and listener.unattributed == []


async def test_transmit_time_limit_revokes(
    connect: Connect, speech: tuple[np.ndarray, list[bytes]]
) -> None:
    _, packets = speech
    talker = await connect("u1", "SHORT")
    listener = await connect("u2", "SHORT")
    grant = await talker.request_floor("SHORT")
    assert grant["type"] == "floor_granted" and grant["max_duration_s"] == 1.5
    sending = asyncio.create_task(talker.send_audio(packets[:150]))  # 3 s of audio
    revoked = await talker.wait_for(lambda m: m["type"] == "floor_revoked", timeout=5)
    # Whatever the talker queues from here on reaches the server after its decision.
    queued_when_told = talker.source.queued
    assert revoked["reason"] == "timeout"
    idle = await listener.wait_for(lambda m: m["type"] == "floor_idle", timeout=5)
    assert idle["reason"] == "timeout"
    await sending
    heard = [r.payload for r in listener.transmissions[grant["transmission_id"]].packets]
    # Heard is a subsequence of what was sent; match each packet at its earliest possible
    # index, so a packet sent after the revoke cannot hide behind a repeated payload.
    index = -1
    for payload in heard:
        index = packets.index(payload, index + 1)
    # About 1.5 s of audio was forwarded (a loaded machine may fire the limit a little late),
    # and nothing the talker sent after it was told of the revoke.
    assert len(heard) >= 50
    assert index < queued_when_told < 150
    assert listener.unattributed == []


async def test_dropped_talker_frees_the_floor_within_two_seconds(connect: Connect) -> None:
    talker = await connect("u1", "A")
    listener = await connect("u2", "A", media=False)
    assert (await talker.request_floor("A"))["type"] == "floor_granted"
    await listener.wait_for(lambda m: m["type"] == "floor_taken")
    # Vanish without a goodbye: the TCP connection is cut, the peer connection dropped.
    assert talker._ws is not None
    transport = talker._ws._response.connection.transport  # type: ignore[union-attr]
    assert transport is not None
    started = time.monotonic()
    transport.abort()
    idle = await listener.wait_for(lambda m: m["type"] == "floor_idle", timeout=3)
    assert idle["reason"] == "disconnected"
    assert time.monotonic() - started < 2.0
    again = await listener.request_floor("A")
    assert again["type"] == "floor_granted"


async def test_late_joiner_hears_the_rest_of_a_transmission(
    connect: Connect, speech: tuple[np.ndarray, list[bytes]]
) -> None:
    _, packets = speech
    talker = await connect("u1", "A")
    grant = await talker.request_floor("A")
    assert grant["type"] == "floor_granted"
    sending = asyncio.create_task(talker.send_audio(packets[:150]))
    await asyncio.sleep(1.0)
    late = await connect("u2", "A")
    joined = next(m for m in late.events if m["type"] == "joined")
    assert joined["floor"]["state"] == "taken"
    assert joined["floor"]["transmission_id"] == grant["transmission_id"]
    await sending
    await settle()
    heard = [r.payload for r in late.transmissions[grant["transmission_id"]].packets]
    assert len(heard) >= 20
    # What it heard is a contiguous tail of what was sent.
    start = packets.index(heard[0])
    assert start > 0
    assert heard == packets[start:start + len(heard)]


async def test_monitor_hears_other_talkgroups_on_extra_downlinks(
    connect: Connect, speech: tuple[np.ndarray, list[bytes]]
) -> None:
    _, packets = speech
    sup = await connect("sup", "CMD")
    await sup.join("A", mode="monitor")
    await sup.join("B", mode="monitor")
    a = await sup.wait_for(lambda m: m["type"] == "downlink" and m["talkgroup"] == "A")
    b = await sup.wait_for(lambda m: m["type"] == "downlink" and m["talkgroup"] == "B")
    assert a["mid"] != b["mid"]
    talker_a = await connect("u2", "A")
    talker_b = await connect("u4", "B")
    ga, gb = await asyncio.gather(talker_a.talk("A", packets[:60]),
                                  talker_b.talk("B", packets[60:120]))
    await settle()
    assert [r.payload for r in sup.transmissions[ga["transmission_id"]].packets] == \
        packets[:60][: len(sup.transmissions[ga["transmission_id"]].packets)]
    assert len(sup.transmissions[ga["transmission_id"]].packets) >= 55
    assert len(sup.transmissions[gb["transmission_id"]].packets) >= 55
    # The first downlink (CMD, from the client's own offer) still works after the server's
    # renegotiations added A and B: payload types and extension ids were kept.
    disp = await connect("disp", "CMD")
    gc = await disp.talk("CMD", packets[120:170])
    await settle()
    heard_cmd = [r.payload for r in sup.transmissions[gc["transmission_id"]].packets]
    burst = packets[120:170]
    assert len(heard_cmd) >= 45 and heard_cmd == burst[: len(heard_cmd)]
    # A supervisor who monitors may also talk there (core/access.py MONITOR_TALK_ROLES), under
    # the talkgroup's floor rules; an officer's monitor stays listen-only (tests/test_access.py).
    granted = await sup.request({"type": "floor_request", "talkgroup": "A"},
                                lambda m: m["type"] == "floor_granted")
    assert granted["type"] == "floor_granted", granted
    await sup.release_floor("A")


async def test_presence_lists_members_and_follows_leave(connect: Connect) -> None:
    c1 = await connect("u1", "A", media=False)
    c2 = await connect("u2", "A", media=False)
    members = await c1.wait_members("A", lambda ms: {x["unit"] for x in ms} == {"u1", "u2"})
    assert all(x["state"] == "idle" for x in members)
    assert (await c2.request_floor("A"))["type"] == "floor_granted"
    await c1.wait_members(
        "A", lambda ms: any(x["unit"] == "u2" and x["state"] == "talking" for x in ms))
    await c2.leave("A")
    await c1.wait_members("A", lambda ms: {x["unit"] for x in ms} == {"u1"})
    assert (await c1.request_floor("A"))["type"] == "floor_granted"



async def test_public_sender_path_still_delivers_every_payload(
    server: RunningServer, connect: Connect, speech: tuple[np.ndarray, list[bytes]]
) -> None:
    """The fallback (aiortc's own sender loop) used before the direct path is ready."""
    _, packets = speech
    talker = await connect("u1", "A")
    listener = await connect("u2", "A", send=False)
    node = server.app[NODE]  # type: ignore[index]
    track = node.endpoints[listener.welcome["session"]].peer.slots[0].track
    track.direct = None
    grant = await talker.talk("A", packets[:80])
    await settle()
    heard = [r.payload for r in listener.transmissions[grant["transmission_id"]].packets]
    assert len(heard) >= 78 and heard == packets[: len(heard)]
    assert track.sent >= 78
