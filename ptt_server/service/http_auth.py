"""HTTP side of authentication: login, refresh, logout, "who am I", talkgroup list, and
`require_claims` for every other handler.

Errors are JSON, `{"error": {"code": ..., "message": ...}}`, with the same stable codes as the
WebSocket protocol; messages are short and generic, details go to the log.

* Bearer tokens come in the Authorization header only (RFC 6750 section 2.1). The query form
  (section 2.3) is not accepted: URLs end up in histories, caches and proxy logs. Players that
  cannot send headers get a short-lived signed URL instead (identity/media_urls.py).
* Every request is checked against shared state (`TokenAuthority.verify_live`, i.e.
  identity/live.py): a revoked token or a deleted user is refused at once, and the directory's
  current role and talkgroups apply, not the token's snapshot.
* Login, refresh and logout take JSON only (`Content-Type: application/json`, else 415): a
  cross-site form can only send form or text/plain bodies without a CORS preflight, so it cannot
  reach these (login CSRF).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from ptt_server.core import access
from ptt_server.core.model import Role, User
from ptt_server.identity.live import LiveAccess
from ptt_server.identity.media_urls import SIG_PARAM, MediaUrls
from ptt_server.identity.passwords import MAX_PASSWORD_LEN
from ptt_server.identity.refresh import RefreshError, RefreshTokens
from ptt_server.identity.tokens import (
    ACCESS_MAX_LIFETIME_S,
    AccessClaims,
    AuthError,
    claims_to_dict,
)
from ptt_server.service.keys import CONFIG, DIRECTORY, LOGIN_LIMITER, REDIS, TOKENS

log = logging.getLogger("ptt.access")

MAX_USERNAME_LEN = 64
# scrypt uses 32 MiB per hash: bound concurrent hashes per process so a login flood cannot
# exhaust memory (excess logins wait their turn).
MAX_CONCURRENT_HASHES = 4
HASH_SLOTS: web.AppKey[asyncio.Semaphore] = web.AppKey("http_auth_hash_slots", asyncio.Semaphore)
LIVE: web.AppKey[LiveAccess] = web.AppKey("live_access", LiveAccess)
REFRESH: web.AppKey[RefreshTokens] = web.AppKey("refresh_tokens", RefreshTokens)
MEDIA_URLS: web.AppKey[MediaUrls] = web.AppKey("media_urls", MediaUrls)

# What a client is told; the precise reason is logged.
_MESSAGES = {
    "token_missing": "sign in required",
    "token_revoked": "access revoked; sign in again",
    "media_url_expired": "this link has expired",
    "media_url_invalid": "invalid link",
    "refresh_invalid": "sign in again",
}


def json_error(
    exc_class: type[web.HTTPException],
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> web.HTTPException:
    """An aiohttp HTTP exception whose body is our JSON error object."""
    body = json.dumps({"error": {"code": code, "message": message, **(extra or {})}})
    return exc_class(text=body, content_type="application/json", headers=headers)


def _unauthorized(code: str) -> web.HTTPException:
    if code == "unavailable":
        return json_error(web.HTTPServiceUnavailable, code, "temporarily unavailable")
    # RFC 6750 section 3: tell the client which scheme, and that its token (if any) is bad.
    challenge = 'Bearer realm="ptt"'
    if code != "token_missing":
        challenge += ', error="invalid_token"'
    return json_error(web.HTTPUnauthorized, code, _MESSAGES.get(code, "invalid or expired token"),
                      {"WWW-Authenticate": challenge})


def _refused(request: web.Request, exc: AuthError) -> web.HTTPException:
    # An expired access token is routine (the client refreshes and retries): not a warning.
    if exc.code not in ("token_missing", "token_expired"):
        log.warning("token refused", extra={"fields": {
            "code": exc.code, "reason": exc.message, "path": request.path,
            "remote": request.remote}})
    return _unauthorized(exc.code)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def require_claims(
    request: web.Request, roles: Collection[Role] | None = None
) -> AccessClaims:
    """The caller's *current* claims (token verified, not revoked, directory applied),
    optionally restricted to `roles`.

    Raises HTTPUnauthorized (no or bad token), HTTPForbidden (role not allowed), or
    HTTPServiceUnavailable (revocation cannot be checked).
    """
    token = bearer_token(request)
    if token is None:
        raise _unauthorized("token_missing")
    try:
        claims = await request.app[TOKENS].verify_live(token)
    except AuthError as exc:
        raise _refused(request, exc) from None
    if roles is not None and claims.role not in roles:
        forbidden(request, claims, f"role {claims.role.value} may not use this")
    return claims


async def media_claims(request: web.Request) -> AccessClaims:
    """The current claims of whoever a signed media URL was issued to (see media_urls.py):
    the same live check as a bearer token, through the access token's `jti`."""
    tokens = request.app[TOKENS]
    try:
        grant = request.app[MEDIA_URLS].verify(
            request.path, dict(request.query), count=len(request.query))
        if grant.role not in Role._value2member_map_:
            raise AuthError("media_url_invalid", "unknown role")
        if tokens.live is None:
            raise AuthError("unavailable", "token revocation cannot be checked")
        claims = AccessClaims(
            sub=grant.sub, role=Role(grant.role), talkgroups=(), priority=0, alias=grant.sub,
            exp=grant.exp, iss=tokens.issuer_of(grant.sub), aud=tokens.audience,
            jti=grant.jti or None,
        )
        return await tokens.live.current(claims)
    except AuthError as exc:
        raise _refused(request, exc) from None


