"""A `location` from an officer who shares their position: stored, shown to control, and
ledgered while that officer's emergency is under way.

Positions go to supervisors, dispatchers and admins only (`unit_location`), never to other
officers. Sharing is the officer's choice (a toggle on the radio page); the server keeps the
last few positions per unit for an hour (control/locations.py). The emergency's own position
is in its ledger entry already; every position received while the unit's emergency lasts is
ledgered too, so an investigation can follow where the officer went.
"""

from __future__ import annotations

import time
from typing import Protocol

from ptt_server.control.locations import LocationStore
from ptt_server.core import messages as m
from ptt_server.core import protocol as p
from ptt_server.core.model import Claims
from ptt_server.node.node import Node

# A page may send a little more often than asked (timers drift, a fix arrives early); more
# than twice as often is not stored or forwarded.
MIN_GAP_FRACTION = 0.5


class Session(Protocol):
    claims: Claims
    node: Node
    joined: dict[str, str]  # talkgroup -> mode


def view(session: Session, msg: p.Location, now: float) -> m.UnitLocation:
    c = session.claims
    return m.UnitLocation(
        unit=c.sub, alias=c.alias, role=str(c.role),
        talkgroups=tuple(sorted(tg for tg, mode in session.joined.items() if mode == "member")),
        lat=msg.lat, lon=msg.lon, accuracy=msg.accuracy,
        # A device clock ahead of ours would make the fix look newer than its arrival.
        ts=min(msg.ts, now) if msg.ts is not None else now, received=now,
    )


async def location(session: Session, msg: p.Location) -> None:
    node = session.node
    store = LocationStore(node.redis)
    unit = session.claims.sub
    if not await store.admit(unit, MIN_GAP_FRACTION * node.config.location_interval_s):
        return  # too soon after the last one: dropped without an error (nothing is wrong)
    now = time.time()
    position = view(session, msg, now)
    point = {"unit": position.unit, "alias": position.alias, "role": position.role,
             "talkgroups": list(position.talkgroups), "lat": position.lat,
             "lon": position.lon, "accuracy": position.accuracy, "ts": position.ts,
             "received": position.received}
    await store.record(unit, point, now)
    await node.alert(position)
    emergencies = await node.emergencies.raised_by(unit)
    if emergencies:
        await node.audit("location", {
            "unit": unit, "talkgroups": emergencies, "lat": msg.lat, "lon": msg.lon,
            "accuracy": msg.accuracy, "fix_ts": position.ts,
        })
