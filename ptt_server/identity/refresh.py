"""Refresh tokens: opaque, stored in Redis, rotated on every use, reuse detected.

A login gets a short access token (minutes) and a refresh token. The refresh token is only
ever sent to POST /api/refresh (and /api/logout), never to the WebSocket or other APIs, so it
is exposed far less than the access token. Following RFC 6819 section 5.2.2.3 and the OAuth 2.0
Security BCP (refresh token rotation):

* each use returns a new refresh token and invalidates the one presented;
* presenting an already used one means two parties hold the chain (a copy was stolen): the
  whole chain (the "family", everything descending from one login) is revoked, together with
  the last access token it issued, and both parties must sign in again;
* a chain ends `idle_s` after its last use (sliding) and `absolute_s` after the login however
  often it is used (RFC 6819 section 5.1.5.3: bound the damage of a leaked token);
* the server can end it at any time (logout; deleting the user ends it at the next refresh).

The token is `<family>.<generation>.<secret>`: 128 random bits name the family, 256 more are
the secret. Redis keeps per family only the user, the current generation and the SHA-256 of
its token (never the token itself), so a leak of Redis's memory does not leak usable tokens.
A well-formed token of an older generation is reuse: the family id is itself unguessable,
only ever seen inside this family's tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets

import redis.asyncio as aioredis

from ptt_server.identity.tokens import AuthError

MAX_REFRESH_TOKEN_LEN = 200
_TOKEN_RE = re.compile(r"([A-Za-z0-9_-]{22})\.([0-9]{1,9})\.([A-Za-z0-9_-]{43})")

# KEYS[1]: the family. ARGV: user, hash, idle ms, absolute ms, access jti, access exp.
_CREATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local abs = now + tonumber(ARGV[4])
local deadline = math.min(now + tonumber(ARGV[3]), abs)
redis.call('HSET', KEYS[1], 'user', ARGV[1], 'gen', 0, 'h', ARGV[2], 'abs', abs,
           'ajti', ARGV[5], 'aexp', ARGV[6])
redis.call('PEXPIREAT', KEYS[1], deadline)
return deadline
"""

# KEYS[1]: the family. ARGV: generation, hash, new hash, idle ms, access jti, access exp.
# Returns {status, user, deadline or old access jti, old access exp}.
_ROTATE = """
local f = redis.call('HMGET', KEYS[1], 'user', 'gen', 'h', 'abs', 'ajti', 'aexp')
if not f[1] then return {'invalid'} end
local gen = tonumber(ARGV[1])
local current = tonumber(f[2])
if gen < current then
  redis.call('DEL', KEYS[1])
  return {'reused', f[1], f[5], f[6]}
end
if gen ~= current or ARGV[2] ~= f[3] then return {'invalid'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local abs = tonumber(f[4])
if now >= abs then
  redis.call('DEL', KEYS[1])
  return {'invalid'}
end
redis.call('HSET', KEYS[1], 'gen', current + 1, 'h', ARGV[3], 'ajti', ARGV[5], 'aexp', ARGV[6])
local deadline = math.min(now + tonumber(ARGV[4]), abs)
redis.call('PEXPIREAT', KEYS[1], deadline)
return {'ok', f[1], tostring(deadline), ''}
"""

# KEYS[1]: the family. ARGV: generation, hash. Returns {user, access jti, access exp} if the
# token was the family's current one (and the family is now gone), else {}.
_REVOKE = """
local f = redis.call('HMGET', KEYS[1], 'user', 'gen', 'h', 'ajti', 'aexp')
if not f[1] then return {} end
if tonumber(ARGV[1]) > tonumber(f[2]) or
   (tonumber(ARGV[1]) == tonumber(f[2]) and ARGV[2] ~= f[3]) then return {} end
redis.call('DEL', KEYS[1])
return {f[1], f[4], f[5]}
"""


@dataclasses.dataclass(frozen=True, slots=True)
class RefreshGrant:
    token: str
    user: str
    expires_at: int  # epoch seconds: the sliding deadline, never past the absolute one


@dataclasses.dataclass(frozen=True, slots=True)
class EndedFamily:
    """A family that was revoked: whose, and its last access token (to revoke it too)."""

    user: str
    access_jti: str
    access_exp: float
    reused: bool


class RefreshError(AuthError):
    def __init__(self, ended: EndedFamily | None = None) -> None:
        # One answer whatever the reason (unknown, expired, revoked, reused): nothing to learn.
        super().__init__("refresh_invalid", "sign in again")
        self.ended = ended


def _hash(family: str, gen: int, secret: str) -> str:
    return hashlib.sha256(f"{family}.{gen}.{secret}".encode("ascii")).hexdigest()


def _parse(token: object) -> tuple[str, int, str]:
    if not isinstance(token, str) or len(token) > MAX_REFRESH_TOKEN_LEN:
        raise RefreshError()
    m = _TOKEN_RE.fullmatch(token)
    if m is None:
        raise RefreshError()
    return m.group(1), int(m.group(2)), m.group(3)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RefreshTokens:
    def __init__(
        self, redis: aioredis.Redis, *, idle_s: int, absolute_s: int, prefix: str = "ptt"
    ) -> None:
        if not 0 < idle_s or not 0 < absolute_s:
            raise ValueError("refresh lifetimes must be positive")
        self.redis = redis
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self.prefix = prefix
        self._create = redis.register_script(_CREATE)
        self._rotate = redis.register_script(_ROTATE)
        self._revoke = redis.register_script(_REVOKE)

    def _key(self, family: str) -> str:
        return f"{self.prefix}:refresh:{family}"

    async def issue(self, user: str, access_jti: str, access_exp: int) -> RefreshGrant:
        """A new family for a login; `access_jti` is the access token issued with it."""
        family, secret = secrets.token_urlsafe(16), secrets.token_urlsafe(32)
        deadline = await self._create(
            keys=[self._key(family)],
            args=[user, _hash(family, 0, secret), self.idle_s * 1000, self.absolute_s * 1000,
                  access_jti, access_exp],
        )
        return RefreshGrant(f"{family}.0.{secret}", user, int(deadline) // 1000)

    async def rotate(self, token: object, access_jti: str, access_exp: int) -> RefreshGrant:
        """Trade `token` for its successor (which goes with the access token `access_jti`).

        Raises RefreshError; when the token was a used one, `ended` says which family was
        revoked for it, so that the caller revokes its access token and logs the event.
        """
        family, gen, secret = _parse(token)
        new_secret = secrets.token_urlsafe(32)
        status, *rest = await self._rotate(
            keys=[self._key(family)],
            args=[gen, _hash(family, gen, secret), _hash(family, gen + 1, new_secret),
                  self.idle_s * 1000, access_jti, access_exp],
        )
        status = _text(status)
        if status == "reused":
            user, ajti, aexp = (_text(v) for v in rest)
            raise RefreshError(EndedFamily(user, ajti, float(aexp or 0), reused=True))
        if status != "ok":
            raise RefreshError()
        user, deadline = _text(rest[0]), int(_text(rest[1]))
        return RefreshGrant(f"{family}.{gen + 1}.{new_secret}", user, deadline // 1000)

    async def revoke(self, token: object) -> EndedFamily | None:
        """End the family of `token` (a logout). None if it was not a live token."""
        try:
            family, gen, secret = _parse(token)
        except RefreshError:
            return None
        found = await self._revoke(keys=[self._key(family)],
                                   args=[gen, _hash(family, gen, secret)])
        if not found:
            return None
        user, ajti, aexp = (_text(v) for v in found)
        return EndedFamily(user, ajti, float(aexp or 0), reused=False)