def has_media_signature(request: web.Request) -> bool:
    return "Authorization" not in request.headers and SIG_PARAM in request.query


def forbidden(request: web.Request, claims: AccessClaims, message: str) -> None:
    """Log a refused attempt (who, what, where) and raise HTTPForbidden."""
    log.warning(
        "forbidden",
        extra={"fields": {
            "unit": claims.sub, "role": claims.role.value, "method": request.method,
            "path": request.path, "remote": request.remote, "reason": message,
        }},
    )
    raise json_error(web.HTTPForbidden, access.AccessDenied.code, message)


async def json_object(request: web.Request, *, empty_ok: bool = False) -> dict[str, Any]:
    """The request's JSON object body; `Content-Type: application/json` required (415)."""
    if request.content_type != "application/json":
        raise json_error(web.HTTPUnsupportedMediaType, "unsupported_media_type",
                         "the body must be application/json")
    try:
        text = await request.text()
        body = {} if empty_ok and not text.strip() else json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        raise json_error(web.HTTPBadRequest, "bad_request", "the body must be JSON") from None
    if not isinstance(body, dict):
        raise json_error(web.HTTPBadRequest, "bad_request", "the body must be a JSON object")
    return body


def _user_view(user: User) -> dict[str, Any]:
    return {
        "name": user.name, "role": user.role.value, "alias": user.alias,
        "talkgroups": list(user.talkgroups), "priority": user.priority,
    }


