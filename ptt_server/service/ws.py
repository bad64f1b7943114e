"""The signaling WebSocket (/ws): authentication first, then one Session per connection.

Before a socket is even upgraded its Origin is checked (cross-site WebSocket hijacking) and it
must fit the limits on connections not yet signed in, per address and in total; once signed in,
the user's sessions are capped, and the user's messages (over all their connections) go through
one token bucket (service/ws_limits.py). Every refusal carries a stable code (docs/protocol.md,
"Limits").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from aiohttp import WSCloseCode, WSMsgType, hdrs, web

from ptt_server.core import messages as m
from ptt_server.core import protocol as p
from ptt_server.core.errors import Code, SignalingError
from ptt_server.core.logthrottle import FailureLog
from ptt_server.core.model import Claims, EndReason
from ptt_server.identity.auth import AuthError
from ptt_server.node.node import Node
from ptt_server.service import metrics, ws_liveness, ws_relay
from ptt_server.service.http_auth import json_error
from ptt_server.service.keys import CONFIG, DIRECTORY, LIVENESS, NODE, TOKENS
from ptt_server.service.ws_limits import (
    ORIGIN_FORBIDDEN,
    TOO_MANY_CONNECTIONS,
    Limits,
    address_key,
    limits_of,
    origin_allowed,
)
from ptt_server.signaling.session import CLOSE_GOING_AWAY, RECONNECT_AFTER_S, Session

log = logging.getLogger("ptt.ws")

AUTH_TIMEOUT_S = 10.0
CLOSE_UNAUTHORIZED = 4401
# aiohttp reads a frame up to this size; beyond it the client gets `too_large` and the socket is
# closed (1009), as a frame's bytes cannot be skipped. Between MAX_MESSAGE_BYTES and this the
# parser answers `too_large` and the session goes on. Small enough that what one connection
# may buffer (this, plus aiohttp's queue) stays bounded across thousands of connections.
TRANSPORT_MAX_BYTES = 2 * p.MAX_MESSAGE_BYTES
# Liveness (service/ws_liveness.py): a ping after 0.75 s of silence, and the connection is
# taken as lost when its pong is 1.2 s late, so a silently vanished talker loses the floor
# about 2 s after its last frame while a slow mobile link (pongs taking up to a second) is
# not cut off.
HEARTBEAT_S = 0.75
PONG_TIMEOUT_S = 1.2
# How long close() waits for the client's answering close frame (aiohttp waits 10 s by default,
# which would let each silent client add seconds to a shutdown).
CLOSE_WAIT_S = 1.0

# Close codes that mean the connection was lost rather than ended: aiohttp reports 1006
# (RFC 6455 section 7.4.1, "abnormal closure") for a missed pong or a reset connection.
LOST_CODES = (None, 1006)

_failures = FailureLog(logging.getLogger("ptt.ws"), "message handling")


class _Socket(web.WebSocketResponse):
    """aiohttp closes the socket itself (code 1009, inside receive()) when a frame is over
    max_msg_size, and nothing would tell the client why: its close() is where that happens, so
    the protocol's `too_large` error goes out first."""

    async def close(
        self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True
    ) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not self.closed:
            with contextlib.suppress(Exception):
                await self.send_str(m.encode(m.error(
                    Code.TOO_LARGE, f"message larger than {TRANSPORT_MAX_BYTES} bytes")))
            message = b"too_large"
        return await super().close(code=code, message=message, drain=drain)


async def _refuse(
    ws: web.WebSocketResponse, code: str, message: str, close_code: int = CLOSE_UNAUTHORIZED
) -> web.WebSocketResponse:
    with contextlib.suppress(Exception):
        await ws.send_str(m.encode(m.error(code, message)))
        await ws.close(code=close_code, message=code.encode()[:120])
    return ws


