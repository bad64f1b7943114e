"""Tokens (RFC 7519, verified per RFC 8725 and typed per RFC 9068), the live check (revoked
jtis, the directory), refresh tokens (rotation, reuse detection) and signed media URLs.
Login throttling is in test_login_throttle.py."""

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
from urllib.parse import parse_qsl

import jwt
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ptt_server.core.config import ExternalIssuer
from ptt_server.core.model import Role, User
from ptt_server.identity.auth import (
    SIGNING_KEY_FILE,
    AccessClaims,
    AuthError,
    TokenAuthority,
    claims_to_dict,
    load_or_create_signing_key,
)
from ptt_server.identity.directory import Directory
from ptt_server.identity.live import LiveAccess
from ptt_server.identity.media_urls import MediaUrls
from ptt_server.identity.refresh import RefreshError, RefreshTokens

SECRET = b"k" * 32
ISS, AUD = "ptt-server", "ptt"
EXT_ISS = "https://sso.police.example"
NOW = 1_700_000_000.0

USER = User("u12", Role.OFFICER, ("north", "south"), "Unit 12", 100)
AT = {"typ": "at+jwt"}


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
    return jwt.encode(payload(**overrides), SECRET, algorithm="HS256", headers=AT)


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
    raw = jwt.decode(token, options={"verify_signature": False})
    assert authority.verify(token, now=NOW + 10) == AccessClaims(
        sub="u12", role=Role.OFFICER, talkgroups=("north", "south"), priority=100,
        alias="Unit 12", exp=int(NOW) + 3600, iss=ISS, aud=AUD, jti=raw["jti"],
        iat=int(NOW), service=False,
    )
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256" and header["typ"] == "at+jwt"
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
    assert d["jti"] and d["iat"] == int(NOW) and d["service"] is False
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
        token = jwt.encode(payload(), SECRET * 2, algorithm=alg, headers=AT)  # long enough
        assert code(authority, token) == "token_algorithm_rejected"


def test_asymmetric_token_for_our_issuer_rejected(
    with_external: TokenAuthority, rsa_key: rsa.RSAPrivateKey
) -> None:
    token = jwt.encode(payload(), rsa_key, algorithm="RS256", headers=AT)
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
    token = jwt.encode(ext_payload(), rsa_key, algorithm="RS256", headers=AT)
    claims = with_external.verify(token, now=NOW)
    # Namespaced: never the local user "u12" (local names cannot contain ':').
    assert claims.iss == EXT_ISS and claims.sub == "ext:sso:u12" and claims.aud == AUD
    assert claims.jti == "ext:sso:x"  # apart from our own jtis in the revocation list
    # Presentation claims may be left out by an external issuer: role defaults apply.
    bare = jwt.encode(ext_payload(priority=..., alias=..., jti=..., iat=...), rsa_key,
                      algorithm="RS256", headers=AT)
    claims = with_external.verify(bare, now=NOW)
    assert claims.priority == 100 and claims.alias == "u12" and claims.jti is None
    # ... but our own tokens must carry them.
    assert code(with_external, ours(alias=...)) == "token_claims_invalid"


