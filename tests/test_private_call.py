"""Private calls (3GPP TS 24.379 section 11.1, manual commencement): real server, real Redis,
real aiortc peers. Requested, accepted, heard both ways on the call's own talkgroup (and by
nobody else), recorded and ledgered; rejected; refused by the access rules."""

from __future__ import annotations

from typing import Any

import pytest

from client_cli.client import PttClient
from ptt_server.core import access
from ptt_server.core.model import Role

from .audio import encode, make_speech, read_wav
from .conftest import RunningServer
from .polling import until
from .test_media_e2e import Connect, connect
from .test_recording_e2e import ledger_entries, wait_for_entries

__all__ = ["connect"]


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    path = make_speech(tmp_path_factory.mktemp("s") / "s.wav", "unit two, meet me at the gate")
    return encode(read_wav(path))[:60]


def _is(kind: str) -> Any:
    return lambda m: m["type"] == kind


async def test_call_accepted_heard_both_ways_recorded_and_ledgered(
    server: RunningServer, connect: Connect, packets: list[bytes]
) -> None:
    caller = await connect("u1", "A")
    callee = await connect("u2", "A")
    bystander = await connect("u3", "A")
    ringing = await caller.request({"type": "private_call_request", "unit": "u2"},
                                   _is("private_call_ringing"))
    assert ringing["type"] == "private_call_ringing", ringing
    incoming = await callee.wait_for(_is("private_call_incoming"))
    assert (incoming["unit"], incoming["alias"]) == ("u1", "Unit 1")
    call_id = incoming["call_id"]
    await callee.send({"type": "private_call_answer", "call_id": call_id, "accept": True})
    started = [await c.wait_for(_is("private_call_started")) for c in (caller, callee)]
    tg = started[0]["talkgroup"]
    assert tg == f"pc-{call_id}" and started[0]["unit"] == "u2" and started[1]["unit"] == "u1"
    for c in (caller, callee):  # joined for them, with a downlink transceiver of its own
        await c.wait_for(lambda m: m["type"] == "downlink" and m["talkgroup"] == tg)
    await until(lambda: tg in caller.mid_talkgroup.values()
                and tg in callee.mid_talkgroup.values())

    # Half duplex under the floor rules: while one talks, the other is denied.
    grant = await caller.request_floor(tg)
    assert grant["type"] == "floor_granted"
    denied = await callee.request_floor(tg)
    assert denied["type"] == "floor_denied"
    await caller.send_audio(packets)
    await caller.release_floor(tg)
    await until(lambda: len(callee.received(tg)) >= len(packets) * 0.8)
    back = await callee.talk(tg, packets)
    assert back["type"] == "floor_granted"
    await until(lambda: len(caller.received(tg)) >= len(packets) * 0.8)
    assert bystander.received(tg) == []  # nobody else hears a private call
    assert [r.payload for r in callee.received(tg)][:10] == packets[:10]

    await callee.send({"type": "private_call_end", "call_id": call_id})
    for c in (caller, callee):
        ended = await c.wait_for(_is("private_call_ended"))
        assert (ended["reason"], ended["by"]) == ("ended", "u2")
        await c.wait_for(lambda m: m["type"] == "left" and m["talkgroup"] == tg)
    from ptt_server.service.keys import DIRECTORY
    assert server.app[DIRECTORY].get_talkgroup(tg) is None  # type: ignore[index]

    recorded = await wait_for_entries(server.config.data_dir, {
        grant["transmission_id"], back["transmission_id"]})
    assert {e["talkgroup"] for e in recorded.values()} == {tg}
    calls = [e for e in ledger_entries(server.config.data_dir) if e["type"] == "private_call"]
    assert [e["action"] for e in calls] == ["request", "accepted", "ended"]
    assert all((e["call_id"], e["from"], e["to"]) == (call_id, "u1", "u2") for e in calls)


async def test_rejected_and_refused_calls(server: RunningServer, connect: Connect) -> None:
    caller = await connect("u1", media=False)
    callee = await connect("u4", media=False)
    await caller.send({"type": "private_call_request", "unit": "u4"})
    call_id = (await callee.wait_for(_is("private_call_incoming")))["call_id"]
    await callee.send({"type": "private_call_answer", "call_id": call_id, "accept": False})
    for c in (caller, callee):
        rejected = await c.wait_for(_is("private_call_rejected"))
        assert (rejected["call_id"], rejected["reason"]) == (call_id, "rejected")
    offline = await caller.request({"type": "private_call_request", "unit": "u3"},
                                   _is("private_call_rejected"))
    assert offline["reason"] == "unavailable"
    for target in ("sup", "aud"):  # an officer calls officers only; nobody calls an auditor
        err = await caller.request({"type": "private_call_request", "unit": target},
                                   _is("never"))
        assert (err["type"], err["code"]) == ("error", "forbidden")
    auditor = PttClient(server.url, server.token("aud"))
    try:
        await auditor.connect()
        err = await auditor.request({"type": "private_call_request", "unit": "u1"},
                                    _is("never"))
        assert err["code"] in ("forbidden", "bad_message")
    finally:
        await auditor.close()
    actions = [(e["action"], e.get("reason")) for e in ledger_entries(server.config.data_dir)
               if e["type"] == "private_call"]
    assert actions == [("request", None), ("rejected", "rejected"), ("request", None),
                       ("rejected", "unavailable")]


def test_access_rules() -> None:
    ok = access.can_private_call
    assert ok(Role.OFFICER, Role.OFFICER) and ok(Role.SUPERVISOR, Role.OFFICER)
    assert ok(Role.DISPATCHER, Role.SUPERVISOR)
    assert not ok(Role.OFFICER, Role.SUPERVISOR)
    assert not ok(Role.AUDITOR, Role.OFFICER) and not ok(Role.OFFICER, Role.AUDITOR)
    assert not ok(Role.SUPERVISOR, Role.ADMIN)
