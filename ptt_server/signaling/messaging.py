"""Status and text messages: sent by a session (or by the incident API), ledgered, then handed
to every node for delivery (signaling/relay.py), with receipts back to the sender.

Every message is written to the ledger (`message` entries) *before* anyone sees it: a written
instruction from the command centre is evidence like a transmission, and one that cannot be
recorded is refused (`unavailable`), not sent unrecorded. So are read receipts: that the unit
had the car number on its screen is what an inquiry asks.

Redis, per message, for a day (what read receipts are checked against):

    ptt:msg:{id}         hash: session, node, unit, talkgroup, to (the sender, the target)
    ptt:msg:{id}:to      set: units it was delivered to (only they may mark it read)
    ptt:msg:{id}:read    set: units that read it (a receipt once per unit)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from typing import Any, Protocol

from ptt_server.control import unit_state
from ptt_server.core import access
from ptt_server.core import messages as m
from ptt_server.core import messaging as msg
from ptt_server.core.errors import Code, SignalingError
from ptt_server.core.model import Claims
from ptt_server.identity.statuses import catalogue
from ptt_server.node.node import Node

log = logging.getLogger("ptt.messaging")

CHANNEL = "ptt:messages"  # envelopes for signaling/relay.py, on every node
KEEP_S = 24 * 3600
UNKNOWN_UNIT = "unknown_unit"
UNKNOWN_STATUS = "unknown_status"
UNKNOWN_MESSAGE = "unknown_message"


class Session(Protocol):
    """The session sending (signaling/session.py), as this module uses it."""

    id: str
    claims: Claims
    node: Node
    joined: dict[str, str]

    def send(self, message: m.ServerMessage) -> None: ...


class NotRecorded(Exception):
    """The ledger could not be written: the message was not sent."""


def key(message_id: str) -> str:
    return f"ptt:msg:{message_id}"


async def ledger(node: Node, fields: dict[str, Any]) -> None:
    """Append a `message` entry, or raise NotRecorded (node.audit only logs a failure)."""
    if node.recorder is None:
        return  # a node without a recorder keeps no ledger at all (tests of the floor)
    try:
        await asyncio.to_thread(node.recorder.ledger.append, "message",
                                {"node_id": node.id, **fields})
    except Exception as exc:
        log.error("message not sent: the ledger cannot be written (%s)", exc)
        raise NotRecorded from exc


def _recorded() -> SignalingError:
    return SignalingError(Code.UNAVAILABLE, "the message cannot be recorded now; not sent")


# --- from a session ----------------------------------------------------------------------------
def _check_target(session: Session, talkgroup: str | None, to: str | None) -> None:
    node, claims = session.node, session.claims
    if talkgroup is not None:
        info = node.directory.get_talkgroup(talkgroup)
        if info is None:
            raise SignalingError(Code.UNKNOWN_TALKGROUP, f"no talkgroup '{talkgroup}'")
        if talkgroup not in session.joined:
            raise SignalingError(Code.NOT_JOINED, f"not joined to talkgroup '{talkgroup}'")
        if not access.can_message_talkgroup(claims, info):
            raise SignalingError(Code.FORBIDDEN, f"not allowed to write to '{talkgroup}'")
    elif to is not None:
        user = node.directory.get_user(to)
        if user is None:
            raise SignalingError(UNKNOWN_UNIT, "no such unit")
        if not access.can_message_unit(claims, user.role, user.talkgroups):
            raise SignalingError(Code.FORBIDDEN, "not allowed to write to that unit")


async def from_session(session: Session, message: msg.Status | msg.Text) -> None:
    """A `status` or `text` from a client: checked, ledgered, published; the sender gets its
    own copy and a `sent` receipt."""
    node, claims = session.node, session.claims
    _check_target(session, message.talkgroup, message.to)
    now, message_id = time.time(), uuid.uuid4().hex
    out: m.ServerMessage
    if isinstance(message, msg.Text):
        out = msg.TextMessage(
            message_id=message_id, talkgroup=message.talkgroup, to=message.to, unit=claims.sub,
            alias=claims.alias, role=str(claims.role), text=message.text, ts=now,
            ref=message.ref)
        fields: dict[str, Any] = {"action": "text", "text": message.text}
    else:
        status = catalogue(node.config.data_dir).get(message.status)
        if status is None:
            raise SignalingError(UNKNOWN_STATUS, "no such status")
        out = msg.StatusUpdate(
            message_id=message_id, talkgroup=message.talkgroup, to=message.to, unit=claims.sub,
            alias=claims.alias, role=str(claims.role), status=status.id,
            labels=dict(status.labels), urgent=status.urgent, location=message.location,
            ts=now, ref=message.ref)
        fields = {"action": "status", "status": status.id, "label": status.labels["en"],
                  "urgent": status.urgent, "location": message.location}
    try:
        await publish(node, out, sender_session=session.id, fields=fields)
    except NotRecorded:
        raise _recorded() from None
    if isinstance(message, msg.Status):
        await unit_state.set_status(node.redis, claims.sub, message.status, message.talkgroup,
                                    now)
        if message.location is not None:
            await unit_state.set_location(node.redis, claims.sub, message.location, now)
    session.send(out)
    session.send(msg.MessageReceipt(message_id=message_id, state="sent", unit=None, alias=None,
                                    ts=now, ref=message.ref))


async def publish(node: Node, out: msg.TextMessage | msg.StatusUpdate, *,
                  sender_session: str | None, fields: dict[str, Any]) -> None:
    """Ledger, remember and hand to every node. Raises NotRecorded before anything is sent."""
    await ledger(node, {
        **fields, "message_id": out.message_id, "talkgroup": out.talkgroup, "to": out.to,
        "unit": out.unit, "alias": out.alias, "role": out.role, "ref": out.ref,
        "urgent": out.urgent,
    })
    k = key(out.message_id)
    async with node.redis.pipeline(transaction=True) as pipe:
        pipe.hset(k, mapping={"session": sender_session or "", "node": node.id,
                              "unit": out.unit, "talkgroup": out.talkgroup or "",
                              "to": out.to or ""})
        pipe.expire(k, KEEP_S)
        await pipe.execute()
    await node.redis.publish(CHANNEL, json.dumps({
        "kind": "deliver", "message_id": out.message_id, "talkgroup": out.talkgroup,
        "to": out.to, "sender": sender_session, "text": m.encode(out),
    }))


async def read(session: Session, message_id: str) -> None:
    """The recipient's screen showed the message: ledgered once per unit, and the sender is
    told (wherever its session is)."""
    node, claims = session.node, session.claims
    k = key(message_id)
    sent = await node.redis.hgetall(k)
    if not sent:
        raise SignalingError(UNKNOWN_MESSAGE, "no such message (or too old)")
    info = {decoded(a): decoded(b) for a, b in sent.items()}
    if not await node.redis.sismember(f"{k}:to", claims.sub):
        raise SignalingError(Code.FORBIDDEN, "that message was not delivered to you")
    if not await node.redis.sadd(f"{k}:read", claims.sub):
        return  # read before (another of the unit's devices, or a repeated `read`)
    await node.redis.expire(f"{k}:read", KEEP_S)
    try:
        await ledger(node, {"action": "read", "message_id": message_id, "unit": claims.sub,
                            "alias": claims.alias, "talkgroup": info.get("talkgroup") or None})
    except NotRecorded:
        await node.redis.srem(f"{k}:read", claims.sub)  # so that the client may try again
        raise _recorded() from None
    receipt = msg.MessageReceipt(message_id=message_id, state="read", unit=claims.sub,
                                 alias=claims.alias, ts=time.time(), ref=None)
    await send_receipts(node, info.get("session", ""), [m.encode(receipt)])


async def send_receipts(node: Node, session_id: str, texts: list[str]) -> None:
    """To the sender's session: at once if it is on this node, else through the channel."""
    if not session_id or not texts:
        return
    endpoint = node.endpoints.get(session_id)
    if endpoint is not None:
        for text in texts:
            endpoint.send_text(text)
        return
    await node.redis.publish(CHANNEL, json.dumps(
        {"kind": "receipts", "session": session_id, "texts": texts}))


