"""The cached STUN address packing writes exactly what aioice's own does, and ICE still works."""

from __future__ import annotations

import asyncio

import pytest
from aioice import stun
from aiortc import RTCPeerConnection, RTCSessionDescription

from ptt_server.media import compat_stun, ice


def test_same_bytes_as_aioice_for_ipv4_and_ipv6() -> None:
    assert compat_stun.install()
    original = compat_stun._originals["pack_address"]
    assert stun.pack_address is compat_stun.pack_address
    tid = bytes(range(12))
    for addr in (("127.0.0.1", 5000), ("192.0.2.77", 65535), ("2001:db8::1", 3478),
                 ("::1", 1)):
        assert compat_stun.pack_address(addr) == original(addr)
        # The XOR form aioice writes in every binding response goes through the replacement.
        want = original(addr, lambda x: stun.xor_data(x, tid))
        assert stun.pack_xor_address(addr, tid) == want
        assert stun.unpack_xor_address(want, tid) == addr
    assert compat_stun.install()  # once is enough; again is harmless


def test_xor_and_integrity_as_aioice_computes_them() -> None:
    assert compat_stun.install()
    xor, integrity = (compat_stun._originals[n] for n in ("xor_data", "message_integrity"))
    assert stun.xor_data is compat_stun.xor_data
    assert stun.message_integrity is compat_stun.message_integrity
    tid = bytes(range(100, 112))
    for data in (b"", b"\x00\x01", bytes(range(6)), bytes(range(18))):
        assert compat_stun.xor_data(data, tid) == xor(data, tid)
    for fn in (xor, compat_stun.xor_data):  # past the pad: both refuse alike
        with pytest.raises(IndexError):
            fn(bytes(range(19)), tid)
    # A whole binding response, as aioice signs it: same MESSAGE-INTEGRITY, and it verifies.
    message = stun.Message(message_method=stun.Method.BINDING,
                           message_class=stun.Class.RESPONSE, transaction_id=tid)
    message.attributes["XOR-MAPPED-ADDRESS"] = ("192.0.2.9", 40000)
    body = bytes(message)
    for key in (b"k", b"pB0JLX7F7fq6tYn7WSOier", bytes(range(64)) * 2):
        assert compat_stun.message_integrity(body, key) == integrity(body, key)
    message.add_message_integrity(b"pB0JLX7F7fq6tYn7WSOier")
    parsed = stun.parse_message(bytes(message))
    assert parsed.check_message_integrity(b"pB0JLX7F7fq6tYn7WSOier")
    assert not parsed.check_message_integrity(b"another password")
    assert parsed.attributes["XOR-MAPPED-ADDRESS"] == ("192.0.2.9", 40000)


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
