"""ICE address pinning for aiortc peer connections.

aioice gathers host candidates from every interface address except loopback and offers no
per-connection setting for it (checked against aioice 0.13 / aiortc 1.16). A server needs to
announce exactly the addresses it is reachable on (a public address, or 127.0.0.1 in tests in a
network namespace that has only `lo`), so this module replaces the gathering step of each
connection's ICE agent with one that uses a given address list. Nothing outside this module
touches aioice internals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection


def rtc_configuration(ice_servers: Sequence[str]) -> RTCConfiguration:
    # An empty list, not None: None makes aiortc use a public STUN server, which a closed
    # police network cannot reach and a server with a public address does not need.
    return RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in ice_servers])


def _ice_connections(pc: RTCPeerConnection) -> list[Any]:
    conns = []
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport
        if dtls is None:
            continue
        conn = dtls.transport.iceGatherer._connection
        if conn not in conns:
            conns.append(conn)
    return conns


def pin_host_addresses(pc: RTCPeerConnection, addresses: Sequence[str]) -> None:
    """Make every ICE agent of `pc` gather host candidates on `addresses` only.

    Call after the transceivers exist and before setLocalDescription (which gathers).
    An empty `addresses` keeps aioice's own choice.
    """
    if not addresses:
        return
    wanted = list(addresses)
    for conn in _ice_connections(pc):
        if getattr(conn, "_ptt_pinned", False):
            continue

        async def gather(conn: Any = conn) -> None:
            if conn._local_candidates_start:
                return
            conn._local_candidates_start = True
            for component in conn._components:
                conn._local_candidates += await conn.get_component_candidates(
                    component=component, addresses=wanted
                )
            conn._local_candidates_end = True

        conn.gather_candidates = gather
        conn._ptt_pinned = True
