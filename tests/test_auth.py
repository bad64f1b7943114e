"""Tokens (RFC 7519, verified per RFC 8725) and the Redis-backed login limiter."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ptt_server.core.config import ExternalIssuer
from ptt_server.core.model import Role, User
from ptt_server.identity.auth import (
    SIGNING_KEY_FILE,
    AuthError,
    Claims,
    LoginLimiter,
    TokenAuthority,
    claims_to_dict,
    load_or_create_signing_key,
)

SECRET = b"k" * 32
ISS, AUD = "ptt-server", "ptt"
EXT_ISS = "https://sso.police.example"
NOW = 1_700_000_000.0

USER = User("u12", Role.OFFICER, ("north", "south"), "Unit 12", 100)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def hs_token(header: dict[str, Any], payload: dict[str, Any], key: bytes) -> str:
    """Hand-made HS token: PyJWT itself refuses some of the hostile ones we need."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def payload(**overrides: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "sub": "u12", "role": "officer", "talkgroups": ["north"], "priority": 100,
        "alias": "Unit 12", "iat": int(NOW), "exp": int(NOW) + 600, "iss": ISS, "aud": AUD,
        "jti": "x",
    }
    for k, v in overrides.items():
        if v is ...:
            p.pop(k, None)
        else:
            p[k] = v
    return p


def ours(**overrides: Any) -> str:
    return jwt.encode(payload(**overrides), SECRET, algorithm="HS256")


def pem_public(key: Any) -> str:
    return str(
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def authority() -> TokenAuthority:
    return TokenAuthority(SECRET, issuer=ISS, audience=AUD)


@pytest.fixture
def with_external(rsa_key: rsa.RSAPrivateKey) -> TokenAuthority:
    ext = ExternalIssuer(issuer=EXT_ISS, public_key_pem=pem_public(rsa_key))
    return TokenAuthority(SECRET, issuer=ISS, audience=AUD, external=ext)


def code(authority: TokenAuthority, token: str, now: float = NOW) -> str:
    with pytest.raises(AuthError) as e:
        authority.verify(token, now=now)
    return e.value.code


# -- our own tokens ----------------------------------------------------------------------------
def test_issue_and_verify_round_trip(authority: TokenAuthority) -> None:
    token = authority.issue(USER, 3600, now=NOW)
    assert authority.verify(token, now=NOW + 10) == Claims(
        sub="u12", role=Role.OFFICER, talkgroups=("north", "south"), priority=100,
        alias="Unit 12", exp=int(NOW) + 3600, iss=ISS, aud=AUD,
    )
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256" and header["typ"] == "at+jwt"
    raw = jwt.decode(token, options={"verify_signature": False})
    assert raw["iat"] == int(NOW) and raw["jti"] and set(raw) >= {
        "sub", "role", "talkgroups", "priority", "alias", "exp", "iat", "iss", "aud", "jti"
    }
    assert raw["jti"] != jwt.decode(
        authority.issue(USER, 3600, now=NOW), options={"verify_signature": False}
    )["jti"]


def test_verify_uses_wall_clock_by_default(authority: TokenAuthority) -> None:
    assert authority.verify(authority.issue(USER, 60)).sub == "u12"
    assert code(authority, authority.issue(USER, 60, now=time.time() - 3600), time.time()) == (
        "token_expired"
    )


def test_claims_to_dict(authority: TokenAuthority) -> None:
    d = claims_to_dict(authority.verify(authority.issue(USER, 60, now=NOW), now=NOW))
    assert d["role"] == "officer" and d["talkgroups"] == ["north", "south"]
    json.dumps(d)


def test_expiry_with_small_leeway(authority: TokenAuthority) -> None:
    token = authority.issue(USER, 60, now=NOW)
    authority.verify(token, now=NOW + 60 + 4)  # within the 5 s leeway
    assert code(authority, token, NOW + 60 + 5) == "token_expired"
    assert code(authority, token, NOW + 86400) == "token_expired"


def test_wrong_secret(authority: TokenAuthority) -> None:
    other = TokenAuthority(b"x" * 32, issuer=ISS, audience=AUD)
    assert code(authority, other.issue(USER, 60, now=NOW)) == "token_invalid_signature"


def test_tampered_payload(authority: TokenAuthority) -> None:
    head, _, sig = authority.issue(USER, 60, now=NOW).split(".")
    forged = b64url(json.dumps(payload(role="admin", priority=255)).encode())
    assert code(authority, f"{head}.{forged}.{sig}") == "token_invalid_signature"


def test_wrong_issuer_and_audience(authority: TokenAuthority) -> None:
    assert code(authority, ours(iss="someone-else")) == "token_wrong_issuer"
    assert code(authority, ours(aud="other-app")) == "token_wrong_audience"
    assert code(authority, ours(aud=["other-app"])) == "token_wrong_audience"
    assert authority.verify(ours(aud=["other-app", AUD]), now=NOW).aud == AUD
    # A prefix of our issuer is not our issuer (cf. PyJWT's old partial-match bug).
    assert code(authority, ours(iss="ptt-serve")) == "token_wrong_issuer"


def test_alg_none_rejected(authority: TokenAuthority) -> None:
    for alg in ("none", "None", "NONE"):
        head = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        body = b64url(json.dumps(payload()).encode())
        assert code(authority, f"{head}.{body}.") == "token_algorithm_rejected"


def test_other_hmac_algorithms_rejected(authority: TokenAuthority) -> None:
    for alg in ("HS384", "HS512"):
        token = jwt.encode(payload(), SECRET * 2, algorithm=alg)  # long enough: no warning
        assert code(authority, token) == "token_algorithm_rejected"


def test_asymmetric_token_for_our_issuer_rejected(
    with_external: TokenAuthority, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(payload(), rsa_key, algorithm="RS256")
    assert code(with_external, token) == "token_algorithm_rejected"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"sub": ...}, "token_claims_invalid"),
        ({"sub": ""}, "token_claims_invalid"),
        ({"sub": 12}, "token_claims_invalid"),
        ({"role": ...}, "token_claims_invalid"),
        ({"role": "chief"}, "token_claims_invalid"),
        ({"role": 1}, "token_claims_invalid"),
        ({"talkgroups": ...}, "token_claims_invalid"),
        ({"talkgroups": "north"}, "token_claims_invalid"),
        ({"talkgroups": [1]}, "token_claims_invalid"),
        ({"talkgroups": ["bad id"]}, "token_claims_invalid"),
        ({"priority": ...}, "token_claims_invalid"),
        ({"priority": "100"}, "token_claims_invalid"),
        ({"priority": True}, "token_claims_invalid"),
        ({"priority": 1.5}, "token_claims_invalid"),
        ({"priority": 256}, "token_claims_invalid"),
        ({"priority": -1}, "token_claims_invalid"),
        ({"alias": ...}, "token_claims_invalid"),
        ({"alias": 7}, "token_claims_invalid"),
        ({"exp": ...}, "token_claims_invalid"),
        ({"exp": "later"}, "token_claims_invalid"),
        ({"exp": True}, "token_claims_invalid"),
        ({"iss": ...}, "token_claims_invalid"),
        ({"aud": ...}, "token_claims_invalid"),
        ({"nbf": int(NOW) + 60}, "token_claims_invalid"),
        ({"iat": int(NOW) + 60}, "token_claims_invalid"),
        ({"iat": "now"}, "token_claims_invalid"),
    ],
)
def test_claims_checked(
    authority: TokenAuthority, overrides: dict[str, Any], expected: str
) -> None:
    assert code(authority, ours(**overrides)) == expected


