"""Authentication, in one import: tokens, the signing key, login throttling.

Where each part lives:

* identity/tokens.py: access tokens (JWT per RFC 8725): issue, verify, `verify_live`;
* identity/live.py: the per-request check (revoked `jti`s, the directory's current view);
* identity/refresh.py: refresh tokens (rotated, reuse detected, RFC 6819 section 5.2.2.3);
* identity/throttle.py: login throttling, counted before the password is checked;
* identity/media_urls.py: short-lived signed URLs for audio players;
* here: the HS256 signing key, shared by every process of one data directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

from ptt_server.core.model import Claims
from ptt_server.identity.throttle import LoginLimiter
from ptt_server.identity.tokens import (
    ACCESS_MAX_LIFETIME_S,
    LEEWAY_S,
    SERVICE_MAX_LIFETIME_S,
    SIGNING_KEY_LEN,
    TOKEN_TYPE,
    AccessClaims,
    AuthError,
    TokenAuthority,
    claims_to_dict,
)

SIGNING_KEY_FILE = "jwt-signing.key"

__all__ = [
    "ACCESS_MAX_LIFETIME_S", "LEEWAY_S", "SERVICE_MAX_LIFETIME_S", "SIGNING_KEY_FILE",
    "SIGNING_KEY_LEN", "TOKEN_TYPE", "AccessClaims", "AuthError", "Claims", "LoginLimiter",
    "TokenAuthority", "claims_to_dict", "load_or_create_signing_key",
]


def load_or_create_signing_key(data_dir: Path) -> bytes:
    """The HS256 secret, created once per data directory and shared by every process."""
    return load_or_create_secret(data_dir, SIGNING_KEY_FILE, SIGNING_KEY_LEN)


def load_or_create_secret(data_dir: Path, name: str, length: int) -> bytes:
    """A random secret in the data directory (mode 0600), created on first use.

    Created in a private temporary file and then hard-linked into place: the link either
    succeeds or finds the file already there, so two processes starting together end up with
    the same secret, and nobody ever reads a half-written file.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / name
    if not path.exists():
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=data_dir)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(length))
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    key = path.read_bytes()
    if len(key) < length:
        raise AuthError("token_key_invalid", f"{path} holds fewer than {length} bytes")
    return key