def test_external_ps256_accepted_when_configured(rsa_key: rsa.RSAPrivateKey) -> None:
    ext = ExternalIssuer(EXT_ISS, pem_public(rsa_key), algorithms=("PS256",))
    auth = TokenAuthority(SECRET, issuer=ISS, audience=AUD, external=ext)
    assert auth.verify(jwt.encode(ext_payload(), rsa_key, algorithm="PS256", headers=AT), now=NOW)
    assert code(auth, jwt.encode(ext_payload(), rsa_key, algorithm="RS256", headers=AT)) == (
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
    token = jwt.encode(ext_payload(), other, algorithm="RS256", headers=AT)
    assert code(with_external, token) == "token_invalid_signature"


def test_external_expiry_and_audience(
    with_external: TokenAuthority, rsa_key: rsa.RSAPrivateKey
) -> None:
    def token(**over: Any) -> str:
        return jwt.encode(ext_payload(**over), rsa_key, algorithm="RS256", headers=AT)

    assert code(with_external, token(exp=int(NOW) - 60)) == "token_expired"
    assert code(with_external, token(aud="elsewhere")) == "token_wrong_audience"


def test_external_own_audience(rsa_key: rsa.RSAPrivateKey) -> None:
    ext = ExternalIssuer(EXT_ISS, pem_public(rsa_key), audience="ptt-sso")
    auth = TokenAuthority(SECRET, issuer=ISS, audience=AUD, external=ext)
    assert auth.verify(
        jwt.encode(ext_payload(aud="ptt-sso"), rsa_key, algorithm="RS256", headers=AT), now=NOW
    ).aud == "ptt-sso"
    assert code(auth, jwt.encode(ext_payload(), rsa_key, algorithm="RS256", headers=AT)) == (
        "token_wrong_audience"
    )


def test_external_ec_and_eddsa_keys() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    auth = TokenAuthority(
        SECRET, issuer=ISS, audience=AUD, external=ExternalIssuer(EXT_ISS, pem_public(ec_key))
    )
    assert auth.verify(jwt.encode(ext_payload(), ec_key, algorithm="ES256", headers=AT), now=NOW)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    auth = TokenAuthority(
        SECRET, issuer=ISS, audience=AUD, external=ExternalIssuer(EXT_ISS, pem_public(ed_key))
    )
    assert auth.verify(jwt.encode(ext_payload(), ed_key, algorithm="EdDSA", headers=AT), now=NOW)


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


# -- explicit typing and bounded lifetimes (RFC 8725 sections 3.11, 3.10) ----------------------
@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "at+jwt+x", "id+jwt", 7])
def test_untyped_or_mistyped_tokens_refused(authority: TokenAuthority, typ: Any) -> None:
    header = {} if typ is None else {"typ": typ}
    token = jwt.encode(payload(), SECRET, algorithm="HS256", headers=header)
    if typ is None:
        # PyJWT adds "typ": "JWT" unless told not to: a hand-made token has none at all.
        token = hs_token({"alg": "HS256"}, payload(), SECRET)
    assert code(authority, token) == "token_type_invalid"


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt"])
def test_access_token_type_accepted(authority: TokenAuthority, typ: str) -> None:
    token = jwt.encode(payload(), SECRET, algorithm="HS256", headers={"typ": typ})
    assert authority.verify(token, now=NOW).sub == "u12"


def test_expired_token_keeps_its_code_whatever_its_type(authority: TokenAuthority) -> None:
    token = jwt.encode(payload(exp=int(NOW) - 60), SECRET, algorithm="HS256")  # typ JWT
    assert code(authority, token) == "token_expired"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"exp": 253402300799}, "token_lifetime_invalid"),  # the year 9999
        ({"exp": int(NOW) + 12 * 3600 + 60}, "token_lifetime_invalid"),
        ({"exp": int(NOW) + 30 * 86400, "svc": "yes"}, "token_lifetime_invalid"),
        ({"exp": int(NOW) + 367 * 86400, "svc": True}, "token_lifetime_invalid"),
        ({"iat": int(NOW) - 13 * 3600, "exp": int(NOW) + 60}, "token_lifetime_invalid"),
        ({"iat": ...}, "token_claims_invalid"),
        ({"jti": ...}, "token_claims_invalid"),
        ({"jti": ""}, "token_claims_invalid"),
        ({"jti": 12}, "token_claims_invalid"),
        ({"jti": "x" * 129}, "token_claims_invalid"),
    ],
)
def test_lifetime_jti_and_iat_checked(
    authority: TokenAuthority, overrides: dict[str, Any], expected: str
) -> None:
    assert code(authority, ours(**overrides)) == expected


def test_service_tokens_may_live_longer(authority: TokenAuthority) -> None:
    claims = authority.verify(ours(exp=int(NOW) + 366 * 86400, svc=True), now=NOW)
    assert claims.service is True
    assert authority.verify(ours(exp=int(NOW) + 12 * 3600), now=NOW).service is False


def test_issue_bounds_lifetimes(authority: TokenAuthority) -> None:
    def raw(token: str) -> dict[str, Any]:
        return dict(jwt.decode(token, options={"verify_signature": False}))

    assert "svc" not in raw(authority.issue(USER, 12 * 3600, now=NOW))
    # Longer than an access token may live: a service token (the admin command line's --ttl).
    long_lived = authority.issue(USER, 90 * 86400, now=NOW)
    assert raw(long_lived)["svc"] is True
    assert authority.verify(long_lived, now=NOW + 80 * 86400).service is True
    with pytest.raises(ValueError):
        authority.issue(USER, 13 * 3600, now=NOW, service=False)
    with pytest.raises(ValueError):
        authority.issue(USER, 367 * 86400, now=NOW)
    assert raw(authority.issue(USER, 60, now=NOW, jti="chosen"))["jti"] == "chosen"