async def handle_ws(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    limits = limits_of(request.app)
    # From a sibling worker (service/ws_relay.py): it checked the origin and the address
    # limits for the phone it carries; here the connection may only resume a session.
    internal = ws_relay.is_internal(request)
    remote = (request.headers.get(ws_relay.RELAY_FOR, "?")[:64] if internal
              else request.remote or "?")
    if not internal and not origin_allowed(request.headers.get(hdrs.ORIGIN), request.host,
                                           config):
        log.warning("websocket origin refused", extra={"fields": {
            "origin": request.headers.get(hdrs.ORIGIN, "")[:200], "remote": remote}})
        raise json_error(web.HTTPForbidden, ORIGIN_FORBIDDEN,
                         "this page's origin may not open a session")
    address = address_key(request.remote)
    refused = None if internal else limits.admit(address)
    if refused is not None:
        status, message = refused
        raise json_error(status, TOO_MANY_CONNECTIONS, message, headers={"Retry-After": "10"})
    try:
        # No heartbeat of aiohttp's, and pings answered by us (ws_liveness.receive): the
        # worker's one liveness timer pings, and bytes arriving are signs of life.
        ws = _Socket(autoping=False, max_msg_size=TRANSPORT_MAX_BYTES, timeout=CLOSE_WAIT_S)
        await ws.prepare(request)
    except BaseException:
        if not internal:
            limits.signed_in_or_gone(address)
        raise
    liveness, transport = request.app[LIVENESS], request.transport
    if transport is None:  # gone during the handshake
        if not internal:
            limits.signed_in_or_gone(address)
        return ws
    watch = liveness.watch(transport)
    try:
        return await _handle_ws(request, ws, watch, internal, remote, address)
    finally:
        liveness.forget(watch)


async def _handle_ws(request: web.Request, ws: _Socket, watch: ws_liveness.Watch,
                     internal: bool, remote: str, address: str) -> web.StreamResponse:
    config = request.app[CONFIG]
    limits = limits_of(request.app)
    try:
        signed_in = await _authenticate(request, ws, watch, remote)
    finally:
        if not internal:
            limits.signed_in_or_gone(address)
    if signed_in is None:
        return ws
    msg, claims = signed_in
    node = request.app[NODE]
    session, missed = await _resume(node, msg, claims.sub, ws)
    resumed = session is not None
    if session is None and internal:
        return await _refuse(ws, ws_relay.RESUME_UNKNOWN, "no such session on this worker",
                             ws_relay.CLOSE_RESUME_UNKNOWN)
    if session is None and (relay := await ws_relay.find_owner(config, msg, remote)):
        log.info("session relayed", extra={"fields": {
            "unit": claims.sub, "owner": relay.path.name, "remote": remote}})
        await relay.run(ws, watch)
        return ws
    if session is None:
        refusal = limits.refuse_session(claims.sub, node)
        if refusal is not None:
            code, text, close_code = refusal
            log.warning("session refused", extra={"fields": {
                "code": code, "unit": claims.sub, "remote": remote}})
            return await _refuse(ws, code, text, close_code)
        session = Session(node, claims, ws, remote)
        node.register(session)
        limits.opened(claims.sub, session)
    session.send(m.Welcome(
        session=session.id, node=node.id, unit=claims.sub, alias=claims.alias,
        role=str(claims.role), priority=claims.priority, talkgroups=claims.talkgroups,
        heartbeat_s=HEARTBEAT_S, resume_token=session.resume_token,
        resume_grace_s=config.resume_grace_s, resumed=resumed,
    ))
    if resumed:
        # What it missed first, then each talkgroup as it is now: the last word is the truth.
        for text in missed:
            session.send_text(text)
        await session.send_current_state()
    log.info("session resumed" if resumed else "session opened", extra={"fields": {
        "session": session.id, "unit": claims.sub, "role": str(claims.role), "remote": remote}})
    connection = session.connection
    try:
        await _serve(ws, watch, session, limits)
    finally:
        await asyncio.shield(_end_connection(node, session, connection, ws, watch, internal))
    return ws


async def _authenticate(
    request: web.Request, ws: web.WebSocketResponse, watch: ws_liveness.Watch, remote: str
) -> tuple[p.Auth, Claims] | None:
    """The first message, verified: (auth message, claims), or None once refused."""
    node = request.app[NODE]
    if node.stopping:
        with contextlib.suppress(Exception):
            await ws.send_str(m.encode(m.ServerStopping(
                reason="server_stopped", reconnect_after_s=RECONNECT_AFTER_S)))
            await ws.close(code=CLOSE_GOING_AWAY)
        return None
    try:
        # A wall-clock deadline: receive(timeout) restarts on every pong, so a client that
        # answers pings but never authenticates would otherwise stay forever.
        async with asyncio.timeout(AUTH_TIMEOUT_S):
            first = await ws_liveness.receive(ws, watch)
    except TimeoutError:
        await _refuse(ws, Code.AUTH_TIMEOUT, "no auth message received in time")
        return None
    if first.type != WSMsgType.TEXT:
        await _refuse(ws, Code.NOT_AUTHENTICATED, "the first message must be auth")
        return None
    try:
        msg = p.parse(first.data)
    except SignalingError as exc:
        await _refuse(ws, exc.code, exc.message)
        return None
    if not isinstance(msg, p.Auth):
        await _refuse(ws, Code.NOT_AUTHENTICATED, "the first message must be auth")
        return None
    try:
        claims = await request.app[TOKENS].verify_live(msg.token)  # revoked jti, directory
    except AuthError as exc:
        log.warning("auth refused", extra={"fields": {"code": exc.code, "remote": remote}})
        # The code says what was wrong; the text stays fixed (a library's message, such as
        # the JWT decoder's, is not for clients).
        await _refuse(ws, exc.code, "the token was refused")
        return None
    config = request.app[CONFIG]
    if claims.iss == config.jwt_issuer:
        # Our own users: the directory is the truth now, not the token's snapshot. A removed
        # user (a lost phone) is refused at once; changed talkgroups apply at the next sign-in.
        user = request.app[DIRECTORY].get_user(claims.sub)
        if user is None:
            log.warning("auth refused", extra={"fields": {
                "code": "token_revoked", "unit": claims.sub, "remote": remote}})
            await _refuse(ws, "token_revoked", "this user no longer exists")
            return None
        claims = dataclasses.replace(
            claims, role=user.role, talkgroups=user.talkgroups, priority=user.priority,
            alias=user.alias,
        )
    if node.stopping:
        await _refuse(ws, "server_stopping", "the server is stopping", CLOSE_GOING_AWAY)
        return None
    return msg, claims


async def _end_connection(
    node: Node, session: Session, connection: int, ws: web.WebSocketResponse,
    watch: ws_liveness.Watch, internal: bool,
) -> None:
    if session.connection == connection:
        # Shielded (by the caller): a cancelled handler still ends the session's connection
        # properly, and the first reason wins if the server is already closing it.
        lost = watch.lost or ws.close_code in LOST_CODES or (
            internal and ws.close_code == ws_relay.RELAY_LOST)
        if session.closed or node.stopping or not lost:
            await session.close(session.close_reason or EndReason.DISCONNECTED)
        else:
            # No closing handshake: a dead spot or a network change, not a goodbye.
            await session.detach(node.config.resume_grace_s)
    # (Otherwise a newer connection of the same client took the session over.)
    with contextlib.suppress(Exception):
        await ws.close()


async def _resume(
    node: Node, msg: p.Auth, unit: str, ws: web.WebSocketResponse
) -> tuple[Session | None, list[str]]:
    """The session a resume token names (detached, or on a connection not yet noticed dead),
    taken over by this connection."""
    if not msg.resume_token:
        return None, []
    session = node.resumable.get(msg.resume_token)
    if not isinstance(session, Session) or session.closed or session.claims.sub != unit:
        return None, []  # unknown, expired, or someone else's: a new session
    return session, await session.attach(ws, msg.received)


async def _serve(ws: web.WebSocketResponse, watch: ws_liveness.Watch, session: Session,
                 limits: Limits) -> None:
    user = session.claims.sub
    while True:
        raw = await ws_liveness.receive(ws, watch)
        if raw.type in ws_liveness.ENDED:
            break
        if raw.type != WSMsgType.TEXT:
            session.send(m.error(Code.BAD_MESSAGE, "only text (JSON) messages are accepted"))
            continue
        # Looked up per message: another connection of the same user shares the bucket, and
        # a bucket is only forgotten once the user has no session left.
        if not limits.messages(user).take():
            session.send(m.error(Code.RATE_LIMITED, "too many messages; slow down"))
            continue
        try:
            msg = p.parse(raw.data)
            if isinstance(msg, p.Offer | p.Answer) and not limits.negotiation(user).take():
                raise SignalingError(Code.RATE_LIMITED, "too many offers; slow down")
            await metrics.handled(session, msg)  # counted by type, errors by code
        except SignalingError as exc:
            session.send(m.error(exc.code, exc.message))
        except Exception as exc:
            _failures.failure(exc)
            session.send(m.error(Code.INTERNAL, "internal error; the session continues"))
        if session.closed:
            break
        # aiohttp hands over messages already read without yielding: without this, a burst
        # of pipelined messages would be handled back to back while the session's writer
        # never ran, its outbox would overflow and the session would close.
        await asyncio.sleep(0)