def decoded(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- talkgroups given and taken (the incident API) ---------------------------------------------
def current_claims(node: Node, claims: Claims) -> Claims:
    """The claims with the directory's talkgroups, role, priority and alias now (our own users;
    an external issuer's are its own). A user removed meanwhile keeps no talkgroup."""
    if claims.iss != node.config.jwt_issuer:
        return claims
    user = node.directory.get_user(claims.sub)
    if user is None:
        return dataclasses.replace(claims, talkgroups=())
    if (user.talkgroups, user.role, user.priority, user.alias) == (
            claims.talkgroups, claims.role, claims.priority, claims.alias):
        return claims
    return dataclasses.replace(claims, talkgroups=user.talkgroups, role=user.role,
                               priority=user.priority, alias=user.alias)


async def talkgroup_added(node: Node, talkgroup: str, name: str, kind: str, units: list[str],
                          by: str) -> None:
    """Tell the units' sessions (and the command centre's, which may monitor it) at once."""
    def text(access_mode: str) -> str:
        return m.encode(msg.TalkgroupAdded(talkgroup=talkgroup, name=name, kind=kind,
                                           access=access_mode, by=by))

    await node.redis.publish(CHANNEL, json.dumps({
        "kind": "talkgroup_added", "talkgroup": talkgroup, "units": units,
        "member_text": text("member"), "monitor_text": text("monitor"),
    }))


async def talkgroup_removed(node: Node, talkgroup: str, units: list[str], reason: str,
                            by: str, *, closed: bool = False) -> None:
    """The units lose it (they leave it if they are in it) and are told; `closed`: the
    talkgroup is gone, so everyone in it leaves and the command centre is told as well."""
    await node.redis.publish(CHANNEL, json.dumps({
        "kind": "talkgroup_removed", "talkgroup": talkgroup, "units": units, "closed": closed,
        "text": m.encode(msg.TalkgroupRemoved(talkgroup=talkgroup, reason=reason, by=by)),
    }))
