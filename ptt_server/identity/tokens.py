"""Access tokens (JWT, RFC 7519), issued and verified per the JWT BCP (RFC 8725).

An access token says who the caller is; it is never the last word on what they may do: every
request also goes through `verify_live`, which refuses revoked tokens and, for our own users,
replaces the token's role and talkgroups with the directory's (identity/live.py).

Verification:

* the algorithm is never taken from the token: each issuer has a pinned list (RFC 8725 section
  3.1), and the unverified header and `iss` are only used to pick which issuer's key applies;
* our own tokens are HS256 with a random 256-bit secret (RFC 7518 section 3.2 asks for a key at
  least as long as the hash output); an external issuer's are verified with its public key and
  only asymmetric algorithms, so that key can never serve as an HMAC secret (RFC 8725 section
  2.1, the "RS/HS confusion" attack);
* `iss` and `aud` are always checked (sections 3.8, 3.9), `exp` is required, and every claim we
  rely on is type-checked;
* explicit typing (section 3.11): the header `typ` must be `at+jwt` (RFC 9068 section 2.1), so an
  ID token or any other JWT signed by the same key is not accepted as an access token;
* a bounded lifetime: `exp - iat` at most `ACCESS_MAX_LIFETIME_S`, or `SERVICE_MAX_LIFETIME_S`
  for service tokens (`svc: true`, only minted by the admin command line); an `exp` in the year
  9999 is refused however it is signed;
* our tokens carry `jti` and `iat` (RFC 7519 sections 4.1.6, 4.1.7): the `jti` is what a logout
  revokes;
* an external issuer's subject is namespaced, `ext:<name>:<sub>`: local user names cannot
  contain ':', so an SSO account named like a local one is never taken for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import re
import time
import uuid
from typing import Any, Protocol, TypeGuard

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ptt_server.core.config import ExternalIssuer
from ptt_server.core.model import ROLE_PRIORITY, Claims, Role, User

SIGNING_KEY_LEN = 32  # 256 bits: HS256's hash output size (RFC 7518 section 3.2)
OUR_ALGORITHMS = ("HS256",)
LEEWAY_S = 5  # clock skew tolerated on exp/nbf/iat; small on purpose (RFC 7519 section 4.1.4)
TOKEN_TYPE = "at+jwt"  # explicit typing (RFC 8725 section 3.11, media type from RFC 9068)
# Longest ordinary access token we accept (what `ptt-server token` mints by default); logins
# get far shorter ones (Config.access_token_ttl_s) and renew them with a refresh token.
ACCESS_MAX_LIFETIME_S = 12 * 3600
# Service tokens (a console or recorder running unattended), minted only by the admin command
# line: still revoked by deleting the user (every request checks the directory) or by a logout.
SERVICE_MAX_LIFETIME_S = 366 * 86400
EXTERNAL_PREFIX = "ext:"
MAX_TOKEN_LEN = 8192
MAX_SUB_LEN = 256
MAX_ALIAS_LEN = 128
MAX_JTI_LEN = 128
MAX_TALKGROUPS = 1024

_ASYMMETRIC_BY_KEY: tuple[tuple[type, frozenset[str]], ...] = (
    (rsa.RSAPublicKey, frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})),
    (ec.EllipticCurvePublicKey, frozenset({"ES256", "ES256K", "ES384", "ES512"})),
    (ed25519.Ed25519PublicKey, frozenset({"EdDSA"})),
    (ed448.Ed448PublicKey, frozenset({"EdDSA"})),
)
_TALKGROUP_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ISSUER_NAME_RE = re.compile(r"[a-z0-9-]{1,32}")


class AuthError(Exception):
    """A refused token or login; `code` is stable (clients rely on it)."""

    def __init__(self, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclasses.dataclass(frozen=True)
class AccessClaims(Claims):
    """Claims plus what revocation needs: `jti` (None only for an external token without
    one), `iat`, and whether this is a long-lived service token."""

    jti: str | None = None
    iat: int | None = None
    service: bool = False


class LiveCheck(Protocol):
    """What `verify_live` asks once the signature and claims are good (identity/live.py)."""

    async def current(self, claims: AccessClaims) -> AccessClaims: ...


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[int | float]:
    # RFC 7519 section 2: a NumericDate is a JSON number (possibly non-integer).
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _claims_invalid(message: str) -> AuthError:
    return AuthError("token_claims_invalid", message)


def _typ_ok(typ: object, accepted: tuple[str, ...]) -> bool:
    # RFC 7515 section 4.1.9: "application/" may be left out, and media types compare
    # case-insensitively.
    if not isinstance(typ, str):
        return False
    value = typ.lower().removeprefix("application/")
    return value in {a.lower().removeprefix("application/") for a in accepted}


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
    """Issues our tokens; verifies ours and, optionally, those of one trusted external issuer.

    `live` is set once the app has Redis (service/http_auth.py): `verify_live` fails closed
    without it.
    """

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
        self.live: LiveCheck | None = None
        self._external_key: Any = None
        self._external_algorithms: list[str] = []
        if external is not None:
            if external.issuer == issuer:
                # Routing is by issuer: sharing one would let either key speak for the other.
                raise ValueError("the external issuer must differ from our own issuer")
            if not _ISSUER_NAME_RE.fullmatch(external.name):
                raise ValueError("the external issuer's name must be 1-32 of [a-z0-9-]")
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

    def derive_key(self, purpose: str) -> bytes:
        """A separate key for another use of our secret (media URLs): HMAC with a label, so
        a value signed for one purpose never verifies for another (key separation)."""
        return hmac.new(self._secret, b"ptt-server/derive/" + purpose.encode(),
                        hashlib.sha256).digest()

    def issue(
        self, user: User, ttl_s: int, now: float | None = None, *,
        jti: str | None = None, service: bool | None = None,
    ) -> str:
        """A signed access token for `user`, valid `ttl_s` seconds.

        Over ACCESS_MAX_LIFETIME_S the token is a service token (`svc`), which only the admin
        command line asks for (a login's lifetime comes from the config, far below); nothing
        over SERVICE_MAX_LIFETIME_S is minted.
        """
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        if ttl_s > SERVICE_MAX_LIFETIME_S:
            raise ValueError(f"ttl_s must be at most {SERVICE_MAX_LIFETIME_S} s")
        if service is None:
            service = ttl_s > ACCESS_MAX_LIFETIME_S
        elif not service and ttl_s > ACCESS_MAX_LIFETIME_S:
            raise ValueError(f"an access token lives at most {ACCESS_MAX_LIFETIME_S} s")
        iat = int(time.time() if now is None else now)
        payload: dict[str, Any] = {
            "sub": user.name,
            "role": user.role.value,
            "talkgroups": list(user.talkgroups),
            "priority": user.priority,
            "alias": user.alias,
            "iat": iat,
            "exp": iat + int(ttl_s),
            "iss": self.issuer,
            "aud": self.audience,
            "jti": jti or uuid.uuid4().hex,
        }
        if service:
            payload["svc"] = True
        return jwt.encode(
            payload, self._secret, algorithm="HS256", headers={"typ": TOKEN_TYPE}
        )

    async def verify_live(self, token: str, now: float | None = None) -> AccessClaims:
        """`verify`, then what only shared state knows: not revoked, and the user's current
        role and talkgroups (the one check every WebSocket and HTTP request goes through)."""
        claims = self.verify(token, now)
        if self.live is None:
            raise AuthError("unavailable", "token revocation cannot be checked")
        return await self.live.current(claims)

    def verify(self, token: str, now: float | None = None) -> AccessClaims:
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
        claims = self._claims(payload, issuer, audience, now, ours=issuer == self.issuer)
        # Checked after the claims so that an expired or misdirected token keeps its own code.
        accepted = (TOKEN_TYPE,) if external is None or issuer == self.issuer else (
            external.token_types)
        if not _typ_ok(header.get("typ"), accepted):
            raise AuthError("token_type_invalid", "this is not an access token (typ)")
        return self._bounded(payload, claims, now, ours=issuer == self.issuer)

    def _bounded(
        self, payload: dict[str, Any], claims: Claims, now: float, *, ours: bool
    ) -> AccessClaims:
        """The lifetime bound, `jti` and `iat` (RFC 8725 section 3.10's spirit: a valid
        signature does not make an absurd token sensible)."""
        iat = payload.get("iat")
        service = ours and payload.get("svc") is True
        if ours and iat is None:
            raise _claims_invalid("iat is required")
        limit = SERVICE_MAX_LIFETIME_S if service else ACCESS_MAX_LIFETIME_S
        start = now if iat is None else iat  # an external token without iat: from now
        if claims.exp - start > limit + LEEWAY_S:
            raise AuthError("token_lifetime_invalid", "the token's lifetime is too long")
        jti = payload.get("jti")
        if jti is not None and (not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LEN):
            raise _claims_invalid("jti must be a short string")
        if ours and jti is None:
            raise _claims_invalid("jti is required")
        if jti is not None and not ours and self.external is not None:
            # Keep an external issuer's ids apart from ours in the revocation list.
            jti = f"{EXTERNAL_PREFIX}{self.external.name}:{jti}"
        fields = {f.name: getattr(claims, f.name) for f in dataclasses.fields(Claims)}
        if not ours and self.external is not None:
            fields["sub"] = f"{EXTERNAL_PREFIX}{self.external.name}:{claims.sub}"
        return AccessClaims(**fields, jti=jti, iat=None if iat is None else int(iat),
                            service=service)

    def issuer_of(self, sub: str) -> str:
        """Whose user `sub` is (used for a media URL, which names the user, not the issuer)."""
        if sub.startswith(EXTERNAL_PREFIX) and self.external is not None:
            return self.external.issuer
        return self.issuer

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