def test_priority_bounds_and_float_exp_accepted(authority: TokenAuthority) -> None:
    assert authority.verify(ours(priority=0), now=NOW).priority == 0
    assert authority.verify(ours(priority=255), now=NOW).priority == 255
    assert authority.verify(ours(exp=NOW + 60.5), now=NOW).exp == int(NOW) + 60
    assert authority.verify(ours(role="auditor", talkgroups=[]), now=NOW).talkgroups == ()


@pytest.mark.parametrize(
    "token", ["abc", "a.b.c", "a.b", "....", "eyJ.eyJ.x", "x" * 9000, "🚓.🚓.🚓"]
)
def test_malformed(authority: TokenAuthority, token: str) -> None:
    assert code(authority, token) == "token_malformed"


def test_missing(authority: TokenAuthority) -> None:
    assert code(authority, "") == "token_missing"
    assert code(authority, "   ") == "token_missing"


def test_payload_not_an_object(authority: TokenAuthority) -> None:
    token = hs_token({"alg": "HS256"}, [1, 2], SECRET)  # type: ignore[arg-type]
    assert code(authority, token) == "token_malformed"


def test_short_secret_refused() -> None:
    with pytest.raises(ValueError):
        TokenAuthority(b"short", issuer=ISS, audience=AUD)


# -- an external issuer ------------------------------------------------------------------------
def ext_payload(**overrides: Any) -> dict[str, Any]:
    return payload(iss=EXT_ISS, **overrides)


