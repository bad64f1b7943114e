"""HTTP side of authentication: login, "who am I", talkgroup list, and `require_claims` for
every other handler.

Errors are JSON, `{"error": {"code": ..., "message": ...}}`, with the same stable codes as the
WebSocket protocol. Bearer tokens follow RFC 6750: the Authorization header, or for `<audio>`
playback (which cannot set headers) a `token` query parameter (RFC 6750 section 2.3, which is
why such URLs must not be logged: we log paths only, never query strings).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Collection
from typing import Any

from aiohttp import web

from ptt_server.core import access
from ptt_server.core.model import Claims, Role, User
from ptt_server.identity.auth import AuthError, claims_to_dict
from ptt_server.identity.passwords import MAX_PASSWORD_LEN
from ptt_server.service.keys import CONFIG, DIRECTORY, LOGIN_LIMITER, TOKENS

log = logging.getLogger("ptt.access")

MAX_USERNAME_LEN = 64
# scrypt uses 32 MiB per hash: bound concurrent hashes per process so a login flood cannot
# exhaust memory (excess logins wait their turn).
MAX_CONCURRENT_HASHES = 4
HASH_SLOTS: web.AppKey[asyncio.Semaphore] = web.AppKey("http_auth_hash_slots", asyncio.Semaphore)


def json_error(
    exc_class: type[web.HTTPException],
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> web.HTTPException:
    """An aiohttp HTTP exception whose body is our JSON error object."""
    body = json.dumps({"error": {"code": code, "message": message}})
    return exc_class(text=body, content_type="application/json", headers=headers)


def _unauthorized(code: str, message: str) -> web.HTTPException:
    # RFC 6750 section 3: tell the client which scheme, and that its token (if any) is bad.
    challenge = 'Bearer realm="ptt"'
    if code != "token_missing":
        challenge += ', error="invalid_token"'
    return json_error(web.HTTPUnauthorized, code, message, {"WWW-Authenticate": challenge})


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        return value.strip()
    return request.query.get("token") or None


async def require_claims(
    request: web.Request, roles: Collection[Role] | None = None
) -> Claims:
    """The verified claims of the request's bearer token, optionally restricted to `roles`.

    Raises HTTPUnauthorized (no or bad token) or HTTPForbidden (role not allowed).
    """
    token = bearer_token(request)
    if token is None:
        raise _unauthorized("token_missing", "an 'Authorization: Bearer <token>' is required")
    try:
        claims = request.app[TOKENS].verify(token)
    except AuthError as exc:
        raise _unauthorized(exc.code, exc.message) from None
    if roles is not None and claims.role not in roles:
        forbidden(request, claims, f"role {claims.role.value} may not use this")
    return claims


def forbidden(request: web.Request, claims: Claims, message: str) -> None:
    """Log a refused attempt (who, what, where) and raise HTTPForbidden."""
    log.warning(
        "forbidden",
        extra={"fields": {
            "unit": claims.sub, "role": claims.role.value, "method": request.method,
            "path": request.path, "remote": request.remote, "reason": message,
        }},
    )
    raise json_error(web.HTTPForbidden, access.AccessDenied.code, message)


def _user_view(user: User) -> dict[str, Any]:
    return {
        "name": user.name, "role": user.role.value, "alias": user.alias,
        "talkgroups": list(user.talkgroups), "priority": user.priority,
    }


async def _read_credentials(request: web.Request) -> tuple[str, str]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        raise json_error(web.HTTPBadRequest, "bad_request", "the body must be JSON") from None
    if not isinstance(body, dict):
        raise json_error(web.HTTPBadRequest, "bad_request", "the body must be a JSON object")
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not 0 < len(username) <= MAX_USERNAME_LEN:
        raise json_error(
            web.HTTPBadRequest, "bad_request",
            f"'username' must be a string of 1-{MAX_USERNAME_LEN} characters",
        )
    if not isinstance(password, str) or not 0 < len(password) <= MAX_PASSWORD_LEN:
        raise json_error(
            web.HTTPBadRequest, "bad_request",
            f"'password' must be a string of 1-{MAX_PASSWORD_LEN} characters",
        )
    return username, password


async def login(request: web.Request) -> web.Response:
    username, password = await _read_credentials(request)
    remote = request.remote or "unknown"
    limiter = request.app[LOGIN_LIMITER]
    try:
        await limiter.check(username, remote)
    except AuthError as exc:
        log.warning("login refused: rate limited",
                    extra={"fields": {"unit": username, "remote": remote}})
        raise json_error(
            web.HTTPTooManyRequests, exc.code, exc.message,
            {"Retry-After": str(exc.retry_after or 1)},
        ) from None
    directory = request.app[DIRECTORY]
    # scrypt takes tens of milliseconds: off the event loop, so other sessions keep flowing.
    async with request.app[HASH_SLOTS]:
        user = await asyncio.get_running_loop().run_in_executor(
            None, directory.verify_password, username, password
        )
    if user is None:
        await limiter.failed(username, remote)
        log.warning("login failed", extra={"fields": {"unit": username, "remote": remote}})
        # One answer for unknown names and wrong passwords: no hint which names exist.
        raise json_error(web.HTTPUnauthorized, "login_failed", "wrong user name or password")
    await limiter.succeeded(username, remote)
    ttl = request.app[CONFIG].token_ttl_s
    now = time.time()
    token = request.app[TOKENS].issue(user, ttl, now=now)
    log.info("login", extra={"fields": {"unit": user.name, "role": user.role.value,
                                        "remote": remote}})
    return web.json_response(
        {"token": token, "expires_at": int(now) + ttl, "user": _user_view(user)},
        # A token response must not be cached (cf. RFC 6749 section 5.1).
        headers={"Cache-Control": "no-store"},
    )


async def me(request: web.Request) -> web.Response:
    claims = await require_claims(request)
    body = claims_to_dict(claims)
    body["name"] = claims.sub
    body["permissions"] = {
        "audit": access.can_audit(claims), "override": access.can_override(claims),
    }
    return web.json_response(body, headers={"Cache-Control": "no-store"})


async def talkgroups(request: web.Request) -> web.Response:
    claims = await require_claims(request)
    visible = []
    for tg in request.app[DIRECTORY].list_talkgroups():
        mode = access.access_mode(claims, tg)
        if mode is not None:
            visible.append({
                "id": tg.id, "name": tg.name, "kind": tg.kind.value, "access": mode,
                "max_duration_s": tg.max_duration_s,
            })
    return web.json_response({"talkgroups": visible}, headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    app[HASH_SLOTS] = asyncio.Semaphore(MAX_CONCURRENT_HASHES)
    app.router.add_post("/api/login", login)
    app.router.add_get("/api/me", me)
    app.router.add_get("/api/talkgroups", talkgroups)
