"""Signaling messages (WebSocket, JSON): a tagged union on `type`, parsed strictly.

See docs/protocol.md for each message with an example. Parsing never raises anything but
SignalingError, whatever the client sends, and its messages are fixed texts: nothing of the
client's input or of a library's exception is echoed back.

The JSON itself is read strictly (core/strict_json.py): UTF-8, no NaN, no duplicate names,
bounded numbers and nesting. Then every field is checked for type and range here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from ptt_server.core import messaging, private_call, strict_json
from ptt_server.core.errors import Code, SignalingError
from ptt_server.core.messaging import Read as Read
from ptt_server.core.messaging import Status as Status
from ptt_server.core.messaging import Text as Text
from ptt_server.core.position import Location as Location
from ptt_server.core.position import parse_location
from ptt_server.core.private_call import PrivateCallAnswer as PrivateCallAnswer
from ptt_server.core.private_call import PrivateCallEnd as PrivateCallEnd
from ptt_server.core.private_call import PrivateCallRequest as PrivateCallRequest
from ptt_server.core.roster import PresenceRequest as PresenceRequest

MAX_MESSAGE_BYTES = 64 * 1024  # an SDP offer is a few kB; anything larger is abuse
MAX_SDP_CHARS = 32 * 1024
TALKGROUP_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PATCH_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# An SDP media identification tag (RFC 8843 / RFC 5888: a token), kept short.
MID_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`{|}~-]{1,32}$")
MAX_GROUP = 16  # talkgroups in one all-call or patch
# Media sections in one peer connection: the client's uplink (which also carries its first
# talkgroup) plus one downlink per further talkgroup, at most 16 in all.
MAX_MEDIA_SECTIONS = 1 + MAX_GROUP
# Our messages nest at most two levels (a message holding "location" or "talkgroups").
MAX_DEPTH = 8
MAX_PING_ID_CHARS = 64
MAX_ACCURACY_M = 1_000_000.0  # a location this vague (1,000 km) is no location

Mode = Literal["member", "monitor"]


# --- client -> server ----------------------------------------------------------------------
@dataclass(frozen=True)
class Auth:
    token: str
    # From a previous `welcome`: take that session back (after a dead spot or a network
    # change) instead of starting a new one, if it is still within its grace period.
    resume_token: str | None = None
    received: int = 0  # with resume_token: messages of that session the client received
    type: Literal["auth"] = "auth"


@dataclass(frozen=True)
class Join:
    talkgroup: str
    mode: Mode = "member"
    type: Literal["join"] = "join"


@dataclass(frozen=True)
class Leave:
    talkgroup: str
    type: Literal["leave"] = "leave"


@dataclass(frozen=True)
class Offer:
    sdp: str
    # A new peer connection for the same session (the client's old one died with the network
    # it was on): the server's old one is closed and replaced.
    restart: bool = False
    type: Literal["offer"] = "offer"


@dataclass(frozen=True)
class Answer:
    sdp: str
    type: Literal["answer"] = "answer"


@dataclass(frozen=True)
class Candidate:
    candidate: str  # "candidate:..." line, or "" for end-of-candidates
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None
    type: Literal["candidate"] = "candidate"


@dataclass(frozen=True)
class FloorRequest:
    talkgroup: str
    queue: bool = True  # wait in the queue when the floor is taken (TS 24.380 queueing)
    type: Literal["floor_request"] = "floor_request"


@dataclass(frozen=True)
class FloorRelease:
    talkgroup: str
    type: Literal["floor_release"] = "floor_release"


@dataclass(frozen=True)
class FloorCancel:
    talkgroup: str
    type: Literal["floor_cancel"] = "floor_cancel"


@dataclass(frozen=True)
class FloorRevoke:
    """Supervisor override: force the current talker off the floor."""

    talkgroup: str
    type: Literal["floor_revoke"] = "floor_revoke"


@dataclass(frozen=True)
class EmergencyStart:
    talkgroup: str
    location: dict[str, float] | None = None
    type: Literal["emergency_start"] = "emergency_start"


@dataclass(frozen=True)
class EmergencyCancel:
    talkgroup: str
    type: Literal["emergency_cancel"] = "emergency_cancel"


@dataclass(frozen=True)
class EmergencyAck:
    """A supervisor or dispatcher has seen the alarm (clearing it is a separate step)."""

    talkgroup: str
    type: Literal["emergency_ack"] = "emergency_ack"


@dataclass(frozen=True)
class AllCall:
    """A dispatcher transmits to several talkgroups at once (each floor taken)."""

    talkgroups: tuple[str, ...]
    type: Literal["all_call"] = "all_call"


@dataclass(frozen=True)
class AllCallRelease:
    type: Literal["all_call_release"] = "all_call_release"


@dataclass(frozen=True)
class PatchCreate:
    """A supervisor links talkgroups: one shared floor, everyone hears every transmission."""

    talkgroups: tuple[str, ...]
    type: Literal["patch_create"] = "patch_create"


@dataclass(frozen=True)
class PatchRemove:
    patch_id: str
    type: Literal["patch_remove"] = "patch_remove"


@dataclass(frozen=True)
class Ping:
    id: str | int | None = None
    type: Literal["ping"] = "ping"


ClientMessage = (
    Auth | Join | Leave | Offer | Answer | Candidate | FloorRequest | FloorRelease
    | FloorCancel | FloorRevoke | EmergencyStart | EmergencyCancel | AllCall | AllCallRelease
    | PatchCreate | PatchRemove | Ping | EmergencyAck | Location
    | Status | Text | Read  # core/messaging.py
    | PrivateCallRequest | PrivateCallAnswer | PrivateCallEnd  # core/private_call.py
    | PresenceRequest  # core/roster.py
)


def _bad(msg: str) -> SignalingError:
    return SignalingError(Code.BAD_MESSAGE, msg)


def _well_formed(v: str) -> bool:
    """False for a string holding a lone UTF-16 surrogate (JSON's "\\ud800" escape gives
    one): no UTF-8 encoder can write it, so it must not travel further."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _str(d: dict[str, Any], key: str, *, max_len: int = 4096, required: bool = True) -> str:
    v = d.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str):
        raise _bad(f"'{key}' must be a string")
    if len(v) > max_len:
        raise SignalingError(Code.TOO_LARGE, f"'{key}' is longer than {max_len} characters")
    if not _well_formed(v):
        raise _bad(f"'{key}' is not valid text")
    return v


