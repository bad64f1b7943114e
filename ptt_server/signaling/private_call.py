"""Private calls between two units (3GPP TS 24.379 section 11.1, manual commencement).

The call is a temporary talkgroup `pc-<call_id>` with its two parties as its only members:
created in the directory when the callee accepts, joined by both sessions on their behalf,
left and removed when the call ends. So nothing new is needed for the call's audio: the floor
is per talkgroup (core/floor.py, TS 24.380: half duplex, one talker at a time), every
transmission is recorded and ledgered like any other, and the directory entry is what lets
exactly these two units in (session.join refreshes the claims from the directory).

Ledgered (kind `private_call`): the request, the answer (accept or reject, or no answer) and
the end, with who and why. A request nobody could be alerted about is ledgered as well.

Calls are kept per node (one process): both parties must be signed in to the same server
process; a callee found nowhere here is `unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import weakref
from typing import Any, Protocol, cast

from ptt_server.core import access
from ptt_server.core import messages as m
from ptt_server.core import private_call as pc
from ptt_server.core.errors import Code, SignalingError
from ptt_server.core.model import Claims, EndReason
from ptt_server.identity.directory import DirectoryError
from ptt_server.node.node import Node
from ptt_server.signaling.supervision import ledgered

log = logging.getLogger("ptt.private_call")

UNKNOWN_UNIT = "unknown_unit"


class Party(Protocol):
    """What a call needs of a session (signaling/session.py satisfies it)."""

    id: str
    node: Node
    claims: Claims
    closed: bool
    joined: dict[str, str]

    def send(self, message: m.ServerMessage) -> None: ...

    async def join(self, talkgroup: str, mode: Any) -> None: ...

    async def leave(self, talkgroup: str, reason: EndReason = ...) -> None: ...


@dataclasses.dataclass(eq=False)
class Call:
    id: str
    caller: Party
    callee_unit: str
    callee_alias: str
    ringing: list[Party]
    callee: Party | None = None
    timer: asyncio.TimerHandle | None = None

    @property
    def talkgroup(self) -> str:
        return pc.TALKGROUP_PREFIX + self.id

    def parties(self) -> list[Party]:
        return [self.caller] + ([self.callee] if self.callee is not None else self.ringing)


_CALLS: weakref.WeakKeyDictionary[Node, dict[str, Call]] = weakref.WeakKeyDictionary()


def _calls(node: Node) -> dict[str, Call]:
    return _CALLS.setdefault(node, {})


def _in_call(node: Node, unit: str) -> bool:
    return any(c.caller.claims.sub == unit or c.callee_unit == unit
               for c in _calls(node).values())


async def _ledger(node: Node, action: str, call: Call, **fields: Any) -> None:
    await ledgered(node, "private_call", {
        "action": action, "call_id": call.id, "from": call.caller.claims.sub,
        "to": call.callee_unit, **fields})


def _later(node: Node, delay_s: float, coro: Any) -> asyncio.TimerHandle:
    loop = asyncio.get_running_loop()
    return loop.call_later(delay_s, lambda: loop.create_task(coro()))


async def request(session: Party, unit: str) -> None:
    node = session.node
    if unit == session.claims.sub:
        raise SignalingError(Code.BAD_MESSAGE, "a unit cannot call itself")
    user = node.directory.get_user(unit)
    if user is None:
        raise SignalingError(UNKNOWN_UNIT, "no such unit")
    if not access.can_private_call(session.claims.role, user.role):
        raise SignalingError(Code.FORBIDDEN, "not allowed to call that unit")
    call = Call(id=secrets.token_hex(6), caller=session, callee_unit=unit,
                callee_alias=user.alias, ringing=[])
    # The node's endpoints are the sessions (signaling/session.py) of this process.
    call.ringing = [cast(Party, e) for e in list(node.endpoints.values())
                    if e.claims.sub == unit and not getattr(e, "closed", True)
                    and hasattr(e, "joined")]
    await _ledger(node, "request", call)
    reason: pc.RejectReason | None = None
    if _in_call(node, unit) or _in_call(node, session.claims.sub):
        reason = "busy"
    elif not call.ringing:
        reason = "unavailable"
    if reason is not None:
        await _ledger(node, "rejected", call, reason=reason)
        session.send(pc.PrivateCallRejected(call_id=call.id, unit=unit, reason=reason))
        return
    _calls(node)[call.id] = call
    ring_s = node.config.private_call_ring_s
    session.send(pc.PrivateCallRinging(call_id=call.id, unit=unit, alias=user.alias,
                                       ring_s=ring_s))
    incoming = pc.PrivateCallIncoming(call_id=call.id, unit=session.claims.sub,
                                      alias=session.claims.alias,
                                      role=str(session.claims.role), ring_s=ring_s)
    for party in call.ringing:
        party.send(incoming)

    async def no_answer() -> None:
        if _calls(node).get(call.id) is call and call.callee is None:
            await _reject(call, "no_answer")

    call.timer = _later(node, ring_s, no_answer)


async def _reject(call: Call, reason: pc.RejectReason, by: str | None = None) -> None:
    node = call.caller.node
    if _calls(node).pop(call.id, None) is None:
        return
    if call.timer is not None:
        call.timer.cancel()
    await _ledger(node, "rejected", call, reason=reason, by=by)
    msg = pc.PrivateCallRejected(call_id=call.id, unit=call.callee_unit, reason=reason)
    for party in call.parties():
        party.send(msg)


def _find(session: Party, call_id: str) -> Call:
    call = _calls(session.node).get(call_id)
    if call is None or session not in call.parties():
        raise SignalingError(Code.BAD_MESSAGE, "no such call")
    return call


async def answer(session: Party, call_id: str, accept: bool) -> None:
    call = _find(session, call_id)
    if call.callee is not None or session is call.caller:
        raise SignalingError(Code.BAD_MESSAGE, "this call is not ringing for you")
    if not accept:
        await _reject(call, "rejected", by=session.claims.sub)
        return
    node = session.node
    if call.timer is not None:
        call.timer.cancel()
    call.callee = session
    others = [p for p in call.ringing if p is not session]
    caller = call.caller
    await _ledger(node, "accepted", call, session=session.id)
    tg = call.talkgroup
    limit = node.config.private_call_max_s
    try:
        await asyncio.to_thread(_create, node, tg, caller, session)
        await caller.join(tg, "member")
        await session.join(tg, "member")
    except (DirectoryError, SignalingError) as exc:
        log.warning("private call could not start", extra={"fields": {
            "call": call.id, "error": str(exc)}})
        await end(call, "ended", by=None)
        return
    for other in others:  # the callee's other devices stop ringing
        other.send(pc.PrivateCallRejected(call_id=call.id, unit=call.callee_unit,
                                          reason="answered_elsewhere"))
    caller.send(pc.PrivateCallStarted(call_id=call.id, talkgroup=tg, unit=call.callee_unit,
                                      alias=call.callee_alias, max_duration_s=limit))
    session.send(pc.PrivateCallStarted(call_id=call.id, talkgroup=tg,
                                       unit=caller.claims.sub, alias=caller.claims.alias,
                                       max_duration_s=limit))

    async def time_up() -> None:
        if _calls(node).get(call.id) is call:
            await end(call, "time_limit", by=None)

    call.timer = _later(node, limit, time_up)


def _create(node: Node, tg: str, caller: Party, callee: Party) -> None:
    name = f"Private call {caller.claims.alias} / {callee.claims.alias}"[:128]
    node.directory.add_talkgroup(tg, name=name)
    node.directory.assign(tg, [caller.claims.sub, callee.claims.sub])
    # Each party's claims take the call's talkgroup now (the directory is the truth for
    # joining), so the joins below pass the ordinary access check.
    for party in (caller, callee):
        user = node.directory.get_user(party.claims.sub)
        if user is not None:
            party.claims = dataclasses.replace(party.claims, talkgroups=user.talkgroups)


async def end(call: Call, reason: pc.EndedReason, by: str | None) -> None:
    node = call.caller.node
    if _calls(node).pop(call.id, None) is None:
        return
    if call.timer is not None:
        call.timer.cancel()
    tg = call.talkgroup
    # In the ledger before anyone is told it ended; an end is never refused, so a failed
    # append is kept and retried (node/audit.py `record`).
    await node.audit("private_call", {
        "action": "ended", "call_id": call.id, "from": call.caller.claims.sub,
        "to": call.callee_unit, "reason": reason, "by": by})
    for party in call.parties():
        if tg in party.joined and not party.closed:
            with contextlib.suppress(SignalingError):
                await party.leave(tg, EndReason.LEFT)
    with contextlib.suppress(DirectoryError):
        await asyncio.to_thread(node.directory.remove_talkgroup, tg, force=True)
    # Told last: by then the call's talkgroup is gone for everyone.
    msg = pc.PrivateCallEnded(call_id=call.id, talkgroup=tg, reason=reason, by=by)
    for party in call.parties():
        party.send(msg)


async def hang_up(session: Party, call_id: str) -> None:
    """`private_call_end`: the caller cancelling a ringing call, or either party ending it."""
    call = _find(session, call_id)
    if call.callee is None:
        if session is call.caller:
            await _reject(call, "cancelled", by=session.claims.sub)
        else:
            await _reject(call, "rejected", by=session.claims.sub)
        return
    await end(call, "ended", by=session.claims.sub)


async def session_closed(session: Party, reason: EndReason) -> None:
    """A party's session is closing: its calls end (ringing ones as unavailable)."""
    for call in list(_calls(session.node).values()):
        if call.callee is None and session in call.ringing and session is not call.caller:
            call.ringing.remove(session)
            if not call.ringing:
                await _reject(call, "unavailable")
        elif session in call.parties():
            why: pc.EndedReason = ("server_stopped" if reason is EndReason.SERVER_STOPPED
                                   else "disconnected")
            await end(call, why, by=session.claims.sub)
