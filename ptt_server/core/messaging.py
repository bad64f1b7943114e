"""Status and text messages: what a client may send, what the server delivers, and the rules
for the text itself. Pure: protocol.py parses with these functions, messages.py puts the
server's messages into its union, signaling/messaging.py applies them.

A text is short and written under stress, often read aloud on the radio afterwards: a car
number misheard is the reason to send it written. So what is delivered is exactly what the
sender's screen showed, nothing that could render differently elsewhere:

* Unicode NFC, so one text has one form (and one length) on every phone;
* tabs and line breaks become spaces, every other control character is removed (they are
  invisible, and some terminals and log viewers act on them);
* bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069) are removed: they make
  "B 1234 XY" display as another plate number than the one sent;
* at most MAX_TEXT characters after that, never empty.

Clients render texts as text (never HTML), the server never interprets them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

from ptt_server.core.errors import Code, SignalingError

MAX_TEXT = 280
MAX_REF = 64  # the sender's own id for a message, echoed in receipts
REF_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MESSAGE_ID_RE = re.compile(r"^[0-9a-f]{32}$")
UNIT_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,256}$")  # local names, or ext:<issuer>:<sub>
STATUS_ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_STATUSES = 32
MAX_LABEL = 40
LANGUAGES = ("en", "id")  # English and Bahasa Indonesia: every status has both labels
_TALKGROUP_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_BIDI_CONTROLS = {c: None for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}
_SPACES = str.maketrans({"\t": " ", "\n": " ", "\r": " ", "\v": " ", "\f": " "})


def clean_text(text: str) -> str:
    """The text as it is delivered (see the module docstring). Raises SignalingError when
    nothing is left, or too much."""
    text = unicodedata.normalize("NFC", text).translate(_SPACES).translate(_BIDI_CONTROLS)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cc")
    text = " ".join(text.split(" ")).strip()
    if not text:
        raise SignalingError(Code.BAD_MESSAGE, "'text' is empty")
    if len(text) > MAX_TEXT:
        raise SignalingError(Code.TOO_LARGE, f"'text' is longer than {MAX_TEXT} characters")
    return text


# --- the deployment's canned statuses ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StatusDef:
    id: str
    labels: dict[str, str]  # language -> label, "en" and "id" at least
    urgent: bool = False  # shown as an alarm on the console ("need backup")

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "labels": dict(self.labels), "urgent": self.urgent}


DEFAULT_STATUSES: tuple[StatusDef, ...] = (
    StatusDef("available", {"en": "Available", "id": "Siap"}),
    StatusDef("en_route", {"en": "En route", "id": "Dalam perjalanan"}),
    StatusDef("on_scene", {"en": "On scene", "id": "Di lokasi"}),
    StatusDef("busy", {"en": "Busy", "id": "Sibuk"}),
    StatusDef("need_backup", {"en": "Need backup", "id": "Butuh bantuan"}, urgent=True),
)


def parse_statuses(data: Any) -> tuple[StatusDef, ...]:
    """A deployment's list (statuses.json: `[{"id", "labels": {"en", "id"}, "urgent"}]`).
    Raises ValueError naming what is wrong."""
    if not isinstance(data, list) or not 1 <= len(data) <= MAX_STATUSES:
        raise ValueError(f"a list of 1 to {MAX_STATUSES} statuses")
    out: list[StatusDef] = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"status {i}: not an object")
        sid, labels, urgent = item.get("id"), item.get("labels"), item.get("urgent", False)
        if not isinstance(sid, str) or not STATUS_ID_RE.match(sid):
            raise ValueError(f"status {i}: 'id' must match {STATUS_ID_RE.pattern}")
        if not isinstance(labels, dict) or not all(lang in labels for lang in LANGUAGES):
            raise ValueError(f"status {sid}: 'labels' needs {' and '.join(LANGUAGES)}")
        for lang, label in labels.items():
            if (not isinstance(lang, str) or not re.fullmatch(r"[a-z]{2}", lang)
                    or not isinstance(label, str) or not label.strip()
                    or len(label) > MAX_LABEL or not label.isprintable()):
                raise ValueError(f"status {sid}: label {lang!r} must be 1-{MAX_LABEL} "
                                 "printable characters")
        if not isinstance(urgent, bool):
            raise ValueError(f"status {sid}: 'urgent' must be true or false")
        out.append(StatusDef(sid, dict(labels), urgent))
    if len({s.id for s in out}) != len(out):
        raise ValueError("status ids must be unique")
    return tuple(out)


# --- client -> server --------------------------------------------------------------------------
@dataclass(frozen=True)
class Status:
    """A canned status ("on scene") to a talkgroup or to one unit."""

    status: str
    talkgroup: str | None = None
    to: str | None = None
    ref: str | None = None
    location: dict[str, float] | None = None  # where the sender is, if it says
    type: Literal["status"] = "status"


@dataclass(frozen=True)
class Text:
    """A short written message to a talkgroup or to one unit."""

    text: str
    talkgroup: str | None = None
    to: str | None = None
    ref: str | None = None
    type: Literal["text"] = "text"


@dataclass(frozen=True)
class Read:
    """The recipient's screen showed this message."""

    message_id: str
    type: Literal["read"] = "read"


