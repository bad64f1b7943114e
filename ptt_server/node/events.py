"""Floor outputs (from the pure rules in core/floor.py, via Redis) turned into local effects:
transmissions begun and ended, gates opened and closed, messages to local members.

Every node handles every output of every floor it sees; only the node of the talker's session
owns a `Transmission` (and its recording) for it. Listeners elsewhere only see the gate open.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Iterable
from typing import Any, Protocol

from ptt_server.core import floor as fl
from ptt_server.core import messages as m
from ptt_server.core.model import EndReason
from ptt_server.media.router import TalkgroupRouter
from ptt_server.node import metrics as node_metrics
from ptt_server.node.endpoint import Endpoint
from ptt_server.node.transmission import Transmission, TransmissionTable
from ptt_server.recording.recorder import Recorder, RecordingHandle, TransmissionMeta

log = logging.getLogger("ptt.node")

FLOOR_END_REASONS: dict[str, EndReason] = {reason.value: reason for reason in EndReason}


def end_reason(reason: str) -> EndReason:
    # A floor reason this version does not know still ends the recording as revoked: the
    # audit record must say the talker did not end it.
    return FLOOR_END_REASONS.get(reason, EndReason.REVOKED)


class NodeState(Protocol):
    """What floor events act on: the node (node/node.py) provides it. A protocol rather than
    the Node class itself, so that this module and the node's do not import each other."""

    id: str
    recorder: Recorder | None
    transmissions: TransmissionTable
    endpoints: dict[str, Endpoint]
    routers: dict[str, TalkgroupRouter]

    @property
    def members(self) -> dict[str, Any]: ...

    def router(self, talkgroup: str) -> TalkgroupRouter: ...

    def local_member(self, talkgroup: str, session: str) -> Endpoint | None: ...

    def broadcast(
        self, talkgroup: str, msg: m.ServerMessage, skip: str | None = None
    ) -> None: ...

    def schedule_presence(self, talkgroup: str) -> None: ...


class FloorEvents:
    def __init__(self, node: NodeState) -> None:
        self._node = node

    def handle_all(self, talkgroup: str, outputs: Iterable[fl.FloorOutput]) -> None:
        for out in outputs:
            try:
                self.handle(talkgroup, out)
            except Exception:
                log.exception("floor output handling failed")
        self._node.schedule_presence(talkgroup)

    def handle(self, talkgroup: str, out: fl.FloorOutput) -> None:
        node_metrics.floor_output(self._node, out)  # grants, denials, revokes by reason
        node = self._node
        match out:
            case fl.Granted():
                self._granted(talkgroup, out)
            case fl.Taken():
                self._taken(talkgroup, out)
            case fl.Denied():
                self._tell(talkgroup, out.session, m.FloorDenied(
                    talkgroup=talkgroup, reason=out.reason,
                    holder=m.Holder(unit=out.holder_unit, alias=out.holder_alias),
                ))
            case fl.Queued() | fl.QueuePosition():
                self._tell(talkgroup, out.session, m.FloorQueued(
                    talkgroup=talkgroup, position=out.position,
                ))
            case fl.QueueExpired():
                self._tell(talkgroup, out.session, m.FloorDenied(
                    talkgroup=talkgroup, reason="queue_timeout", holder=None,
                ))
            case fl.Revoked():
                self._ended(talkgroup, out.transmission_id, out.reason)
                self._tell(talkgroup, out.session, m.FloorRevoked(
                    talkgroup=talkgroup, transmission_id=out.transmission_id,
                    reason=out.reason,
                ))
            case fl.Idle():
                self._ended(talkgroup, out.transmission_id, out.reason)
                node.broadcast(talkgroup, m.FloorIdle(
                    talkgroup=talkgroup, transmission_id=out.transmission_id,
                    reason=out.reason,
                ))
            case fl.EmergencyCleared():
                pass  # announced by the session that cleared it, on the alert channel
            case _:
                log.warning("unhandled floor output %r", out)

    def _tell(self, talkgroup: str, session: str, msg: m.ServerMessage) -> None:
        endpoint = self._node.local_member(talkgroup, session)
        if endpoint is not None:
            endpoint.send(msg)

    def _granted(self, talkgroup: str, out: fl.Granted) -> None:
        node = self._node
        endpoint = node.local_member(talkgroup, out.session)
        if endpoint is None or node.transmissions.get(out.transmission_id, talkgroup):
            return  # not ours, or already handled on the direct path
        self._begin(talkgroup, out.session, out.transmission_id, out.emergency,
                    out.granted_at, out.granted_at + out.max_duration_s)
        endpoint.send(m.FloorGranted(
            talkgroup=talkgroup, transmission_id=out.transmission_id,
            max_duration_s=out.max_duration_s, emergency=out.emergency,
            from_queue=out.from_queue,
        ))

    def _taken(self, talkgroup: str, out: fl.Taken) -> None:
        node = self._node
        router = node.routers.get(talkgroup)
        if router is not None:
            router.open(out.session, out.transmission_id)
        if out.session in node.endpoints:
            # Our session talks on this talkgroup: the one it asked for, or another one that
            # shares its floor (a patch); its uplink is routed to each of them.
            self._begin(talkgroup, out.session, out.transmission_id, out.emergency,
                        time.time(), math.inf)
        node.broadcast(talkgroup, m.FloorTaken(
            talkgroup=talkgroup, unit=out.unit, alias=out.alias,
            transmission_id=out.transmission_id, emergency=out.emergency,
            priority=out.priority,
        ), skip=out.session)

    def _begin(
        self, talkgroup: str, session: str, tid: str, emergency: bool, started_at: float,
        expires_at: float,
    ) -> Transmission:
        node = self._node
        existing = node.transmissions.get(tid, talkgroup)
        if existing is not None:
            return existing
        gate = node.router(talkgroup) if talkgroup in node.members else None
        tx = Transmission(
            talkgroup=talkgroup, transmission_id=tid, session=session, expires_at=expires_at,
            emergency=emergency, gate=gate,
            recording=self._record(talkgroup, session, tid, emergency, started_at),
        )
        return node.transmissions.add(tx)

    def _record(
        self, talkgroup: str, session: str, tid: str, emergency: bool, started_at: float
    ) -> RecordingHandle | None:
        """The talkgroup the talker asked for is recorded under the transmission id; another
        talkgroup that shares the floor (a patch) gets its own recording, linked by that id."""
        node = self._node
        endpoint = node.endpoints.get(session)
        if node.recorder is None or endpoint is None:
            return None
        request = node.transmissions.request(tid)
        primary = request is not None and request.talkgroup == talkgroup
        recording_id = tid if primary else uuid.uuid5(uuid.NAMESPACE_URL, f"{tid}/{talkgroup}").hex
        claims = endpoint.claims
        meta = TransmissionMeta(
            transmission_id=recording_id, talkgroup=talkgroup, unit=claims.sub,
            alias=claims.alias, role=str(claims.role), node_id=node.id,
            started_at=started_at, emergency=emergency,
            linked_id=(request.linked_id if request else None) if primary else tid,
        )
        return node.recorder.begin(meta)

    def _ended(self, talkgroup: str, tid: str, reason: str) -> None:
        node = self._node
        node.transmissions.end(tid, talkgroup, end_reason(reason))
        node.transmissions.forget_request(tid)
        router = node.routers.get(talkgroup)
        if router is not None:
            router.close(tid)  # a remote talker's gate (ours closed with the transmission)
