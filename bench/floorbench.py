"""Floor access time, floor_taken propagation, and memory per session and talkgroup.

WebSocket-only clients (no media) in the generator processes. Each talkgroup has several
members that keep asking for the floor without queueing: a grant is held a while, then
released; a denial or a release is followed by a pause. Measured at the clients, with
CLOCK_MONOTONIC (shared by all processes on the machine):

  access time   = floor_request sent -> floor_granted received (and -> floor_denied)
  floor_taken   = the requester's floor_request sent -> floor_taken at each other member
"""

from __future__ import annotations

import collections
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from . import env
from .env import BenchData, CpuMeter, log
from .loadgen import AgentProcess, call_all


@dataclass
class FloorResult:
    talkgroups: int
    clients: int
    duration_s: float
    requests: int
    granted: int
    denied: int
    errors: int
    error_kinds: str  # the commonest errors, with counts
    request_rate: float  # floor requests per second, all clients
    grant_p50_ms: float | None
    grant_p99_ms: float | None
    deny_p50_ms: float | None
    deny_p99_ms: float | None
    taken_p50_ms: float | None  # request sent -> floor_taken at other members
    taken_p99_ms: float | None
    taken_after_grant_p50_ms: float | None  # floor_granted at talker -> floor_taken at others
    server_cpu_pct: float
    redis_cpu_pct: float
    connect_s: float
    # memory (server RSS, MiB): before clients, after sign-in, after join, with every floor held
    rss_base_mb: float
    rss_connected_mb: float
    rss_joined_mb: float
    rss_held_mb: float
    held: int
    # every talkgroup's floor requested at once
    burst: int
    burst_granted: int
    burst_errors: int
    burst_p50_ms: float | None
    burst_p99_ms: float | None
    burst_error_kinds: str
    burst_p99s_ms: list[float]  # p99 of each round, in order (BURST_ROUNDS)

    @property
    def kib_per_session(self) -> float:
        return 1024 * (self.rss_connected_mb - self.rss_base_mb) / max(1, self.clients)

    @property
    def kib_per_join(self) -> float:
        return 1024 * (self.rss_joined_mb - self.rss_connected_mb) / max(1, self.clients)

    @property
    def kib_per_active_talkgroup(self) -> float:
        return 1024 * (self.rss_held_mb - self.rss_joined_mb) / max(1, self.held)


