"""The signaling WebSocket (/ws): authentication first, then one Session per connection."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time

from aiohttp import WSMsgType, web

from ptt_server.core import messages as m
from ptt_server.core import protocol as p
from ptt_server.core.errors import Code, SignalingError
from ptt_server.core.logthrottle import FailureLog
from ptt_server.core.model import EndReason
from ptt_server.identity.auth import AuthError
from ptt_server.media import compat
from ptt_server.node.node import Node
from ptt_server.service.keys import CONFIG, DIRECTORY, NODE, TOKENS
from ptt_server.signaling.session import CLOSE_GOING_AWAY, RECONNECT_AFTER_S, Session

log = logging.getLogger("ptt.ws")

AUTH_TIMEOUT_S = 10.0
CLOSE_UNAUTHORIZED = 4401
# A client may send bursts (candidates), but not floods: token bucket per connection.
RATE_PER_S = 50.0
BURST = 100.0
# Liveness: a ping every 0.75 s, and the connection is closed if its pong is 1.2 s late, so a
# silently vanished talker loses the floor within 2 s while a slow mobile link (pongs taking
# up to a second) is not cut off. aiohttp ties the pong allowance to heartbeat/2, which
# would be too tight for phones; it is set separately (media/compat.py).
HEARTBEAT_S = 0.75
PONG_TIMEOUT_S = 1.2
# How long close() waits for the client's answering close frame (aiohttp waits 10 s by default,
# which would let each silent client add seconds to a shutdown).
CLOSE_WAIT_S = 1.0

# Close codes that mean the connection was lost rather than ended: aiohttp reports 1006
# (RFC 6455 section 7.4.1, "abnormal closure") for a missed pong or a reset connection.
LOST_CODES = (None, 1006)

_failures = FailureLog(logging.getLogger("ptt.ws"), "message handling")


class _Bucket:
    def __init__(self) -> None:
        self.tokens = BURST
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + (now - self.at) * RATE_PER_S)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


async def _refuse(
    ws: web.WebSocketResponse, code: str, message: str, close_code: int = CLOSE_UNAUTHORIZED
) -> web.WebSocketResponse:
    with contextlib.suppress(Exception):
        await ws.send_str(m.encode(m.error(code, message)))
        await ws.close(code=close_code, message=code.encode()[:120])
    return ws


async def handle_ws(request: web.Request) -> web.StreamResponse:
    # The transport limit is above the protocol's, so an oversized message gets a clear
    # `too_large` error from the parser instead of a dropped connection.
    ws = web.WebSocketResponse(
        heartbeat=HEARTBEAT_S, max_msg_size=4 * p.MAX_MESSAGE_BYTES, timeout=CLOSE_WAIT_S
    )
    compat.set_pong_timeout(ws, PONG_TIMEOUT_S)
    await ws.prepare(request)
    remote = request.remote or "?"
    node = request.app[NODE]
    if node.stopping:
        with contextlib.suppress(Exception):
            await ws.send_str(m.encode(m.ServerStopping(
                reason="server_stopped", reconnect_after_s=RECONNECT_AFTER_S)))
            await ws.close(code=CLOSE_GOING_AWAY)
        return ws

    try:
        # A wall-clock deadline: receive(timeout) restarts on every pong, so a client that
        # answers pings but never authenticates would otherwise stay forever.
        async with asyncio.timeout(AUTH_TIMEOUT_S):
            first = await ws.receive()
    except TimeoutError:
        return await _refuse(ws, Code.AUTH_TIMEOUT, "no auth message received in time")
    if first.type != WSMsgType.TEXT:
        return await _refuse(ws, Code.NOT_AUTHENTICATED, "the first message must be auth")
    try:
        msg = p.parse(first.data)
    except SignalingError as exc:
        return await _refuse(ws, exc.code, exc.message)
    if not isinstance(msg, p.Auth):
        return await _refuse(ws, Code.NOT_AUTHENTICATED, "the first message must be auth")
    try:
        claims = await request.app[TOKENS].verify_live(msg.token)  # revoked jti, directory
    except AuthError as exc:
        log.warning("auth refused", extra={"fields": {"code": exc.code, "remote": remote}})
        return await _refuse(ws, exc.code, str(exc))
    config = request.app[CONFIG]
    if claims.iss == config.jwt_issuer:
        # Our own users: the directory is the truth now, not the token's snapshot. A removed
        # user (a lost phone) is refused at once; changed talkgroups apply at the next sign-in.
        user = request.app[DIRECTORY].get_user(claims.sub)
        if user is None:
            log.warning("auth refused", extra={"fields": {
                "code": "token_revoked", "unit": claims.sub, "remote": remote}})
            return await _refuse(ws, "token_revoked", "this user no longer exists")
        claims = dataclasses.replace(
            claims, role=user.role, talkgroups=user.talkgroups, priority=user.priority,
            alias=user.alias,
        )
    if node.stopping:
        return await _refuse(ws, "server_stopping", "the server is stopping", CLOSE_GOING_AWAY)

    session, missed = await _resume(node, msg, claims.sub, ws)
    resumed = session is not None
    if session is None:
        session = Session(node, claims, ws, remote)
        node.register(session)
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
        await _serve(ws, session)
    finally:
        await asyncio.shield(_end_connection(node, session, connection, ws))
    return ws


async def _end_connection(
    node: Node, session: Session, connection: int, ws: web.WebSocketResponse
) -> None:
    if session.connection == connection:
        # Shielded (by the caller): a cancelled handler still ends the session's connection
        # properly, and the first reason wins if the server is already closing it.
        if session.closed or node.stopping or ws.close_code not in LOST_CODES:
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


async def _serve(ws: web.WebSocketResponse, session: Session) -> None:
    bucket = _Bucket()
    async for raw in ws:
        if raw.type == WSMsgType.ERROR:
            break
        if raw.type != WSMsgType.TEXT:
            session.send(m.error(Code.BAD_MESSAGE, "only text (JSON) messages are accepted"))
            continue
        if not bucket.take():
            session.send(m.error(Code.RATE_LIMITED, "too many messages; slow down"))
            continue
        try:
            await session.handle(p.parse(raw.data))
        except SignalingError as exc:
            session.send(m.error(exc.code, exc.message))
        except Exception as exc:
            _failures.failure(exc)
            session.send(m.error(Code.INTERNAL, "internal error; the session continues"))
        if session.closed:
            break
