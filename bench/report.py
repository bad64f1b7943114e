"""docs/performance.md and docs/perf/*.png from the results of one bench run."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import compare

LABELS = {
    "ptt-1node": "this server, 1 process",
    "ptt-2node": "this server, 2 processes",
    "relay": "transcoding relay (aiortc MediaRelay)",
    "janus": "Janus VideoRoom (default)",
    "janus-el1": "Janus VideoRoom, event_loops = 1",
}
COLORS = {"ptt-1node": "tab:blue", "ptt-2node": "tab:green", "relay": "tab:orange",
          "janus": "tab:red", "janus-el1": "tab:purple"}


def _f(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "/")


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# -- plots ----------------------------------------------------------------------------------------
def plots(results: dict[str, Any], outdir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    made: list[str] = []
    fan = {k: v for k, v in results.get("fanout", {}).items() if v.get("levels")}
    if not fan:
        return made

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, res in fan.items():
        lv = res["levels"]
        n = [x["n"] for x in lv]
        c = COLORS.get(name)
        axes[0].plot(n, [x["server_cpu_pct"] for x in lv], marker="o", color=c,
                     label=LABELS.get(name, name))
        axes[1].plot(n, [x["us_per_listener_packet"] for x in lv], marker="o", color=c,
                     label=LABELS.get(name, name))
    axes[0].axhline(100, color="grey", lw=0.8, ls="--")
    axes[0].set(xlabel="listeners", ylabel="server CPU, % of one core",
                title="Server CPU during a transmission (50 packets/s)")
    axes[1].set(xlabel="listeners", ylabel="µs of server CPU per listener-packet",
                title="Cost per delivered listener-packet", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(outdir / "fanout_cpu.png", dpi=110)
    plt.close(fig)
    made.append("fanout_cpu.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, res in fan.items():
        lv = [x for x in res["levels"] if x["fanout_p99_ms"] is not None]
        if lv:
            n = [x["n"] for x in lv]
            axes[0].plot(n, [x["fanout_p99_ms"] for x in lv], marker="o",
                         color=COLORS.get(name), label=LABELS.get(name, name) + " p99")
            axes[0].plot(n, [x["fanout_p50_ms"] for x in lv], marker=".", ls=":",
                         color=COLORS.get(name), label=LABELS.get(name, name) + " p50")
        lv = res["levels"]
        axes[1].plot([x["n"] for x in lv], [max(x["loss_pct"], 1e-3) for x in lv], marker="o",
                     color=COLORS.get(name), label=LABELS.get(name, name))
    axes[0].axhline(15, color="grey", lw=0.8, ls="--")
    axes[0].set(xlabel="listeners", ylabel="ms", yscale="log",
                title="Fan-out time per packet (talker send -> last listener copy)")
    axes[1].set(xlabel="listeners", ylabel="% of listener-packets lost (0 drawn at 0.001)",
                yscale="log", title="Loss")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(outdir / "fanout_latency.png", dpi=110)
    plt.close(fig)
    made.append("fanout_latency.png")

    rss = {k: v for k, v in fan.items() if k.startswith(("ptt", "janus"))}
    if rss:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for name, res in rss.items():
            lv = res["levels"]
            ax.plot([x["n"] for x in lv], [x["rss_mb"] for x in lv], marker="o",
                    color=COLORS.get(name), label=LABELS.get(name, name))
        ax.set(xlabel="connected listeners", ylabel="resident memory, MiB (all processes)",
               title="Server memory")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(outdir / "memory.png", dpi=110)
        plt.close(fig)
        made.append("memory.png")
    return made


# -- markdown -------------------------------------------------------------------------------------
def _profile_tables(w: Callable[[str], None], prof: dict[str, Any]) -> None:
    """A py-spy profile's two tables: own time by line, then total time by function."""
    w(_table(["% of samples", "line"], [[_f(p, 1), f"`{fn}`"] for fn, p in prof["self_time"]]))
    w("\nTotal time (the function anywhere on the stack, below the event loop):\n")
    w(_table(["% of samples", "function"],
             [[_f(p, 1), f"`{fn}`"] for fn, p in prof["inclusive"]]))
    w("")


