"""Whether a verified token is still good *now*: the one check every request goes through.

A signature only proves what was true when the token was minted. Before anything is
authorised, HTTP (service/http_auth.py) and the WebSocket (service/ws.py) both ask here:

* the token's `jti` has not been revoked (a logout, or a refresh token caught being reused);
  the list is in Redis so that every server process agrees, one key per `jti` that expires
  when the token itself would (nothing to clean up, and the list stays as short as the
  tokens are);
* for our own users, the user still exists, and the directory's role, talkgroups, priority and
  alias replace the token's snapshot: deleting or demoting someone takes effect at their next
  request, not when a token they hold expires (RFC 6819 section 5.1.5.3's "limit the impact
  of a leaked token", applied to access tokens too).

External users are not in the directory: their issuer is their directory, and their tokens'
lifetime is bounded (identity/tokens.py).
"""

from __future__ import annotations

import dataclasses
import math
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ptt_server.identity.directory import Directory
from ptt_server.identity.tokens import LEEWAY_S, AccessClaims, AuthError

MAX_REVOKE_S = 400 * 86400  # longer than any token we accept can live


class LiveAccess:
    def __init__(
        self, redis: aioredis.Redis, directory: Directory, *, local_issuer: str,
        prefix: str = "ptt",
    ) -> None:
        self.redis = redis
        self.directory = directory
        self.local_issuer = local_issuer
        self.prefix = prefix

    def _key(self, jti: str) -> str:
        return f"{self.prefix}:revoked:{jti}"

    async def revoke(self, jti: str | None, exp: float, now: float | None = None) -> None:
        """Refuse the token `jti` from now until it expires anyway (plus the clock leeway)."""
        if not jti:
            return
        now = time.time() if now is None else now
        ttl = min(MAX_REVOKE_S, math.ceil(exp - now) + LEEWAY_S + 1)
        if ttl > 0:
            await self.redis.set(self._key(jti), b"1", ex=ttl)

    async def is_revoked(self, jti: str | None) -> bool:
        return bool(jti) and bool(await self.redis.exists(self._key(str(jti))))

    async def current(self, claims: AccessClaims) -> AccessClaims:
        try:
            revoked = await self.is_revoked(claims.jti)
        except RedisError:
            # Fail closed: a token that might have been revoked is not accepted.
            raise AuthError("unavailable", "token revocation cannot be checked") from None
        if revoked:
            raise AuthError("token_revoked", "this token has been revoked")
        if claims.iss != self.local_issuer:
            return claims
        user = self.directory.get_user(claims.sub)
        if user is None:
            raise AuthError("token_revoked", "this user no longer exists")
        return dataclasses.replace(
            claims, role=user.role, talkgroups=user.talkgroups, priority=user.priority,
            alias=user.alias,
        )
