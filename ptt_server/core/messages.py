"""Server -> client signaling messages: one frozen dataclass per `type`, one encoder.

The counterpart of protocol.py (client -> server). docs/protocol.md describes each message
with an example; tests/test_messages.py keeps the two in step. Field names and value shapes are
the wire format: renaming a field here breaks every client.

    session.send_text(encode(FloorIdle(talkgroup="A", transmission_id=tid, reason="released")))

Classes are keyword-only: many fields share a type (unit, alias, talkgroup are all str), and a
positional mix-up would still type-check.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ptt_server.core.messaging import (
    MessageReceipt,
    StatusUpdate,
    TalkgroupAdded,
    TalkgroupRemoved,
    TextMessage,
)
from ptt_server.core.private_call import (
    PrivateCallEnded,
    PrivateCallIncoming,
    PrivateCallRejected,
    PrivateCallRinging,
    PrivateCallStarted,
)
from ptt_server.core.roster import MemberView as MemberView
from ptt_server.core.roster import Presence as Presence
from ptt_server.core.roster import PresenceDelta as PresenceDelta


# --- parts of messages -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class FloorView:
    """A talkgroup's floor, as a joining client first sees it. When idle, unit, alias and
    transmission_id are null (sent, not left out)."""

    state: Literal["idle", "taken"]
    unit: str | None = None
    alias: str | None = None
    transmission_id: str | None = None
    emergency: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Holder:
    """Who holds the floor a request was denied."""

    unit: str
    alias: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PatchView:
    patch_id: str
    talkgroups: tuple[str, ...]


# --- session ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    type: Literal["welcome"] = "welcome"
    session: str
    node: str
    unit: str
    alias: str
    role: str
    priority: int
    talkgroups: tuple[str, ...]
    heartbeat_s: float
    # Send it back in `auth` after losing the connection to resume this session within
    # `resume_grace_s`; `resumed` says whether this welcome continues an earlier session.
    resume_token: str
    resume_grace_s: float
    resumed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    type: Literal["pong"] = "pong"
    id: str | int | None  # the ping's, echoed
    ts: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerStopping:
    """The node is shutting down: sent before the socket closes, so the client knows to
    come back (to another node) instead of reporting a lost connection."""

    type: Literal["server_stopping"] = "server_stopping"
    reason: str
    reconnect_after_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    """`extra` fields are sent beside code and message, at the top level of the object."""

    type: Literal["error"] = "error"
    code: str
    message: str
    extra: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = {"type", "code", "message"} & set(self.extra)
        if clash:
            raise ValueError(f"error extra fields may not replace {sorted(clash)}")


def error(code: str, message: str, **extra: object) -> Error:
    return Error(code=code, message=message, extra=extra)


# --- talkgroups ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Joined:
    type: Literal["joined"] = "joined"
    talkgroup: str
    mode: str  # "member" or "monitor"
    name: str
    kind: str
    members: tuple[MemberView, ...]
    # The revision of this list: presence_delta messages continue from it (core/roster.py).
    presence_revision: int
    floor: FloorView
    patch: PatchView | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Left:
    type: Literal["left"] = "left"
    talkgroup: str


# --- media negotiation -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """The server's own offer (a renegotiation adding a downlink transceiver)."""

    type: Literal["offer"] = "offer"
    sdp: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    type: Literal["answer"] = "answer"
    sdp: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Downlink:
    type: Literal["downlink"] = "downlink"
    talkgroup: str
    mid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaState:
    type: Literal["media_state"] = "media_state"
    state: str  # the peer connection's state: connecting, connected, failed, closed


# --- floor control ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class FloorGranted:
    type: Literal["floor_granted"] = "floor_granted"
    talkgroup: str
    transmission_id: str
    max_duration_s: float
    emergency: bool
    from_queue: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class FloorDenied:
    type: Literal["floor_denied"] = "floor_denied"
    talkgroup: str
    reason: str  # floor_taken, queue_full, queue_timeout (then holder is null)
    holder: Holder | None


@dataclass(frozen=True, slots=True, kw_only=True)
class FloorQueued:
    type: Literal["floor_queued"] = "floor_queued"
    talkgroup: str
    position: int  # 1-based


@dataclass(frozen=True, slots=True, kw_only=True)
class FloorCancelled:
    type: Literal["floor_cancelled"] = "floor_cancelled"
    talkgroup: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FloorTaken:
    type: Literal["floor_taken"] = "floor_taken"
    talkgroup: str
    unit: str
    alias: str
    transmission_id: str
    emergency: bool
    priority: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FloorIdle:
    type: Literal["floor_idle"] = "floor_idle"
    talkgroup: str
    transmission_id: str
    reason: str  # released, timeout, disconnected, revoked, preempted


@dataclass(frozen=True, slots=True, kw_only=True)
class FloorRevoked:
    type: Literal["floor_revoked"] = "floor_revoked"
    talkgroup: str
    transmission_id: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FloorWarning:
    type: Literal["floor_warning"] = "floor_warning"
    talkgroup: str
    transmission_id: str
    remaining_s: float


# --- emergency, all-call, patches ------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Emergency:
    type: Literal["emergency"] = "emergency"
    talkgroup: str
    unit: str
    alias: str
    location: dict[str, float] | None  # lat, lon and perhaps accuracy, as the client sent it
    ts: float
    # 0 when raised; 1, 2, ... each time it is sent again because nobody has acknowledged it
    # (every emergency_repeat_s) until emergency_acknowledged or emergency_cleared.
    repeat: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class EmergencyAcknowledged:
    """Control has seen the alarm: to the unit that raised it (it is a member of the
    talkgroup), the talkgroup's members and every supervisor. The emergency stays until
    cleared, but is no longer repeated."""

    type: Literal["emergency_acknowledged"] = "emergency_acknowledged"
    talkgroup: str
    unit: str  # who raised it
    by: str  # who acknowledged it
    alias: str  # of `by`
    ts: float


