"""The signaling WebSocket (/ws): authentication first, then one Session per connection."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time

from aiohttp import WSMsgType, web

from ptt_server.core import protocol as p
from ptt_server.core.errors import Code, SignalingError
from ptt_server.core.model import EndReason
from ptt_server.identity.auth import AuthError
from ptt_server.service.keys import CONFIG, DIRECTORY, NODE, TOKENS
from ptt_server.signaling.session import Session

log = logging.getLogger("ptt.ws")

AUTH_TIMEOUT_S = 10.0
CLOSE_UNAUTHORIZED = 4401
# A client may send bursts (candidates), but not floods: token bucket per connection.
RATE_PER_S = 50.0
BURST = 100.0
# Liveness: a ping every 0.75 s, and the connection is closed if its pong is 1.2 s late, so a
# silently vanished talker loses the floor within 2 s while a slow mobile link (pongs taking
# up to a second) is not cut off. aiohttp ties the pong allowance to heartbeat/2, which
# would be too tight for phones; it is set separately below.
HEARTBEAT_S = 0.75
PONG_TIMEOUT_S = 1.2


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


async def _refuse(ws: web.WebSocketResponse, code: str, message: str) -> web.WebSocketResponse:
    with contextlib.suppress(Exception):
        await ws.send_str(p.encode(p.error(code, message)))
        await ws.close(code=CLOSE_UNAUTHORIZED, message=code.encode()[:120])
    return ws


async def handle_ws(request: web.Request) -> web.StreamResponse:
    # The transport limit is above the protocol's, so an oversized message gets a clear
    # `too_large` error from the parser instead of a dropped connection.
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=4 * p.MAX_MESSAGE_BYTES)
    if hasattr(ws, "_pong_heartbeat"):  # aiohttp 3.x private setting, see PONG_TIMEOUT_S
        ws._pong_heartbeat = PONG_TIMEOUT_S
    await ws.prepare(request)
    remote = request.remote or "?"
    node = request.app[NODE]

    try:
        first = await ws.receive(timeout=AUTH_TIMEOUT_S)
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
        claims = request.app[TOKENS].verify(msg.token)
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

    session = Session(node, claims, ws.send_str, remote)
    node.sessions[session.id] = session

    def forget(closed: Session) -> None:
        node.sessions.pop(closed.id, None)

    session.on_close = forget
    session.send({
        "type": "welcome", "session": session.id, "node": node.id,
        "unit": claims.sub, "alias": claims.alias, "role": str(claims.role),
        "priority": claims.priority, "talkgroups": list(claims.talkgroups),
        "heartbeat_s": HEARTBEAT_S,
    })
    log.info("session opened", extra={"fields": {
        "session": session.id, "unit": claims.sub, "role": str(claims.role), "remote": remote}})
    bucket = _Bucket()
    reason = EndReason.DISCONNECTED
    try:
        async for raw in ws:
            if raw.type == WSMsgType.ERROR:
                break
            if raw.type != WSMsgType.TEXT:
                session.send(p.error(Code.BAD_MESSAGE, "only text (JSON) messages are accepted"))
                continue
            if not bucket.take():
                session.send(p.error(Code.RATE_LIMITED, "too many messages; slow down"))
                continue
            try:
                await session.handle(p.parse(raw.data))
            except SignalingError as exc:
                session.send(p.error(exc.code, exc.message))
            except Exception:
                log.exception("message handling failed")
                session.send(p.error(Code.INTERNAL, "internal error; the session continues"))
            if session.closed:
                break
    except asyncio.CancelledError:
        reason = EndReason.SERVER_STOPPED
        raise
    finally:
        await asyncio.shield(session.close(session.close_reason or reason))
        with contextlib.suppress(Exception):
            await ws.close()
    return ws