def test_external_lifetime_and_type(rsa_key: rsa.RSAPrivateKey) -> None:
    ext = ExternalIssuer(EXT_ISS, pem_public(rsa_key))
    auth = TokenAuthority(SECRET, issuer=ISS, audience=AUD, external=ext)

    def token(headers: dict[str, Any] = AT, **over: Any) -> str:
        return jwt.encode(ext_payload(**over), rsa_key, algorithm="RS256", headers=headers)

    # Without iat the lifetime counts from now; far-future tokens are refused either way.
    assert code(auth, token(iat=..., exp=253402300799)) == "token_lifetime_invalid"
    assert code(auth, token(exp=int(NOW) + 2 * 86400)) == "token_lifetime_invalid"
    assert code(auth, token(exp=int(NOW) + 2 * 86400, svc=True)) == "token_lifetime_invalid"
    # An ID token or other JWT of the same provider is not an access token ...
    assert code(auth, token(headers={"typ": "JWT"})) == "token_type_invalid"
    # ... unless the operator says this provider does not type its access tokens.
    lax = TokenAuthority(SECRET, issuer=ISS, audience=AUD, external=ExternalIssuer(
        EXT_ISS, pem_public(rsa_key), name="county", token_types=("at+jwt", "JWT")))
    assert lax.verify(token(headers={"typ": "JWT"}), now=NOW).sub == "ext:county:u12"
    with pytest.raises(ValueError):
        TokenAuthority(SECRET, issuer=ISS, audience=AUD,
                       external=ExternalIssuer(EXT_ISS, pem_public(rsa_key), name="Bad:Name"))


def test_external_user_never_passes_for_a_local_one(
    with_external: TokenAuthority, rsa_key: rsa.RSAPrivateKey
) -> None:
    """An SSO account named like a local admin stays an SSO account."""
    token = jwt.encode(ext_payload(sub="root", role="officer"), rsa_key, algorithm="RS256",
                       headers=AT)
    claims = with_external.verify(token, now=NOW)
    assert claims.sub == "ext:sso:root" and claims.iss == EXT_ISS
    assert with_external.issuer_of(claims.sub) == EXT_ISS
    assert with_external.issuer_of("root") == ISS


async def test_verify_live_fails_closed_without_shared_state(authority: TokenAuthority) -> None:
    with pytest.raises(AuthError) as e:
        await authority.verify_live(authority.issue(USER, 60))
    assert e.value.code == "unavailable"


def test_derived_keys_are_separate(authority: TokenAuthority) -> None:
    a, b = authority.derive_key("media-url"), authority.derive_key("other")
    assert len(a) == 32 and a != b and SECRET not in (a, b)
    assert TokenAuthority(b"x" * 32, issuer=ISS, audience=AUD).derive_key("media-url") != a


# -- the live check: revoked jtis and the directory --------------------------------------------
@pytest.fixture
def directory(data_dir: Path) -> Directory:
    d = Directory(data_dir / "directory.sqlite3")
    d.add_talkgroup("north")
    d.add_talkgroup("south")
    d.add_user("u12", Role.OFFICER, ["north", "south"], "pw", alias="Unit 12")
    return d


@pytest.fixture
def live_authority(
    redis: aioredis.Redis, directory: Directory, rsa_key: rsa.RSAPrivateKey
) -> TokenAuthority:
    auth = TokenAuthority(SECRET, issuer=ISS, audience=AUD,
                          external=ExternalIssuer(EXT_ISS, pem_public(rsa_key)))
    auth.live = LiveAccess(redis, directory, local_issuer=ISS)
    return auth


async def live_code(auth: TokenAuthority, token: str) -> str:
    with pytest.raises(AuthError) as e:
        await auth.verify_live(token)
    return e.value.code


async def test_live_applies_the_directory(
    live_authority: TokenAuthority, directory: Directory
) -> None:
    token = live_authority.issue(USER, 600)
    assert (await live_authority.verify_live(token)).talkgroups == ("north", "south")
    directory.add_user("u12", Role.AUDITOR, [], "pw", alias="Audit 12", replace=True)
    claims = await live_authority.verify_live(token)  # the same token, the directory's view
    assert (claims.role, claims.talkgroups, claims.alias, claims.priority) == (
        Role.AUDITOR, (), "Audit 12", 0)
    directory.remove_user("u12")
    assert await live_code(live_authority, token) == "token_revoked"


