"""Short-lived signed media URLs, for players that cannot send an Authorization header.

An `<audio>` element fetches its `src` itself. Putting the bearer token in that URL (RFC 6750
section 2.3) leaks a long-lived credential into browser history, caches and proxy logs (RFC
6750 section 5.3 advises against it). Instead an authenticated client asks for a URL that:

* names one resource: the path and every query parameter are signed (HMAC-SHA256 with a key
  derived from the token secret for this purpose only), so it opens nothing else;
* expires within `ttl_s` (a minute): enough for a player to start, and for its range requests;
* is bound to the user and to the access token it was asked with (`jti`): at each use the
  server checks that token is not revoked and, through the directory, that the user still
  exists and may still listen (identity/live.py), so a URL is worth no more than its asker.

Parameters: `u` user, `r` role (used only for external users, who are not in the directory),
`j` the access token's jti, `e` expiry (epoch seconds), `sig` the signature.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import urlencode

from ptt_server.identity.tokens import LEEWAY_S, AuthError

SIG_PARAM = "sig"
MAX_PARAMS = 8
MAX_VALUE_LEN = 300


@dataclasses.dataclass(frozen=True, slots=True)
class MediaGrant:
    sub: str
    role: str
    jti: str
    exp: int


def _canonical(path: str, params: Mapping[str, str]) -> bytes:
    pairs = sorted((k, v) for k, v in params.items() if k != SIG_PARAM)
    return f"ptt-media-url/v1\n{path}\n{urlencode(pairs)}".encode()


class MediaUrls:
    def __init__(self, key: bytes, ttl_s: int) -> None:
        if len(key) < 32 or ttl_s <= 0:
            raise ValueError("a 256-bit key and a positive lifetime are required")
        self._key = key
        self.ttl_s = ttl_s

    def _sign(self, path: str, params: Mapping[str, str]) -> str:
        mac = hmac.new(self._key, _canonical(path, params), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")

    def sign(
        self, path: str, *, sub: str, role: str, jti: str, extra: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> tuple[str, int]:
        """The URL (path and query) and its expiry."""
        exp = int(time.time() if now is None else now) + self.ttl_s
        params = {**(extra or {}), "u": sub, "r": role, "j": jti, "e": str(exp)}
        params[SIG_PARAM] = self._sign(path, params)
        return f"{path}?{urlencode(params)}", exp

    def verify(self, path: str, query: Mapping[str, str], *, count: int,
               now: float | None = None) -> MediaGrant:
        """The grant of a signed URL, or AuthError("media_url_invalid"/"media_url_expired").
        `count` is the number of query parameters as sent (a repeated one is refused)."""
        if count != len(query) or count > MAX_PARAMS or any(
                len(v) > MAX_VALUE_LEN for v in query.values()):
            raise AuthError("media_url_invalid", "invalid media URL")
        sig = query.get(SIG_PARAM, "")
        if not hmac.compare_digest(sig.encode(), self._sign(path, query).encode()):
            raise AuthError("media_url_invalid", "invalid media URL")
        try:
            exp = int(query["e"])
            sub, role, jti = query["u"], query["r"], query["j"]
        except (KeyError, ValueError):
            raise AuthError("media_url_invalid", "invalid media URL") from None
        now = time.time() if now is None else now
        if exp + LEEWAY_S <= now:
            raise AuthError("media_url_expired", "this media URL has expired")
        if exp - now > self.ttl_s + LEEWAY_S:
            raise AuthError("media_url_invalid", "invalid media URL")
        return MediaGrant(sub=sub, role=role, jti=jti, exp=exp)
