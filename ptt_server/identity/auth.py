"""Access tokens (JWT, RFC 7519) and login rate limiting.

Tokens are short-lived bearer credentials carrying who the user is and what they may do (role,
talkgroups, floor priority), so a WebSocket or HTTP request needs no directory lookup to be
authorised. Verification follows the JWT Best Current Practices (RFC 8725):

* the algorithm is never taken from the token: each issuer has a pinned list (section 3.1), and
  the unverified header and `iss` are only used to pick which issuer's key and list apply;
* our own tokens are HS256 with a random 256-bit secret (RFC 7518 section 3.2 asks for a key at
  least as long as the hash output); an external issuer's tokens are verified with its public
  key and only asymmetric algorithms, so its public key can never be used as an HMAC secret
  (the "RS/HS confusion" attack, RFC 8725 section 2.1);
* `iss` and `aud` are always checked (sections 3.8, 3.9), `exp` is required, and every claim we
  rely on is type-checked (section 3.10's spirit: never trust the shape of a payload).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import secrets
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, TypeGuard

import jwt
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ptt_server.core.config import ExternalIssuer
from ptt_server.core.model import ROLE_PRIORITY, Claims, Role, User

SIGNING_KEY_FILE = "jwt-signing.key"
SIGNING_KEY_LEN = 32  # 256 bits: HS256's hash output size (RFC 7518 section 3.2)
OUR_ALGORITHMS = ("HS256",)
LEEWAY_S = 5  # clock skew tolerated on exp/nbf/iat; small on purpose (RFC 7519 section 4.1.4)
TOKEN_TYPE = "at+jwt"  # explicit typing (RFC 8725 section 3.11, media type from RFC 9068)
MAX_TOKEN_LEN = 8192
MAX_SUB_LEN = 256
MAX_ALIAS_LEN = 128
MAX_TALKGROUPS = 1024

_ASYMMETRIC_BY_KEY: tuple[tuple[type, frozenset[str]], ...] = (
    (rsa.RSAPublicKey, frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})),
    (ec.EllipticCurvePublicKey, frozenset({"ES256", "ES256K", "ES384", "ES512"})),
    (ed25519.Ed25519PublicKey, frozenset({"EdDSA"})),
    (ed448.Ed448PublicKey, frozenset({"EdDSA"})),
)
_TALKGROUP_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class AuthError(Exception):
    """A refused token or login; `code` is stable (clients rely on it)."""

    def __init__(self, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after




# -- signing key -------------------------------------------------------------------------------
def load_or_create_signing_key(data_dir: Path) -> bytes:
    """The HS256 secret, created once per data directory and shared by every process.

    Created in a private temporary file and then hard-linked into place: the link either
    succeeds or finds the file already there, so two processes starting together end up with
    the same key, and nobody ever reads a half-written file.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SIGNING_KEY_FILE
    if not path.exists():
        fd, tmp = tempfile.mkstemp(prefix=".jwt-signing.", dir=data_dir)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(SIGNING_KEY_LEN))
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    key = path.read_bytes()
    if len(key) < SIGNING_KEY_LEN:
        raise AuthError("token_key_invalid", f"{path} holds fewer than {SIGNING_KEY_LEN} bytes")
    return key


# -- tokens ------------------------------------------------------------------------------------
def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    # RFC 7519 section 2: a NumericDate is a JSON number (possibly non-integer).
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _claims_invalid(message: str) -> AuthError:
    return AuthError("token_claims_invalid", message)


_JWT_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token_expired"),
    (jwt.InvalidSignatureError, "token_invalid_signature"),
    (jwt.InvalidIssuerError, "token_wrong_issuer"),
    (jwt.InvalidAudienceError, "token_wrong_audience"),
    (jwt.InvalidAlgorithmError, "token_algorithm_rejected"),
    (jwt.InvalidKeyError, "token_algorithm_rejected"),
    (jwt.MissingRequiredClaimError, "token_claims_invalid"),
    (jwt.ImmatureSignatureError, "token_claims_invalid"),
    (jwt.InvalidIssuedAtError, "token_claims_invalid"),
    (jwt.exceptions.InvalidSubjectError, "token_claims_invalid"),
    (jwt.exceptions.InvalidJTIError, "token_claims_invalid"),
    (jwt.DecodeError, "token_malformed"),
)