async def test_live_refuses_revoked_jti_until_expiry(
    live_authority: TokenAuthority, redis: aioredis.Redis
) -> None:
    live = live_authority.live
    assert isinstance(live, LiveAccess)
    token, other = live_authority.issue(USER, 600), live_authority.issue(USER, 600)
    claims = live_authority.verify(token)
    await live.revoke(claims.jti, claims.exp)
    assert await live_code(live_authority, token) == "token_revoked"
    assert (await live_authority.verify_live(other)).sub == "u12"  # only that token
    # The entry lasts as long as the token could, no longer.
    ttl = await redis.ttl(f"ptt:revoked:{claims.jti}")
    assert 600 <= ttl <= 600 + 10
    await live.revoke("gone", time.time() - 60)  # already expired: nothing to keep
    assert not await redis.exists("ptt:revoked:gone")


async def test_live_external_users_skip_the_directory(
    live_authority: TokenAuthority, rsa_key: rsa.RSAPrivateKey
) -> None:
    now = int(time.time())
    token = jwt.encode(ext_payload(sub="u12", iat=now, exp=now + 600, jti="e1"), rsa_key,
                       algorithm="RS256", headers=AT)
    claims = await live_authority.verify_live(token)
    # Not the local u12 (who has north and south): the token's own view.
    assert claims.sub == "ext:sso:u12" and claims.talkgroups == ("north",)
    assert isinstance(live_authority.live, LiveAccess)
    await live_authority.live.revoke(claims.jti, claims.exp)
    assert await live_code(live_authority, token) == "token_revoked"


async def test_live_fails_closed_when_redis_is_down(directory: Directory) -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    auth = TokenAuthority(SECRET, issuer=ISS, audience=AUD)
    auth.live = LiveAccess(dead, directory, local_issuer=ISS)
    try:
        assert await live_code(auth, auth.issue(USER, 600)) == "unavailable"
    finally:
        await dead.aclose()


# -- refresh tokens ----------------------------------------------------------------------------
@pytest.fixture
def refresh(redis: aioredis.Redis) -> RefreshTokens:
    return RefreshTokens(redis, idle_s=3600, absolute_s=7 * 86400)


async def refresh_error(refresh: RefreshTokens, token: object) -> RefreshError:
    with pytest.raises(RefreshError) as e:
        await refresh.rotate(token, "new-jti", int(time.time()) + 600)
    assert e.value.code == "refresh_invalid"
    return e.value


async def test_refresh_rotates(refresh: RefreshTokens, redis: aioredis.Redis) -> None:
    first = await refresh.issue("u12", "jti-0", int(time.time()) + 600)
    assert first.user == "u12" and first.expires_at - time.time() > 3500
    second = await refresh.rotate(first.token, "jti-1", int(time.time()) + 600)
    assert second.user == "u12" and second.token != first.token
    third = await refresh.rotate(second.token, "jti-2", int(time.time()) + 600)
    assert third.token not in (first.token, second.token)
    # Redis holds a hash of the current token, never a token.
    [key] = await redis.keys("ptt:refresh:*")
    stored = b" ".join(v for kv in (await redis.hgetall(key)).items() for v in kv)
    for grant in (first, second, third):
        assert grant.token.split(".")[2].encode() not in stored


async def test_refresh_reuse_revokes_the_family(refresh: RefreshTokens) -> None:
    """RFC 6819 section 5.2.2.3: a used refresh token presented again ends the whole chain."""
    stolen = await refresh.issue("u12", "jti-0", int(time.time()) + 600)
    legit = await refresh.rotate(stolen.token, "jti-1", int(time.time()) + 600)
    err = await refresh_error(refresh, stolen.token)  # the thief (or the victim) replays it
    assert err.ended is not None and err.ended.reused
    assert (err.ended.user, err.ended.access_jti) == ("u12", "jti-1")  # to revoke as well
    await refresh_error(refresh, legit.token)  # the newer one dies with it
    other = await refresh.issue("u12", "jti-9", int(time.time()) + 600)
    assert (await refresh.rotate(other.token, "x", int(time.time()) + 600)).user == "u12"


