import pytest

from ptt_server.errors import SignalingError
from ptt_server.sfu import sdp

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