class TokenAuthority:
    """Issues our tokens; verifies ours and, optionally, those of one trusted external issuer."""

    def __init__(
        self,
        secret: bytes,
        *,
        issuer: str,
        audience: str,
        external: ExternalIssuer | None = None,
    ) -> None:
        if len(secret) < SIGNING_KEY_LEN:
            raise ValueError(f"the HS256 secret must be at least {SIGNING_KEY_LEN} bytes")
        if not issuer or not audience:
            raise ValueError("issuer and audience must be non-empty")
        self._secret = secret
        self.issuer = issuer
        self.audience = audience
        self.external = external
        self._external_key: Any = None
        self._external_algorithms: list[str] = []
        if external is not None:
            if external.issuer == issuer:
                # Routing is by issuer: sharing one would let either key speak for the other.
                raise ValueError("the external issuer must differ from our own issuer")
            key = load_pem_public_key(external.public_key_pem.encode("ascii"))
            allowed: frozenset[str] = frozenset()
            for key_type, algs in _ASYMMETRIC_BY_KEY:
                if isinstance(key, key_type):
                    allowed = algs
            # Pin to asymmetric algorithms that fit this key type (RFC 8725 section 3.1): an
            # "HS256" in the configured list is dropped here, never tried with a public key.
            self._external_algorithms = [a for a in external.algorithms if a in allowed]
            if not self._external_algorithms:
                raise ValueError(
                    f"none of {list(external.algorithms)} suits the external issuer's "
                    f"{type(key).__name__}"
                )
            self._external_key = key

    def issue(self, user: User, ttl_s: int, now: float | None = None) -> str:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        iat = int(time.time() if now is None else now)
        payload = {
            "sub": user.name,
            "role": user.role.value,
            "talkgroups": list(user.talkgroups),
            "priority": user.priority,
            "alias": user.alias,
            "iat": iat,
            "exp": iat + int(ttl_s),
            "iss": self.issuer,
            "aud": self.audience,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(
            payload, self._secret, algorithm="HS256", headers={"typ": TOKEN_TYPE}
        )

    def verify(self, token: str, now: float | None = None) -> Claims:
        if not isinstance(token, str) or not token.strip():
            raise AuthError("token_missing", "no token")
        if len(token) > MAX_TOKEN_LEN:
            raise AuthError("token_malformed", "token too long")
        now = time.time() if now is None else now
        # The header and payload are read unverified ONLY to route the token to the right key
        # and algorithm list; nothing in them is trusted before the signature is checked.
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except (jwt.DecodeError, json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise AuthError("token_malformed", f"malformed token: {exc}") from None
        if not isinstance(unverified, dict):
            raise AuthError("token_malformed", "the payload is not a JSON object")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            # Unsigned tokens (RFC 7519 section 6) are never acceptable (RFC 8725 section 3.1).
            raise AuthError("token_algorithm_rejected", f"algorithm {alg!r} is not accepted")

        external = self.external
        if external is not None and unverified.get("iss") == external.issuer:
            if alg not in self._external_algorithms:
                # e.g. an HS256 token claiming the external issuer: the HS/RS confusion attack.
                raise AuthError(
                    "token_algorithm_rejected",
                    f"algorithm {alg} is not accepted for issuer {external.issuer}",
                )
            key: Any = self._external_key
            algorithms = self._external_algorithms
            issuer = external.issuer
            audience = external.audience or self.audience
        else:
            if alg not in OUR_ALGORITHMS:
                raise AuthError("token_algorithm_rejected", f"algorithm {alg} is not accepted")
            key, algorithms = self._secret, list(OUR_ALGORITHMS)
            issuer, audience = self.issuer, self.audience

        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=audience,
                issuer=issuer,
                # Times are checked below against `now` (PyJWT only knows the wall clock).
                options={
                    "require": ["exp", "iss", "aud", "sub"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            for exc_type, code in _JWT_ERRORS:
                if isinstance(exc, exc_type):
                    raise AuthError(code, str(exc)) from None
            raise AuthError("token_malformed", str(exc)) from None
        return self._claims(payload, issuer, audience, now, ours=issuer == self.issuer)

    @staticmethod
    def _claims(
        payload: dict[str, Any], issuer: str, audience: str, now: float, *, ours: bool
    ) -> Claims:
        # Belt and braces over PyJWT's own checks: exact issuer match.
        if payload.get("iss") != issuer:
            raise AuthError("token_wrong_issuer", "wrong issuer")
        exp = payload.get("exp")
        if not _is_number(exp):
            raise _claims_invalid("exp must be a NumericDate")
        if exp + LEEWAY_S <= now:
            raise AuthError("token_expired", "the token has expired")
        for name in ("nbf", "iat"):
            value = payload.get(name)
            if value is None:
                continue
            if not _is_number(value):
                raise _claims_invalid(f"{name} must be a NumericDate")
            if value > now + LEEWAY_S:
                raise _claims_invalid(f"the token is not valid yet ({name} in the future)")

        sub = payload.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LEN:
            raise _claims_invalid("sub must be a non-empty string")
        role_value = payload.get("role")
        if not isinstance(role_value, str) or role_value not in Role._value2member_map_:
            raise _claims_invalid(f"unknown role {role_value!r}")
        role = Role(role_value)
        groups = payload.get("talkgroups")
        if (
            not isinstance(groups, list)
            or len(groups) > MAX_TALKGROUPS
            or not all(isinstance(g, str) and _TALKGROUP_RE.fullmatch(g) for g in groups)
        ):
            raise _claims_invalid("talkgroups must be a list of talkgroup ids")
        # An external issuer may leave out our own presentation claims; ours always has them.
        priority: object = payload.get("priority", None if ours else ROLE_PRIORITY[role])
        if not _is_int(priority) or not 0 <= priority <= 255:
            raise _claims_invalid(f"priority {priority!r} is not an integer in 0..255")
        alias = payload.get("alias", None if ours else sub)
        if not isinstance(alias, str) or not alias or len(alias) > MAX_ALIAS_LEN:
            raise _claims_invalid("alias must be a non-empty string")
        return Claims(
            sub=sub,
            role=role,
            talkgroups=tuple(dict.fromkeys(groups)),
            priority=priority,
            alias=alias,
            exp=int(exp),
            iss=issuer,
            aud=audience,
        )


def claims_to_dict(claims: Claims) -> dict[str, Any]:
    """A JSON-friendly view of the claims (for /api/me and the like)."""
    d = dataclasses.asdict(claims)
    d["role"] = claims.role.value
    d["talkgroups"] = list(claims.talkgroups)
    return d


# -- login rate limiting -----------------------------------------------------------------------
class LoginLimiter:
    """Counts failed logins per user name and per remote address, in Redis so that every server
    process shares the counts. Past `max_failures` in `window_s` (counted from the first
    failure), logins are refused until the window ends, even with the right password: that
    caps online password guessing without any server state in memory.

    An address gets a higher limit (`max_address_failures`, default 4x) because a whole station
    may sit behind one NAT address; the per-name limit still protects each account.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        max_failures: int = 5,
        window_s: int = 300,
        prefix: str = "ptt",
        max_address_failures: int | None = None,
    ) -> None:
        if max_failures < 1 or window_s < 1:
            raise ValueError("max_failures and window_s must be positive")
        self.redis = redis
        self.max_failures = max_failures
        self.max_address_failures = max_address_failures or 4 * max_failures
        self.window_s = window_s
        self.prefix = prefix

    def _keys(self, username: str, remote: str | None) -> tuple[str, str]:
        # Bounded key sizes whatever a client sends.
        return (
            f"{self.prefix}:login:user:{username[:128]}",
            f"{self.prefix}:login:addr:{(remote or 'unknown')[:64]}",
        )

    async def check(self, username: str, remote: str | None) -> None:
        user_key, addr_key = self._keys(username, remote)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in (user_key, addr_key):
                pipe.get(key)
                pipe.ttl(key)
            user_n, user_ttl, addr_n, addr_ttl = await pipe.execute()
        waits = []
        if user_n is not None and int(user_n) >= self.max_failures:
            waits.append(int(user_ttl))
        if addr_n is not None and int(addr_n) >= self.max_address_failures:
            waits.append(int(addr_ttl))
        if waits:
            retry_after = max(1, *waits)  # ttl is -1/-2 in races: still ask for a second
            raise AuthError(
                "login_rate_limited",
                f"too many failed logins; try again in {retry_after} s",
                retry_after=retry_after,
            )

    async def failed(self, username: str, remote: str | None) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in self._keys(username, remote):
                # The window starts at the first failure (NX: later failures don't extend it).
                pipe.incr(key)
                pipe.expire(key, self.window_s, nx=True)
            await pipe.execute()

    async def succeeded(self, username: str, remote: str | None) -> None:
        # Only the name's count: clearing the address's would let one valid account reset
        # the limit for guessing at every other account from the same address.
        user_key, _ = self._keys(username, remote)
        await self.redis.delete(user_key)
