"""Password hashing: self-describing scrypt hashes, verified in constant time.

A stored hash carries its own parameters (`scrypt$n$r$p$salt_b64$hash_b64`), so the cost can
be raised later without invalidating existing passwords; absurd stored parameters are refused
rather than allowed to burn memory at every login.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

MAX_PASSWORD_LEN = 1024  # longer ones are refused before any hashing

# scrypt cost: n=2**15, r=8 uses 32 MiB and ~50-100 ms per hash, the OWASP-recommended floor.
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
SALT_LEN = 16
HASH_LEN = 32
# Stored hashes carry their own parameters; refuse absurd ones (a tampered file could otherwise
# make every login burn gigabytes of memory): at most twice our own memory cost.
MAX_SCRYPT_MEM = 2 * 128 * SCRYPT_R * SCRYPT_N


def _maxmem(n: int, r: int) -> int:
    # scrypt needs 128*r*n bytes plus small buffers; OpenSSL's default cap (32 MiB) is exactly
    # our cost and so too tight.
    return 2 * 128 * r * n


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """A self-describing scrypt hash: `scrypt$n$r$p$salt_b64$hash_b64` (never the password)."""
    salt = secrets.token_bytes(SALT_LEN)
    digest = hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
        maxmem=_maxmem(SCRYPT_N, SCRYPT_R), dklen=HASH_LEN,
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    """Recompute with the stored parameters and compare in constant time."""
    try:
        scheme, n_s, r_s, p_s, salt_b64, hash_b64 = stored.split("$")
        n, r, p = int(n_s), int(r_s), int(p_s)
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(hash_b64, validate=True)
    except ValueError:
        return False
    if scheme != "scrypt" or n < 2 or n & (n - 1) or not 1 <= r <= 32:
        return False
    if 128 * r * n > MAX_SCRYPT_MEM:
        return False
    if not 1 <= p <= 16 or not expected:
        return False
    try:
        digest = hashlib.scrypt(
            password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_maxmem(n, r),
            dklen=len(expected),
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest, expected)


# Verified against when the user does not exist, so that an unknown name costs the same scrypt
# work as a wrong password (no timing oracle for which names exist). It matches no password.
DUMMY_HASH = (
    f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(bytes(SALT_LEN))}${_b64(bytes(HASH_LEN))}"
)
