import pytest

from ptt_server.core.errors import SignalingError
from ptt_server.media import sdp

OFFER = "\r\n".join([
    "v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "m=audio 9 UDP/TLS/RTP/SAVPF 111 0",
    "a=rtpmap:111 opus/48000/2", "a=rtpmap:0 PCMU/8000",
    "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
    "a=candidate:2 1 udp 2122260223 192.0.2.7 50001 typ host",
    "a=candidate:3 1 udp 2122260223 abcd-1234.local 50002 typ host", "",
])


def test_validate_rejects_non_sdp_and_non_opus() -> None:
    sdp.validate(OFFER)
    for bad in ("hello", "v=0\r\nm=video 9 RTP 96\r\n", "v=0\r\nm=audio 9 RTP 0\r\n"):
        with pytest.raises(SignalingError) as err:
            sdp.validate(bad)
        assert err.value.code == "bad_sdp"


def test_prefer_fec_adds_opus_fmtp() -> None:
    out = sdp.prefer_fec(OFFER)
    assert "a=fmtp:111 minptime=10;useinbandfec=1" in out
    existing = OFFER.replace("a=rtpmap:0", "a=fmtp:111 minptime=10\r\na=rtpmap:0")
    assert "a=fmtp:111 minptime=10;useinbandfec=1" in sdp.prefer_fec(existing)


def test_candidates_outside_allowed_networks_are_removed() -> None:
    out = sdp.filter_candidates(OFFER, ["127.0.0.0/8"])
    assert "127.0.0.1 50000" in out
    assert "192.0.2.7" not in out and ".local" not in out
    assert sdp.filter_candidates(OFFER, []) == OFFER


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
