"""What a client is shown of a talkgroup: its floor, its patch, its members."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ptt_server.control.floor_store import PATCH_PREFIX, FloorStore
from ptt_server.control.presence import Presence
from ptt_server.core import messages as m
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


class PresencePush:
    """Member lists pushed to a talkgroup's local members, soon after a change and once for
    any number of changes in that time: a burst of joins, or a floor change, costs one push
    instead of one per event."""

    def __init__(
        self, members: Mapping[str, Mapping[str, Any]],
        member_views: Callable[[str], Awaitable[tuple[m.MemberView, ...]]],
    ) -> None:
        self._members = members  # talkgroup -> session -> node's Membership
        self._member_views = member_views
        self._due: set[str] = set()

    def schedule(self, talkgroup: str) -> None:
        if talkgroup in self._members and talkgroup not in self._due:
            self._due.add(talkgroup)
            asyncio.get_running_loop().call_later(PRESENCE_COALESCE_S, self._spawn, talkgroup)

    def _spawn(self, talkgroup: str) -> None:
        self._due.discard(talkgroup)
        asyncio.get_running_loop().create_task(self._safe_push(talkgroup))

    async def _safe_push(self, talkgroup: str) -> None:
        with contextlib.suppress(Exception):
            await self.push(talkgroup)

    async def push(self, talkgroup: str) -> None:
        group = self._members.get(talkgroup)
        if not group:
            return
        views = await self._member_views(talkgroup)
        # Encoded once for every member: the list grows with the talkgroup, so per-member
        # encoding would make each change cost O(members^2) on the media event loop.
        text = m.encode(m.Presence(talkgroup=talkgroup, members=views))
        for entry in list(group.values()):
            if entry.welcomed:  # `joined` first, then presence updates
                entry.endpoint.send_text(text)
