"""When Redis has lost the floors: every local transmission ends before anyone else may talk.

Redis restarted empty (its epoch is gone), or has been out of reach for longer than a
transmission may go on without it (node/loops.py). Each local transmission ends now with
`service_interrupted` (the recording says so), its talker is told `floor_revoked` and every
local member `floor_idle` for every floor this node saw taken. control/floor_store.py fences new
grants for longer than a node waits before doing this, so two holders can never overlap.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ptt_server.core import messages as m
from ptt_server.core.model import EndReason
from ptt_server.media.router import TalkgroupRouter
from ptt_server.node.endpoint import Endpoint
from ptt_server.node.transmission import TransmissionTable

log = logging.getLogger("ptt.node")

REASON = str(EndReason.SERVICE_INTERRUPTED)


class NodeState(Protocol):
    """What this needs of the node (node/node.py), which calls it."""

    transmissions: TransmissionTable
    endpoints: dict[str, Endpoint]
    routers: dict[str, TalkgroupRouter]

    def broadcast(
        self, talkgroup: str, msg: m.ServerMessage, skip: str | None = None
    ) -> None: ...


def lost_floor(node: NodeState, talkgroup: str, session: str) -> None:
    """One transmission whose floor Redis no longer gives to its holder."""
    tx = node.transmissions.of_session(session).get(talkgroup)
    if tx is None:
        return
    endpoint = node.endpoints.get(session)
    if endpoint is not None:
        endpoint.send(m.FloorRevoked(
            talkgroup=talkgroup, transmission_id=tx.transmission_id, reason=REASON))
    tx.close(EndReason.SERVICE_INTERRUPTED)


def interrupted(node: NodeState, cause: str) -> None:
    gates = [(tg, r.gate.transmission_id) for tg, r in node.routers.items() if r.gate]
    ended = 0
    for tx in node.transmissions:
        endpoint = node.endpoints.get(tx.session)
        if endpoint is not None:
            endpoint.send(m.FloorRevoked(
                talkgroup=tx.talkgroup, transmission_id=tx.transmission_id, reason=REASON))
        ended += tx.close(EndReason.SERVICE_INTERRUPTED)
        gates.append((tx.talkgroup, tx.transmission_id))
    for talkgroup, tid in dict.fromkeys(gates):
        router = node.routers.get(talkgroup)
        if router is not None:
            router.close(tid)
        node.broadcast(talkgroup, m.FloorIdle(talkgroup=talkgroup, transmission_id=tid,
                                              reason=REASON))
    log.warning("floor service interrupted", extra={"fields": {
        "cause": cause, "transmissions_ended": ended, "floors": len(gates)}})
