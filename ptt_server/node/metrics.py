"""Event counts and timings of one node that no object keeps already, for /metrics.

Most of what service/metrics.py exposes is read at scrape time from counters the node keeps
anyway (sessions, routers, transmissions, drops). What is only visible as it happens is counted
here: the time one uplink packet takes through the node (fan-out), floor outcomes, floor access
time, WebSocket messages and errors. Each call site is one line (node/events.py,
signaling/session.py, service/ws.py) and costs an increment; the packet path allocates nothing.

A node's `NodeStats` exists while its app serves metrics (`attach`/`detach`, app/wiring.py);
for a node without one every function here only does the work it wraps. Plain ints and lists,
no locks: everything runs on the node's event loop.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Awaitable
from typing import Any, Protocol

from redis.exceptions import RedisError

from ptt_server.core import floor as fl

# Seconds. Fan-out: what one packet costs the node from the uplink tap until every local
# listener's copy is handed to the kernel (direct path) or queued (public path), plus the
# recording and media-bus hand-offs; ~30 us per listener (docs/performance.md).
FANOUT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
# Floor access time, request to answer (3GPP TS 22.179's "MCPTT access time", KPI 1, asks
# for under 300 ms): the Redis round trip of the floor's compare-and-set, mostly.
ACCESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0)
# Granted outputs are seen twice by the requester's node (the direct path and pub/sub);
# this many recent transmission ids are remembered to count each grant once.
RECENT_GRANTS = 256


class Histogram:
    """Cumulative-on-read histogram with fixed upper bounds; `counts[-1]` is +Inf."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations <= it) pairs, ending with +Inf (Prometheus `le`)."""
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


class NodeStats:
    def __init__(self) -> None:
        self.uplink_packets = 0
        self.fanout = Histogram(FANOUT_BUCKETS)
        self.floor_access: dict[str, Histogram] = {}  # by outcome
        self.floor_events: dict[tuple[str, str], int] = {}  # (event, reason) -> count
        self.ws_messages: dict[str, int] = {}  # client message type -> count
        self.ws_errors: dict[str, int] = {}  # error code -> count
        self._granted: dict[str, None] = {}  # recent grants' transmission ids, oldest first

    def count_floor(self, event: str, reason: str) -> None:
        key = (event, reason)
        self.floor_events[key] = self.floor_events.get(key, 0) + 1

    def first_grant(self, transmission_id: str) -> bool:
        if transmission_id in self._granted:
            return False
        self._granted[transmission_id] = None
        if len(self._granted) > RECENT_GRANTS:
            del self._granted[next(iter(self._granted))]
        return True

    def access(self, outcome: str, seconds: float) -> None:
        hist = self.floor_access.get(outcome)
        if hist is None:
            hist = self.floor_access[outcome] = Histogram(ACCESS_BUCKETS)
        hist.observe(seconds)

    def ws_message(self, kind: str) -> None:
        self.ws_messages[kind] = self.ws_messages.get(kind, 0) + 1

    def ws_error(self, code: str) -> None:
        self.ws_errors[code] = self.ws_errors.get(code, 0) + 1


# Keyed by the node object itself (a plain dict: a lookup per packet allocates nothing, where
# a WeakKeyDictionary would make a weak reference each time); the app removes its node's
# entry when it stops.
_stats: dict[object, NodeStats] = {}


def attach(node: object) -> NodeStats:
    return _stats.setdefault(node, NodeStats())


def detach(node: object) -> None:
    _stats.pop(node, None)


def of(node: object) -> NodeStats | None:
    return _stats.get(node)


class ForwardingNode(Protocol):
    def forward_uplink(
        self, session: str, payload: bytes, rtp_ts: int, seq: int, arrival: float,
        red_over: frozenset[int] | None = None,
    ) -> None: ...


def forward_uplink(
    node: ForwardingNode, session: str, payload: bytes, rtp_ts: int, seq: int, arrival: float,
    red_over: frozenset[int] | None = None,
) -> None:
    """`node.forward_uplink(...)`, counted and timed (signaling/session.py)."""
    stats = _stats.get(node)
    if stats is None:
        node.forward_uplink(session, payload, rtp_ts, seq, arrival, red_over)
        return
    started = time.perf_counter()
    node.forward_uplink(session, payload, rtp_ts, seq, arrival, red_over)
    stats.fanout.observe(time.perf_counter() - started)
    stats.uplink_packets += 1


class FloorNode(Protocol):
    @property
    def endpoints(self) -> Any: ...


def floor_output(node: FloorNode, out: fl.FloorOutput) -> None:
    """Count one floor output as the node handles it (node/events.py), once in the whole
    system: every node sees every output, but only the node of the session it concerns counts
    it (summing over nodes gives the total), and a grant seen twice counts once."""
    stats = _stats.get(node)
    if stats is None:
        return
    local = node.endpoints
    match out:
        case fl.Granted() if out.session in local and stats.first_grant(out.transmission_id):
            stats.count_floor("granted", "from_queue" if out.from_queue else "request")
        case fl.Denied() if out.session in local:
            stats.count_floor("denied", out.reason)
        case fl.Queued() if out.session in local:
            stats.count_floor("queued", "")
        case fl.QueueExpired() if out.session in local:
            stats.count_floor("denied", "queue_timeout")
        case fl.Revoked() if out.session in local:
            # reason "preempted": a higher priority took the floor (a pre-emption).
            stats.count_floor("revoked", out.reason)
        case _:
            pass


def _outcome(session: str, outputs: list[fl.FloorOutput]) -> str:
    for out in outputs:
        if getattr(out, "session", None) == session:
            if isinstance(out, fl.Granted):
                return "granted"
            if isinstance(out, fl.Queued):
                return "queued"
            if isinstance(out, fl.Denied):
                return "denied"
    return "other"


async def floor_request(
    node: object, session: str, request: Awaitable[list[fl.FloorOutput]]
) -> list[fl.FloorOutput]:
    """Await a floor request (signaling/session.py), timing it by outcome: granted, queued,
    denied (another holds it), refused (a floor rule said no), unavailable (Redis)."""
    stats = _stats.get(node)
    if stats is None:
        return await request
    started = time.perf_counter()
    outcome = "error"
    try:
        outputs = await request
        outcome = _outcome(session, outputs)
        return outputs
    except fl.FloorError:
        outcome = "refused"
        raise
    except RedisError:
        outcome = "unavailable"
        raise
    finally:
        stats.access(outcome, time.perf_counter() - started)
