"""What a floor is: its state, the participants in it, and the errors `step` can raise.

Plain frozen values with their JSON form (the floor is stored as JSON in Redis); the rules
that move a floor from one state to the next are in floor.py, and what goes in and comes out
of a step in floor_events.py.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, fields
from typing import Any, ClassVar

# TS 24.380 carries the floor priority in an 8-bit field, so 0..255; an emergency request
# must beat every configurable priority, so it is ranked just above that range.
MAX_PRIORITY = 255
EMERGENCY_PRIORITY = MAX_PRIORITY + 1


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


_FIELDS: dict[type, tuple[str, ...]] = {}


def plain(record: Any) -> dict[str, Any]:
    """`dataclasses.asdict` for these records, the same dict: their fields hold only plain
    values, other records and tuples of them, none of which needs asdict's deep copy of every
    value (which was a third of the Python cost of a floor write, paid for the stored floor
    and its outputs on every request, release and lease refresh)."""
    cls = type(record)
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(record))
    return {name: _plain_value(getattr(record, name)) for name in names}


def _plain_value(value: Any) -> Any:
    if hasattr(type(value), "__dataclass_fields__"):
        return plain(value)
    if isinstance(value, tuple | list):
        return type(value)(_plain_value(v) for v in value)
    return value


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
            "grant": plain(self.grant) if self.grant is not None else None,
            "queue": [plain(e) for e in self.queue],
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