async def test_refresh_concurrent_use_rotates_once(refresh: RefreshTokens) -> None:
    grant = await refresh.issue("u12", "jti-0", int(time.time()) + 600)
    results = await asyncio.gather(
        *(refresh.rotate(grant.token, f"j{i}", int(time.time()) + 600) for i in range(10)),
        return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1


@pytest.mark.parametrize("token", [
    None, 12, "", "garbage", "a.b.c", "A" * 22 + ".0." + "B" * 43, "x" * 500,
])
async def test_refresh_garbage_refused(refresh: RefreshTokens, token: object) -> None:
    assert (await refresh_error(refresh, token)).ended is None


async def test_refresh_forged_secret_does_not_end_the_family(refresh: RefreshTokens) -> None:
    grant = await refresh.issue("u12", "jti-0", int(time.time()) + 600)
    family, gen, _ = grant.token.split(".")
    assert (await refresh_error(refresh, f"{family}.{gen}.{'Z' * 43}")).ended is None
    assert (await refresh_error(refresh, f"{family}.5.{'Z' * 43}")).ended is None
    assert (await refresh.rotate(grant.token, "j", int(time.time()) + 600)).user == "u12"


async def until_refused(refresh: RefreshTokens, token: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            token = (await refresh.rotate(token, "j", int(time.time()) + 600)).token
        except RefreshError:
            return token
        await asyncio.sleep(0.1)
    raise AssertionError("the refresh token never expired")


async def test_refresh_idle_and_absolute_lifetimes(redis: aioredis.Redis) -> None:
    idle = RefreshTokens(redis, idle_s=1, absolute_s=3600)
    grant = await idle.issue("u12", "j", int(time.time()) + 600)
    started = time.monotonic()
    deadline = started + 10
    while await redis.exists(f"ptt:refresh:{grant.token.split('.')[0]}"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert time.monotonic() - started >= 0.5  # it lived about its second, not less
    await refresh_error(idle, grant.token)
    # Used every 0.1 s, a chain still ends at its absolute deadline.
    absolute = RefreshTokens(redis, idle_s=3600, absolute_s=1)
    chain = await absolute.issue("u12", "j", int(time.time()) + 600)
    t0 = time.monotonic()
    await until_refused(absolute, chain.token, 10)
    assert time.monotonic() - t0 >= 0.5


async def test_refresh_revoke(refresh: RefreshTokens) -> None:
    grant = await refresh.issue("u12", "jti-0", int(time.time()) + 600)
    assert await refresh.revoke("garbage") is None
    family, gen, _ = grant.token.split(".")
    assert await refresh.revoke(f"{family}.{gen}.{'Z' * 43}") is None  # not its secret
    ended = await refresh.revoke(grant.token)
    assert ended is not None and (ended.user, ended.access_jti) == ("u12", "jti-0")
    await refresh_error(refresh, grant.token)
    assert await refresh.revoke(grant.token) is None


# -- signed media URLs -------------------------------------------------------------------------
def signed(urls: MediaUrls, path: str = "/api/recordings/rec-1/audio",
           **kw: Any) -> tuple[str, dict[str, str]]:
    url, _ = urls.sign(path, sub="aud", role="auditor", jti="j1", now=NOW, **kw)
    p, _, q = url.partition("?")
    return p, dict(parse_qsl(q))


def test_media_url_round_trip() -> None:
    urls = MediaUrls(b"m" * 32, 60)
    path, query = signed(urls, extra={"download": "1"})
    grant = urls.verify(path, query, count=len(query), now=NOW + 30)
    assert (grant.sub, grant.role, grant.jti, grant.exp) == ("aud", "auditor", "j1", int(NOW) + 60)
    assert "token" not in query and query["download"] == "1"


@pytest.mark.parametrize("change", [
    {"u": "root"}, {"r": "admin"}, {"j": "j2"}, {"e": str(int(NOW) + 600)}, {"download": "0"},
    {"extra": "1"}, {"sig": "A" * 43},
])
def test_media_url_tampering_refused(change: dict[str, str]) -> None:
    urls = MediaUrls(b"m" * 32, 60)
    path, query = signed(urls)
    query.update(change)
    with pytest.raises(AuthError) as e:
        urls.verify(path, query, count=len(query), now=NOW)
    assert e.value.code == "media_url_invalid"


def test_media_url_bound_to_path_key_and_time() -> None:
    urls = MediaUrls(b"m" * 32, 60)
    path, query = signed(urls)
    for other_path, verifier, now, expected in [
        ("/api/recordings/rec-2/audio", urls, NOW, "media_url_invalid"),
        ("/api/recordings/rec-1/wav", urls, NOW, "media_url_invalid"),
        (path, MediaUrls(b"n" * 32, 60), NOW, "media_url_invalid"),
        (path, urls, NOW + 66, "media_url_expired"),
        (path, MediaUrls(b"m" * 32, 10), NOW, "media_url_invalid"),  # further out than allowed
    ]:
        with pytest.raises(AuthError) as e:
            verifier.verify(other_path, query, count=len(query), now=now)
        assert e.value.code == expected, (other_path, now)
    with pytest.raises(AuthError):  # a parameter sent twice
        urls.verify(path, query, count=len(query) + 1, now=NOW)
