"""What a client is shown of a talkgroup: its floor, its patch, its members."""

from __future__ import annotations

import time

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
