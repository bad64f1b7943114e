"""Mission-critical floor control end to end: pre-emption, queue, emergency, override, all-call,
patches, time-limit warning. Real server, real Redis, real aiortc peers on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest

from ptt_server.core.model import Role
from ptt_server.identity.directory import Directory

from .audio import encode, make_speech, read_wav
from .conftest import RunningServer
from .test_media_e2e import Connect, connect, settle

__all__ = ["connect"]


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    path = make_speech(tmp_path_factory.mktemp("s") / "s.wav",
                       "all units, all units, roadblock at the north bridge, over")
    return encode(read_wav(path))


def add_user(server: RunningServer, name: str, role: Role, tgs: list[str], prio: int) -> None:
    d = Directory(server.config.data_dir / "directory.sqlite3")
    d.add_user(name, role, tgs, "pw", alias=name.upper(), priority=prio)


async def test_preemption_cuts_the_lower_talker_within_one_packet(
    server: RunningServer, connect: Connect, packets: list[bytes]
) -> None:
    add_user(server, "chief", Role.OFFICER, ["A"], 200)
    low = await connect("u1", "A")
    listener = await connect("u2", "A")
    high = await connect("chief", "A")
    g_low = await low.request_floor("A")
    assert g_low["type"] == "floor_granted"
    started = time.monotonic()
    sending = asyncio.create_task(low.send_audio(packets[:150]))
    await asyncio.sleep(0.6)
    g_high = await high.request_floor("A")
    assert g_high["type"] == "floor_granted"
    revoked = await low.wait_for(lambda m: m["type"] == "floor_revoked")
    assert revoked["reason"] == "preempted"
    await sending
    await settle()
    heard = [r.payload for r in listener.transmissions[g_low["transmission_id"]].packets]
    assert len(heard) >= 20
    assert heard == packets[: len(heard)]
    # Packet i leaves the talker no earlier than started + i * 20 ms; the pre-emption was
    # decided before its grant reached the new talker. Nothing sent later than one packet
    # interval after that was forwarded.
    last_allowed = int((g_high["_at"] - started) / 0.02) + 1
    assert len(heard) <= last_allowed + 1
    assert len(heard) < 150
    assert listener.unattributed == []
    idle = await listener.wait_for(
        lambda m: m["type"] == "floor_idle" and m["transmission_id"] == g_low["transmission_id"]
    )
    assert idle["reason"] == "preempted"


async def test_queue_grants_in_priority_then_arrival_order(connect: Connect) -> None:
    holder = await connect("u1", "A", media=False)
    q1 = await connect("u2", "A", media=False)
    q2 = await connect("u3", "A", media=False)
    sup = await connect("sup", media=False)
    await sup.join("A", mode="monitor")
    assert (await holder.request_floor("A"))["type"] == "floor_granted"
    r1 = await q1.request_floor("A", queue=True)
    assert (r1["type"], r1["position"]) == ("floor_queued", 1)
    r2 = await q2.request_floor("A", queue=True)
    assert (r2["type"], r2["position"]) == ("floor_queued", 2)
    await holder.release_floor("A")
    g1 = await q1.wait_for(lambda m: m["type"] == "floor_granted")
    assert g1["from_queue"] is True
    moved = await q2.wait_for(lambda m: m["type"] == "floor_queued" and m["position"] == 1)
    assert moved["position"] == 1
    # Cancelling leaves the queue; releasing then leaves the floor idle.
    cancelled = await q2.request({"type": "floor_cancel", "talkgroup": "A"},
                                 lambda m: m["type"] == "floor_cancelled")
    assert cancelled["type"] == "floor_cancelled"
    again = await q2.request({"type": "floor_cancel", "talkgroup": "A"},
                             lambda m: m["type"] == "floor_cancelled")
    assert (again["type"], again["code"]) == ("error", "not_queued")
    await q1.release_floor("A")
    idle = await sup.wait_for(
        lambda m: m["type"] == "floor_idle" and m["transmission_id"] == g1["transmission_id"]
    )
    assert idle["reason"] == "released"
    await asyncio.sleep(0.3)
    assert not [m for m in q2.events if m["type"] == "floor_granted"]


async def test_emergency_alerts_a_supervisor_elsewhere_and_preempts(connect: Connect) -> None:
    sup = await connect("sup", "CMD", media=False)  # not in talkgroup B at all
    talker = await connect("u4", "B", media=False)
    officer = await connect("u1", "B", media=False)
    assert (await talker.request_floor("B"))["type"] == "floor_granted"
    await officer.send({"type": "emergency_start", "talkgroup": "B",
                        "location": {"lat": 52.1, "lon": 5.1}})
    alert = await sup.wait_for(lambda m: m["type"] == "emergency")
    assert (alert["unit"], alert["alias"], alert["talkgroup"]) == ("u1", "Unit 1", "B")
    assert alert["location"] == {"lat": 52.1, "lon": 5.1}
    granted = await officer.wait_for(lambda m: m["type"] == "floor_granted")
    assert granted["emergency"] is True
    assert granted["max_duration_s"] == 180.0
    revoked = await talker.wait_for(lambda m: m["type"] == "floor_revoked")
    assert revoked["reason"] == "preempted"
    # Only the raiser or a supervisor may clear it.
    denied = await talker.request({"type": "emergency_cancel", "talkgroup": "B"},
                                  lambda m: m["type"] == "emergency_cleared")
    assert denied["type"] == "error" and denied["code"] == "forbidden"
    await officer.send({"type": "emergency_cancel", "talkgroup": "B"})
    cleared = await sup.wait_for(lambda m: m["type"] == "emergency_cleared")
    assert cleared["by"] == "u1"


async def test_supervisor_forces_release_of_a_stuck_talker(connect: Connect) -> None:
    stuck = await connect("u1", "A", media=False)
    sup = await connect("sup", media=False)
    await sup.join("A", mode="monitor")
    assert (await stuck.request_floor("A"))["type"] == "floor_granted"
    await sup.send({"type": "floor_revoke", "talkgroup": "A"})
    revoked = await stuck.wait_for(lambda m: m["type"] == "floor_revoked")
    assert revoked["reason"] == "revoked"
    idle = await sup.wait_for(lambda m: m["type"] == "floor_idle")
    assert idle["reason"] == "revoked"


async def test_patch_carries_audio_across_two_talkgroups(
    connect: Connect, packets: list[bytes]
) -> None:
    sup = await connect("sup", "CMD", media=False)
    await sup.join("A", mode="monitor")
    await sup.join("B", mode="monitor")
    talker = await connect("u2", "A")      # only in A
    listener_b = await connect("u4", "B")  # only in B
    await sup.send({"type": "patch_create", "talkgroups": ["A", "B"]})
    patched = await listener_b.wait_for(lambda m: m["type"] == "patched")
    assert set(patched["talkgroups"]) == {"A", "B"}
    late = await connect("u3", media=False)  # joins after the patch was made
    joined = await late.join("B")
    assert joined["patch"] == {"patch_id": patched["patch_id"], "talkgroups": ["A", "B"]}
    grant = await talker.talk("A", packets[:60])
    assert grant["type"] == "floor_granted"
    await settle()
    heard = listener_b.transmissions[grant["transmission_id"]].packets
    assert [r.payload for r in heard] == packets[: len(heard)]
    assert len(heard) >= 55
    # One shared floor while patched: B cannot talk over A.
    assert (await talker.request_floor("A"))["type"] == "floor_granted"
    denied = await listener_b.request_floor("B")
    assert denied["type"] == "floor_denied" and denied["holder"]["unit"] == "u2"
    await talker.release_floor("A")
    await sup.send({"type": "patch_remove", "patch_id": patched["patch_id"]})
    await listener_b.wait_for(lambda m: m["type"] == "unpatched")
    assert (await talker.request_floor("A"))["type"] == "floor_granted"
    assert (await listener_b.request_floor("B"))["type"] == "floor_granted"


async def test_all_call_reaches_several_talkgroups(
    connect: Connect, packets: list[bytes]
) -> None:
    disp = await connect("disp", "CMD")
    await disp.join("A", mode="monitor")
    await disp.join("B", mode="monitor")
    la = await connect("u2", "A")
    lb = await connect("u4", "B")
    reply = await disp.request({"type": "all_call", "talkgroups": ["A", "B"]},
                               lambda m: m["type"] in ("all_call_granted", "all_call_denied"))
    assert reply["type"] == "all_call_granted"
    tids = reply["talkgroups"]
    await disp.send_audio(packets[:50])
    await asyncio.sleep(0.2)
    await disp.send({"type": "all_call_release"})
    await la.wait_for(lambda m: m["type"] == "floor_idle")
    await lb.wait_for(lambda m: m["type"] == "floor_idle")
    for listener, tg in ((la, "A"), (lb, "B")):
        heard = [r.payload for r in listener.transmissions[tids[tg]].packets]
        assert len(heard) >= 45 and heard == packets[: len(heard)]
    # An officer cannot all-call.
    err = await la.request({"type": "all_call", "talkgroups": ["A"]},
                           lambda m: m["type"] == "all_call_granted")
    assert err["type"] == "error" and err["code"] == "forbidden"


async def test_time_limit_warning_comes_before_the_revoke(
    server: RunningServer, connect: Connect
) -> None:
    Directory(server.config.data_dir / "directory.sqlite3").add_talkgroup(
        "LIM", name="Limit", max_duration_s=6.5
    )
    add_user(server, "u9", Role.OFFICER, ["LIM"], 100)
    talker = await connect("u9", "LIM", media=False)
    started = time.monotonic()
    assert (await talker.request_floor("LIM"))["type"] == "floor_granted"
    warning = await talker.wait_for(lambda m: m["type"] == "floor_warning", timeout=5)
    assert 0 < warning["remaining_s"] <= 5.0
    assert time.monotonic() - started >= 1.0
    revoked = await talker.wait_for(lambda m: m["type"] == "floor_revoked", timeout=8)
    assert revoked["reason"] == "timeout"
