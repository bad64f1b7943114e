"""Floor control for one talkgroup: a pure state machine, no I/O and no clock of its own.

`step(floor, event, lease_s=...)` returns the next floor and the outputs to deliver; it never
mutates its arguments, so FloorStore can run it, lose a compare-and-set race, and simply run
it again on fresher state. Time enters only as `now` (epoch seconds) inside each input.

The model follows the floor control server's 'general floor control operation' state machine
of 3GPP TS 24.380 clause 6.3.4, reduced to the two states a walkie-talkie needs:

* IDLE  ~ 'G: Floor Idle'  (6.3.4.3): nobody may send media; a request is granted at once.
* TAKEN ~ 'G: Floor Taken' (6.3.4.4): exactly one holder; others queue or are denied.

'G: pending Floor Revoke' (6.3.4.5) is left out on purpose: that state gives a revoked talker
a grace period to stop sending, whereas here revocation is immediate and the media gate closes
in the same step, so there is nothing to wait for.

This module is the interface of floor control: `step`, its transition table and the
post-condition it checks are here; the values it works on (floor_types.py), its inputs and
outputs (floor_events.py) and the queue discipline (floor_queue.py) live beside it and are
re-exported, so callers use one namespace (`from ptt_server.core import floor as fl`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from ptt_server.core.floor_events import (
    EVENT_KINDS,
    CancelQueue,
    Denied,
    Disconnect,
    EmergencyClear,
    EmergencyCleared,
    FloorInput,
    FloorOutput,
    Granted,
    Idle,
    Queued,
    QueueExpired,
    QueuePosition,
    Refresh,
    Release,
    Request,
    Revoke,
    Revoked,
    Taken,
    Tick,
    output_from_dict,
)
from ptt_server.core.floor_queue import (
    MAX_QUEUE,
    QUEUE_TIMEOUT_S,
    enqueue,
    expire,
    find,
    position_updates,
    without,
)
from ptt_server.core.floor_types import (
    EMERGENCY_PRIORITY,
    MAX_PRIORITY,
    AlreadyHolder,
    Floor,
    FloorError,
    FloorState,
    Grant,
    IllegalTransition,
    InvalidInput,
    NotEmergency,
    NotHolder,
    NotQueued,
    Participant,
    QueueEntry,
)

__all__ = [  # the floor-control API: step and the values it takes and returns
    "EMERGENCY_PRIORITY", "EVENT_KINDS", "MAX_PRIORITY", "MAX_QUEUE", "QUEUE_TIMEOUT_S",
    "TRANSITIONS", "AlreadyHolder", "CancelQueue", "Denied", "Disconnect", "EmergencyClear",
    "EmergencyCleared", "Floor", "FloorError", "FloorInput", "FloorOutput", "FloorState",
    "Grant", "Granted", "Handler", "Idle", "IllegalTransition", "InvalidInput", "NotEmergency",
    "NotHolder", "NotQueued", "Participant", "QueueEntry", "QueueExpired", "QueuePosition",
    "Queued", "Refresh", "Release", "Request", "Result", "Revoke", "Revoked", "Taken", "Tick",
    "Transition", "output_from_dict", "step",
]


# --- transitions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Params:
    lease_s: float
    queue_timeout_s: float
    max_queue: int


Result = tuple[Floor, list[FloorOutput]]
Handler = Callable[[Floor, Any, _Params], Result]


class Transition(NamedTuple):
    handler: Handler
    targets: frozenset[FloorState]  # the states this transition may end in


def _start(
    floor: Floor, who: Participant, tid: str, max_duration_s: float, emergency: bool,
    now: float, p: _Params, *, from_queue: bool,
) -> Result:
    """Give an idle floor to `who`: one Granted for the talker, one Taken for everyone."""
    grant = Grant(
        participant=who, transmission_id=tid, granted_at=now, expires_at=now + max_duration_s,
        lease_until=now + p.lease_s, emergency=emergency,
    )
    outputs: list[FloorOutput] = [
        Granted(who.session, who.unit, who.alias, tid, max_duration_s, now, emergency,
                from_queue),
        Taken(who.unit, who.alias, who.session, tid, emergency, who.priority),
    ]
    return replace(floor, state=FloorState.TAKEN, grant=grant), outputs


def _end(floor: Floor, reason: str, *, revoked: bool, by: str | None = None) -> Result:
    """Take the floor from its holder. Revoked goes to a holder that is still there to hear
    it (it lost the floor involuntarily); a holder that released or vanished gets only Idle."""
    grant = floor.grant
    assert grant is not None
    outputs: list[FloorOutput] = []
    if revoked:
        outputs.append(Revoked(grant.participant.session, grant.transmission_id, reason, by))
    outputs.append(Idle(grant.transmission_id, reason))
    return replace(floor, state=FloorState.IDLE, grant=None), outputs


def _promote(floor: Floor, now: float, p: _Params) -> Result:
    """After the holder left: grant the queue head, if any (TS 24.380 grants the first
    queued request when the floor becomes idle, rather than waiting for a new request)."""
    floor, outputs = expire(floor, now)
    if not floor.queue:
        return floor, outputs
    head, rest = floor.queue[0], floor.queue[1:]
    floor, granted = _start(
        replace(floor, queue=rest), head.participant, head.transmission_id,
        head.max_duration_s, head.emergency, now, p, from_queue=True,
    )
    return floor, outputs + granted


def _check_request(ev: Request) -> None:
    if not ev.max_duration_s > 0:
        raise InvalidInput(f"max_duration_s must be positive, got {ev.max_duration_s}")
    if not ev.transmission_id:
        raise InvalidInput("transmission_id must not be empty")


def _request_idle(floor: Floor, ev: Request, p: _Params) -> Result:
    _check_request(ev)
    floor = replace(floor, emergency=floor.emergency or ev.emergency)
    return _start(floor, ev.participant, ev.transmission_id, ev.max_duration_s, ev.emergency,
                  ev.now, p, from_queue=False)


def _request_taken(floor: Floor, ev: Request, p: _Params) -> Result:
    _check_request(ev)
    grant = floor.grant
    assert grant is not None
    session = ev.participant.session
    if grant.participant.session == session:
        return _holder_requests(floor, grant, ev)
    floor = replace(floor, emergency=floor.emergency or ev.emergency)

    if ev.priority > grant.priority:
        # Pre-emptive priority: the holder is cut off and the requester talks, in one step
        # so no other request can slip in between.
        floor = replace(floor, queue=without(floor.queue, session))
        floor, ended = _end(floor, "preempted", revoked=True)
        floor, granted = _start(floor, ev.participant, ev.transmission_id, ev.max_duration_s,
                                ev.emergency, ev.now, p, from_queue=False)
        return floor, ended + granted

    existing = find(floor.queue, session)
    if existing is not None:
        return _requeue(floor, existing, ev)
    return _queue(floor, grant.participant, ev, p)


def _holder_requests(floor: Floor, grant: Grant, ev: Request) -> Result:
    """The holder asks again: only an emergency escalation of its own transmission is legal."""
    if ev.emergency and not (grant.emergency and floor.emergency):
        # A talker pressing the emergency button mid-transmission: the transmission
        # becomes an emergency one (and so un-pre-emptable); everyone is told again.
        grant = replace(grant, emergency=True)
        who = grant.participant
        return replace(floor, grant=grant, emergency=True), [
            Taken(who.unit, who.alias, who.session, grant.transmission_id, True,
                  who.priority),
        ]
    raise AlreadyHolder(f"session {ev.participant.session} already holds the floor")


def _requeue(floor: Floor, existing: QueueEntry, ev: Request) -> Result:
    """A queued session asks again: it keeps its entry, moved up if it now ranks higher."""
    session = ev.participant.session
    if ev.priority > existing.priority:
        # Re-requesting with a higher rank (e.g. now as an emergency) moves the entry up;
        # its arrival time is kept, so it does not lose its place among equals.
        upgraded = replace(existing, participant=ev.participant, priority=ev.priority,
                           emergency=ev.emergency)
        floor = replace(floor, queue=enqueue(without(floor.queue, session), upgraded))
    position = floor.position(session)
    assert position is not None
    return floor, [Queued(session, position)]


def _queue(floor: Floor, holder: Participant, ev: Request, p: _Params) -> Result:
    """A new request while someone else talks: queue it (if asked to and there is room)."""
    session = ev.participant.session
    if not ev.queue:
        return floor, [Denied(session, "floor_taken", holder.unit, holder.alias)]
    entry = QueueEntry(
        participant=ev.participant, priority=ev.priority, enqueued_at=ev.now,
        expires_at=ev.now + p.queue_timeout_s, emergency=ev.emergency,
        transmission_id=ev.transmission_id, max_duration_s=ev.max_duration_s,
    )
    queue = enqueue(floor.queue, entry)
    bumped: list[FloorOutput] = []
    if len(queue) > p.max_queue:
        # Full: whoever ranks last is refused, which may be the newcomer itself.
        last = queue[-1]
        if last is entry:
            return floor, [Denied(session, "queue_full", holder.unit, holder.alias)]
        queue = queue[:-1]
        bumped.append(Denied(last.participant.session, "queue_full", holder.unit,
                             holder.alias))
    floor = replace(floor, queue=queue)
    position = floor.position(session)
    assert position is not None
    return floor, [Queued(session, position), *bumped]


def _holder_only(floor: Floor, session: str) -> Grant:
    grant = floor.grant
    if grant is None or grant.participant.session != session:
        raise NotHolder(f"session {session} does not hold the floor")
    return grant


def _release(floor: Floor, ev: Release, p: _Params) -> Result:
    _holder_only(floor, ev.session)
    floor, outputs = _end(floor, "released", revoked=False)
    floor, more = _promote(floor, ev.now, p)
    return floor, outputs + more


def _disconnect(floor: Floor, ev: Disconnect, p: _Params) -> Result:
    # Always legal: the session is gone whatever it was doing, and must leave no trace.
    if floor.holder == ev.session:
        floor, outputs = _end(floor, "disconnected", revoked=False)
        floor, more = _promote(floor, ev.now, p)
        return floor, outputs + more
    if find(floor.queue, ev.session) is not None:
        return replace(floor, queue=without(floor.queue, ev.session)), []
    return floor, []


def _revoke(floor: Floor, ev: Revoke, p: _Params) -> Result:
    floor, outputs = _end(floor, ev.reason, revoked=True, by=ev.by)
    floor, more = _promote(floor, ev.now, p)
    return floor, outputs + more


def _refresh(floor: Floor, ev: Refresh, p: _Params) -> Result:
    grant = _holder_only(floor, ev.session)
    if not ev.lease_s > 0:
        raise InvalidInput(f"lease_s must be positive, got {ev.lease_s}")
    return replace(floor, grant=replace(grant, lease_until=ev.now + ev.lease_s)), []


def _cancel_queue(floor: Floor, ev: CancelQueue, p: _Params) -> Result:
    if find(floor.queue, ev.session) is None:
        raise NotQueued(f"session {ev.session} is not queued")
    return replace(floor, queue=without(floor.queue, ev.session)), []


def _tick(floor: Floor, ev: Tick, p: _Params) -> Result:
    # Drop stale queue entries first, so a timed-out holder's floor does not go to someone
    # who stopped waiting.
    floor, outputs = expire(floor, ev.now)
    grant = floor.grant
    if grant is None:
        return floor, outputs
    if ev.now >= grant.expires_at:
        reason = "timeout"
    elif ev.now >= grant.lease_until:
        # The holder's node stopped refreshing (crashed or cut off from Redis). Revoked is
        # still sent: if that node is merely slow, it must close its gate too.
        reason = "disconnected"
    else:
        return floor, outputs
    floor, ended = _end(floor, reason, revoked=True)
    floor, more = _promote(floor, ev.now, p)
    return floor, outputs + ended + more


def _emergency_clear(floor: Floor, ev: EmergencyClear, p: _Params) -> Result:
    if not floor.emergency:
        raise NotEmergency("the talkgroup is not in emergency state")
    # A running emergency transmission keeps its flag (and rank): it was granted as one.
    return replace(floor, emergency=False), [EmergencyCleared(ev.by)]


_IDLE, _TAKEN = FloorState.IDLE, FloorState.TAKEN
_ANY = frozenset({_IDLE, _TAKEN})

TRANSITIONS: dict[tuple[FloorState, str], Transition] = {
    (_IDLE, "request"): Transition(_request_idle, frozenset({_TAKEN})),
    (_IDLE, "disconnect"): Transition(_disconnect, frozenset({_IDLE})),
    (_IDLE, "tick"): Transition(_tick, frozenset({_IDLE})),
    (_IDLE, "emergency_clear"): Transition(_emergency_clear, frozenset({_IDLE})),
    (_TAKEN, "request"): Transition(_request_taken, frozenset({_TAKEN})),
    (_TAKEN, "release"): Transition(_release, _ANY),
    (_TAKEN, "disconnect"): Transition(_disconnect, _ANY),
    (_TAKEN, "revoke"): Transition(_revoke, _ANY),
    (_TAKEN, "refresh"): Transition(_refresh, frozenset({_TAKEN})),
    (_TAKEN, "cancel_queue"): Transition(_cancel_queue, frozenset({_TAKEN})),
    (_TAKEN, "tick"): Transition(_tick, _ANY),
    (_TAKEN, "emergency_clear"): Transition(_emergency_clear, frozenset({_TAKEN})),
}

# What a client is told for an event with no transition in the current state: the specific
# reason where there is one (releasing an idle floor means "you are not the holder").
_REFUSAL: dict[str, type[IllegalTransition]] = {
    "release": NotHolder,
    "refresh": NotHolder,
    "cancel_queue": NotQueued,
}


def step(
    floor: Floor,
    event: FloorInput,
    *,
    lease_s: float,
    queue_timeout_s: float = QUEUE_TIMEOUT_S,
    max_queue: int = MAX_QUEUE,
) -> tuple[Floor, list[FloorOutput]]:
    """Apply one input. Returns (next floor, outputs); raises FloorError, changing nothing,
    for an input that is not legal now. The version goes up iff the floor changed."""
    if not lease_s > 0 or not queue_timeout_s > 0 or max_queue < 1:
        raise ValueError("lease_s and queue_timeout_s must be positive, max_queue >= 1")
    transition = TRANSITIONS.get((floor.state, event.kind))
    if transition is None:
        refusal = _REFUSAL.get(event.kind, IllegalTransition)
        raise refusal(f"{event.kind} is not allowed while the floor is {floor.state.value}")
    params = _Params(lease_s, queue_timeout_s, max_queue)
    after, outputs = transition.handler(floor, event, params)
    if after.state not in transition.targets:  # a bug in a handler, never a user error
        raise RuntimeError(f"{event.kind} moved {floor.state} to undeclared {after.state}")
    told = {o.session for o in outputs if isinstance(o, Queued | Granted)}
    outputs += position_updates(floor, after, told)
    if replace(after, version=floor.version) == floor:
        return floor, outputs
    return replace(after, version=floor.version + 1), outputs
