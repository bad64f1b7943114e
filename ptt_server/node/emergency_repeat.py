"""An emergency nobody has acknowledged keeps alerting every supervisor and dispatcher.

A console may be unattended, its sound turned down, its operator on another screen: one alert
is easily missed, and a missed alarm is an officer left alone. So the `emergency` alert is
sent again every `emergency_repeat_s` (10 s) with `repeat` counting up, until a supervisor
acknowledges it (`emergency_acknowledged`) or it is cleared.

Every node runs this loop against the shared state in Redis (control/emergencies.py), and the
repeat is sent by the one node that claims it first (SET NX per repeat), so an alarm raised on
a node that has since died is still repeated, and never twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ptt_server.control.emergencies import EmergencyStore
from ptt_server.core import messages as m
from ptt_server.core.logthrottle import FailureLog

log = logging.getLogger("ptt.emergency")


def due_repeat(raised_at: float, now: float, interval_s: float) -> int:
    """Which repeat is due now: 0 (none yet) until one interval has passed, then 1, 2, ..."""
    return max(0, int((now - raised_at) // interval_s))


async def repeat_due(
    store: EmergencyStore, node_id: str, interval_s: float,
    alert: Callable[[m.Emergency], Awaitable[None]], now: float,
) -> int:
    """Send each unacknowledged emergency's due repeat (if this node wins it); how many."""
    sent = 0
    for state in await store.all():
        n = due_repeat(state.ts, now, interval_s)
        if state.ack is not None or n == 0:
            continue
        if await store.claim_repeat(state, n, node_id, 3 * interval_s):
            await alert(m.Emergency(
                talkgroup=state.talkgroup, unit=state.unit, alias=state.alias,
                location=state.location, ts=state.ts, repeat=n,
            ))
            sent += 1
    return sent


async def repeater(
    store: EmergencyStore, node_id: str, interval_s: float,
    alert: Callable[[m.Emergency], Awaitable[None]],
) -> None:
    """The loop (one task per node): checks a few times per interval, at most once a second."""
    failures = FailureLog(log, "emergency repeat")
    while True:
        await asyncio.sleep(min(1.0, interval_s / 4))
        try:
            await repeat_due(store, node_id, interval_s, alert, time.time())
        except Exception as exc:  # Redis away: the next round tries again
            failures.failure(exc)
        else:
            failures.success()