BURST_ROUNDS = 3  # one burst is one sample of a moment; three show how much it varies


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def run_floor(data: BenchData, server: env.ServerProc, redis_pids: list[int],
              agents: list[AgentProcess], talkgroups: int, per_talkgroup: int,
              duration_s: float, think_s: tuple[float, float], hold_s: tuple[float, float],
              prefix: str, pause_s: float = 1.0) -> FloorResult:
    names = [f"{prefix}{t:03d}" for t in range(talkgroups)]
    data.talkgroups(names)
    rss_base = env.rss_bytes(server.pid) / 2**20
    # Whole talkgroups per agent, so one agent can hold every floor of its talkgroups.
    calls = []
    for a, agent in enumerate(agents):
        mine = names[a::len(agents)]
        tokens, tgs = [], []
        for tg in mine:
            for m in range(per_talkgroup):
                tokens.append(data.token(f"{tg}-m{m}", [tg]))
                tgs.append(tg)
        if tokens:
            calls.append((agent, {"urls": [server.url] * len(tokens), "tokens": tokens,
                                  "talkgroups": tgs}))
    t0 = time.monotonic()
    for agent, kw in calls:  # sign in only, then join: memory per session, then per talkgroup
        agent.send("ws_connect", join=False, **kw)
    replies = [agent.recv(300) for agent, _ in calls]
    time.sleep(pause_s)  # RSS after the server has dealt with the sign-ins
    rss_connected = env.rss_bytes(server.pid) / 2**20
    for agent, _ in calls:
        agent.call("close_ws")
    for agent, kw in calls:
        agent.send("ws_connect", join=True, **kw)
    replies = [agent.recv(300) for agent, _ in calls]
    connect_s = time.monotonic() - t0
    failed = sum(r["failed"] for r in replies)
    if failed:
        log(f"floor: {failed} clients failed to connect: {replies[0]['errors']}")
    time.sleep(pause_s)
    rss_joined = env.rss_bytes(server.pid) / 2**20
    meter = CpuMeter({"server": [server.pid], "redis": redis_pids}).start()
    results = call_all([(agent, "floor_contend", {
        "duration_s": duration_s, "think_s": think_s, "hold_s": hold_s})
        for agent, _ in calls], timeout=duration_s + 60)
    meter.stop()
    time.sleep(pause_s / 2)
    # A burst: every talkgroup's floor requested at the same instant (an incident, an
    # all-call), then released; BURST_ROUNDS times. Then taken again at a gentle pace to
    # measure memory.
    burst_rows: list[tuple[float, str]] = []
    burst_p99s: list[float] = []
    for _round in range(BURST_ROUNDS):
        burst = call_all([(agent, "floor_hold_all", {"hold": True}) for agent, _ in calls],
                         timeout=60)
        rows = [r for b in burst for r in b["results"]]
        burst_rows += rows
        p99 = _pct([ms for ms, r in rows if r == "floor_granted"], 99)
        if p99 is not None:
            burst_p99s.append(p99)
        call_all([(agent, "floor_hold_all", {"hold": False, "concurrency": 8})
                  for agent, _ in calls], timeout=120)
        time.sleep(pause_s / 2)
    held = call_all([(agent, "floor_hold_all", {"hold": True, "concurrency": 8})
                     for agent, _ in calls], timeout=120)
    time.sleep(pause_s)
    rss_held = env.rss_bytes(server.pid) / 2**20
    call_all([(agent, "floor_hold_all", {"hold": False, "concurrency": 8})
              for agent, _ in calls], timeout=120)
    for agent, _ in calls:
        agent.call("close_ws")

    requests: list[tuple[Any, ...]] = [r for res in results for r in res["requests"]]
    taken: list[tuple[str, int]] = [t for res in results for t in res["taken"]]
    grant_ms = [(r[2] - r[1]) / 1e6 for r in requests if r[3] == "floor_granted"]
    deny_ms = [(r[2] - r[1]) / 1e6 for r in requests if r[3] == "floor_denied"]
    errors = sum(1 for r in requests if str(r[3]).startswith("error"))
    kinds = collections.Counter(str(r[3])[6:] for r in requests if str(r[3]).startswith("error"))
    burst_ms = [ms for ms, r in burst_rows if r == "floor_granted"]
    burst_kinds = collections.Counter(r[6:] for _ms, r in burst_rows if r.startswith("error"))
    by_tid = {r[4]: (r[1], r[2]) for r in requests if r[3] == "floor_granted"}
    taken_ms = [(at - by_tid[tid][0]) / 1e6 for tid, at in taken if tid in by_tid]
    after_grant = [(at - by_tid[tid][1]) / 1e6 for tid, at in taken if tid in by_tid]
    res = FloorResult(
        talkgroups=talkgroups, clients=talkgroups * per_talkgroup - failed,
        duration_s=duration_s, requests=len(requests), granted=len(grant_ms),
        denied=len(deny_ms), errors=errors,
        error_kinds="; ".join(f"{k} x{v}" for k, v in kinds.most_common(3)),
        request_rate=len(requests) / meter.wall,
        grant_p50_ms=_pct(grant_ms, 50), grant_p99_ms=_pct(grant_ms, 99),
        deny_p50_ms=_pct(deny_ms, 50), deny_p99_ms=_pct(deny_ms, 99),
        taken_p50_ms=_pct(taken_ms, 50), taken_p99_ms=_pct(taken_ms, 99),
        taken_after_grant_p50_ms=_pct(after_grant, 50),
        server_cpu_pct=meter.percent("server"), redis_cpu_pct=meter.percent("redis"),
        connect_s=connect_s, rss_base_mb=rss_base, rss_connected_mb=rss_connected,
        rss_joined_mb=rss_joined, rss_held_mb=rss_held,
        held=sum(h["ok"] for h in held),
        burst=len(burst_rows), burst_granted=len(burst_ms),
        burst_errors=sum(burst_kinds.values()),
        burst_p50_ms=_pct(burst_ms, 50), burst_p99_ms=_pct(burst_ms, 99),
        burst_error_kinds="; ".join(f"{k} x{v}" for k, v in burst_kinds.most_common(3)),
        burst_p99s_ms=burst_p99s,
    )
    log(f"floor {talkgroups} TG x {per_talkgroup}: {res.requests} requests "
        f"({res.request_rate:.0f}/s), grant p50 {res.grant_p50_ms} p99 {res.grant_p99_ms} ms, "
        f"taken p99 {res.taken_p99_ms} ms, cpu {res.server_cpu_pct:.0f}%")
    return res


def as_dict(res: FloorResult) -> dict[str, Any]:
    d = asdict(res)
    d.update(kib_per_session=res.kib_per_session,
             kib_per_join=res.kib_per_join,
             kib_per_active_talkgroup=res.kib_per_active_talkgroup)
    return d
