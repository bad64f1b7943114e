"""What goes into a floor step (inputs, one per event kind) and what comes out (outputs).

Outputs cross node boundaries on Redis pub/sub, so each has a JSON form tagged with "type";
`output_from_dict` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ptt_server.core.floor_types import EMERGENCY_PRIORITY, Participant, plain


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
        d = plain(self)
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