def _count(d: dict[str, Any], key: str) -> int:
    v = d.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**53:
        raise _bad(f"'{key}' must be a non-negative integer")
    return v


def _talkgroup(d: dict[str, Any]) -> str:
    tg = _str(d, "talkgroup", max_len=64)
    if not TALKGROUP_RE.match(tg):
        raise _bad("'talkgroup' must match [A-Za-z0-9_.-]{1,64}")
    return tg


def _talkgroups(d: dict[str, Any], *, at_least: int) -> tuple[str, ...]:
    tgs = d.get("talkgroups")
    if not isinstance(tgs, list) or not all(isinstance(t, str) for t in tgs):
        raise _bad("'talkgroups' must be a list of talkgroup ids")
    out = tuple(dict.fromkeys(tgs))
    if not at_least <= len(out) <= MAX_GROUP:
        raise _bad(f"'talkgroups' must name {at_least} to {MAX_GROUP} distinct talkgroups")
    for tg in out:
        if not TALKGROUP_RE.match(tg):
            raise _bad("each talkgroup must match [A-Za-z0-9_.-]{1,64}")
    return out


def _bool(d: dict[str, Any], key: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise _bad(f"'{key}' must be true or false")
    return v


# Each location field: its range (WGS 84 degrees; metres for accuracy).
_LOCATION_RANGES = {"lat": (-90.0, 90.0), "lon": (-180.0, 180.0),
                    "accuracy": (0.0, MAX_ACCURACY_M)}


def _location(d: dict[str, Any]) -> dict[str, float] | None:
    loc = d.get("location")
    if loc is None:
        return None
    if not isinstance(loc, dict):
        raise _bad("'location' must be an object")
    out: dict[str, float] = {}
    for k, (low, high) in _LOCATION_RANGES.items():
        v = loc.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _bad(f"'location.{k}' must be a number")
        value = float(v)  # exact: integers are bounded at parse time (strict_json)
        if not (math.isfinite(value) and low <= value <= high):
            raise _bad(f"'location.{k}' is out of range")
        out[k] = value
    if "lat" not in out or "lon" not in out:
        raise _bad("'location' needs 'lat' and 'lon'")
    return out


def _mline_index(d: dict[str, Any]) -> int | None:
    index = d.get("sdpMLineIndex")
    if index is None:
        return None
    if isinstance(index, bool) or not isinstance(index, int):
        raise _bad("'sdpMLineIndex' must be an integer")
    if not 0 <= index < MAX_MEDIA_SECTIONS:
        raise _bad("'sdpMLineIndex' is out of range")
    return index


def _mid(d: dict[str, Any]) -> str | None:
    mid = d.get("sdpMid")
    if mid is None:
        return None
    if not isinstance(mid, str) or not MID_RE.match(mid):
        raise _bad("'sdpMid' must be a media id (a short token)")
    return mid


def _ping_id(d: dict[str, Any]) -> str | int | None:
    pid = d.get("id")
    if pid is None:
        return None
    if isinstance(pid, bool) or not isinstance(pid, str | int):
        raise _bad("'id' must be a string or an integer")
    if isinstance(pid, str) and (len(pid) > MAX_PING_ID_CHARS or not _well_formed(pid)):
        raise _bad(f"'id' must be text of at most {MAX_PING_ID_CHARS} characters")
    return pid


def parse(raw: str | bytes) -> ClientMessage:
    d = strict_json.loads(raw, max_bytes=MAX_MESSAGE_BYTES, max_depth=MAX_DEPTH)
    if not isinstance(d, dict):
        raise _bad("a message must be a JSON object")
    kind = d.get("type")
    if not isinstance(kind, str):
        raise _bad("a message needs a string 'type'")
    match kind:
        case "auth":
            return Auth(
                token=_str(d, "token", max_len=8192),
                resume_token=_str(d, "resume_token", max_len=128, required=False) or None,
                received=_count(d, "received"),
            )
        case "join":
            mode = d.get("mode", "member")
            if mode not in ("member", "monitor"):
                raise _bad("'mode' must be 'member' or 'monitor'")
            return Join(talkgroup=_talkgroup(d), mode=mode)
        case "leave":
            return Leave(talkgroup=_talkgroup(d))
        case "presence_request":
            return PresenceRequest(talkgroup=_talkgroup(d))
        case "offer":
            return Offer(
                sdp=_str(d, "sdp", max_len=MAX_SDP_CHARS), restart=_bool(d, "restart", False)
            )
        case "answer":
            return Answer(sdp=_str(d, "sdp", max_len=MAX_SDP_CHARS))
        case "candidate":
            return Candidate(
                candidate=_str(d, "candidate", max_len=1024, required=False),
                sdp_mid=_mid(d), sdp_mline_index=_mline_index(d),
            )
        case "floor_request":
            return FloorRequest(talkgroup=_talkgroup(d), queue=_bool(d, "queue", True))
        case "floor_release":
            return FloorRelease(talkgroup=_talkgroup(d))
        case "floor_cancel":
            return FloorCancel(talkgroup=_talkgroup(d))
        case "floor_revoke":
            return FloorRevoke(talkgroup=_talkgroup(d))
        case "emergency_start":
            return EmergencyStart(talkgroup=_talkgroup(d), location=_location(d))
        case "emergency_cancel":
            return EmergencyCancel(talkgroup=_talkgroup(d))
        case "emergency_ack":
            return EmergencyAck(talkgroup=_talkgroup(d))
        case "location":
            return parse_location(d)
        case "all_call":
            return AllCall(talkgroups=_talkgroups(d, at_least=1))
        case "all_call_release":
            return AllCallRelease()
        case "patch_create":
            return PatchCreate(talkgroups=_talkgroups(d, at_least=2))
        case "patch_remove":
            patch_id = _str(d, "patch_id", max_len=64)
            if not PATCH_ID_RE.match(patch_id):
                raise _bad("'patch_id' must match [A-Za-z0-9_-]{1,64}")
            return PatchRemove(patch_id=patch_id)
        case "ping":
            return Ping(id=_ping_id(d))
        case "status":
            return messaging.parse_status(d, _location(d))
        case "text":
            return messaging.parse_text(d)
        case "read":
            return messaging.parse_read(d)
        case "private_call_request" | "private_call_answer" | "private_call_end":
            return private_call.parse(kind, d)
        case _:
            raise SignalingError(Code.UNKNOWN_TYPE, "unknown message type")