def _bad(message: str) -> SignalingError:
    return SignalingError(Code.BAD_MESSAGE, message)


def _target(d: dict[str, Any]) -> tuple[str | None, str | None]:
    tg, to = d.get("talkgroup"), d.get("to")
    if (tg is None) == (to is None):
        raise _bad("give either 'talkgroup' or 'to'")
    if tg is not None and (not isinstance(tg, str) or not _TALKGROUP_RE.match(tg)):
        raise _bad("'talkgroup' must match [A-Za-z0-9_.-]{1,64}")
    if to is not None and (not isinstance(to, str) or not UNIT_RE.match(to)):
        raise _bad("'to' must be a unit name")
    return tg, to


def _ref(d: dict[str, Any]) -> str | None:
    ref = d.get("ref")
    if ref is None:
        return None
    if not isinstance(ref, str) or not REF_RE.match(ref):
        raise _bad(f"'ref' must be 1-{MAX_REF} of A-Z a-z 0-9 _ . : -")
    return ref


def parse_status(d: dict[str, Any], location: dict[str, float] | None) -> Status:
    """`location` is validated by the caller (protocol.py owns the location rules)."""
    sid = d.get("status")
    if not isinstance(sid, str) or not STATUS_ID_RE.match(sid):
        raise _bad("'status' must be a status id")
    tg, to = _target(d)
    return Status(status=sid, talkgroup=tg, to=to, ref=_ref(d), location=location)


def parse_text(d: dict[str, Any]) -> Text:
    text = d.get("text")
    if not isinstance(text, str):
        raise _bad("'text' must be a string")
    if len(text) > 4 * MAX_TEXT:  # before any work on it; cleaning may shorten a little
        raise SignalingError(Code.TOO_LARGE, f"'text' is longer than {MAX_TEXT} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a "\\ud800" escape
        raise _bad("'text' is not valid text") from None
    tg, to = _target(d)
    return Text(text=clean_text(text), talkgroup=tg, to=to, ref=_ref(d))


def parse_read(d: dict[str, Any]) -> Read:
    mid = d.get("message_id")
    if not isinstance(mid, str) or not MESSAGE_ID_RE.match(mid):
        raise _bad("'message_id' must be a message id")
    return Read(message_id=mid)


# --- server -> client --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class TextMessage:
    """A text, to everyone in `talkgroup`, or to the unit `to`; both null: to the command
    centre (every supervisor and dispatcher online)."""

    type: Literal["text_message"] = "text_message"
    message_id: str
    talkgroup: str | None
    to: str | None
    unit: str  # the sender
    alias: str
    role: str
    text: str
    urgent: bool = False  # an alert (from the incident API): shown prominently
    ts: float
    ref: str | None = None  # the sender's own id for it


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusUpdate:
    type: Literal["status_update"] = "status_update"
    message_id: str
    talkgroup: str | None
    to: str | None
    unit: str
    alias: str
    role: str
    status: str
    labels: dict[str, str]
    urgent: bool
    location: dict[str, float] | None = None
    ts: float
    ref: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceipt:
    """To the sender: `sent` (accepted and ledgered), `delivered` (queued to one recipient's
    session) or `read` (shown on that recipient's screen)."""

    type: Literal["message_receipt"] = "message_receipt"
    message_id: str
    state: Literal["sent", "delivered", "read"]
    unit: str | None  # the recipient; null for `sent`
    alias: str | None
    ts: float
    ref: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TalkgroupAdded:
    """This unit may now use `talkgroup` (an incident opened for it, say): join it at once."""

    type: Literal["talkgroup_added"] = "talkgroup_added"
    talkgroup: str
    name: str
    kind: str
    access: str  # "member" or "monitor", as GET /api/talkgroups would say
    by: str  # who added it


@dataclass(frozen=True, slots=True, kw_only=True)
class TalkgroupRemoved:
    """This unit may no longer use `talkgroup`: the server has taken it out of it."""

    type: Literal["talkgroup_removed"] = "talkgroup_removed"
    talkgroup: str
    reason: str  # "closed" (the incident ended) or "unassigned"
    by: str


