"""The findings listed under the summary of docs/performance.md, from one run's results."""

from __future__ import annotations

from typing import Any

from . import compare, report


def _headline(results: dict[str, Any]) -> str | None:
    """Total CPU per listener-packet at the largest N below the targets' top (<= 800) where
    Janus at its best was measured too, and the ratio; else the marginal figure."""
    fan = results["fanout"]
    rows = [r for r in compare.rows(fan) if r["ratio_best"] is not None
            and r["n"] <= compare.TARGET_RANGE[1]]
    ours = fan.get(compare.OURS, {})
    marginal = ours.get("marginal_us")
    tail = (f" (marginal slope over the unsaturated levels: {marginal:.1f} µs)"
            if marginal else "")
    if rows:
        r = rows[-1]
        us = r["ours"]["us_total_per_listener_packet"]
        them = r["best"]["us_total_per_listener_packet"]
        return (f"Headline: at N = {r['n']} this server spends **{us:.1f} µs of CPU per "
                f"listener-packet** (total, idle included; one process on one core) against "
                f"{them:.1f} µs for Janus VideoRoom with `event_loops = 1` in the same run: "
                f"**{r['ratio_best']:.2f}x** Janus at its best{tail}.")
    if marginal:
        return (f"Headline: this server spends **{marginal:.1f} µs of CPU per listener-packet**"
                f" (marginal, one process), i.e. about {1e6 / marginal / 50:.0f} listeners per "
                "core at 50 packets/s if nothing else ran.")
    return None


def findings(results: dict[str, Any]) -> None:
    fan = results["fanout"]
    ours = fan.get("ptt-1node", {})
    for name, res in fan.items():
        gen_limited = [lv["n"] for lv in res.get("levels", [])
                       if "generator near" in (lv.get("notes") or "")
                       or "all processes" in (lv.get("notes") or "")]
        if gen_limited:
            results["findings"].append(
                f"{report.LABELS.get(name, name)}: at N = {', '.join(map(str, gen_limited))} "
                "a load generator used nearly a full core, or all processes together nearly "
                "all cores: from there on the generator and the server compete for the CPU, and "
                "the figures are a lower bound of what the server alone could do.")
    stalls = [lv for lv in ours.get("levels", [])
              if lv.get("start_max_ms") and lv.get("steady_p99_ms") is not None
              and lv["start_max_ms"] > max(30.0, 3 * lv["steady_p99_ms"])]
    if stalls:
        worst = max(stalls, key=lambda lv: lv["start_max_ms"])
        results["findings"].append(
            f"The first packets of each transmission wait: at N = "
            f"{', '.join(str(lv['n']) for lv in stalls)} the worst fan-out in a transmission's "
            f"first 0.5 s was up to {worst['start_max_ms']:.0f} ms (N = {worst['n']}) while "
            f"the rest of it had p99 {worst['steady_p99_ms']:.1f} ms. A floor change sends every "
            "member its floor message and a presence delta (N WebSocket sends, each encoded "
            "once for all) on the event loop that also forwards the audio.")
    headline = _headline(results)
    if headline:
        results["findings"].insert(0, headline)
    errors = results.get("errors", {})
    for name, err in errors.items():
        results["warnings"].append(f"{name} failed: {err}")
        if name == "floor":
            results["floor_error"] = err
        if name == "late":
            results["late_error"] = err
        if name in ("ptt-1node", "ptt-2node", "relay", "janus", "janus-el1"):
            fan.setdefault(name, {"levels": []})["error"] = err
