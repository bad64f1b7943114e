"""What the node does with a policing verdict (media/policer.py): drop, or cut the talker off.

Called for every uplink packet of a floor holder, before the gate, the recording and the media
bus see it, so a flood costs one bucket check per packet and reaches nobody. A cut-off mutes the
talker at once (its policer drops everything after that) and then revokes its floor with reason
`policed` and writes an audit entry, off the media path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

from ptt_server.core import floor as fl
from ptt_server.media.policer import Verdict
from ptt_server.node.endpoint import Endpoint
from ptt_server.node.transmission import Transmission

log = logging.getLogger("ptt.node")

POLICED = "policed"  # the floor reason a cut-off talker and its listeners are told

# Revokes under way. asyncio keeps only a weak reference to a task: without this a revoke could
# be garbage-collected before it ran. Each task removes itself when done.
_revokes: set[asyncio.Task[None]] = set()


class FloorReader(Protocol):
    async def get(self, talkgroup: str) -> fl.Floor: ...


class PolicingNode(Protocol):
    """What a cut-off needs of the node (node/node.py); a protocol so neither imports the
    other."""

    id: str
    endpoints: dict[str, Endpoint]

    @property
    def floors(self) -> FloorReader: ...

    async def apply_floor(
        self, talkgroup: str, event: fl.FloorInput
    ) -> list[fl.FloorOutput]: ...

    async def audit(self, kind: str, fields: dict[str, Any]) -> None: ...


def admitted(
    node: PolicingNode, held: Mapping[str, Transmission], size: int, arrival: float
) -> list[tuple[str, Transmission]]:
    """The (talkgroup, transmission) pairs of `held` that may forward and record this packet
    of `size` payload bytes (a copy: forwarding may end transmissions)."""
    return [(tg, tx) for tg, tx in list(held.items()) if admit(node, tx, size, arrival)]


def admit(node: PolicingNode, tx: Transmission, size: int, arrival: float) -> bool:
    """True if this packet of `tx` may be forwarded and recorded."""
    verdict = tx.policer.check(size, arrival)
    if verdict is Verdict.PASS:
        return True
    if verdict is Verdict.CUT_OFF:  # returned once per transmission: one revoke, one entry
        task = asyncio.get_running_loop().create_task(_cut_off(node, tx))
        _revokes.add(task)
        task.add_done_callback(_revokes.discard)
    return False


async def _cut_off(node: PolicingNode, tx: Transmission) -> None:
    policer = tx.policer
    endpoint = node.endpoints.get(tx.session)
    unit = endpoint.claims.sub if endpoint is not None else None
    fields = {
        "talkgroup": tx.talkgroup, "transmission_id": tx.transmission_id, "unit": unit,
        "reason": POLICED, "passed_packets": policer.passed, "dropped_packets": policer.dropped,
        "dropped_bytes": policer.dropped_bytes,
    }
    log.warning("talker cut off: sending far over the Opus rate",
                extra={"fields": {"session": tx.session, **fields}})
    if tx.closed:
        return  # it ended on its own meanwhile
    try:
        # Revoke names no transmission: make sure the floor is still this one's, so that a
        # talker granted the floor a moment after this one ended is never revoked for it.
        floor = await node.floors.get(tx.talkgroup)
        if (tx.closed or floor.grant is None
                or floor.grant.transmission_id != tx.transmission_id):
            return
        await node.apply_floor(tx.talkgroup, fl.Revoke(time.time(), POLICED, by=None))
    except fl.FloorError:
        return  # the floor ended or moved on first: nothing left to revoke
    except Exception:
        # The talker stays muted (its policer drops everything); the floor then ends with its
        # lease or transmit limit instead.
        log.exception("policed floor revoke failed", extra={"fields": fields})
        return
    await node.audit("floor_revoke", {**fields, "by": None})