async def _read_credentials(request: web.Request) -> tuple[str, str]:
    body = await json_object(request)
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


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _redis_needed(handler: Handler) -> Handler:
    """Redis down: a 503 with our JSON error (never a login without its throttle)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RedisError as exc:
            log.error("redis unavailable (%s %s): %s", request.method, request.path, exc)
            raise json_error(web.HTTPServiceUnavailable, "unavailable",
                             "temporarily unavailable") from None

    return wrapped


def _access_ttl(request: web.Request) -> int:
    return min(request.app[CONFIG].access_token_ttl_s, ACCESS_MAX_LIFETIME_S)


def _session(user: User, token: str, expires_at: int, refresh: str, refresh_expires_at: int,
             ) -> web.Response:
    return web.json_response({
        "token": token, "token_type": "Bearer", "expires_at": expires_at,
        "refresh_token": refresh, "refresh_expires_at": refresh_expires_at,
        "user": _user_view(user),
    }, headers={"Cache-Control": "no-store"})  # RFC 6749 section 5.1, whatever the wiring


async def login(request: web.Request) -> web.StreamResponse:
    username, password = await _read_credentials(request)
    remote = request.remote or "unknown"
    limiter = request.app[LOGIN_LIMITER]
    try:
        # Counted before the password is checked: concurrent guesses cannot overtake it.
        await limiter.attempt(username, remote)
    except AuthError as exc:
        wait = exc.retry_after or 1
        log.warning("login refused: rate limited",
                    extra={"fields": {"unit": username, "remote": remote, "retry_after": wait}})
        raise json_error(web.HTTPTooManyRequests, exc.code, exc.message,
                         {"Retry-After": str(wait)}, {"retry_after": wait}) from None
    directory = request.app[DIRECTORY]
    # scrypt takes tens of milliseconds: off the event loop, so other sessions keep flowing.
    async with request.app[HASH_SLOTS]:
        user = await asyncio.get_running_loop().run_in_executor(
            None, directory.verify_password, username, password
        )
    if user is None:
        log.warning("login failed", extra={"fields": {"unit": username, "remote": remote}})
        # One answer for unknown names and wrong passwords: no hint which names exist.
        raise json_error(web.HTTPUnauthorized, "login_failed", "wrong user name or password")
    await limiter.succeeded(username, remote)
    now, ttl, jti = int(time.time()), _access_ttl(request), uuid.uuid4().hex
    grant = await request.app[REFRESH].issue(user.name, jti, now + ttl)
    token = request.app[TOKENS].issue(user, ttl, now=now, jti=jti, service=False)
    log.info("login", extra={"fields": {"unit": user.name, "role": user.role.value,
                                        "remote": remote}})
    return _session(user, token, now + ttl, grant.token, grant.expires_at)


async def refresh(request: web.Request) -> web.StreamResponse:
    body = await json_object(request)
    now, ttl, jti = int(time.time()), _access_ttl(request), uuid.uuid4().hex
    try:
        grant = await request.app[REFRESH].rotate(body.get("refresh_token"), jti, now + ttl)
    except RefreshError as exc:
        if exc.ended is not None:
            # RFC 6819 section 5.2.2.3: a used refresh token came back, so a copy exists;
            # the family is gone already, its last access token goes too.
            await request.app[LIVE].revoke(exc.ended.access_jti, exc.ended.access_exp)
            log.warning("refresh token reused: sign-in revoked", extra={"fields": {
                "unit": exc.ended.user, "remote": request.remote}})
        raise _unauthorized(exc.code) from None
    user = request.app[DIRECTORY].get_user(grant.user)
    if user is None:
        await request.app[REFRESH].revoke(grant.token)
        raise _refused(request, AuthError("token_revoked", f"no user {grant.user}"))
    token = request.app[TOKENS].issue(user, ttl, now=now, jti=jti, service=False)
    return _session(user, token, now + ttl, grant.token, grant.expires_at)


async def logout(request: web.Request) -> web.StreamResponse:
    """End a sign-in: its refresh token's family and the access token presented (until the
    latter would have expired). Always 204: nothing to learn about which tokens were live."""
    body = await json_object(request, empty_ok=True)
    live = request.app[LIVE]
    ended = await request.app[REFRESH].revoke(body.get("refresh_token"))
    if ended is not None:
        await live.revoke(ended.access_jti, ended.access_exp)
    token = bearer_token(request)
    if token is not None:
        try:
            claims = request.app[TOKENS].verify(token)
        except AuthError:
            claims = None  # expired or not ours: nothing to revoke
        if claims is not None:
            await live.revoke(claims.jti, claims.exp)
            log.info("logout", extra={"fields": {"unit": claims.sub, "remote": request.remote}})
    return web.Response(status=204)


async def me(request: web.Request) -> web.Response:
    claims = await require_claims(request)
    body = claims_to_dict(claims)
    body["name"] = claims.sub
    body["permissions"] = {
        "audit": access.can_audit(claims), "override": access.can_override(claims),
    }
    return web.json_response(body)


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
    return web.json_response({"talkgroups": visible})


async def _start(app: web.Application) -> None:
    """Once Redis is connected (app/wiring.py's cleanup context runs first)."""
    tokens, redis, config = app[TOKENS], app[REDIS], app[CONFIG]
    live = LiveAccess(redis, app[DIRECTORY], local_issuer=tokens.issuer)
    tokens.live = live
    app[LIVE] = live
    app[REFRESH] = RefreshTokens(redis, idle_s=config.token_ttl_s,
                                 absolute_s=config.refresh_absolute_s)
    app[MEDIA_URLS] = MediaUrls(tokens.derive_key("media-url"), config.media_url_ttl_s)


def install(app: web.Application) -> None:
    """What every API using `require_claims` needs (idempotent): needs app[TOKENS],
    app[DIRECTORY], app[CONFIG], and app[REDIS] by the time the app starts."""
    if _start not in app.on_startup:
        app.on_startup.append(_start)


def add_routes(app: web.Application) -> None:
    install(app)
    app[HASH_SLOTS] = asyncio.Semaphore(MAX_CONCURRENT_HASHES)
    app.router.add_post("/api/login", _redis_needed(login))
    app.router.add_post("/api/refresh", _redis_needed(refresh))
    app.router.add_post("/api/logout", _redis_needed(logout))
    app.router.add_get("/api/me", me)
    app.router.add_get("/api/talkgroups", talkgroups)
