"""Signaling-layer errors: each has a stable wire `code` that clients can rely on.

Lower layers define their own errors (floor, auth, directory); the session translates them into
a SignalingError with the lower layer's code, so a code means the same thing everywhere.
"""

from __future__ import annotations

import enum


class Code(enum.StrEnum):
    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    TOO_LARGE = "too_large"
    NOT_AUTHENTICATED = "not_authenticated"
    ALREADY_AUTHENTICATED = "already_authenticated"
    AUTH_TIMEOUT = "auth_timeout"
    FORBIDDEN = "forbidden"
    UNKNOWN_TALKGROUP = "unknown_talkgroup"
    NOT_JOINED = "not_joined"
    ALREADY_JOINED = "already_joined"
    BAD_SDP = "bad_sdp"
    NO_PEER_CONNECTION = "no_peer_connection"
    RENEGOTIATION_PENDING = "renegotiation_pending"
    NOT_HOLDER = "not_holder"
    NOT_QUEUED = "not_queued"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    MEDIA_PORTS_EXHAUSTED = "media_ports_exhausted"  # every port of --media-ports is in use
    INTERNAL = "internal"


class SignalingError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
