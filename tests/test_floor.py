"""The pure floor state machine: every transition of the table, and every refusal."""

from __future__ import annotations

import json

import pytest

from ptt_server.core import floor as fl
from ptt_server.core.floor import Floor, FloorState

LEASE = 2.0
T0 = 1_000.0


def who(session: str, priority: int = 100) -> fl.Participant:
    return fl.Participant(
        session=session, unit=f"unit-{session}", alias=f"alias-{session}", role="officer",
        node="node-a", priority=priority,
    )


def req(
    session: str, now: float = T0, *, priority: int = 100, emergency: bool = False,
    queue: bool = True, max_duration_s: float = 60.0,
) -> fl.Request:
    return fl.Request(
        participant=who(session, priority), now=now, max_duration_s=max_duration_s,
        transmission_id=f"tx-{session}-{now}", queue=queue, emergency=emergency,
    )


def run(floor: Floor, *events: fl.FloorInput) -> tuple[Floor, list[fl.FloorOutput]]:
    outputs: list[fl.FloorOutput] = []
    for event in events:
        floor, outs = fl.step(floor, event, lease_s=LEASE)
        outputs += outs
    return floor, outputs


def taken_by(session: str, *queued: str) -> Floor:
    floor, _ = run(Floor.initial(), req(session), *(req(q, T0 + 0.1 * i)
                                                     for i, q in enumerate(queued, 1)))
    return floor


def emergency_idle() -> Floor:
    floor, _ = run(Floor.initial(), req("a", emergency=True), fl.Release("a", T0 + 1))
    assert floor.state is FloorState.IDLE and floor.emergency
    return floor


# --- the table itself ----------------------------------------------------------------------
def test_table_covers_exactly_the_legal_pairs() -> None:
    illegal_when_idle = {"release", "revoke", "refresh", "cancel_queue"}
    expected = {(FloorState.TAKEN, k) for k in fl.EVENT_KINDS} | {
        (FloorState.IDLE, k) for k in fl.EVENT_KINDS if k not in illegal_when_idle
    }
    assert set(fl.TRANSITIONS) == expected


ILLEGAL_IN_IDLE: list[tuple[fl.FloorInput, type[fl.FloorError], str]] = [
    (fl.Release("a", T0), fl.NotHolder, "not_holder"),
    (fl.Refresh("a", T0, LEASE), fl.NotHolder, "not_holder"),
    (fl.CancelQueue("a", T0), fl.NotQueued, "not_queued"),
    (fl.Revoke(T0, "revoked", by="sup"), fl.IllegalTransition, "illegal_transition"),
]


@pytest.mark.parametrize(("event", "error", "code"), ILLEGAL_IN_IDLE)
def test_illegal_in_idle_raises_and_changes_nothing(
    event: fl.FloorInput, error: type[fl.FloorError], code: str
) -> None:
    floor = emergency_idle()
    before = floor.to_json()
    with pytest.raises(error) as info:
        fl.step(floor, event, lease_s=LEASE)
    assert isinstance(info.value, fl.IllegalTransition)
    assert info.value.code == code
    assert floor.to_json() == before


def test_every_error_has_a_stable_code() -> None:
    codes = {
        fl.FloorError: "floor_error", fl.IllegalTransition: "illegal_transition",
        fl.NotHolder: "not_holder", fl.NotQueued: "not_queued",
        fl.AlreadyHolder: "already_holder", fl.NotEmergency: "not_emergency",
        fl.InvalidInput: "invalid_input",
    }
    for cls, code in codes.items():
        assert cls.code == code
        assert cls("x").code == code


# --- IDLE ----------------------------------------------------------------------------------
def test_idle_request_grants_and_announces() -> None:
    floor, outs = run(Floor.initial(), req("a", max_duration_s=30.0))
    assert floor.state is FloorState.TAKEN
    assert floor.version == 1
    assert floor.grant is not None
    assert floor.grant.participant.session == "a"
    assert floor.grant.granted_at == T0
    assert floor.grant.expires_at == T0 + 30.0
    assert floor.grant.lease_until == T0 + LEASE
    assert not floor.emergency
    tid = f"tx-a-{T0}"
    assert outs == [
        fl.Granted("a", "unit-a", "alias-a", tid, 30.0, T0, False, False),
        fl.Taken("unit-a", "alias-a", "a", tid, False, 100),
    ]


