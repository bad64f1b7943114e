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
"""

from __future__ import annotations

import bisect
import enum
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar, NamedTuple

# TS 24.380 carries the floor priority in an 8-bit field, so 0..255; an emergency request
# must beat every configurable priority, so it is ranked just above that range.
MAX_PRIORITY = 255
EMERGENCY_PRIORITY = MAX_PRIORITY + 1

# How long a queued request waits for the floor before it is dropped (QueueExpired). Long
# enough to outlast a typical transmission, short enough that a user who walked away does
# not suddenly get the floor minutes later.
QUEUE_TIMEOUT_S = 30.0
# Bounds the stored JSON (every step rewrites it) and the fan-out of position updates.
MAX_QUEUE = 32


# --- errors --------------------------------------------------------------------------------
class FloorError(Exception):
    """Base of every floor error; `code` is stable and reaches clients unchanged."""

    code: ClassVar[str] = "floor_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class IllegalTransition(FloorError):
    """The event has no procedure in the floor's current state (or for this session).

    TS 24.380 clause 6.3.4.1: such a message is discarded and the state machine remains in
    its current state, which is exactly what raising from the pure `step` achieves.
    """

    code: ClassVar[str] = "illegal_transition"


class NotHolder(IllegalTransition):
    code: ClassVar[str] = "not_holder"


class NotQueued(IllegalTransition):
    code: ClassVar[str] = "not_queued"


class AlreadyHolder(IllegalTransition):
    code: ClassVar[str] = "already_holder"


class NotEmergency(IllegalTransition):
    code: ClassVar[str] = "not_emergency"


class InvalidInput(FloorError):
    """An input whose values make no sense (e.g. a non-positive transmit limit)."""

    code: ClassVar[str] = "invalid_input"


# --- state ---------------------------------------------------------------------------------
class FloorState(enum.Enum):
    IDLE = "idle"
    TAKEN = "taken"


@dataclass(frozen=True)
class Participant:
    session: str  # unique per connection: the holder token
    unit: str
    alias: str
    role: str
    node: str  # server node that owns the session (and refreshes its lease)
    priority: int  # 0..255, higher wins

    def __post_init__(self) -> None:
        if not 0 <= self.priority <= MAX_PRIORITY:
            raise ValueError(f"priority {self.priority} outside 0..{MAX_PRIORITY}")

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Participant:
        return Participant(
            session=str(d["session"]), unit=str(d["unit"]), alias=str(d["alias"]),
            role=str(d["role"]), node=str(d["node"]), priority=int(d["priority"]),
        )


@dataclass(frozen=True)
class Grant:
    participant: Participant
    transmission_id: str
    granted_at: float
    expires_at: float  # transmit time limit (the role of TS 24.380 timer T2 'Stop talking')
    lease_until: float  # the holder's node must Refresh before this, or the floor is freed
    emergency: bool

    @property
    def priority(self) -> int:
        """Rank used against challengers: an emergency grant cannot be pre-empted."""
        return EMERGENCY_PRIORITY if self.emergency else self.participant.priority

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Grant:
        return Grant(
            participant=Participant.from_dict(d["participant"]),
            transmission_id=str(d["transmission_id"]), granted_at=float(d["granted_at"]),
            expires_at=float(d["expires_at"]), lease_until=float(d["lease_until"]),
            emergency=bool(d["emergency"]),
        )


@dataclass(frozen=True)
class QueueEntry:
    participant: Participant
    priority: int  # effective priority: EMERGENCY_PRIORITY for emergency requests
    enqueued_at: float
    expires_at: float
    emergency: bool
    transmission_id: str  # allocated at request time, used if this entry is granted
    max_duration_s: float

    @property
    def sort_key(self) -> tuple[int, float]:
        return (-self.priority, self.enqueued_at)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> QueueEntry:
        return QueueEntry(
            participant=Participant.from_dict(d["participant"]), priority=int(d["priority"]),
            enqueued_at=float(d["enqueued_at"]), expires_at=float(d["expires_at"]),
            emergency=bool(d["emergency"]), transmission_id=str(d["transmission_id"]),
            max_duration_s=float(d["max_duration_s"]),
        )


@dataclass(frozen=True)
class Floor:
    state: FloorState
    grant: Grant | None
    queue: tuple[QueueEntry, ...]  # sorted: priority desc, then arrival asc
    version: int  # +1 on every change: the compare-and-set token in Redis
    emergency: bool = False  # talkgroup emergency state, until EmergencyClear

    @staticmethod
    def initial() -> Floor:
        return Floor(state=FloorState.IDLE, grant=None, queue=(), version=0)

    @property
    def holder(self) -> str | None:
        return self.grant.participant.session if self.grant is not None else None

    def position(self, session: str) -> int | None:
        """1-based queue position of a session, None if it is not queued."""
        for i, entry in enumerate(self.queue):
            if entry.participant.session == session:
                return i + 1
        return None

    def deadline(self) -> float | None:
        """The earliest `now` at which Tick would change something (None: never)."""
        times = [e.expires_at for e in self.queue]
        if self.grant is not None:
            times += [self.grant.expires_at, self.grant.lease_until]
        return min(times) if times else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "grant": asdict(self.grant) if self.grant is not None else None,
            "queue": [asdict(e) for e in self.queue],
            "version": self.version,
            "emergency": self.emergency,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Floor:
        grant = d.get("grant")
        return Floor(
            state=FloorState(d["state"]),
            grant=Grant.from_dict(grant) if grant is not None else None,
            queue=tuple(QueueEntry.from_dict(e) for e in d.get("queue", ())),
            version=int(d["version"]),
            emergency=bool(d.get("emergency", False)),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @staticmethod
    def from_json(s: str | bytes) -> Floor:
        return Floor.from_dict(json.loads(s))


# --- inputs --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    kind: ClassVar[str] = "request"
    participant: Participant
    now: float
    max_duration_s: float
    transmission_id: str
    queue: bool = True
    emergency: bool = False

    @property
    def priority(self) -> int:
        return EMERGENCY_PRIORITY if self.emergency else self.participant.priority


@dataclass(frozen=True)
class Release:
    kind: ClassVar[str] = "release"
    session: str
    now: float


@dataclass(frozen=True)
class Disconnect:
    kind: ClassVar[str] = "disconnect"
    session: str
    now: float


@dataclass(frozen=True)
class Revoke:
    kind: ClassVar[str] = "revoke"
    now: float
    reason: str
    by: str | None = None


@dataclass(frozen=True)
class Refresh:
    kind: ClassVar[str] = "refresh"
    session: str
    now: float
    lease_s: float


@dataclass(frozen=True)
class CancelQueue:
    kind: ClassVar[str] = "cancel_queue"
    session: str
    now: float


@dataclass(frozen=True)
class Tick:
    kind: ClassVar[str] = "tick"
    now: float


@dataclass(frozen=True)
class EmergencyClear:
    kind: ClassVar[str] = "emergency_clear"
    now: float
    by: str | None = None


FloorInput = (
    Request | Release | Disconnect | Revoke | Refresh | CancelQueue | Tick | EmergencyClear
)
EVENT_KINDS: tuple[str, ...] = (
    "request", "release", "disconnect", "revoke", "refresh", "cancel_queue", "tick",
    "emergency_clear",
)


# --- outputs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Output:
    type: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, tagged with "type"; `output_from_dict` is the inverse."""
        d = asdict(self)
        d["type"] = self.type
        return d


