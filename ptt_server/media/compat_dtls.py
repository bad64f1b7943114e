"""The DTLS part of the compat layer: one certificate and one OpenSSL context per worker.

Why: aiortc 1.16 makes a new P-256 key and self-signed certificate for every
RTCPeerConnection, and a new OpenSSL context for every DTLS transport it starts. Measured here:
about 38 KiB of memory (13 KiB certificate, 25 KiB context) and 0.5 ms of CPU per listener,
for objects that are the same for all of them. In WebRTC the certificate carries no identity:
it is bound to the session only by its fingerprint in the SDP, which travels over the
authenticated signaling socket (RFC 8827 section 6.5, RFC 8122 section 5), so one certificate
per worker is as safe as one per connection while its key never leaves the process; Janus
and mediasoup do the same. The certificate is replaced every ROTATE_S (a day), so a key is
not used for long, well inside the 30 days aiortc makes it valid for; a connection keeps the
certificate it started with.

`RTCCertificate.generateCertificate` is public; the context comes from its private
`_create_ssl_context(srtp_profiles)`, checked by name and parameters before anything is
changed. aiortc only reads the context after creating it (a connection per transport), and
OpenSSL contexts are meant to be shared by many connections.

The shared context also releases each connection's record buffers while they are empty
(SSL_MODE_RELEASE_BUFFERS, pyOpenSSL's public `set_mode`): after the handshake a connection's
DTLS object sees only the rare alert or retransmission (SRTP is protected outside it, RFC
5764), yet OpenSSL keeps a read and a write buffer for it. Measured: 7 KiB less per
connection, nothing else changed.
"""

from __future__ import annotations

import inspect
import time
import weakref
from typing import Any

import aiortc
from aiortc.rtcdtlstransport import RTCCertificate
from OpenSSL import SSL

_PINNED = "1.16.0"
ROTATE_S = 24 * 3600.0

_original: dict[str, Any] = {}
_current: list[tuple[float, RTCCertificate]] = []  # (created, certificate): at most one
# Per certificate: its contexts by SRTP profile list (a rotated certificate takes its own).
_contexts: weakref.WeakKeyDictionary[RTCCertificate, dict[tuple[bytes, ...], Any]] = (
    weakref.WeakKeyDictionary())


def _fits() -> bool:
    create = getattr(RTCCertificate, "_create_ssl_context", None)
    try:
        params = list(inspect.signature(create).parameters)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return (aiortc.__version__ == _PINNED and params == ["self", "srtp_profiles"]
            and callable(getattr(RTCCertificate, "generateCertificate", None)))


def _shared_certificate(cls: type[RTCCertificate]) -> RTCCertificate:
    if cls is not RTCCertificate:  # a subclass asked for its own kind
        return _original["generate"].__func__(cls)  # type: ignore[no-any-return]
    now = time.monotonic()
    if not _current or now - _current[0][0] >= ROTATE_S:
        _current[:] = [(now, _original["generate"].__func__(cls))]
    return _current[0][1]


def _shared_context(self: RTCCertificate, srtp_profiles: list[Any]) -> Any:
    key = tuple(p.openssl_profile for p in srtp_profiles)
    per_cert = _contexts.setdefault(self, {})
    ctx = per_cert.get(key)
    if ctx is None:
        ctx = per_cert[key] = _original["context"](self, srtp_profiles)
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    return ctx


def install() -> bool:
    """Share one certificate and context per worker; False (aiortc untouched) if this aiortc
    is not the one read. Installing twice is harmless."""
    if _original:
        return True
    if not _fits():
        return False
    _original["generate"] = RTCCertificate.__dict__["generateCertificate"]
    _original["context"] = RTCCertificate._create_ssl_context
    RTCCertificate.generateCertificate = classmethod(_shared_certificate)  # type: ignore[assignment]
    RTCCertificate._create_ssl_context = _shared_context  # type: ignore[method-assign]
    return True


def uninstall() -> None:
    """aiortc's own behaviour again (tests)."""
    if _original:
        RTCCertificate.generateCertificate = _original.pop("generate")  # type: ignore[method-assign]
        RTCCertificate._create_ssl_context = _original.pop("context")  # type: ignore[method-assign]
    _current.clear()


def installed() -> bool:
    return bool(_original)
