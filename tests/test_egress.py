"""The direct RTP writer and the compat layer, with real aiortc peers over loopback.

A server-side peer sends one audio stream (a DownlinkTrack, with or without a DirectRtpWriter)
to a client-side peer that decrypts it. The client counts every SRTP datagram that reaches
its DTLS transport and every packet that survives decryption, with its sequence number,
timestamp and payload: a packet rejected by SRTP (replay, wrong rollover guess) shows up as a
difference between the two counts (the link: tests/rtp_support.py).
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiortc
import pytest
from aioice.ice import StunProtocol
from aioice.turn import TurnTransport
from aiortc import RTCConfiguration, RTCIceTransportPolicy, RTCPeerConnection, RTCRtpSender

from ptt_server.media import compat, ice
from ptt_server.media.egress import DirectRtpWriter

from .rtp_support import LOOPBACK, Link, assert_one_stream, negotiated, payload, prime

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def link() -> AsyncIterator[Link]:
    async with negotiated(Link()) as lk:
        yield lk


# -- hand-over between the two paths ---------------------------------------------------------
async def test_public_then_direct_is_one_stream(link: Link) -> None:
    """A listener whose first packets went out through aiortc's sender (joined mid-
    transmission; or the direct path declined for a while), then through the direct writer."""
    await link.connect()
    sent = link.push(10)  # no writer yet: the public path
    await link.received(10)
    link.track.direct = DirectRtpWriter(link.transceiver)
    sent += link.push(10)
    await link.received(20)
    assert link.writer.sent == 10 and link.track.sent == 10
    assert_one_stream(link, sent)
    # The writer continued aiortc's own timestamp origin: its RTCP reports stay truthful.
    packets, octets = compat.sender_counters(link.transceiver.sender)
    assert packets == 20 and octets == sum(len(payload(i)) for i in sent)


async def test_direct_public_direct_is_one_stream(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    link.track.direct = DirectRtpWriter(link.transceiver)
    await link.connect()
    sent = await prime(link)
    sent += link.push(10)
    await link.received(11)
    assert link.writer.sent == 10
    udp = link.udp()
    monkeypatch.setattr(udp, "is_closing", lambda: True)  # the direct path declines
    sent += link.push(10)
    await link.received(21)
    assert link.writer.sent == 10 and link.track.sent == 11
    monkeypatch.undo()
    sent += link.push(10)
    await link.received(31)
    assert link.writer.sent == 20
    assert_one_stream(link, sent)
    numbering = link.writer.numbering
    assert numbering is not None and numbering.renumbered == 10


async def test_handover_while_public_packets_are_still_queued(link: Link) -> None:
    """The writer takes over while aiortc's loop has been woken for queued packets it has not
    sent yet: they are renumbered after the direct ones; nothing is rejected or duplicated."""
    await link.connect()
    sent = await prime(link)
    sent += link.push(5)  # queued for aiortc's loop, which has not run yet
    link.track.direct = DirectRtpWriter(link.transceiver)
    sent += link.push(5)  # direct, in the same loop turn
    await link.received(11)
    assert link.writer.sent == 5 and link.track.sent == 6
    assert_one_stream(link, sent, in_order=False)


async def test_packets_before_the_connection_go_public_then_direct(link: Link) -> None:
    link.track.direct = DirectRtpWriter(link.transceiver)
    sent = link.push(5)  # not connected: declined, queued for aiortc's sender
    assert link.writer.sent == 0
    await link.connect()
    await link.received(5)
    sent += link.push(5)
    await link.received(10)
    assert link.writer.sent == 5 and link.track.sent == 5
    assert_one_stream(link, sent)


# -- the fast path declines, the public path delivers ----------------------------------------
async def test_version_mismatch_keeps_the_public_path(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    monkeypatch.setattr(compat, "_report", None)
    report = compat.check()
    assert not report.direct and "aiortc 1.17.0 (pinned 1.16.0)" in report.reason
    link.track.direct = DirectRtpWriter(link.transceiver)
    await link.connect()
    sent = link.push(10)
    await link.received(10)
    assert link.writer.sent == 0 and link.track.sent == 10
    assert link.writer.numbering is None  # nothing taken over, nothing intercepted
    assert_one_stream(link, sent)


def relay_pair(real: Any) -> Any:
    return SimpleNamespace(protocol=real.protocol, remote_addr=real.remote_addr,
                           local_candidate=SimpleNamespace(type="relay"))


def foreign_pair(real: Any) -> Any:
    return SimpleNamespace(protocol=object(), remote_addr=real.remote_addr,
                           local_candidate=real.local_candidate)


def turn_transport_pair(real: Any) -> Any:
    protocol = StunProtocol(None)  # type: ignore[arg-type]
    protocol.transport = TurnTransport(None)  # type: ignore[arg-type,assignment]
    return SimpleNamespace(protocol=protocol, remote_addr=real.remote_addr,
                           local_candidate=SimpleNamespace(type="host"))


@pytest.mark.parametrize("fake", [relay_pair, foreign_pair, turn_transport_pair])
async def test_a_turn_or_foreign_pair_keeps_the_public_path(
    link: Link, monkeypatch: pytest.MonkeyPatch, fake: Any
) -> None:
    real_lookup = compat.nominated_pair

    def lookup(dtls: Any) -> Any:
        real = real_lookup(dtls)
        return None if real is None else fake(real)

    monkeypatch.setattr(compat, "nominated_pair", lookup)
    link.track.direct = DirectRtpWriter(link.transceiver)
    await link.connect()
    sent = link.push(10)
    await link.received(10)
    assert link.writer.sent == 0 and link.track.sent == 10
    assert_one_stream(link, sent)


async def test_a_closing_socket_keeps_the_public_path(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    link.track.direct = DirectRtpWriter(link.transceiver)
    await link.connect()
    sent = await prime(link)
    monkeypatch.setattr(link.udp(), "is_closing", lambda: True)
    sent += link.push(10)
    await link.received(11)
    assert link.writer.sent == 0 and link.track.sent == 11
    assert_one_stream(link, sent)


async def test_a_full_write_buffer_drops_and_counts(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    link.track.direct = DirectRtpWriter(link.transceiver)
    await link.connect()
    sent = await prime(link)
    sent += link.push(3)
    await link.received(4)
    monkeypatch.setattr(link.udp(), "get_write_buffer_size", lambda: 1 << 20)
    link.push(5)  # dropped: a listener that far behind hears the present
    assert link.writer.dropped == 5 and link.track.sent == 1
    monkeypatch.undo()
    sent += link.push(3)
    await link.received(7)
    assert link.writer.sent == 6
    # No sequence number was spent on the drops: a timestamp gap, not a loss.
    assert_one_stream(link, sent)


# -- the compat layer ------------------------------------------------------------------------
def test_check_passes_on_the_pinned_versions(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="ptt.media")
    report = compat.log_egress_path()
    assert report.direct, report.reason
    assert report.missing == {} and report.mismatched == ()
    assert compat.egress_path() == "direct" and compat.direct_path_enabled()
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert "media egress path: direct" in caplog.text


async def test_check_names_a_missing_internal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(compat, "_report", None)
    monkeypatch.delattr(RTCRtpSender, "_next_encoded_frame")
    caplog.set_level("INFO", logger="ptt.media")
    report = compat.log_egress_path()  # also from inside a running loop
    assert report.egress == "public"
    assert "RTCRtpSender._next_encoded_frame" in report.reason
    assert not compat.direct_path_enabled()
    assert any(r.levelname == "WARNING" and "RTCRtpSender._next_encoded_frame" in r.message
               for r in caplog.records)


def test_pyproject_pins_what_compat_was_checked_against() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name, version in compat.PINNED.items():
        assert f"{name}=={version}" in deps
    for name, series in compat.PINNED_SERIES.items():
        assert any(d.startswith(name) and series.rstrip(".") in d for d in deps)


async def test_pinned_gathering_offers_no_host_candidate_under_relay_policy() -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[],
                                            iceTransportPolicy=RTCIceTransportPolicy.RELAY))
    try:
        pc.addTransceiver("audio", direction="recvonly")
        ice.pin_host_addresses(pc, LOOPBACK)
        await pc.setLocalDescription(await pc.createOffer())
        assert "a=candidate" not in pc.localDescription.sdp
    finally:
        await pc.close()


# Private names of aiortc / aioice / aiohttp / pylibsrtp that only compat.py may use.
PRIVATE = {
    "_ssrc", "_codecs", "_offerDirection", "_tx_srtp", "_rx_srtp", "_nominated",
    "_connection", "_local_candidates_start", "_local_candidates", "_local_candidates_end",
    "_components", "_transport_policy", "_handle_rtp_packet", "_handle_rtp_data",
    "_send_rtp", "_run_rtp", "_next_encoded_frame", "_srtp",
}
MANGLED = ("_RTCRtpSender__", "_RTCRtpReceiver__", "_RTCDtlsTransport__",
           "_RTCPeerConnection__", "_RTCIceTransport__", "_Connection__")


def private_uses(path: Path) -> list[str]:
    def private(name: str) -> bool:
        return name in PRIVATE or name.startswith(MANGLED)

    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue  # our own objects' fields
            out.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and private(node.value)):
            out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    return out


def test_only_compat_touches_library_internals() -> None:
    # compat.py, and its parts split off by subject (compat_rtcp.py: RTCP timing), whose
    # names compat.py probes at start with the rest.
    media = ROOT / "ptt_server" / "media"
    layer = {media / "compat.py", *media.glob("compat_*.py")}
    found = [
        use
        for folder in ("ptt_server", "client_cli", "bench")
        for path in sorted((ROOT / folder).rglob("*.py")) if path not in layer
        for use in private_uses(path)
    ]
    assert found == []