@dataclass(frozen=True, slots=True, kw_only=True)
class EmergencyCleared:
    type: Literal["emergency_cleared"] = "emergency_cleared"
    talkgroup: str
    by: str
    alias: str  # of `by`


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemAlert:
    """Trouble with the service itself, for supervisors, dispatchers and admins: raised when
    it starts (`active` true) and again when it is over."""

    type: Literal["system_alert"] = "system_alert"
    alert: str  # redis_unreachable, recording_failing, disk_low
    active: bool
    node: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AllCallGranted:
    type: Literal["all_call_granted"] = "all_call_granted"
    all_call_id: str
    talkgroups: dict[str, str]  # talkgroup -> its transmission id


@dataclass(frozen=True, slots=True, kw_only=True)
class AllCallDenied:
    type: Literal["all_call_denied"] = "all_call_denied"
    talkgroups: tuple[str, ...]  # what was asked for
    talkgroup: str  # the one that refused
    reason: str
    holder: Holder | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Patched:
    type: Literal["patched"] = "patched"
    patch_id: str
    talkgroups: tuple[str, ...]
    by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Unpatched:
    type: Literal["unpatched"] = "unpatched"
    patch_id: str
    talkgroups: tuple[str, ...]
    by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitLocation:
    """A unit's position, shared by its officer (opt-in): to supervisors, dispatchers and
    admins only, never to other officers."""

    type: Literal["unit_location"] = "unit_location"
    unit: str
    alias: str
    role: str
    talkgroups: tuple[str, ...]  # those its session has joined as a member
    lat: float
    lon: float
    accuracy: float | None  # metres
    ts: float  # when the device took the fix (never later than `received`)
    received: float  # when the server got it: the console's "last seen"


ServerMessage = (
    Welcome | Pong | ServerStopping | Error | Joined | Left | Presence | Offer | Answer
    | Downlink | MediaState | FloorGranted | FloorDenied | FloorQueued | FloorCancelled
    | FloorTaken | FloorIdle | FloorRevoked | FloorWarning | Emergency | EmergencyCleared
    | SystemAlert
    | AllCallGranted | AllCallDenied | Patched | Unpatched
    | EmergencyAcknowledged | UnitLocation
    # status and text messages, talkgroups given and taken (core/messaging.py)
    | TextMessage | StatusUpdate | MessageReceipt | TalkgroupAdded | TalkgroupRemoved
    # private calls (core/private_call.py)
    | PrivateCallRinging | PrivateCallIncoming | PrivateCallStarted | PrivateCallRejected
    | PrivateCallEnded
    | PresenceDelta  # the list's changes (core/roster.py, beside Presence)
)
VIEWS = (MemberView, FloorView, Holder, PatchView)


def wire_name(cls: type[ServerMessage]) -> str:
    """The `type` a class is sent as (its field's default: slots leave no class attribute)."""
    return str(next(f.default for f in dataclasses.fields(cls) if f.name == "type"))


# Wire name -> class, e.g. "floor_idle" -> FloorIdle.
MESSAGE_TYPES: dict[str, type[ServerMessage]] = {
    wire_name(cls): cls for cls in get_args(ServerMessage)
}


# --- encoding --------------------------------------------------------------------------------
class EncodeError(ValueError):
    """A message that is not valid JSON (a NaN, say): a bug at the call site, never sent."""


# Field names per class, computed once: `type` comes first (it is declared first), as a
# reader of the wire expects.
_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls))
    for cls in (*get_args(ServerMessage), *VIEWS)
}


def _plain(obj: object) -> dict[str, Any]:
    names = _FIELDS.get(type(obj))
    if names is None:
        raise TypeError(f"{type(obj).__name__} is not part of a server message")
    out = {name: getattr(obj, name) for name in names}
    if isinstance(obj, Error):
        del out["extra"]
        out.update(obj.extra)
    return out


# One encoder for every message. The C encoder walks dicts, lists and tuples itself and calls
# _plain only for our dataclasses: no asdict() deep copy for a presence list of 500 members.
# allow_nan=False: Python would otherwise write NaN, which no JSON parser accepts, and every
# client in the talkgroup would fail on the same broadcast.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_plain)


def encode(message: ServerMessage) -> str:
    """Compact JSON for the socket. Raises EncodeError rather than emit invalid JSON."""
    try:
        return _ENCODER.encode(message)
    except (TypeError, ValueError) as exc:
        name = getattr(message, "type", type(message).__name__)
        where = _culprit(message, "")
        raise EncodeError(f"cannot encode {name!r}: {where or exc}") from exc


def _culprit(value: object, path: str) -> str | None:
    """Where in a message the value JSON cannot hold is (slow path: errors only)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path or 'value'} is {value} (not valid JSON)"
    if type(value) in _FIELDS:
        items: list[tuple[str, object]] = list(_plain(value).items())
    elif isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list | tuple):
        items = [(f"[{i}]", v) for i, v in enumerate(value)]
    elif value is None or isinstance(value, str | int | float):
        return None
    else:
        return f"{path or 'value'} is a {type(value).__name__} (not JSON)"
    for key, item in items:
        sub = path + key if key.startswith("[") else f"{path}.{key}" if path else key
        found = _culprit(item, sub)
        if found:
            return found
    return None
