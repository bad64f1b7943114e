"""Who is in a talkgroup, as clients are told: the whole list (`presence`) when a client needs
one, otherwise only what changed (`presence_delta`). Pure: messages.py puts these messages
into its union, protocol.py parses the request, node/views.py decides what each member is
sent.

Why deltas: a talkgroup with N members used to cost every change N messages of N member
views each (N^2 bytes on the media event loop). A delta holds only the members that changed,
so a change costs N messages of a size that does not grow with the talkgroup.

The revision rule. A node numbers the lists it pushes per talkgroup: 1, 2, 3, ... A snapshot
(`joined`'s `presence_revision`, or `presence`'s `revision`) says which list the client holds;
a delta with revision r turns list r - 1 into list r. A client applies a delta whose revision
is one more than its own, ignores one it already has (revision not above its own), and on a
gap (more than one above) asks for a snapshot with `presence_request`, or waits for the one
the server sends. The server sends a snapshot instead of a delta, unasked, to a client whose
list the delta would not put right (one that joined between two pushes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberView:
    """One member of a talkgroup, as listed in `joined`, `presence` and `presence_delta`."""

    unit: str
    alias: str
    role: str
    mode: str  # "member" or "monitor"
    state: Literal["idle", "talking"]
    session: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Presence:
    """The whole list, sorted by unit then session."""

    type: Literal["presence"] = "presence"
    talkgroup: str
    revision: int
    members: tuple[MemberView, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PresenceDelta:
    """What changed since revision - 1: members added or changed (their whole view, which
    replaces the one held for that session), and the sessions that are gone."""

    type: Literal["presence_delta"] = "presence_delta"
    talkgroup: str
    revision: int
    changed: tuple[MemberView, ...]
    removed: tuple[str, ...]


# --- client -> server --------------------------------------------------------------------------
@dataclass(frozen=True)
class PresenceRequest:
    """A client that saw a gap in revisions asks for the whole list again."""

    talkgroup: str
    type: Literal["presence_request"] = "presence_request"


# --- lists and their differences ---------------------------------------------------------------
Roster = dict[str, MemberView]  # session -> view, in list order


def roster(views: Iterable[MemberView]) -> Roster:
    return {v.session: v for v in views}


def diff(
    old: Mapping[str, MemberView], new: Mapping[str, MemberView]
) -> tuple[tuple[MemberView, ...], tuple[str, ...]]:
    """(changed, removed) that turn `old` into `new`; changed in `new`'s order."""
    changed = tuple(v for s, v in new.items() if old.get(s) != v)
    removed = tuple(s for s in old if s not in new)
    return changed, removed


def apply(
    base: Mapping[str, MemberView], changed: Iterable[MemberView], removed: Iterable[str]
) -> Roster:
    """`base` with a delta applied (a new mapping; order is not significant)."""
    out = dict(base)
    for session in removed:
        out.pop(session, None)
    for view in changed:
        out[view.session] = view
    return out
