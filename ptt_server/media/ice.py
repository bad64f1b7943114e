"""ICE address pinning for aiortc peer connections.

aioice gathers host candidates from every interface address except loopback and offers no
per-connection setting for it (checked against aioice 0.13 / aiortc 1.16). A server needs to
announce exactly the addresses it is reachable on (a public address, or 127.0.0.1 in tests in a
network namespace that has only `lo`), so the gathering step of each connection's ICE agent is
replaced with one that uses a given address list (`compat.replace_gathering`, where the aioice
internals it needs live).
"""

from __future__ import annotations

from collections.abc import Sequence

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from ptt_server.media import compat


def rtc_configuration(ice_servers: Sequence[str]) -> RTCConfiguration:
    # An empty list, not None: None makes aiortc use a public STUN server, which a closed
    # police network cannot reach and a server with a public address does not need.
    return RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in ice_servers])


def pin_host_addresses(pc: RTCPeerConnection, addresses: Sequence[str]) -> None:
    """Make every ICE agent of `pc` gather host candidates on `addresses` only.

    Call after the transceivers exist and before setLocalDescription (which gathers).
    An empty `addresses` keeps aioice's own choice.
    """
    if addresses:
        compat.replace_gathering(pc, addresses)