def test_idle_emergency_request_sets_emergency_state() -> None:
    floor, outs = run(Floor.initial(), req("a", emergency=True))
    assert floor.emergency and floor.grant is not None and floor.grant.emergency
    assert isinstance(outs[0], fl.Granted) and outs[0].emergency
    assert isinstance(outs[1], fl.Taken) and outs[1].emergency


def test_idle_disconnect_is_a_no_op() -> None:
    floor = Floor.initial()
    after, outs = run(floor, fl.Disconnect("nobody", T0))
    assert after is floor and outs == []


def test_idle_tick_is_a_no_op() -> None:
    floor = emergency_idle()
    after, outs = run(floor, fl.Tick(T0 + 10_000))
    assert after is floor and outs == []


def test_idle_emergency_clear() -> None:
    floor = emergency_idle()
    after, outs = run(floor, fl.EmergencyClear(T0 + 2, by="dispatch-1"))
    assert not after.emergency and after.version == floor.version + 1
    assert outs == [fl.EmergencyCleared("dispatch-1")]


def test_emergency_clear_without_emergency_is_refused() -> None:
    for floor in (Floor.initial(), taken_by("a")):
        with pytest.raises(fl.NotEmergency):
            fl.step(floor, fl.EmergencyClear(T0, by="d"), lease_s=LEASE)


# --- TAKEN: request ------------------------------------------------------------------------
def test_taken_request_equal_priority_queues() -> None:
    floor, outs = run(taken_by("a"), req("b", T0 + 1))
    assert floor.state is FloorState.TAKEN and floor.holder == "a"
    assert outs == [fl.Queued("b", 1)]
    entry = floor.queue[0]
    assert entry.enqueued_at == T0 + 1
    assert entry.expires_at == T0 + 1 + fl.QUEUE_TIMEOUT_S
    assert entry.transmission_id == f"tx-b-{T0 + 1}"


def test_taken_request_without_queue_is_denied_with_holder() -> None:
    floor = taken_by("a")
    after, outs = run(floor, req("b", T0 + 1, queue=False))
    assert outs == [fl.Denied("b", "floor_taken", "unit-a", "alias-a")]
    assert after is floor  # nothing changed, so no new version


def test_taken_request_lower_priority_queues_behind_higher() -> None:
    floor, outs = run(
        taken_by("a"), req("low", T0 + 1, priority=10), req("mid", T0 + 2, priority=50),
        req("mid2", T0 + 3, priority=50),
    )
    assert [e.participant.session for e in floor.queue] == ["mid", "mid2", "low"]
    # "low" was pushed back twice and is told each time.
    assert outs == [
        fl.Queued("low", 1),
        fl.Queued("mid", 1), fl.QueuePosition("low", 2),
        fl.Queued("mid2", 2), fl.QueuePosition("low", 3),
    ]


def test_repeated_request_from_queued_session_reports_position() -> None:
    floor = taken_by("a", "b", "c")
    after, outs = run(floor, req("c", T0 + 5))
    assert after is floor
    assert outs == [fl.Queued("c", 2)]


def test_repeated_request_with_higher_rank_moves_up_keeping_arrival() -> None:
    holder, _ = run(Floor.initial(), req("a", emergency=True))
    floor, _ = run(holder, req("b", T0 + 1), req("c", T0 + 2))
    after, outs = run(floor, req("c", T0 + 3, emergency=True))
    assert [e.participant.session for e in after.queue] == ["c", "b"]
    assert after.queue[0].enqueued_at == T0 + 2
    assert after.queue[0].priority == fl.EMERGENCY_PRIORITY
    assert outs == [fl.Queued("c", 1), fl.QueuePosition("b", 2)]


def test_taken_request_by_holder_is_refused() -> None:
    floor = taken_by("a")
    with pytest.raises(fl.AlreadyHolder) as info:
        fl.step(floor, req("a", T0 + 1), lease_s=LEASE)
    assert info.value.code == "already_holder"