def test_external_rs256_accepted(
    with_external: TokenAuthority, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(ext_payload(), rsa_key, algorithm="RS256")
    claims = with_external.verify(token, now=NOW)
    assert claims.iss == EXT_ISS and claims.sub == "u12" and claims.aud == AUD
    # Presentation claims may be left out by an external issuer: role defaults apply.
    bare = jwt.encode(ext_payload(priority=..., alias=...), rsa_key, algorithm="RS256")
    claims = with_external.verify(bare, now=NOW)
    assert claims.priority == 100 and claims.alias == "u12"
    # ... but our own tokens must carry them.
    assert code(with_external, ours(alias=...)) == "token_claims_invalid"


def test_external_ps256_accepted_when_configured(rsa_key: rsa.RSAPrivateKey) -> None:
    ext = ExternalIssuer(EXT_ISS, pem_public(rsa_key), algorithms=("PS256",))
    auth = TokenAuthority(SECRET, issuer=ISS, audience=AUD, external=ext)
    assert auth.verify(jwt.encode(ext_payload(), rsa_key, algorithm="PS256"), now=NOW)
    assert code(auth, jwt.encode(ext_payload(), rsa_key, algorithm="RS256")) == (
        "token_algorithm_rejected"
    )


def test_hs256_token_claiming_external_issuer_rejected(
    with_external: TokenAuthority, rsa_key: rsa.RSAPrivateKey
) -> None:
    """The RS/HS confusion attack: an HMAC made with the (public!) RSA key as its secret."""
    public_pem = pem_public(rsa_key).encode()
    forged = hs_token({"alg": "HS256", "typ": "JWT"}, ext_payload(role="admin"), public_pem)
    assert code(with_external, forged) == "token_algorithm_rejected"
    # Nor with our own secret: the external issuer's tokens are never HMAC tokens.
    forged = hs_token({"alg": "HS256"}, ext_payload(), SECRET)
    assert code(with_external, forged) == "token_algorithm_rejected"


def test_external_wrong_key(with_external: TokenAuthority) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(ext_payload(), other, algorithm="RS256")
    assert code(with_external, token) == "token_invalid_signature"


def test_external_expiry_and_audience(
    with_external: TokenAuthority, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert code(
        with_external, jwt.encode(ext_payload(exp=int(NOW) - 60), rsa_key, algorithm="RS256")
    ) == "token_expired"
    assert code(
        with_external, jwt.encode(ext_payload(aud="elsewhere"), rsa_key, algorithm="RS256")
    ) == "token_wrong_audience"


def test_external_own_audience(rsa_key: rsa.RSAPrivateKey) -> None:
    ext = ExternalIssuer(EXT_ISS, pem_public(rsa_key), audience="ptt-sso")
    auth = TokenAuthority(SECRET, issuer=ISS, audience=AUD, external=ext)
    assert auth.verify(
        jwt.encode(ext_payload(aud="ptt-sso"), rsa_key, algorithm="RS256"), now=NOW
    ).aud == "ptt-sso"
    assert code(auth, jwt.encode(ext_payload(), rsa_key, algorithm="RS256")) == (
        "token_wrong_audience"
    )


def test_external_ec_and_eddsa_keys() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    auth = TokenAuthority(
        SECRET, issuer=ISS, audience=AUD, external=ExternalIssuer(EXT_ISS, pem_public(ec_key))
    )
    assert auth.verify(jwt.encode(ext_payload(), ec_key, algorithm="ES256"), now=NOW)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    auth = TokenAuthority(
        SECRET, issuer=ISS, audience=AUD, external=ExternalIssuer(EXT_ISS, pem_public(ed_key))
    )
    assert auth.verify(jwt.encode(ext_payload(), ed_key, algorithm="EdDSA"), now=NOW)


def test_external_config_checked(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = pem_public(rsa_key)
    with pytest.raises(ValueError):  # only symmetric algorithms: nothing left
        TokenAuthority(SECRET, issuer=ISS, audience=AUD,
                       external=ExternalIssuer(EXT_ISS, pem, algorithms=("HS256",)))
    with pytest.raises(ValueError):  # an EC-only list for an RSA key
        TokenAuthority(SECRET, issuer=ISS, audience=AUD,
                       external=ExternalIssuer(EXT_ISS, pem, algorithms=("ES256",)))
    with pytest.raises(ValueError):  # the same issuer name as ours
        TokenAuthority(SECRET, issuer=ISS, audience=AUD, external=ExternalIssuer(ISS, pem))
    private_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    with pytest.raises(ValueError):  # a private key is not a public key
        TokenAuthority(SECRET, issuer=ISS, audience=AUD,
                       external=ExternalIssuer(EXT_ISS, private_pem))
    # HS256 mixed into the list is dropped, never tried with the public key.
    auth = TokenAuthority(SECRET, issuer=ISS, audience=AUD,
                          external=ExternalIssuer(EXT_ISS, pem, algorithms=("HS256", "RS256")))
    forged = hs_token({"alg": "HS256"}, ext_payload(), pem.encode())
    assert code(auth, forged) == "token_algorithm_rejected"


def test_our_tokens_still_work_with_external(with_external: TokenAuthority) -> None:
    assert with_external.verify(ours(), now=NOW).iss == ISS


# -- the signing key ---------------------------------------------------------------------------
def test_signing_key_created_once(data_dir: Path) -> None:
    key = load_or_create_signing_key(data_dir)
    path = data_dir / SIGNING_KEY_FILE
    assert len(key) >= 32 and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_signing_key(data_dir) == key
    assert [p.name for p in data_dir.iterdir()] == [SIGNING_KEY_FILE]  # no temp files left


def test_signing_key_created_in_missing_dir(tmp_path: Path) -> None:
    assert len(load_or_create_signing_key(tmp_path / "a" / "b")) == 32


def test_truncated_signing_key_refused(data_dir: Path) -> None:
    (data_dir / SIGNING_KEY_FILE).write_bytes(b"short")
    with pytest.raises(AuthError):
        load_or_create_signing_key(data_dir)


def test_processes_starting_together_agree(data_dir: Path) -> None:
    script = (
        "import sys, time; from pathlib import Path\n"
        "from ptt_server.identity.auth import load_or_create_signing_key\n"
        "t = float(sys.argv[2])\n"
        "while time.time() < t: pass\n"
        "print(load_or_create_signing_key(Path(sys.argv[1])).hex())\n"
    )
    start = str(time.time() + 1.0)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(data_dir), start], stdout=subprocess.PIPE
        )
        for _ in range(8)
    ]
    keys = {p.communicate(timeout=30)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(keys) == 1
    assert bytes.fromhex(keys.pop().decode()) == (data_dir / SIGNING_KEY_FILE).read_bytes()
    assert os.listdir(data_dir) == [SIGNING_KEY_FILE]


# -- the login limiter -------------------------------------------------------------------------
async def limited(limiter: LoginLimiter, user: str, remote: str) -> AuthError | None:
    try:
        await limiter.check(user, remote)
    except AuthError as exc:
        assert exc.code == "login_rate_limited"
        return exc
    return None


async def test_limiter_per_username(redis: aioredis.Redis) -> None:
    limiter = LoginLimiter(redis, max_failures=3, window_s=60)
    for i in range(3):
        assert await limited(limiter, "u1", f"10.0.0.{i}") is None
        await limiter.failed("u1", f"10.0.0.{i}")
    exc = await limited(limiter, "u1", "10.9.9.9")
    assert exc is not None and exc.retry_after is not None and 1 <= exc.retry_after <= 60
    assert await limited(limiter, "u2", "10.9.9.9") is None  # other users unaffected
    await limiter.succeeded("u1", "10.0.0.1")
    assert await limited(limiter, "u1", "10.0.0.1") is None


async def test_limiter_per_address(redis: aioredis.Redis) -> None:
    limiter = LoginLimiter(redis, max_failures=2, window_s=60, max_address_failures=4)
    for i in range(4):
        await limiter.failed(f"user{i}", "203.0.113.7")
    assert await limited(limiter, "fresh", "203.0.113.7") is not None
    assert await limited(limiter, "fresh", "203.0.113.8") is None
    # A success clears the name's count only, not the address's.
    await limiter.succeeded("user0", "203.0.113.7")
    assert await limited(limiter, "user0", "203.0.113.7") is not None


async def test_limiter_window_ends(redis: aioredis.Redis) -> None:
    limiter = LoginLimiter(redis, max_failures=1, window_s=1)
    await limiter.failed("u1", "10.0.0.1")
    assert await limited(limiter, "u1", "10.0.0.1") is not None
    await asyncio.sleep(1.2)
    assert await limited(limiter, "u1", "10.0.0.1") is None


async def test_limiter_window_not_extended_by_failures(redis: aioredis.Redis) -> None:
    limiter = LoginLimiter(redis, max_failures=1, window_s=60)
    await limiter.failed("u1", "10.0.0.1")
    await redis.expire("ptt:login:user:u1", 5)
    await limiter.failed("u1", "10.0.0.1")
    assert 0 < await redis.ttl("ptt:login:user:u1") <= 5


async def test_limiter_shared_between_processes(redis: aioredis.Redis, redis_url: str) -> None:
    other_client = aioredis.Redis.from_url(redis_url)
    try:
        a = LoginLimiter(redis, max_failures=2, window_s=60)
        b = LoginLimiter(other_client, max_failures=2, window_s=60)
        await a.failed("u1", "10.0.0.1")
        await b.failed("u1", "10.0.0.2")
        assert await limited(a, "u1", "10.0.0.3") is not None
        assert await limited(b, "u1", "10.0.0.3") is not None
    finally:
        await other_client.aclose()


async def test_limiter_prefix(redis: aioredis.Redis) -> None:
    limiter = LoginLimiter(redis, max_failures=1, window_s=60, prefix="test")
    await limiter.failed("u1", None)
    assert await redis.exists("test:login:user:u1", "test:login:addr:unknown") == 2
