"""Talkgroup member lists kept up from the server's messages: the whole list in `joined` and
`presence`, then only what changed in `presence_delta`, numbered by revision
(docs/protocol.md, presence). The same rule as the web client's (client_web/js/ptt-client.js).
"""

from __future__ import annotations

from typing import Any

Member = dict[str, Any]  # one member view, as the server sent it


def _order(member: Member) -> tuple[str, str]:
    # The server's order (unit, then session): a list kept up by deltas reads like a fresh one.
    return str(member.get("unit", "")), str(member.get("session", ""))


class MemberLists:
    def __init__(self) -> None:
        self._lists: dict[str, dict[str, Member]] = {}  # talkgroup -> session -> view
        self.revisions: dict[str, int] = {}
        self.asked: set[str] = set()  # talkgroups whose whole list we asked for, not yet had
        self.gaps = 0  # deltas that did not continue our list (a snapshot was needed)

    def members(self, talkgroup: str) -> list[Member] | None:
        """The list as it stands, sorted like the server's; None when not joined."""
        found = self._lists.get(talkgroup)
        return None if found is None else sorted(found.values(), key=_order)

    def talkgroups(self) -> list[str]:
        return sorted(self._lists)

    def on_message(self, msg: dict[str, Any]) -> str | None:
        """Apply one server message; returns a talkgroup whose whole list must be asked for
        (`presence_request`), else None."""
        kind, talkgroup = msg.get("type"), msg.get("talkgroup")
        if not isinstance(talkgroup, str):
            return None
        if kind in ("joined", "presence"):
            revision = msg.get("presence_revision" if kind == "joined" else "revision")
            self._lists[talkgroup] = {m["session"]: m for m in msg.get("members", [])}
            if isinstance(revision, int):
                self.revisions[talkgroup] = revision
            self.asked.discard(talkgroup)
        elif kind == "left":
            self._lists.pop(talkgroup, None)
            self.revisions.pop(talkgroup, None)
            self.asked.discard(talkgroup)
        elif kind == "presence_delta":
            return self._delta(talkgroup, msg)
        return None

    def _delta(self, talkgroup: str, msg: dict[str, Any]) -> str | None:
        current, have = self._lists.get(talkgroup), self.revisions.get(talkgroup)
        revision = msg.get("revision")
        if current is None or have is None or not isinstance(revision, int) or revision <= have:
            return None  # not joined, or one we had already (replayed after a resume)
        if revision > have + 1:
            self.gaps += 1
            if talkgroup in self.asked:
                return None
            self.asked.add(talkgroup)
            return talkgroup
        for session in msg.get("removed", []):
            current.pop(session, None)
        for member in msg.get("changed", []):
            current[member["session"]] = member
        self.revisions[talkgroup] = revision
        return None
