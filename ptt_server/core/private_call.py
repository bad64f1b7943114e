"""Private call messages (both directions), after MCPTT private call (3GPP TS 24.379 section
11.1, "private call" with automatic or manual commencement; this is manual commencement: the
called user accepts or rejects before any media flows).

    caller                      server                          callee
    private_call_request {unit} ──▶
               ◀── private_call_ringing {call_id}   private_call_incoming {call_id, unit, alias} ──▶
                                                ◀── private_call_answer {call_id, accept}
    ◀── private_call_started / private_call_rejected ──▶ (both)
    private_call_end {call_id} (either side), or the time limit ──▶ private_call_ended (both)

Half duplex, as TS 24.379 section 11.1.1 describes a private call with floor control: the call
is carried by a temporary two-member talkgroup, so the floor rules of core/floor.py (TS 24.380),
recording and the ledger apply to it exactly as to any talkgroup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from ptt_server.core.errors import Code, SignalingError

CALL_ID_RE = re.compile(r"^[0-9a-f]{12}$")
UNIT_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
TALKGROUP_PREFIX = "pc-"
RejectReason = Literal["rejected", "unavailable", "busy", "no_answer", "cancelled",
                       "answered_elsewhere"]
EndedReason = Literal["ended", "time_limit", "disconnected", "server_stopped"]


# --- client -> server ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PrivateCallRequest:
    unit: str
    type: Literal["private_call_request"] = "private_call_request"


@dataclass(frozen=True)
class PrivateCallAnswer:
    call_id: str
    accept: bool
    type: Literal["private_call_answer"] = "private_call_answer"


@dataclass(frozen=True)
class PrivateCallEnd:
    call_id: str
    type: Literal["private_call_end"] = "private_call_end"


def _bad(message: str) -> SignalingError:
    return SignalingError(Code.BAD_MESSAGE, message)


def _call_id(d: dict[str, Any]) -> str:
    value = d.get("call_id")
    if not isinstance(value, str) or not CALL_ID_RE.match(value):
        raise _bad("'call_id' must be 12 lowercase hex digits")
    return value


def parse(kind: str, d: dict[str, Any]) -> PrivateCallRequest | PrivateCallAnswer | PrivateCallEnd:
    if kind == "private_call_request":
        unit = d.get("unit")
        if not isinstance(unit, str) or not UNIT_RE.match(unit):
            raise _bad("'unit' must be a unit name")
        return PrivateCallRequest(unit=unit)
    if kind == "private_call_answer":
        accept = d.get("accept")
        if not isinstance(accept, bool):
            raise _bad("'accept' must be a boolean")
        return PrivateCallAnswer(call_id=_call_id(d), accept=accept)
    return PrivateCallEnd(call_id=_call_id(d))


CLIENT_TYPES = ("private_call_request", "private_call_answer", "private_call_end")


# --- server -> client ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class PrivateCallRinging:
    """To the caller: the callee's devices are being alerted."""
    type: Literal["private_call_ringing"] = "private_call_ringing"
    call_id: str
    unit: str
    alias: str
    ring_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivateCallIncoming:
    """To each of the callee's sessions: who is calling."""
    type: Literal["private_call_incoming"] = "private_call_incoming"
    call_id: str
    unit: str
    alias: str
    role: str
    ring_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivateCallStarted:
    """To both: the call's talkgroup is joined; `unit`/`alias` name the other party."""
    type: Literal["private_call_started"] = "private_call_started"
    call_id: str
    talkgroup: str
    unit: str
    alias: str
    max_duration_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivateCallRejected:
    type: Literal["private_call_rejected"] = "private_call_rejected"
    call_id: str
    unit: str
    reason: RejectReason


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivateCallEnded:
    type: Literal["private_call_ended"] = "private_call_ended"
    call_id: str
    talkgroup: str
    reason: EndedReason
    by: str | None
