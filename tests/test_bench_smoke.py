"""The benchmarks in miniature, so they cannot rot unnoticed: a few seconds of each, with
real server processes, no performance thresholds (a busy test machine says nothing about
speed), only that each harness still measures something."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_bench_smoke(tmp_path: Path) -> None:
    # The bench extra (psutil, matplotlib) is installed by `make test`: a missing one fails.
    from bench import run_all

    md = tmp_path / "performance.md"
    images = tmp_path / "perf"
    raw = tmp_path / "results.json"
    results = run_all.run("smoke", md, images, raw)

    assert not results.get("errors"), results.get("errors")
    one = results["fanout"]["ptt-1node"]["levels"]
    assert one and one[0]["n"] == 5
    assert one[0]["delivered"] > 0, "no listener received anything"
    assert one[0]["lat_p50_ms"] is not None
    two = results["fanout"]["ptt-2node"]["levels"]
    assert two and two[0]["delivered"] > 0, "nothing crossed to the second server process"
    relay = results["fanout"]["relay"]["levels"]
    assert relay and relay[0]["delivered"] > 0, "the transcoding relay delivered nothing"
    floor = results["floor"][0]
    assert floor["requests"] >= 10 and floor["granted"] >= 1
    assert floor["taken_p50_ms"] is not None, "no floor_taken reached the other members"
    egress = results["egress"]
    assert set(egress["us"]) == {"batched", "protect() + sendto"}
    assert all(v > 0 for v in egress["us"].values()) and egress["received"] > 0
    # py-spy comes with the bench extra; an idle second of 5 listeners may give no sample.
    assert not results["profile"]["error"] and results["profile"]["samples"] > 0
    assert not results["idle_profile"]["error"], results["idle_profile"]
    late = {r["mode"]: r for r in results["late"]}
    assert late["offer"]["p50_ms"] is not None and late["join"]["p50_ms"] is not None

    text = md.read_text()
    for heading in ("## Summary", "## Fan-out: this server, 1 process", "## Floor control",
                    "## Late entry", "## Server-added latency", "## Egress alone",
                    "## Where the time goes", "## Where the idle time goes", "### Targets"):
        assert heading in text
    assert (images / "fanout_cpu.png").stat().st_size > 1000
    json.loads(raw.read_text())