def test_holder_emergency_request_upgrades_the_transmission() -> None:
    floor = taken_by("a")
    after, outs = run(floor, req("a", T0 + 1, emergency=True))
    assert after.emergency and after.grant is not None and after.grant.emergency
    assert after.grant.transmission_id == floor.grant.transmission_id  # type: ignore[union-attr]
    assert outs == [fl.Taken("unit-a", "alias-a", "a", f"tx-a-{T0}", True, 100)]
    with pytest.raises(fl.AlreadyHolder):  # nothing left to upgrade
        fl.step(after, req("a", T0 + 2, emergency=True), lease_s=LEASE)


def test_higher_priority_preempts_in_one_step() -> None:
    floor = taken_by("a", "b")
    after, outs = run(floor, req("sup", T0 + 1, priority=150))
    assert after.holder == "sup"
    assert [e.participant.session for e in after.queue] == ["b"]
    tid_a, tid_s = f"tx-a-{T0}", f"tx-sup-{T0 + 1}"
    assert outs == [
        fl.Revoked("a", tid_a, "preempted"),
        fl.Idle(tid_a, "preempted"),
        fl.Granted("sup", "unit-sup", "alias-sup", tid_s, 60.0, T0 + 1, False, False),
        fl.Taken("unit-sup", "alias-sup", "sup", tid_s, False, 150),
    ]
    assert after.version == floor.version + 1


def test_queued_session_preempting_leaves_the_queue() -> None:
    floor = taken_by("a", "b", "c")
    after, outs = run(floor, req("b", T0 + 1, emergency=True))
    assert after.holder == "b" and after.emergency
    assert [e.participant.session for e in after.queue] == ["c"]
    assert fl.QueuePosition("c", 1) in outs


def test_emergency_outranks_max_priority_but_not_another_emergency() -> None:
    floor, _ = run(Floor.initial(), req("a", priority=255))
    after, _ = run(floor, req("e", T0 + 1, emergency=True))
    assert after.holder == "e"
    again, outs = run(after, req("e2", T0 + 2, emergency=True, queue=False))
    assert again.holder == "e"
    assert outs == [fl.Denied("e2", "floor_taken", "unit-e", "alias-e")]


def test_queue_full_refuses_the_lowest_rank() -> None:
    floor, _ = run(Floor.initial(), req("a", priority=200))
    for i in range(fl.MAX_QUEUE):
        floor, _ = run(floor, req(f"q{i}", T0 + 1 + i))
    full = floor
    after, outs = run(full, req("late", T0 + 100))
    assert after is full
    assert outs == [fl.Denied("late", "queue_full", "unit-a", "alias-a")]
    # A higher rank gets in; the last in line is refused instead.
    after, outs = run(full, req("sup", T0 + 100, priority=120))
    assert len(after.queue) == fl.MAX_QUEUE
    assert after.queue[0].participant.session == "sup"
    assert outs[:2] == [fl.Queued("sup", 1),
                        fl.Denied(f"q{fl.MAX_QUEUE - 1}", "queue_full", "unit-a", "alias-a")]
    assert len(outs) == 2 + fl.MAX_QUEUE - 1  # everyone else moved down one place


def test_invalid_request_values() -> None:
    with pytest.raises(fl.InvalidInput):
        fl.step(Floor.initial(), req("a", max_duration_s=0), lease_s=LEASE)
    bad = fl.Request(who("a"), T0, 60.0, "", True, False)
    with pytest.raises(fl.InvalidInput):
        fl.step(Floor.initial(), bad, lease_s=LEASE)
    with pytest.raises(ValueError):
        who("a", 256)
    with pytest.raises(ValueError):
        fl.step(Floor.initial(), req("a"), lease_s=0)


# --- TAKEN: release / disconnect / revoke --------------------------------------------------
def test_release_to_idle() -> None:
    after, outs = run(taken_by("a"), fl.Release("a", T0 + 3))
    assert after.state is FloorState.IDLE and after.grant is None
    assert outs == [fl.Idle(f"tx-a-{T0}", "released")]


def test_release_grants_queue_head_and_updates_positions() -> None:
    floor = taken_by("a", "b", "c", "d")
    after, outs = run(floor, fl.Release("a", T0 + 3))
    assert after.holder == "b"
    assert after.grant is not None
    assert after.grant.transmission_id == floor.queue[0].transmission_id
    assert after.grant.expires_at == T0 + 3 + 60.0
    assert after.grant.lease_until == T0 + 3 + LEASE
    tid_b = floor.queue[0].transmission_id
    assert outs == [
        fl.Idle(f"tx-a-{T0}", "released"),
        fl.Granted("b", "unit-b", "alias-b", tid_b, 60.0, T0 + 3, False, True),
        fl.Taken("unit-b", "alias-b", "b", tid_b, False, 100),
        fl.QueuePosition("c", 1),
        fl.QueuePosition("d", 2),
    ]


