"""Late entry: a listener joins while a transmission is under way.

  offer -> first packet : a new client (already signed in on its WebSocket) sends its offer,
                          joins as soon as it has the answer; until its first audio packet
                          (ICE, DTLS, the server's renegotiation if any, the join)
  join -> first packet  : a listener whose connection is already up joins (then leaves, and
                          joins again); the first round, which may renegotiate, is reported
                          apart
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .env import BenchData, log
from .loadgen import AgentProcess

PACKET_INTERVAL_S = 0.02


@dataclass
class LateResult:
    mode: str
    rounds: int
    failed: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    first_ms: float | None  # the first round alone
    answer_p50_ms: float | None  # offer mode: offer -> answer
    errors: str


def _pct(v: list[float], q: float) -> float | None:
    return float(np.percentile(v, q)) if v else None


def run_late(data: BenchData, url: str, talker: AgentProcess, joiner: AgentProcess,
             rounds: int, talkgroup: str = "LATE") -> list[LateResult]:
    data.talkgroups([talkgroup])
    talker.call("talker", timeout=60, system="ptt", url=url,
                token=data.token("late-talker", [talkgroup]), talkgroup=talkgroup)
    talker.call("floor", timeout=30)
    # One transmission covers both measurements; stopped when they are done (bounded: at
    # most 120 s of packets).
    talker.call("send_start", run=9999, count=int(120 / PACKET_INTERVAL_S))
    results: list[LateResult] = []
    try:
        time.sleep(0.3)
        offer_tokens = [data.token(f"late-o{i}", [talkgroup]) for i in range(rounds)]
        offer = joiner.call("late_entry", timeout=30 + rounds * 15, url=url,
                            tokens=offer_tokens, talkgroup=talkgroup, mode="offer")
        join = joiner.call("late_entry", timeout=30 + rounds * 15, url=url,
                           tokens=[data.token("late-j", [talkgroup])] * (rounds + 1),
                           talkgroup=talkgroup, mode="join")
    finally:
        talker.call("send_stop", timeout=150)
        talker.call("release", timeout=30)
    for mode, reply in (("offer", offer), ("join", join)):
        rows: list[dict[str, float]] = reply["results"]
        first = rows[0]["total_ms"] if rows else None
        if mode == "join":
            rows = rows[1:]  # the first round may renegotiate: reported as first_ms
        total = [r["total_ms"] for r in rows]
        res = LateResult(
            mode=mode, rounds=len(total), failed=reply["failed"],
            p50_ms=_pct(total, 50), p99_ms=_pct(total, 99),
            max_ms=max(total) if total else None, first_ms=first,
            answer_p50_ms=_pct([r["answer_ms"] for r in rows if "answer_ms" in r], 50),
            errors="; ".join(reply["errors"]),
        )
        log(f"late entry ({mode}): p50 {res.p50_ms} p99 {res.p99_ms} ms, first {first} ms")
        results.append(res)
    return results


def as_dicts(results: list[LateResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]

