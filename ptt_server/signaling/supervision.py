"""Commands with authority over others: emergencies, revokes, all-calls and patches.

Each is a security event (docs/security.md): it is written to the audit ledger, and who may
do it is decided in core/access.py. These functions act for one session (signaling/session.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from typing import Any, Protocol

from ptt_server.control import emergencies
from ptt_server.core import access
from ptt_server.core import floor as fl
from ptt_server.core import messages as m
from ptt_server.core.errors import Code, SignalingError
from ptt_server.core.model import Claims
from ptt_server.node.node import Node

# talkgroup -> unit that raised the emergency. Beside it in Redis: the alert as raised and who
# acknowledged it (control/emergencies.py, where the node's repeat loop reads them too).
EMERGENCY_KEY = emergencies.RAISED_KEY
NOT_EMERGENCY = "not_emergency"

log = logging.getLogger("ptt.supervision")


class Session(Protocol):
    """The session acting (signaling/session.py); a protocol so that module and this one do
    not import each other."""

    id: str
    claims: Claims
    node: Node
    all_call: dict[str, str]  # the current all-call: talkgroup -> transmission id

    def require_joined(self, talkgroup: str) -> str: ...

    def send(self, message: m.ServerMessage) -> None: ...

    async def apply(self, talkgroup: str, event: fl.FloorInput) -> list[fl.FloorOutput]: ...

    async def floor_request(
        self, talkgroup: str, *, queue: bool, emergency: bool = False,
        linked: str | None = None,
    ) -> list[fl.FloorOutput]: ...


def require_override(session: Session, talkgroup: str) -> None:
    info = session.node.directory.get_talkgroup(talkgroup)
    if info is None:
        raise SignalingError(Code.UNKNOWN_TALKGROUP, f"no talkgroup '{talkgroup}'")
    if not access.can_override(session.claims) or not access.can_monitor(session.claims, info):
        raise SignalingError(
            Code.FORBIDDEN, f"only supervisors and dispatchers may do that on '{talkgroup}'"
        )


async def floor_revoke(session: Session, talkgroup: str) -> None:
    require_override(session, talkgroup)
    node = session.node
    before = await node.floors.get(talkgroup)
    if before.grant is not None:
        # Ledgered first: a revoke the ledger cannot show is not carried out.
        await ledgered(node, "floor_revoke", {
            "talkgroup": talkgroup, "transmission_id": before.grant.transmission_id,
            "unit": before.grant.participant.unit, "by": session.claims.sub,
            "reason": "revoked",
        })
    await session.apply(talkgroup, fl.Revoke(time.time(), "revoked", by=session.claims.sub))


async def emergency_start(
    session: Session, talkgroup: str, location: dict[str, float] | None
) -> None:
    session.require_joined(talkgroup)
    node, claims = session.node, session.claims
    raised_at = time.time()
    # An officer's alarm is never held back for the ledger (a full disk must not silence it):
    # a failed append is logged by node.audit and shows as recording_failing to supervisors.
    await node.emergencies.raised(talkgroup, claims.sub, claims.alias, location, raised_at)
    await node.audit("emergency", {
        "action": "start", "talkgroup": talkgroup, "unit": claims.sub,
        "alias": claims.alias, "location": location,
    })
    await node.alert(m.Emergency(
        talkgroup=talkgroup, unit=claims.sub, alias=claims.alias, location=location,
        ts=raised_at,
    ))
    await session.floor_request(talkgroup, queue=True, emergency=True)


async def ledgered(node: Node, kind: str, fields: dict[str, Any]) -> None:
    """Write a security event to the audit ledger before it takes effect, or refuse it: an
    acknowledgement, a clearing, a revoke or a patch that nobody could later prove must not
    happen (node/audit.py)."""
    try:
        await node.audit_trail.require(kind, fields)
    except OSError:
        raise SignalingError(
            Code.UNAVAILABLE, "it could not be written to the audit ledger; try again"
        ) from None


async def emergency_ack(session: Session, talkgroup: str) -> None:
    """Control has seen the alarm: the unit that raised it is told, repeats stop. The
    emergency itself stays until cleared."""
    require_override(session, talkgroup)
    node, claims = session.node, session.claims
    now = time.time()
    first, state = await node.emergencies.acknowledge(talkgroup, claims.sub, claims.alias, now)
    if state is None:
        raise SignalingError(NOT_EMERGENCY, "the talkgroup is not in emergency state")
    if not first:
        # Someone was first (perhaps this console, twice): this one is told who, nothing is
        # ledgered again.
        ack = state.ack
        assert ack is not None
        session.send(m.EmergencyAcknowledged(
            talkgroup=talkgroup, unit=state.unit, by=ack.by, alias=ack.alias, ts=ack.ts))
        return
    try:
        await ledgered(node, "emergency", {
            "action": "ack", "talkgroup": talkgroup, "raised_by": state.unit,
            "raised_at": state.ts, "by": claims.sub, "alias": claims.alias, "at": now,
        })
    except SignalingError:
        await node.emergencies.withdraw_ack(talkgroup, claims.sub)  # still unacknowledged
        raise
    await node.alert(m.EmergencyAcknowledged(
        talkgroup=talkgroup, unit=state.unit, by=claims.sub, alias=claims.alias, ts=now))


async def emergency_cancel(session: Session, talkgroup: str) -> None:
    session.require_joined(talkgroup)
    node, claims = session.node, session.claims
    state = await node.emergencies.get(talkgroup)
    floor = await node.floors.get(talkgroup)
    if state is None and not floor.emergency:
        raise SignalingError(NOT_EMERGENCY, "the talkgroup is not in emergency state")
    # The owner is whoever raised it first (control/emergencies.py), not the latest alarm.
    owner = await node.emergencies.raiser(talkgroup) or (state.unit if state else None)
    if owner != claims.sub and not access.can_override(claims):
        raise SignalingError(
            Code.FORBIDDEN, "only the unit that raised it or a supervisor may clear it"
        )
    now = time.time()
    ack = state.ack if state is not None else None
    await ledgered(node, "emergency", {
        "action": "clear", "talkgroup": talkgroup, "raised_by": owner, "by": claims.sub,
        "alias": claims.alias, "at": now, "acked_by": ack.by if ack else None,
    })
    # The floor's flag and our record go together; either may already be gone (a Redis
    # restart forgets floors), and what is left of the emergency is cleared all the same.
    try:
        await session.apply(talkgroup, fl.EmergencyClear(now, by=claims.sub))
    except SignalingError as exc:
        if exc.code != NOT_EMERGENCY:
            raise
    await node.emergencies.cleared(talkgroup)
    await node.alert(m.EmergencyCleared(talkgroup=talkgroup, by=claims.sub, alias=claims.alias))


async def all_call_start(session: Session, talkgroups: tuple[str, ...]) -> None:
    """Take every named floor for one transmission, or none (all or nothing)."""
    if session.all_call:
        raise SignalingError(Code.BAD_MESSAGE, "an all-call is already under way")
    for tg in talkgroups:
        require_override(session, tg)
        session.require_joined(tg)
    call_id = uuid.uuid4().hex
    granted: dict[str, str] = {}
    refused: m.AllCallDenied | None = None
    for tg in talkgroups:
        outputs = await session.floor_request(tg, queue=False, linked=call_id)
        grant = next((o for o in outputs if isinstance(o, fl.Granted)
                      and o.session == session.id), None)
        if grant is None:
            denied = next((o for o in outputs if isinstance(o, fl.Denied)), None)
            refused = m.AllCallDenied(
                talkgroups=tuple(talkgroups), talkgroup=tg,
                reason=denied.reason if denied else "denied",
                holder=m.Holder(unit=denied.holder_unit, alias=denied.holder_alias)
                if denied else None,
            )
            break
        granted[tg] = grant.transmission_id
    if refused is not None:
        for tg in granted:
            with contextlib.suppress(fl.FloorError):
                await session.node.apply_floor(tg, fl.Release(session.id, time.time()))
        session.send(refused)
        return
    session.all_call = granted
    session.send(m.AllCallGranted(all_call_id=call_id, talkgroups=granted))


async def all_call_release(session: Session) -> None:
    if not session.all_call:
        raise SignalingError(Code.NOT_HOLDER, "no all-call under way")
    calls, session.all_call = session.all_call, {}
    for tg in calls:
        with contextlib.suppress(fl.FloorError):
            await session.node.apply_floor(tg, fl.Release(session.id, time.time()))


async def patch_create(session: Session, talkgroups: tuple[str, ...]) -> None:
    for tg in talkgroups:
        require_override(session, tg)
    node = session.node
    patch_id = uuid.uuid4().hex[:12]
    entry = {"action": "create", "patch_id": patch_id, "talkgroups": list(talkgroups),
             "by": session.claims.sub}
    await ledgered(node, "patch", entry)  # first: a patch the ledger cannot show is not made
    try:
        await node.floors.patch(patch_id, list(talkgroups))
    except fl.FloorError as exc:
        await node.audit("patch", {**entry, "action": "create_refused", "code": exc.code})
        raise SignalingError(exc.code, str(exc)) from None
    await node.announce(m.Patched(
        patch_id=patch_id, talkgroups=tuple(talkgroups), by=session.claims.sub,
    ))


async def patch_remove(session: Session, patch_id: str) -> None:
    node = session.node
    talkgroups = await node.floors.patch_members(patch_id)
    if not talkgroups:
        raise SignalingError("unknown_patch", f"no patch '{patch_id}'")
    for tg in talkgroups:
        require_override(session, tg)
    entry = {"action": "remove", "patch_id": patch_id, "talkgroups": talkgroups,
             "by": session.claims.sub}
    await ledgered(node, "patch", entry)  # first, as for creating one
    try:
        await node.floors.unpatch(patch_id)
    except fl.FloorError as exc:
        await node.audit("patch", {**entry, "action": "remove_refused", "code": exc.code})
        raise SignalingError(exc.code, str(exc)) from None
    await node.announce(m.Unpatched(
        patch_id=patch_id, talkgroups=tuple(talkgroups), by=session.claims.sub,
    ))