def _fanout_rows(levels: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for x in levels:
        rows.append([
            str(x["n"]), _f(x["server_cpu_pct"], 0), _f(x["server_idle_cpu_pct"], 0),
            f"{x['delivered']}/{x['expected']}", _f(x["loss_pct"], 2),
            _f(x["us_per_listener_packet"], 1),
            _f(x.get("us_total_per_listener_packet", float("nan")), 1),
            _f(x["fanout_p50_ms"], 1),
            _f(x["fanout_p99_ms"], 1), _f(x.get("steady_p99_ms"), 1),
            _f(x.get("start_max_ms"), 0), _f(x["lat_p50_ms"], 1), _f(x["lat_p99_ms"], 1),
            _f(x["generator_cpu_pct"], 0), x.get("notes") or "",
        ])
    return rows


FANOUT_HEADER = ["N", "CPU %", "idle CPU %", "delivered/expected", "loss %",
                 "µs/listener-pkt (less idle)", "µs/listener-pkt (total)", "fan-out p50 ms",
                 "fan-out p99 ms",
                 "fan-out p99 after 0.5 s ms", "worst in first 0.5 s ms", "latency p50 ms",
                 "latency p99 ms", "generator CPU %", "notes"]


def markdown(results: dict[str, Any], images: list[str]) -> str:
    m = results["machine"]
    cfg = results["config"]
    fan = results.get("fanout", {})
    out: list[str] = []
    w = out.append
    w("# Performance\n")
    w("Generated by `make bench` (`python -m bench.run_all`); do not edit by hand. Every number "
      "below comes from the run described here; rerun on a quiet machine for numbers worth "
      "quoting.\n")
    w(_table(["", ""], [
        ["CPU", f"{m['cpu']} ({m['cores']} cores)"], ["memory", f"{m['memory_gib']} GiB"],
        ["commit", f"`{m['commit']}`"], ["date", m["date"]],
        ["Python / aiortc", f"{m['python']} / {m['aiortc']}"], ["kernel", m["kernel"]],
        ["load average at start (1/5/15 min)", m["loadavg_at_start"]],
        ["network", results.get("network", "")],
        ["run time", f"{results.get('wall_s', 0) / 60:.1f} min"],
    ]))
    if results.get("warnings"):
        w("")
        for warning in results["warnings"]:
            w(f"> **Note:** {warning}\n")
    w("")

    # Summary.
    w("## Summary\n")
    rows = []
    for name, res in fan.items():
        rows.append([
            LABELS.get(name, name),
            _f(res.get("marginal_us"), 1),
            _f(res.get("largest_ok")),
            _f(res.get("largest_ok_steady")),
            _f(max((x["n"] for x in res.get("levels", [])), default=None)),
            res.get("stopped") or res.get("error") or "",
        ])
    if rows:
        w("One talker at 50 packets/s, N listeners in one talkgroup.\n")
        w(_table(["system", "server CPU µs per listener-packet (marginal)",
                  f"largest N with no loss and fan-out p99 ≤ {cfg['p99_target_ms']:.0f} ms",
                  "same, leaving out each transmission's first 0.5 s",
                  "largest N tried", "sweep ended"], rows))
        w("")
        w("*Marginal cost*: slope of (CPU during the transmission - CPU idle with the same "
          "listeners) against delivered listener-packets per second, over the levels below "
          "saturation; it excludes the fixed per-packet cost (receive, decrypt, gate) and the "
          "idle cost of connected listeners (RTCP, ICE consent, WebSocket heartbeats). "
          "The per-level column µs/listener-pkt (less idle) in the tables below includes the "
          "fixed cost; µs/listener-pkt (total) includes the idle cost too, and is what the "
          "comparison below uses.\n")
    for line in results.get("findings", []):
        w(f"- {line}")
    if results.get("findings"):
        w("")
    for block in compare.markdown(results, _table, LABELS):
        w(block)

    # Method.
    w("## How it is measured\n")
    w(f"""- The server runs as deployed (`ptt-server serve --workers 1`, plain HTTP) in its own
  process; Redis is a separate `redis-server`; load generators are separate processes
  (2 for listeners, 1 for the talker). CPU is each process's user+system time (psutil).
- Listeners are *light*: aiortc does ICE, DTLS and the SRTP key exchange, then the generator
  reads the UDP socket itself, counting SRTP packets from their clear RTP header with the
  kernel's receive timestamp (SO_TIMESTAMPNS); STUN/DTLS still go to aiortc. The talker writes
  its own SRTP packets at an exact 20 ms cadence. Each Opus payload carries the run and packet
  index in Opus padding; a listener decrypts one packet per run (and every 64th as a check) to
  read it. Listeners send RTCP receiver reports every 5 s on average, as a browser's audio
  receiver does (aiortc's own rate is one a second), to this server and to Janus alike.
- *Latency* of a listener-packet = its kernel receive time - the talker's send time, which on
  loopback is the time spent inside the server (plus a few µs of kernel). *Fan-out time* of a
  packet = the latest of its N copies - send time. Neither depends on how busy the generators
  are, as long as they keep draining their sockets (their losses would count as loss).
- Levels: N = {', '.join(map(str, cfg['levels']))} listeners (stopped early at saturation or
  when the time budget ran out), {cfg['packets']} packets ({cfg['packets'] * 0.02:.0f} s) per
  level, CPU idle measured over {cfg['idle_s']:.0f} s before each transmission.
  Clients connect {cfg['concurrency']} at a time.
- Everything runs on 127.0.0.1 inside a private network namespace.
- CPU pinning: {cfg.get('pinning', 'none')}. The two-process case is not pinned (one
  process per core, sharing the machine with the generators).
""")

    for name, res in fan.items():
        w(f"## Fan-out: {LABELS.get(name, name)}\n")
        if res.get("description"):
            w(res["description"] + "\n")
        if res.get("error"):
            w(f"**Not measured:** {res['error']}\n")
        if res.get("levels"):
            w(_table(FANOUT_HEADER, _fanout_rows(res["levels"])))
            w("")
            conn = [[str(x["n"]), _f(x["connect_rate"], 1), _f(x["connect_p50_ms"], 0),
                     _f(x["connect_p99_ms"], 0), str(x["connect_failed"]),
                     _f(x.get("settle_s"), 1), _f(x["rss_mb"], 0)]
                    for x in res["levels"]]
            w("Connection setup (the listeners added to reach N, "
              f"{cfg['concurrency']} at a time; setup = WebSocket, sign-in, offer/answer, join, "
              "ICE and DTLS) and memory:\n")
            w(_table(["N", "listeners/s", "setup p50 ms", "setup p99 ms", "failed",
                      "then busy for s", "server RSS MiB"], conn))
            w("")
            if res.get("mem_kib_per_listener") is not None:
                w(f"Memory per connected listener (slope of RSS against N): "
                  f"**{res['mem_kib_per_listener']:.0f} KiB**.\n")
        if res.get("stopped"):
            w(f"Sweep ended: {res['stopped']}.\n")

    lat = results.get("latency", [])
    if lat:
        w("## Server-added latency\n")
        w("Talker packet sent (≈ arrives at the server) → the same payload's copy received by "
          "each listener, over every listener-packet of the level's transmission.\n")
        w(_table(["system", "N", "p50 ms", "p99 ms", "max ms"],
                 [[LABELS.get(x["system"], x["system"]), str(x["n"]), _f(x["lat_p50_ms"], 2),
                   _f(x["lat_p99_ms"], 2), _f(x["lat_max_ms"], 2)] for x in lat]))
        w("")

    for img in images:
        w(f"![{img}](perf/{img})\n")

    eg = results.get("egress")
    if eg:
        w("## Egress alone (one process, thread CPU time)\n")
        w(f"bench/egress_micro.py: {eg['listeners']} real aiortc peers connected over loopback "
          "to server-side tracks in one TalkgroupRouter; only the thread's own CPU time inside "
          "`router.forward` is counted (SRTP, the send system calls and the kernel's loopback "
          f"delivery they include), {eg['packets']} packets per round, the two ways "
          f"alternating, {eg['rounds']} rounds each; median. Other processes on the machine do "
          "not count here, unlike in the sweeps.\n")
        w(_table(["way of sending", "µs per listener-packet", "rounds"],
                 [[k, _f(v, 2), ", ".join(_f(x, 2) for x in eg["samples"][k])]
                  for k, v in eg["us"].items()]))
        w("")

    prof = results.get("profile")
    if prof:
        w(f"## Where the time goes (py-spy, this server at N = {prof.get('n')})\n")
        if prof.get("error"):
            w(f"Profile not taken: {prof['error']}\n")
        else:
            threads = ", ".join(f"{t} {p:.0f}%" for t, p in prof.get("threads", []))
            w(f"{prof['samples']} samples of the server's Python stacks (250 Hz, not pausing "
              f"it) during one transmission; by thread: {threads}. Idle time (the event loop "
              "waiting in epoll) is not sampled. C code (SRTP encryption in libsrtp, `sendto` "
              "in uvloop and the kernel) is charged to the Python line calling it; on loopback "
              "`sendto` also pays for the receiving side's kernel work. Below, the event loop "
              "thread only, as % of its samples.\n")
            w("Own time, by line:\n")
            _profile_tables(w, prof)

    idle = results.get("idle_profile")
    if idle:
        w(f"## Where the idle time goes (py-spy, this server, N = {idle.get('n')} connected, "
          "nobody talking)\n")
        if idle.get("error"):
            w(f"Profile not taken: {idle['error']}\n")
        else:
            w(f"{idle['samples']} samples over {_f(idle.get('seconds'), 0)} s right after the "
              "transmission profiled above: the cost of listeners that are only connected "
              "(WebSocket heartbeats, ICE consent, RTCP, presence). The event loop thread, as "
              "% of its samples; waiting in epoll is not sampled.\n")
            _profile_tables(w, idle)

    floor = results.get("floor", [])
    if floor or results.get("floor_error"):
        w("## Floor control\n")
        w("WebSocket-only clients; each talkgroup's members keep requesting its floor without "
          "queueing; a grant is held a while and released, a denial or release is followed by "
          "a pause. Times measured at the clients.\n")
        if results.get("floor_error"):
            w(f"**Failed:** {results['floor_error']}\n")
        if floor:
            w(_table(
                ["talkgroups x members", "requests (per s)", "granted / denied / errors",
                 "request→granted p50 / p99 ms", "request→denied p50 / p99 ms",
                 "request→floor_taken at others p50 / p99 ms", "server CPU %",
                 "Redis CPU %"],
                [[f"{x['talkgroups']} x {x['clients'] // max(1, x['talkgroups'])}",
                  f"{x['requests']} ({x['request_rate']:.0f})",
                  f"{x['granted']} / {x['denied']} / {x['errors']}",
                  f"{_f(x['grant_p50_ms'])} / {_f(x['grant_p99_ms'])}",
                  f"{_f(x['deny_p50_ms'])} / {_f(x['deny_p99_ms'])}",
                  f"{_f(x['taken_p50_ms'])} / {_f(x['taken_p99_ms'])}",
                  _f(x["server_cpu_pct"], 0), _f(x["redis_cpu_pct"], 0)] for x in floor]))
            w("")
            errs = [x for x in floor if x["errors"]]
            for x in errs:
                w(f"- Errors with {x['talkgroups']} talkgroups: {x['error_kinds']}")
            if errs:
                w("")
            w("A burst: afterwards, one member of every talkgroup requests its floor at the "
              "same instant; released, and again, three rounds. p50 / p99 over every round; "
              "then the p99 of each round.\n")
            w(_table(["talkgroups", "granted / requested", "request→granted p50 / p99 ms",
                      "p99 per round ms", "errors"],
                     [[str(x["talkgroups"]), f"{x['burst_granted']} / {x['burst']}",
                       f"{_f(x['burst_p50_ms'])} / {_f(x['burst_p99_ms'])}",
                       ", ".join(_f(v) for v in x.get("burst_p99s_ms", [])),
                       f"{x['burst_errors']} {x['burst_error_kinds']}".strip()]
                      for x in floor]))
            w("")
            big = [x for x in floor if x["talkgroups"] >= 20]
            if big:
                w("Memory (growth of the server's RSS while the clients of the floor benchmark "
                  "sign in, join, and take every floor; allocator noise makes these rough):\n")
                w(_table(["talkgroups x members", "per signed-in WebSocket session (KiB)",
                          "per join (KiB)", "per active talkgroup: floor held (KiB)"],
                         [[f"{x['talkgroups']} x {x['clients'] // max(1, x['talkgroups'])}",
                           _f(x["kib_per_session"], 0), _f(x["kib_per_join"], 0),
                           _f(x["kib_per_active_talkgroup"], 0) + f" ({x['held']} held)"]
                          for x in big]))
                w("")

    late = results.get("late", [])
    if late or results.get("late_error"):
        w("## Late entry\n")
        w("A listener joins while a transmission is under way.\n")
        if results.get("late_error"):
            w(f"**Failed:** {results['late_error']}\n")
        names = {"offer": "new client: offer sent → first audio packet",
                 "join": "connected client: join sent → first audio packet"}
        if late:
            w(_table(["case", "rounds", "p50 ms", "p99 ms", "max ms", "first round ms",
                      "offer→answer p50 ms", "failed"],
                     [[names.get(x["mode"], x["mode"]), str(x["rounds"]), _f(x["p50_ms"]),
                       _f(x["p99_ms"]), _f(x["max_ms"]), _f(x["first_ms"]),
                       _f(x["answer_p50_ms"]), str(x["failed"])] for x in late]))
            w("")
            w("Audio packets leave every 20 ms, so up to 20 ms of each figure is waiting for "
              "the next packet. In the join case the first round is shown apart: it may "
              "include a renegotiation (server offer, client answer).\n")
    return "\n".join(out).rstrip() + "\n"


def write(results: dict[str, Any], md_path: Path, img_dir: Path) -> None:
    images = plots(results, img_dir)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(markdown(results, images))


def slope_kib(levels: list[dict[str, Any]]) -> float | None:
    pts = [(x["n"], x["rss_mb"]) for x in levels if x["rss_mb"]]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    return float(np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)[0] * 1024)