def test_release_by_non_holder_is_refused() -> None:
    floor = taken_by("a", "b")
    for session in ("b", "zz"):
        with pytest.raises(fl.NotHolder):
            fl.step(floor, fl.Release(session, T0 + 1), lease_s=LEASE)


def test_queue_head_that_expired_is_skipped_on_release() -> None:
    floor = taken_by("a", "b")
    floor, _ = run(floor, req("c", T0 + 20))
    late = T0 + 0.1 + fl.QUEUE_TIMEOUT_S + 1  # b expired, c has not
    after, outs = run(floor, fl.Release("a", late))
    assert after.holder == "c"
    assert outs[:2] == [fl.Idle(f"tx-a-{T0}", "released"), fl.QueueExpired("b")]


def test_disconnect_of_holder_hands_over() -> None:
    after, outs = run(taken_by("a", "b"), fl.Disconnect("a", T0 + 1))
    assert after.holder == "b"
    assert outs[0] == fl.Idle(f"tx-a-{T0}", "disconnected")
    assert isinstance(outs[1], fl.Granted) and outs[1].from_queue


def test_disconnect_of_queued_removes_it() -> None:
    after, outs = run(taken_by("a", "b", "c"), fl.Disconnect("b", T0 + 1))
    assert after.holder == "a"
    assert [e.participant.session for e in after.queue] == ["c"]
    assert outs == [fl.QueuePosition("c", 1)]


def test_disconnect_of_stranger_while_taken_changes_nothing() -> None:
    floor = taken_by("a", "b")
    after, outs = run(floor, fl.Disconnect("zz", T0 + 1))
    assert after is floor and outs == []


def test_revoke_tells_holder_then_hands_over() -> None:
    after, outs = run(taken_by("a", "b"), fl.Revoke(T0 + 1, "revoked", by="sgt"))
    assert after.holder == "b"
    assert outs[:2] == [
        fl.Revoked("a", f"tx-a-{T0}", "revoked", "sgt"),
        fl.Idle(f"tx-a-{T0}", "revoked"),
    ]


def test_revoke_with_empty_queue_goes_idle() -> None:
    after, outs = run(taken_by("a"), fl.Revoke(T0 + 1, "revoked"))
    assert after.state is FloorState.IDLE
    assert len(outs) == 2


# --- TAKEN: refresh / cancel / tick / emergency clear --------------------------------------
def test_refresh_extends_the_lease() -> None:
    floor = taken_by("a")
    after, outs = run(floor, fl.Refresh("a", T0 + 1.5, 5.0))
    assert outs == []
    assert after.grant is not None and after.grant.lease_until == T0 + 6.5
    assert after.version == floor.version + 1


def test_refresh_by_non_holder_is_refused() -> None:
    with pytest.raises(fl.NotHolder):
        fl.step(taken_by("a", "b"), fl.Refresh("b", T0, LEASE), lease_s=LEASE)


def test_cancel_queue() -> None:
    after, outs = run(taken_by("a", "b", "c"), fl.CancelQueue("b", T0 + 1))
    assert [e.participant.session for e in after.queue] == ["c"]
    assert outs == [fl.QueuePosition("c", 1)]


def test_cancel_queue_when_not_queued_is_refused() -> None:
    floor = taken_by("a", "b")
    for session in ("a", "zz"):
        with pytest.raises(fl.NotQueued):
            fl.step(floor, fl.CancelQueue(session, T0), lease_s=LEASE)


def test_tick_before_any_deadline_changes_nothing() -> None:
    floor = taken_by("a", "b")
    after, outs = run(floor, fl.Tick(T0 + 1))
    assert after is floor and outs == []


