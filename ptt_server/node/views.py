"""What a client is shown of a talkgroup: its floor, its patch, its members."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ptt_server.control.floor_store import PATCH_PREFIX, FloorStore
from ptt_server.control.presence import Presence
from ptt_server.core import messages as m
from ptt_server.core import roster
from ptt_server.media.router import TalkgroupRouter


async def floor_view(floors: FloorStore, talkgroup: str) -> m.FloorView:
    floor = await floors.get(talkgroup)
    grant = floor.grant
    if grant is None:
        return m.FloorView(state="idle", emergency=floor.emergency)
    return m.FloorView(
        state="taken", unit=grant.participant.unit, alias=grant.participant.alias,
        transmission_id=grant.transmission_id, emergency=floor.emergency or grant.emergency,
    )


async def patch_view(floors: FloorStore, talkgroup: str) -> m.PatchView | None:
    """The patch a talkgroup is in, if any (so a client joining later knows it)."""
    floor_id = await floors.floor_key_for(talkgroup)
    if not floor_id.startswith(PATCH_PREFIX):
        return None
    patch_id = floor_id.removeprefix(PATCH_PREFIX)
    members = await floors.patch_members(patch_id)
    return m.PatchView(patch_id=patch_id, talkgroups=tuple(members))


async def member_views(
    floors: FloorStore, presence: Presence, router: TalkgroupRouter | None, talkgroup: str
) -> tuple[m.MemberView, ...]:
    members = await presence.members(talkgroup, time.time())
    # The local gate is the freshest word on who talks; without local members, Redis's.
    talking = router.gate.session if router is not None and router.gate else None
    if router is None:
        floor = await floors.get(talkgroup)
        talking = floor.grant.participant.session if floor.grant else None
    return tuple(
        m.MemberView(
            unit=x.unit, alias=x.alias, role=x.role, mode=x.mode, session=x.session,
            state="talking" if x.session == talking else "idle",
        )
        for x in members
    )


PRESENCE_COALESCE_S = 0.2


@dataclass
class _Pushed:
    revision: int
    members: roster.Roster  # the list every synced member holds at that revision


class PresencePush:
    """What changed in a talkgroup's member list, pushed to its local members soon after a
    change and once for any number of changes in that time (a burst of joins, a floor change):
    one `presence_delta`, encoded once, holding only what changed since the last push.

    The delta is the difference between the list read now (Redis: members on every node) and
    the list this node last pushed, so it is exact whatever the changes were and however they
    arrived (a join here, a `presence_changed` from another node, a sweep, a floor event), and
    a lost notice is made good by the next push. A member that was shown another list (in
    `joined`, between two pushes) gets the whole list instead when the delta would not put its
    own right (core/roster.py, the revision rule)."""

    def __init__(
        self, members: Mapping[str, Mapping[str, Any]],
        member_views: Callable[[str], Awaitable[tuple[m.MemberView, ...]]],
    ) -> None:
        self._members = members  # talkgroup -> session -> node's Membership
        self._member_views = member_views
        self._due: set[str] = set()
        self._reading: set[str] = set()
        self._pushed: dict[str, _Pushed] = {}
        # talkgroup -> session -> the list it was shown, when not the last pushed one
        self._shown: dict[str, dict[str, roster.Roster]] = {}

    def schedule(self, talkgroup: str) -> None:
        if talkgroup not in self._members:
            # No local members left (the last one's leave is announced like any change):
            # nobody holds a list to continue.
            self.forget(talkgroup)
        elif talkgroup not in self._due:
            self._due.add(talkgroup)
            asyncio.get_running_loop().call_later(PRESENCE_COALESCE_S, self._spawn, talkgroup)

    def forget(self, talkgroup: str) -> None:
        self._pushed.pop(talkgroup, None)
        self._shown.pop(talkgroup, None)

    def welcomed(self, talkgroup: str, session: str, views: tuple[m.MemberView, ...]) -> int:
        """A member is being sent `views` (in `joined`, or a requested `presence`): the
        revision to send with them, the one the next delta continues from."""
        if session not in self._members.get(talkgroup, {}):
            return 0  # left meanwhile: nothing follows
        shown = roster.roster(views)
        last = self._pushed.get(talkgroup)
        if last is None:
            self._pushed[talkgroup] = last = _Pushed(1, shown)
        elif shown != last.members:
            # Fresher (or older) than the last push: the next push checks whether its delta
            # puts this list right, and sends the whole list if not. Soon, even if nothing
            # else changes, so that a list that is wrong does not stay wrong.
            self._shown.setdefault(talkgroup, {})[session] = shown
            self.schedule(talkgroup)
        else:
            self._shown.get(talkgroup, {}).pop(session, None)
        return last.revision

    def _spawn(self, talkgroup: str) -> None:
        self._due.discard(talkgroup)
        if talkgroup in self._reading:
            # A push is still reading Redis: this one comes after it, never beside it, so the
            # lists are diffed in the order they were read.
            self.schedule(talkgroup)
            return
        asyncio.get_running_loop().create_task(self._safe_push(talkgroup))

    async def _safe_push(self, talkgroup: str) -> None:
        with contextlib.suppress(Exception):
            await self.push(talkgroup)

    async def push(self, talkgroup: str) -> None:
        if not self._members.get(talkgroup):
            self.forget(talkgroup)
            return
        self._reading.add(talkgroup)
        try:
            views = await self._member_views(talkgroup)
        finally:
            self._reading.discard(talkgroup)
        group = self._members.get(talkgroup)
        if group:
            self._send(talkgroup, group, views)

    def _send(
        self, talkgroup: str, group: Mapping[str, Any], views: tuple[m.MemberView, ...]
    ) -> None:
        # Synchronous from the diff to the last send: a `joined` cannot slip in between and be
        # told a revision its member never gets the delta to.
        new = roster.roster(views)
        last = self._pushed.get(talkgroup)
        old = last.members if last is not None else {}
        changed, removed = roster.diff(old, new)
        delta = None
        if last is None:
            revision = 1  # nobody was sent a list yet
        elif changed or removed:
            revision = last.revision + 1
            # Encoded once for every member, and only what changed: a change costs each
            # member the same few bytes however large the talkgroup is.
            delta = m.encode(m.PresenceDelta(
                talkgroup=talkgroup, revision=revision, changed=changed, removed=removed))
        else:
            revision = last.revision
        self._pushed[talkgroup] = _Pushed(revision, new)
        shown = self._shown.pop(talkgroup, {})
        snapshot = None
        for session, entry in list(group.items()):
            if not entry.welcomed:  # `joined` first, then presence updates
                continue
            # Those holding the last pushed list need no check (the delta is its difference);
            # only a member shown another list costs a comparison, once.
            base = shown.get(session)
            if last is None or (base is not None and roster.apply(base, changed, removed) != new):
                if snapshot is None:
                    snapshot = m.encode(m.Presence(
                        talkgroup=talkgroup, revision=revision, members=views))
                entry.endpoint.send_text(snapshot)
            elif delta is not None:
                entry.endpoint.send_text(delta)
