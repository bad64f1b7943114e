"""media/compat_dtls.py: one DTLS certificate and OpenSSL context per worker.

Real aiortc peers over loopback (tests/rtp_support.py): with the sharing installed, every new
peer connection offers the same fingerprint, their DTLS handshakes all run on one context, and
the SRTP keys they derive still carry audio each way it is sent; a rotation gives new
connections a new certificate; another aiortc is left alone."""

from __future__ import annotations

import re
from collections.abc import Iterator

import aiortc
import pytest
from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate
from OpenSSL import SSL

from ptt_server.media import compat_dtls

from .rtp_support import Link

FINGERPRINT = re.compile(r"^a=fingerprint:sha-256 (\S+)", re.M)


@pytest.fixture
def shared() -> Iterator[None]:
    assert compat_dtls.install()
    assert compat_dtls.install()  # again is harmless
    yield
    compat_dtls.uninstall()


def fingerprint(sdp: str) -> str:
    found = FINGERPRINT.findall(sdp)
    assert len(found) == 1, sdp
    return str(found[0])


async def test_connections_share_one_certificate_and_carry_audio(shared: None) -> None:
    links = [Link() for _ in range(3)]
    try:
        for link in links:
            await link.connect()
        prints = {fingerprint(link.server.localDescription.sdp) for link in links}
        assert len(prints) == 1
        certificate = compat_dtls._current[0][1]
        assert [fp.value for fp in certificate.getFingerprints()
                if fp.algorithm == "sha-256"] == [prints.pop()]
        assert len(compat_dtls._contexts[certificate]) == 1  # one SRTP profile list, one context
        for link in links:
            link.push(10)
            await link.received(10)
            assert [seq for seq, _, _ in link.got] == list(range(link.got[0][0],
                                                                link.got[0][0] + 10))
    finally:
        for link in links:
            await link.close()


def test_the_shared_context_releases_idle_record_buffers(shared: None) -> None:
    certificate = RTCCertificate.generateCertificate()
    context = certificate._create_ssl_context(SRTP_PROFILES)
    assert certificate._create_ssl_context(SRTP_PROFILES) is context
    # set_mode(0) adds nothing and returns the mode (allowed before any connection uses it).
    assert context.set_mode(0) & SSL.MODE_RELEASE_BUFFERS


async def test_rotation_gives_new_connections_a_new_certificate(
    shared: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = Link(), Link()
    try:
        await first.connect()
        monkeypatch.setattr(compat_dtls, "ROTATE_S", 0.0)
        await second.connect()  # created before the rotation: the old certificate
        third = Link()  # after it: a new one
        try:
            await third.connect()
            old = fingerprint(first.server.localDescription.sdp)
            assert fingerprint(second.server.localDescription.sdp) == old
            assert fingerprint(third.server.localDescription.sdp) != old
            for link in (first, third):  # the old key's connections work on
                link.push(5)
                await link.received(5)
        finally:
            await third.close()
    finally:
        await first.close()
        await second.close()


def test_another_aiortc_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    generate = RTCCertificate.__dict__["generateCertificate"]
    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    assert not compat_dtls.install()
    assert not compat_dtls.installed()
    assert RTCCertificate.__dict__["generateCertificate"] is generate
    a, b = RTCCertificate.generateCertificate(), RTCCertificate.generateCertificate()
    assert a.getFingerprints() != b.getFingerprints()