def test_tick_transmit_limit_revokes_with_timeout() -> None:
    floor, _ = run(Floor.initial(), req("a", max_duration_s=5.0), req("b", T0 + 1))
    floor, _ = run(floor, fl.Refresh("a", T0 + 4, 10.0))  # lease is not the reason
    assert floor.deadline() == T0 + 5.0
    after, outs = run(floor, fl.Tick(T0 + 5.0))
    assert after.holder == "b"
    assert outs[:2] == [fl.Revoked("a", f"tx-a-{T0}", "timeout"), fl.Idle(f"tx-a-{T0}", "timeout")]


def test_tick_lease_expiry_frees_as_disconnected() -> None:
    floor = taken_by("a")
    assert floor.deadline() == T0 + LEASE
    after, outs = run(floor, fl.Tick(T0 + LEASE))
    assert after.state is FloorState.IDLE
    assert outs == [fl.Revoked("a", f"tx-a-{T0}", "disconnected"),
                    fl.Idle(f"tx-a-{T0}", "disconnected")]


def test_tick_drops_expired_queue_entries_before_handing_over() -> None:
    floor, _ = run(Floor.initial(), req("a", max_duration_s=100.0), req("b", T0 + 1),
                   req("c", T0 + 2))
    floor, _ = run(floor, fl.Refresh("a", T0 + 1, 1000.0))
    t = T0 + 1 + fl.QUEUE_TIMEOUT_S
    assert floor.deadline() == t
    after, outs = run(floor, fl.Tick(t))
    assert after.holder == "a"
    assert outs == [fl.QueueExpired("b"), fl.QueuePosition("c", 1)]
    # Transmit limit and c's expiry together: c is dropped first, the floor goes idle.
    late, outs = run(after, fl.Tick(T0 + 200))
    assert late.state is FloorState.IDLE and late.queue == ()
    assert outs[0] == fl.QueueExpired("c")


def test_taken_emergency_clear_keeps_the_emergency_grant() -> None:
    floor, _ = run(Floor.initial(), req("a", emergency=True))
    after, outs = run(floor, fl.EmergencyClear(T0 + 1, by="d"))
    assert not after.emergency
    assert after.grant is not None and after.grant.emergency
    assert outs == [fl.EmergencyCleared("d")]


# --- serialisation -------------------------------------------------------------------------
def test_floor_json_round_trip() -> None:
    floor, _ = run(Floor.initial(), req("a", emergency=True), req("b", T0 + 0.123456789),
                   req("c", T0 + 1, priority=7))
    again = Floor.from_json(floor.to_json())
    assert again == floor
    assert Floor.from_json(Floor.initial().to_json()) == Floor.initial()
    assert json.loads(floor.to_json())["state"] == "taken"


def test_outputs_round_trip_through_json() -> None:
    samples: list[fl.FloorOutput] = [
        fl.Granted("s", "u", "a", "t", 60.0, T0, True, True),
        fl.Denied("s", "floor_taken", "u", "a"),
        fl.Queued("s", 2), fl.QueuePosition("s", 1), fl.QueueExpired("s"),
        fl.Taken("u", "a", "s", "t", False, 100), fl.Revoked("s", "t", "timeout"),
        fl.Revoked("s", "t", "revoked", "sgt"), fl.Idle("t", "released"),
        fl.EmergencyCleared("d"), fl.EmergencyCleared(None),
    ]
    for out in samples:
        d = json.loads(json.dumps(out.to_dict()))
        assert d["type"] == out.type
        assert fl.output_from_dict(d) == out
    assert fl.output_from_dict({"type": "queued", "session": "s", "position": 1, "new": 1}) \
        == fl.Queued("s", 1)
    with pytest.raises(ValueError):
        fl.output_from_dict({"type": "nope"})


def test_deadline() -> None:
    assert Floor.initial().deadline() is None
    floor = taken_by("a", "b")
    assert floor.deadline() == min(T0 + LEASE, T0 + 60.0, T0 + 0.1 + fl.QUEUE_TIMEOUT_S)


def test_step_never_mutates_its_input() -> None:
    floor = taken_by("a", "b", "c")
    snapshot = floor.to_json()
    for event in (fl.Release("a", T0 + 1), fl.Revoke(T0 + 1, "revoked"),
                  fl.Tick(T0 + 10_000), req("x", T0 + 1, priority=200),
                  fl.CancelQueue("b", T0 + 1), fl.Disconnect("c", T0 + 1)):
        fl.step(floor, event, lease_s=LEASE)
        assert floor.to_json() == snapshot
