"""SDP checks and rewrites (media/sdp.py): what aiortc may see of a client's description."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiortc import RTCPeerConnection

from ptt_server.core.errors import SignalingError
from ptt_server.media import ice, sdp

FP256 = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32)
OFFER = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 9",
    "c=IN IP4 0.0.0.0", "a=mid:0", "a=sendrecv", "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10", "a=rtcp-fb:111 transport-cc",
    "a=rtpmap:0 PCMU/8000", "a=rtpmap:9 G722/8000", "a=rtcp-fb:* nack",
    "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
    "a=candidate:2 1 udp 2122260223 192.0.2.7 50001 typ host",
    "a=candidate:3 1 udp 2122260223 abcd-1234.local 50002 typ host",
    "a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuv", FP256, "a=setup:actpass", "",
])
LOOPBACK = ("127.0.0.0/8",)


def refused(text: str, kind: sdp.SdpKind = "offer", allowed: tuple[str, ...] = ()) -> str:
    with pytest.raises(SignalingError) as err:
        sdp.sanitize(text, kind, allowed)
    assert err.value.code in ("bad_sdp", "too_large")
    return err.value.message


def test_a_good_offer_keeps_opus_alone_and_its_allowed_candidates() -> None:
    out = sdp.sanitize(OFFER, "offer", LOOPBACK)
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" in out
    assert "PCMU" not in out and "G722" not in out
    assert "a=fmtp:111 minptime=10" in out and "a=rtcp-fb:111 transport-cc" in out
    assert "a=rtcp-fb:* nack" in out
    assert "127.0.0.1 50000" in out
    assert "192.0.2.7" not in out and ".local" not in out
    assert out.endswith("\r\n") and "\n\n" not in out


async def test_a_real_aiortc_offer_passes_and_negotiates_opus_only() -> None:
    client = RTCPeerConnection(ice.rtc_configuration([]))
    server = RTCPeerConnection(ice.rtc_configuration([]))
    try:
        client.addTransceiver("audio", direction="sendrecv")
        ice.pin_host_addresses(client, ["127.0.0.1"])
        await client.setLocalDescription(await client.createOffer())
        offered = client.localDescription.sdp
        assert "PCMU" in offered  # aiortc offers G.711 and G.722 too
        text = sdp.sanitize(offered, "offer", LOOPBACK)
        from aiortc import RTCSessionDescription

        await server.setRemoteDescription(RTCSessionDescription(text, "offer"))
        ice.pin_host_addresses(server, ["127.0.0.1"])
        await server.setLocalDescription(await server.createAnswer())
        answer = server.localDescription.sdp
        assert "opus/48000/2" in answer
        assert not any(c in answer for c in ("PCMU", "PCMA", "G722"))
        # The server's answer passes the same checks a client's answer must pass.
        sdp.sanitize(answer, "answer", LOOPBACK)
    finally:
        await client.close()
        await server.close()


@pytest.mark.parametrize(("name", "mutate"), [
    ("not sdp", lambda s: "hello"),
    ("no audio", lambda s: s.split("m=audio")[0]),
    ("video", lambda s: s.replace("m=audio", "m=video")),
    ("non-Opus only", lambda s: s.replace("opus/48000/2", "PCMA/8000")),
    ("Opus at a static payload type", lambda s: s.replace(" 111", " 8").replace(":111", ":8")),
    ("no fingerprint", lambda s: s.replace(FP256 + "\r\n", "")),
    ("sha-1 only", lambda s: s.replace(FP256, "a=fingerprint:sha-1 " + ":".join(["AB"] * 20))),
    ("short sha-256", lambda s: s.replace(FP256, "a=fingerprint:sha-256 AB:CD")),
    ("garbled fingerprint", lambda s: s.replace(FP256, FP256.replace("AB", "ZZ", 1))),
    ("two-part fingerprint", lambda s: s.replace(FP256, FP256 + " extra")),
    ("no setup", lambda s: s.replace("a=setup:actpass\r\n", "")),
    ("holdconn", lambda s: s.replace("actpass", "holdconn")),
    ("no ice-pwd", lambda s: s.replace("a=ice-pwd:abcdefghijklmnopqrstuv\r\n", "")),
    ("short ice-pwd", lambda s: s.replace("abcdefghijklmnopqrstuv", "abc")),
    ("no rtcp-mux", lambda s: s.replace("a=rtcp-mux\r\n", "")),
    ("no mid", lambda s: s.replace("a=mid:0\r\n", "")),
    ("SDES profile", lambda s: s.replace("UDP/TLS/RTP/SAVPF", "RTP/SAVPF")),
    ("control character", lambda s: s.replace("s=-", "s=\x00")),
    ("non-ASCII", lambda s: s.replace("s=-", "s=caf\u00e9")),
    ("line too long", lambda s: s.replace("s=-", "s=" + "x" * 2000)),
    ("too large", lambda s: s + "a=x:" + "y" * 40000),
    ("bad payload type", lambda s: s.replace(" 111 0 9", " 111 0 999")),
    ("18 sections", lambda s: s + "".join(
        s[s.index("m=audio"):].replace("a=mid:0", f"a=mid:{i}") for i in range(1, 18))),
    ("too many candidates", lambda s: s.replace("a=ice-ufrag", "".join(
        f"a=candidate:{i} 1 udp 1 10.0.{i // 250}.{i % 250 + 1} 5000 typ host\r\n"
        for i in range(70)) + "a=ice-ufrag")),
])
def test_hostile_offers_are_refused(name: str, mutate: Callable[[str], str]) -> None:
    refused(mutate(OFFER))


def test_a_session_level_fingerprint_is_enough() -> None:
    moved = OFFER.replace(FP256 + "\r\n", "").replace("t=0 0\r\n", f"t=0 0\r\n{FP256}\r\n")
    sdp.sanitize(moved, "offer", LOOPBACK)


def test_an_answer_must_pick_a_dtls_side() -> None:
    refused(OFFER, "answer")
    sdp.sanitize(OFFER.replace("actpass", "active"), "answer", LOOPBACK)


def test_no_candidate_hides_behind_a_unicode_line_break() -> None:
    # aiortc splits lines with str.splitlines, which also breaks at U+2028 and U+0085: a
    # candidate smuggled there must be seen, and filtered, like any other line.
    hidden = OFFER.replace("a=sendrecv", "a=sendrecv\u2028a=candidate:9 1 udp 1 127.0.0.1 6000 "
                           "typ host\x85a=candidate:8 1 udp 1 127.0.0.2 6001 typ host")
    out = sdp.sanitize(hidden, "offer", ())
    assert "a=candidate:9 " not in out and "a=candidate:8 " not in out
    assert "a=candidate:1 " not in out  # loopback, refused by default too
    assert "\u2028" not in out and "\x85" not in out


@pytest.mark.parametrize(("address", "port", "default", "loopback_only"), [
    ("127.0.0.1", 50000, False, True),
    ("127.8.9.10", 50000, False, True),
    ("10.1.2.3", 50000, True, False),  # private: police networks are private
    ("192.168.1.20", 50000, True, False),
    ("100.64.1.1", 50000, True, False),  # carrier-grade NAT
    ("203.0.114.9", 50000, True, False),
    ("2a00:1450:4001::1", 50000, True, False),
    ("169.254.169.254", 50000, False, False),  # cloud metadata
    ("fe80::1", 50000, False, False),
    ("::1", 50000, False, False),
    ("::ffff:127.0.0.1", 50000, False, False),
    ("0.0.0.0", 50000, False, False),
    ("0.1.2.3", 50000, False, False),
    ("224.0.0.251", 50000, False, False),
    ("ff02::fb", 50000, False, False),
    ("255.255.255.255", 50000, False, False),
    ("240.0.0.1", 50000, False, False),
    ("192.0.2.7", 50000, False, False),
    ("2001:db8::7", 50000, False, False),
    ("abcd-1234.local", 50000, False, False),
    ("10.1.2.3", 53, False, False),
    ("10.1.2.3", 0, False, False),
    ("127.0.0.1", 123, False, False),
])
def test_which_candidates_the_server_sends_checks_to(
    address: str, port: int, default: bool, loopback_only: bool
) -> None:
    line = f"candidate:1 1 udp 2122260223 {address} {port} typ host"
    assert sdp.candidate_allowed(line, ()) is default
    assert sdp.candidate_allowed(line, LOOPBACK) is loopback_only


def test_malformed_and_non_udp_candidates_are_refused() -> None:
    for line in (
        "candidate:1 1 tcp 2122260223 10.1.2.3 50000 typ host tcptype passive",
        "candidate:1 1 udp 2122260223 10.1.2.3 50000",
        "candidate:1 1 udp 2122260223 10.1.2.3 5\u0660000 typ host",  # an Arabic-Indic digit
        "candidate:1 1 udp 99999999999 10.1.2.3 50000 typ host",
        "candidate:1 0 udp 1 10.1.2.3 50000 typ host",
        "candidate:1 1 udp 1 10.1.2.3 50000 typ host\n",
    ):
        assert not sdp.candidate_allowed(line, ()), line


def test_prefer_fec_adds_opus_fmtp() -> None:
    plain = OFFER.replace("a=fmtp:111 minptime=10\r\n", "")
    assert "a=fmtp:111 minptime=10;useinbandfec=1" in sdp.prefer_fec(plain)
    assert "a=fmtp:111 minptime=10;useinbandfec=1" in sdp.prefer_fec(OFFER)


def test_filter_candidates_keeps_only_allowed_ones() -> None:
    out = sdp.filter_candidates(OFFER, LOOPBACK)
    assert "127.0.0.1 50000" in out
    assert "192.0.2.7" not in out and ".local" not in out


CHROME_OFFER = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8",
    "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=rtpmap:111 opus/48000/2", "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1", "a=rtpmap:63 red/48000/2",
    "a=rtpmap:9 G722/8000", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "",
])

AIORTC_REOFFER = "\r\n".join([
    "v=0", "o=- 5 5 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1",
    "m=audio 9 UDP/TLS/RTP/SAVPF 96 9 0 8", "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=rtpmap:96 opus/48000/2", "a=rtpmap:9 G722/8000", "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "m=audio 9 UDP/TLS/RTP/SAVPF 96 9 0 8", "a=mid:1",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=rtpmap:96 opus/48000/2", "a=rtpmap:9 G722/8000", "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000", "",
])


def test_reoffer_keeps_the_negotiated_payload_types_and_extension_ids() -> None:
    out = sdp.renumber(AIORTC_REOFFER, sdp.numbering_of(CHROME_OFFER))
    sections = out.split("\r\nm=")[1:]
    assert len(sections) == 2
    for section in sections:
        assert section.startswith("audio 9 UDP/TLS/RTP/SAVPF 111 9 0 8\r\n")
        assert "a=rtpmap:111 opus/48000/2" in section
        assert "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid" in section
        assert "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level" in section
        assert "rtpmap:96" not in section and "extmap:2 " not in section
    # A peer that numbered as aiortc does sees no change.
    assert sdp.renumber(AIORTC_REOFFER, sdp.numbering_of(AIORTC_REOFFER)) == AIORTC_REOFFER


def test_reoffer_after_a_sanitized_offer_is_opus_only() -> None:
    numbering = sdp.numbering_of(sdp.sanitize(OFFER, "offer", LOOPBACK))
    out = sdp.renumber(AIORTC_REOFFER, numbering)
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" in out
    assert not any(c in out for c in ("PCMU", "PCMA", "G722"))