@dataclass(frozen=True)
class Granted(_Output):
    type: ClassVar[str] = "granted"
    session: str
    unit: str
    alias: str
    transmission_id: str
    max_duration_s: float
    granted_at: float
    emergency: bool
    from_queue: bool


@dataclass(frozen=True)
class Denied(_Output):
    type: ClassVar[str] = "denied"
    session: str
    reason: str  # "floor_taken" or "queue_full"
    holder_unit: str
    holder_alias: str


@dataclass(frozen=True)
class Queued(_Output):
    type: ClassVar[str] = "queued"
    session: str
    position: int  # 1-based


@dataclass(frozen=True)
class QueuePosition(_Output):
    """TS 24.380 'Floor Queue Position Info': a waiting session's place changed."""

    type: ClassVar[str] = "queue_position"
    session: str
    position: int


@dataclass(frozen=True)
class QueueExpired(_Output):
    type: ClassVar[str] = "queue_expired"
    session: str


@dataclass(frozen=True)
class Taken(_Output):
    type: ClassVar[str] = "taken"
    unit: str
    alias: str
    session: str
    transmission_id: str
    emergency: bool
    priority: int  # the participant's configured priority (emergency is its own flag)


@dataclass(frozen=True)
class Revoked(_Output):
    type: ClassVar[str] = "revoked"
    session: str
    transmission_id: str
    reason: str  # "timeout", "preempted", "revoked", "disconnected" (lease lost)
    by: str | None = None  # who revoked, for the audit trail


@dataclass(frozen=True)
class Idle(_Output):
    type: ClassVar[str] = "idle"
    transmission_id: str
    reason: str  # "released", "timeout", "disconnected", "revoked", "preempted"


@dataclass(frozen=True)
class EmergencyCleared(_Output):
    type: ClassVar[str] = "emergency_cleared"
    by: str | None


FloorOutput = (
    Granted | Denied | Queued | QueuePosition | QueueExpired | Taken | Revoked | Idle
    | EmergencyCleared
)
_OUTPUT_TYPES: dict[str, type[Any]] = {
    cls.type: cls
    for cls in (
        Granted, Denied, Queued, QueuePosition, QueueExpired, Taken, Revoked, Idle,
        EmergencyCleared,
    )
}


