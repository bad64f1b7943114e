"""The cached STUN address packing writes exactly what aioice's own does, and ICE still works."""

from __future__ import annotations

import asyncio

from aioice import stun
from aiortc import RTCPeerConnection, RTCSessionDescription

from ptt_server.media import compat_stun, ice


def test_same_bytes_as_aioice_for_ipv4_and_ipv6() -> None:
    assert compat_stun.install()
    original = compat_stun._original
    assert original is not None and stun.pack_address is compat_stun.pack_address
    tid = bytes(range(12))
    for addr in (("127.0.0.1", 5000), ("192.0.2.77", 65535), ("2001:db8::1", 3478),
                 ("::1", 1)):
        assert compat_stun.pack_address(addr) == original(addr)
        # The XOR form aioice writes in every binding response goes through the replacement.
        want = original(addr, lambda x: stun.xor_data(x, tid))
        assert stun.pack_xor_address(addr, tid) == want
        assert stun.unpack_xor_address(want, tid) == addr
    assert compat_stun.install()  # once is enough; again is harmless


async def test_ice_connects_with_it_installed() -> None:
    assert compat_stun.install()
    a, b = RTCPeerConnection(ice.rtc_configuration([])), RTCPeerConnection(
        ice.rtc_configuration([]))
    try:
        # An audio transceiver, as the server's peers have: a data channel alone has a
        # transport that pin_host_addresses does not reach, and in a loopback-only network
        # aioice (which leaves loopback out) would then gather nothing.
        a.addTransceiver("audio", direction="sendrecv")
        ice.pin_host_addresses(a, ("127.0.0.1",))
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        ice.pin_host_addresses(b, ("127.0.0.1",))
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(RTCSessionDescription(b.localDescription.sdp, "answer"))
        for _ in range(600):  # bounded: 30 s on a loaded machine
            if a.connectionState == "connected" == b.connectionState:
                break
            await asyncio.sleep(0.05)
        assert a.connectionState == "connected" == b.connectionState
    finally:
        await a.close()
        await b.close()
