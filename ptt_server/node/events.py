"""Floor outputs (from the pure rules in core/floor.py, via Redis) turned into local effects:
transmissions begun and ended, gates opened and closed, messages to local members.

Every node handles every output of every floor it sees; only the node of the talker's session
owns a `Transmission` (and its recording) for it. Listeners elsewhere only see the gate open.
"""

from __future__ import annotations

import asyncio
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


# How long a grant this node made waits for the subscriber to bring it, in order, before it
# is handled anyway (the subscription may have dropped just after the write): well above
# the subscriber's lag on a loaded node, well below a client's patience for a grant.
DIRECT_GRANT_FALLBACK_S = 2.0
RECENT_GRANTS = 4096


class FloorEvents:
    def __init__(self, node: NodeState) -> None:
        self._node = node
        # Per talkgroup, the floor version of the last outputs the subscriber brought: every
        # output of one floor comes through it in the order Redis applied the changes.
        self._seen: dict[str, int] = {}
        # The grants handled lately, oldest first (bounded), by talkgroup and transmission id:
        # a patched floor's change is published on each of its talkgroups' channels, and each
        # copy is that talkgroup's to handle (its own members), once.
        self._grants: dict[tuple[str, str], None] = {}

    def handle_all(self, talkgroup: str, outputs: Iterable[fl.FloorOutput],
                   version: int | None = None) -> None:
        """The outputs of one floor change, as published (`version`: the floor's after it)."""
        for out in outputs:
            try:
                self.handle(talkgroup, out)
            except Exception:
                log.exception("floor output handling failed")
        if version is not None:
            self._seen[talkgroup] = version
        self._node.schedule_presence(talkgroup)

    def applied(self, talkgroup: str, version: int, outputs: Iterable[fl.FloorOutput]) -> None:
        """The outputs of a change this node wrote (the floor is now at `version`), before the
        subscriber brings them. A grant is handled at once (the talker's gate opens and it
        hears its grant without a pub/sub round trip) only if the subscriber has already
        brought the change before it: otherwise the previous holder's end (an idle, say, from
        a release on this or another node) is still on its way, and granting first would show
        the members two holders at once. Then the grant waits its turn on the subscriber,
        with a bounded fallback. The subscriber's copy of a grant handled here is ignored."""
        grants = [out for out in outputs if isinstance(out, fl.Granted)]
        if all((talkgroup, out.transmission_id) in self._grants for out in grants):
            return  # the subscriber was quicker than the reply (or no grant)
        if self._seen.get(talkgroup) == version - 1:
            for out in grants:
                self.handle(talkgroup, out)
            return
        asyncio.get_running_loop().call_later(
            DIRECT_GRANT_FALLBACK_S, self._late_grants, talkgroup, version, grants)

    def _late_grants(self, talkgroup: str, version: int, grants: list[fl.Granted]) -> None:
        for out in grants:
            if (talkgroup, out.transmission_id) in self._grants:
                continue  # brought by the subscriber (and maybe ended since): done
            log.warning("floor grant handled without its published copy",
                        extra={"fields": {"talkgroup": talkgroup, "version": version}})
            self.handle(talkgroup, out)

    def handle(self, talkgroup: str, out: fl.FloorOutput) -> None:
        if isinstance(out, fl.Granted):
            key = (talkgroup, out.transmission_id)
            if key in self._grants:
                return  # handled already, when this node's write returned
            self._grants[key] = None
            if len(self._grants) > RECENT_GRANTS:
                del self._grants[next(iter(self._grants))]
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
