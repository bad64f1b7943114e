"""A real Chromium listener hears a talker whose uplink loses 10 % of its packets.

The server runs in namespace A, an aiortc talker and a headless Chromium listener in namespace
B, across the user-space lossy link (tests/lossylink.py): the talker's RTP towards the server
loses 10 % with +-25 ms jitter. Because the SFU forwards with the talker's own sequence
numbers (router.py), the browser's RTP statistics see those losses: packetsLost matches the
packets the link dropped (with the old arrival-order numbering it stayed 0). Its jitter buffer
conceals them with the Opus in-band FEC the talker sends (RFC 6716 section 2.1.7), and what it
played is compared with the source speech by loudness envelope. The measurement itself, at
several loss levels and against the code before the numbering change, is bench/lossy.py
(figures in docs/reliability.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import CODECS

from bench.lossy import SPEECH, encode_speech, measure, session
from ptt_server.media import compat_red, ice, sdp
from tests.audio import make_speech, read_wav
from tests.lossylink import LossyLink


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return read_wav(make_speech(tmp_path_factory.mktemp("lossy") / "speech.wav", SPEECH))



@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_uplink_loss_is_visible_to_the_browser_and_fec_covers_it(
    lossy_link: LossyLink, playwright: Any, tmp_path: Path, speech: np.ndarray,
) -> None:
    packets = encode_speech(speech, fec=True)
    async with session(lossy_link, tmp_path, "after", playwright) as (page, talker):
        res = await measure(lossy_link, page, talker, speech, packets, code="after", fec=True,
                            loss=0.10, jitter_ms=25, delay_ms=30)
    # The link dropped about 10 % of the talker's packets on their way to the server...
    assert 0.04 * res.sent <= res.uplink_dropped <= 0.18 * res.sent, res
    # ...and the browser counted them lost: nothing hid the gaps. (A loss among the very last
    # packets has no later packet to reveal it; jitter within the SFU's window only reorders.)
    assert res.browser_lost > 0, res
    assert abs(res.browser_lost - res.uplink_dropped) <= max(3, 0.15 * res.uplink_dropped), res
    assert res.browser_received + res.browser_lost >= res.sent - 3, res
    # What it played is still the speech (measured 0.88-0.98 here; 0.97 with no loss).
    assert res.r >= 0.7, res


# -- RED (RFC 2198): kept by the allow-list, negotiated per transceiver ----------------------
async def chromium_style_offer(red_fmtp: str | None = "111/111") -> str:
    """A real aiortc offer renumbered as Chromium numbers it: Opus 111, RED 63 over Opus."""
    pc = RTCPeerConnection(ice.rtc_configuration([]))
    try:
        pc.addTransceiver("audio", direction="sendrecv")
        ice.pin_host_addresses(pc, ["127.0.0.1"])
        await pc.setLocalDescription(await pc.createOffer())
        text = pc.localDescription.sdp
    finally:
        await pc.close()
    red = ["a=rtpmap:63 red/48000/2"] + ([f"a=fmtp:63 {red_fmtp}"] if red_fmtp else [])
    return (text.replace("UDP/TLS/RTP/SAVPF 96 ", "UDP/TLS/RTP/SAVPF 111 63 ")
            .replace("a=rtpmap:96 opus/48000/2",
                     "\r\n".join(["a=rtpmap:111 opus/48000/2", *red])))


async def test_the_sdp_allow_list_keeps_red_over_opus_and_nothing_else() -> None:
    offer = await chromium_style_offer()
    out = sdp.sanitize(offer, "offer", ("127.0.0.0/8",))
    assert " UDP/TLS/RTP/SAVPF 111 63\r\n" in out
    assert "a=rtpmap:63 red/48000/2" in out and "a=fmtp:63 111/111" in out
    assert not any(c in out for c in ("PCMU", "PCMA", "G722"))
    for fmtp in ("111/0", "9/9", None):  # redundancy that is not Opus, or unnamed
        other = sdp.sanitize(await chromium_style_offer(fmtp), "offer", ("127.0.0.0/8",))
        assert " UDP/TLS/RTP/SAVPF 111\r\n" in other and "red/" not in other


async def test_red_is_negotiated_per_transceiver_not_in_aiortcs_table() -> None:
    """aiortc 1.16 alone answers without RED (its codec table has Opus, G.722 and G.711
    only), which is why media/compat_red.py exists: it adds RED to one transceiver's
    negotiated codecs, at the offer's payload type (63, outside the 96-127 aiortc adopts)
    with the offer's fmtp, after Opus. Another connection in the same process, given the
    same offer, still answers without it: nothing global changed."""
    offer = sdp.sanitize(await chromium_style_offer(), "offer", ("127.0.0.0/8",))
    answers = []
    for with_red in (True, False):
        server = RTCPeerConnection(ice.rtc_configuration([]))
        try:
            await server.setRemoteDescription(RTCSessionDescription(offer, "offer"))
            if with_red:
                for transceiver in server.getTransceivers():
                    assert compat_red.negotiate(transceiver, 63, "111/111")
                    assert compat_red.negotiated(transceiver) == (63, 111)
            ice.pin_host_addresses(server, ["127.0.0.1"])
            await server.setLocalDescription(await server.createAnswer())
            answers.append(server.localDescription.sdp)
        finally:
            await server.close()
    red, plain = answers
    assert " UDP/TLS/RTP/SAVPF 111 63\r\n" in red
    assert "a=rtpmap:63 red/48000/2" in red and "a=fmtp:63 111/111" in red
    assert "a=rtpmap:111 opus/48000/2" in plain and "red/48000" not in plain
    assert not any(c.mimeType.lower() == "audio/red" for c in CODECS["audio"])
    assert compat_red.probe(RTCPeerConnection().addTransceiver("audio")) == []