def output_from_dict(d: dict[str, Any]) -> FloorOutput:
    """Inverse of `to_dict`; unknown keys are ignored so a newer node can add fields."""
    cls = _OUTPUT_TYPES.get(str(d.get("type")))
    if cls is None:
        raise ValueError(f"unknown floor output type {d.get('type')!r}")
    names = {f.name for f in fields(cls)}
    out: FloorOutput = cls(**{k: v for k, v in d.items() if k in names})
    return out


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


def _expire_queue(floor: Floor, now: float) -> Result:
    keep = tuple(e for e in floor.queue if e.expires_at > now)
    gone = [QueueExpired(e.participant.session) for e in floor.queue if e.expires_at <= now]
    return replace(floor, queue=keep), list(gone)


def _promote(floor: Floor, now: float, p: _Params) -> Result:
    """After the holder left: grant the queue head, if any (TS 24.380 grants the first
    queued request when the floor becomes idle, rather than waiting for a new request)."""
    floor, outputs = _expire_queue(floor, now)
    if not floor.queue:
        return floor, outputs
    head, rest = floor.queue[0], floor.queue[1:]
    floor, granted = _start(
        replace(floor, queue=rest), head.participant, head.transmission_id,
        head.max_duration_s, head.emergency, now, p, from_queue=True,
    )
    return floor, outputs + granted


def _enqueue(queue: tuple[QueueEntry, ...], entry: QueueEntry) -> tuple[QueueEntry, ...]:
    """Insert keeping (priority desc, arrival asc); among equal keys the newcomer goes last."""
    keys = [e.sort_key for e in queue]
    i = bisect.bisect_right(keys, entry.sort_key)
    return (*queue[:i], entry, *queue[i:])


def _without(queue: tuple[QueueEntry, ...], session: str) -> tuple[QueueEntry, ...]:
    return tuple(e for e in queue if e.participant.session != session)


def _find(queue: tuple[QueueEntry, ...], session: str) -> QueueEntry | None:
    return next((e for e in queue if e.participant.session == session), None)


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
        if ev.emergency and not (grant.emergency and floor.emergency):
            # A talker pressing the emergency button mid-transmission: the transmission
            # becomes an emergency one (and so un-pre-emptable); everyone is told again.
            grant = replace(grant, emergency=True)
            who = grant.participant
            return replace(floor, grant=grant, emergency=True), [
                Taken(who.unit, who.alias, who.session, grant.transmission_id, True,
                      who.priority),
            ]
        raise AlreadyHolder(f"session {session} already holds the floor")
    floor = replace(floor, emergency=floor.emergency or ev.emergency)

    if ev.priority > grant.priority:
        # Pre-emptive priority: the holder is cut off and the requester talks, in one step
        # so no other request can slip in between.
        floor = replace(floor, queue=_without(floor.queue, session))
        floor, ended = _end(floor, "preempted", revoked=True)
        floor, granted = _start(floor, ev.participant, ev.transmission_id, ev.max_duration_s,
                                ev.emergency, ev.now, p, from_queue=False)
        return floor, ended + granted

    existing = _find(floor.queue, session)
    if existing is not None:
        if ev.priority > existing.priority:
            # Re-requesting with a higher rank (e.g. now as an emergency) moves the entry up;
            # its arrival time is kept, so it does not lose its place among equals.
            upgraded = replace(existing, participant=ev.participant, priority=ev.priority,
                               emergency=ev.emergency)
            floor = replace(floor, queue=_enqueue(_without(floor.queue, session), upgraded))
        position = floor.position(session)
        assert position is not None
        return floor, [Queued(session, position)]

    holder = grant.participant
    if not ev.queue:
        return floor, [Denied(session, "floor_taken", holder.unit, holder.alias)]
    entry = QueueEntry(
        participant=ev.participant, priority=ev.priority, enqueued_at=ev.now,
        expires_at=ev.now + p.queue_timeout_s, emergency=ev.emergency,
        transmission_id=ev.transmission_id, max_duration_s=ev.max_duration_s,
    )
    queue = _enqueue(floor.queue, entry)
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
    if _find(floor.queue, ev.session) is not None:
        return replace(floor, queue=_without(floor.queue, ev.session)), []
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
    if _find(floor.queue, ev.session) is None:
        raise NotQueued(f"session {ev.session} is not queued")
    return replace(floor, queue=_without(floor.queue, ev.session)), []


def _tick(floor: Floor, ev: Tick, p: _Params) -> Result:
    # Drop stale queue entries first, so a timed-out holder's floor does not go to someone
    # who stopped waiting.
    floor, outputs = _expire_queue(floor, ev.now)
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


def _position_updates(before: Floor, after: Floor, told: set[str]) -> list[FloorOutput]:
    old = {e.participant.session: i for i, e in enumerate(before.queue)}
    return [
        QueuePosition(s, i + 1)
        for i, e in enumerate(after.queue)
        if (s := e.participant.session) in old and old[s] != i and s not in told
    ]


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
    outputs += _position_updates(floor, after, told)
    if replace(after, version=floor.version) == floor:
        return floor, outputs
    return replace(after, version=floor.version + 1), outputs
