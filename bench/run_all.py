"""Run every benchmark, bounded in time, and write docs/performance.md with its plots.

    python -m bench.run_all                 # the full run (`make bench`), under 20 minutes
    python -m bench.run_all --preset smoke  # seconds; what tests/test_bench_smoke.py runs

As root, the run re-executes itself in a private network namespace whose only interfaces are
`lo` and a veth pair carrying 127.0.0.1 as well (Janus gathers ICE candidates only on
non-loopback interfaces), so no packet can leave the machine and every address is 127.0.0.1.
Janus is installed with apt-get first if it is missing (that needs the network, so it happens
before entering the namespace). Without root there is no namespace and no Janus; everything
else still binds and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import env, fanout, floorbench, late, report
from .env import log
from .findings import findings as _findings
from .loadgen import AgentProcess

NETNS_ENV = "PTT_BENCH_NETNS"
JANUS_IF = "pttj0"


@dataclass
class Preset:
    levels: list[int]
    packets: int
    idle_s: float
    relay_levels: list[int]
    relay_packets: int
    two_node_levels: list[int]
    janus_levels: list[int]
    profile_n: int
    floor_cases: list[tuple[int, int, float]]  # (talkgroups, members each, seconds)
    floor_think_s: tuple[float, float]
    floor_hold_s: tuple[float, float]
    late_rounds: int
    budget_s: float  # the whole run
    budgets: dict[str, float] = field(default_factory=dict)  # per section, at most
    concurrency: int = 16
    generators: int = 2
    janus: bool = True
    # Servers on one CPU, generators on the others (taskset), when the machine has two or more.
    pin: bool = True
    egress_listeners: int = 64  # bench/egress_micro.py's peers
    top_repeats: int = 0  # extra transmissions at N = repeat_n (this server): p99 spread
    repeat_n: int = 650  # inside the targets' 600-800, below where the sweep saturated before
    settle_s: float = 1.0
    warmup_packets: int = 75
    quiet_window_s: float = 0.5
    pause_s: float = 1.0
    idle_profile_s: float = 10.0  # py-spy on the connected listeners, nobody talking


PRESETS = {
    "full": Preset(
        levels=[10, 50, 100, 200, 300, 400, 500, 650, 800, 1000, 1200, 1500], packets=400,
        idle_s=2.0,
        relay_levels=[1, 2, 5, 10, 20, 40], relay_packets=250,
        two_node_levels=[10, 100, 200, 400, 600, 800],
        janus_levels=[10, 50, 100, 200, 300, 400, 500, 650, 800],
        profile_n=200,
        floor_cases=[(1, 50, 15.0), (200, 4, 15.0)], floor_think_s=(2.0, 6.0),
        floor_hold_s=(2.0, 4.0), late_rounds=20, budget_s=1380.0, top_repeats=2,
        budgets={"ptt-1node": 420, "relay": 60, "floor": 120, "late": 70, "ptt-2node": 200,
                 "janus-el1": 250, "janus": 200},
    ),
    # A few minutes: three N for this server and Janus, to steer by between full runs.
    "quick": Preset(
        levels=[200, 400, 800], packets=300, idle_s=2.0, relay_levels=[1], relay_packets=50,
        two_node_levels=[200], janus_levels=[200, 400, 800], profile_n=0,
        floor_cases=[(200, 4, 10.0)], floor_think_s=(2.0, 6.0), floor_hold_s=(2.0, 4.0),
        late_rounds=10, budget_s=900.0, top_repeats=2, repeat_n=400,
        budgets={"ptt-1node": 200, "janus-el1": 200, "janus": 150},
    ),
    "smoke": Preset(
        levels=[5], packets=50, idle_s=0.5, relay_levels=[1], relay_packets=50,
        two_node_levels=[4], janus_levels=[], profile_n=5,
        floor_cases=[(1, 4, 2.5)], floor_think_s=(0.05, 0.2), floor_hold_s=(0.05, 0.15),
        late_rounds=2, budget_s=240.0, concurrency=8, generators=1, janus=False,
        egress_listeners=4,
        settle_s=0.2, warmup_packets=10, quiet_window_s=0.2, pause_s=0.2, idle_profile_s=1.0,
        budgets={"ptt-1node": 60, "relay": 40, "floor": 40, "late": 40, "ptt-2node": 60},
    ),
}


class Bench:
    def __init__(self, preset: Preset, workdir: Path) -> None:
        self.p = preset
        self.root = workdir
        self.start = time.monotonic()
        self.deadline = self.start + preset.budget_s
        self.results: dict[str, Any] = {
            "machine": env.machine_info(),
            "config": {"levels": preset.levels, "packets": preset.packets,
                       "idle_s": preset.idle_s, "concurrency": preset.concurrency,
                       "p99_target_ms": fanout.P99_TARGET_MS},
            "fanout": {}, "latency": [], "floor": [], "late": [], "findings": [],
            "warnings": [],
            "network": ("private network namespace, 127.0.0.1 only"
                        if os.environ.get(NETNS_ENV) else "host namespace, 127.0.0.1 only"),
        }
        split = env.cpu_split() if preset.pin else None
        self.server_cpus, self.gen_cpus = split if split else (None, None)
        self.all_cpus = set(os.sched_getaffinity(0))
        self.results["config"]["pinning"] = (
            f"servers on CPU {_cpus(self.server_cpus)}"
            + (f" at nice {env.SERVER_NICE}" if os.geteuid() == 0 else "")
            + f", load generators (and Redis, and this orchestrator) on CPU "
            f"{_cpus(self.gen_cpus)}" if split else "none")
        # Children inherit this process's CPUs: the generators and Redis by default.
        if self.gen_cpus:
            env.pin(os.getpid(), self.gen_cpus)
        self.redis = env.start_redis(workdir)
        self.data = env.BenchData(workdir)
        self.data.talkgroups(["FAN", "LATE"])
        self._live: list[Any] = []
        self._prespawned: tuple[AgentProcess, list[AgentProcess]] | None = None

    # -- helpers ------------------------------------------------------------------------------
    def _section_deadline(self, name: str) -> float:
        budget = self.p.budgets.get(name, self.p.budget_s)
        return min(self.deadline, time.monotonic() + budget)

    def _agents(self, prefix: str) -> tuple[AgentProcess, list[AgentProcess]]:
        if self._prespawned is not None:  # started with the section, while servers start
            ready, self._prespawned = self._prespawned, None
            return ready
        talker = AgentProcess(f"{prefix}-talker")
        gens = [AgentProcess(f"{prefix}-gen{i}") for i in range(self.p.generators)]
        if prefix == "ptt-2node" and self.gen_cpus:
            for agent in (talker, *gens):  # two servers on two cores: nothing is pinned
                env.pin(agent.pid, self.all_cpus)
        self._live += [talker, *gens]
        return talker, gens

    def _stop_agents(self) -> None:
        t0 = time.monotonic()
        for agent in self._live:
            with contextlib.suppress(Exception):
                agent.stop()
        if self._live:
            log(f"stopped {len(self._live)} generators in {time.monotonic() - t0:.1f} s")
        self._live = []

    def section(self, name: str, fn: Callable[[], None], min_s: float = 20.0) -> None:
        left = self.deadline - time.monotonic()
        if left < min_s:
            log(f"{name}: skipped, {left:.0f} s left of the time budget")
            self.results["warnings"].append(f"{name} skipped: the run's time budget ran out")
            return
        log(f"== {name}")
        t0 = time.monotonic()
        try:
            self._prespawned = None
            self._prespawned = self._agents(name)
            fn()
        except Exception as exc:
            log(f"{name} failed: {exc}\n{traceback.format_exc()}")
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            self.results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {first}"
        finally:
            self._prespawned = None
            self._stop_agents()
        log(f"{name}: {time.monotonic() - t0:.0f} s")

    def _fanout(self, name: str, system: fanout.System, levels: list[int], packets: int,
                description: str, profile_at: int | None = None,
                repeats: int = 0) -> fanout.FanoutRun:
        entry = self.results["fanout"].setdefault(name, {"levels": [], "description": description})
        talker, gens = self._agents(name)
        run = fanout.FanoutRun(system, talker, gens, concurrency=self.p.concurrency,
                               idle_s=self.p.idle_s, settle_s=self.p.settle_s,
                               warmup_packets=self.p.warmup_packets,
                               quiet_window_s=self.p.quiet_window_s)
        deadline = self._section_deadline(name)

        def after(lv: fanout.Level) -> None:
            entry["levels"] = fanout.as_dicts(run.levels)
            if (lv.n in (10, 100, 500) or lv.n == self.p.levels[0]) and lv.lat_p50_ms is not None:
                self.results["latency"].append({k: getattr(lv, k) for k in (
                    "system", "n", "lat_p50_ms", "lat_p99_ms", "lat_max_ms")})
            if profile_at is not None and lv.n == profile_at and not fanout.saturated(lv):
                prof = run.profile(packets, self.root / f"profile-{name}.txt")
                self.results["profile"] = {"n": lv.n, "samples": prof.samples,
                                           "threads": prof.threads,
                                           "self_time": prof.self_time,
                                           "inclusive": prof.inclusive, "error": prof.error}
                log(f"profile: {prof.samples} samples {prof.error}")
                secs = self.p.idle_profile_s
                idle = run.profile_idle(secs, self.root / f"profile-idle-{name}.txt")
                self.results["idle_profile"] = {"n": lv.n, "seconds": secs,
                                                "samples": idle.samples, "threads": idle.threads,
                                                "self_time": idle.self_time,
                                                "inclusive": idle.inclusive, "error": idle.error}
            near = abs(lv.n - self.p.repeat_n) <= max(2, self.p.repeat_n // 50)
            if repeats and near and not fanout.saturated(lv):
                # The same N again, same listeners: how far p99 moves between transmissions.
                runs = [lv]
                for _ in range(repeats):
                    if time.monotonic() + packets * fanout.PACKET_INTERVAL_S + 10 > deadline:
                        break
                    runs.append(run.level(lv.n, packets))
                    run.levels.pop()  # not a level of the sweep
                entry["repeats"] = fanout.as_dicts(runs)

        try:
            run.sweep(levels, packets, deadline, stop_when=fanout.saturated, after_level=after)
        finally:
            entry["levels"] = fanout.as_dicts(run.levels)
            entry["stopped"] = run.stopped
            entry["marginal_us"] = fanout.marginal_cost(run.levels)
            entry["largest_ok"] = fanout.largest_ok(run.levels)
            entry["largest_ok_steady"] = fanout.largest_ok(run.levels, steady=True)
            entry["mem_kib_per_listener"] = report.slope_kib(entry["levels"])
            top = run.levels[-1] if run.levels else None
            if top is not None and top.lat_p50_ms is not None and not any(
                    x["system"] == top.system and x["n"] == top.n
                    for x in self.results["latency"]):
                self.results["latency"].append({k: getattr(top, k) for k in (
                    "system", "n", "lat_p50_ms", "lat_p99_ms", "lat_max_ms")})
        return run

    # -- sections -----------------------------------------------------------------------------
    def ptt(self, nodes: int) -> None:
        name = f"ptt-{nodes}node"
        # One process: pinned to the server CPU. Two: one per core, unpinned (the case of
        # `serve --workers 2`), sharing the machine with the generators.
        cpus = self.server_cpus if nodes == 1 else self.all_cpus
        servers = [env.start_server(self.data, self.redis.url, f"bench-n{i}", self.root,
                                    cpus=cpus) for i in range(nodes)]
        try:
            system = fanout.System(
                name=name, kind="ptt", listener_urls=[s.url for s in servers],
                talker_url=servers[0].url, server_pids=[s.pid for s in servers],
                aux_pids={"redis": [env.redis_pid(self.redis)]}, token=self.data.token,
                cpus=len(self.server_cpus) if nodes == 1 and self.server_cpus else None)
            levels = self.p.levels if nodes == 1 else self.p.two_node_levels
            desc = ("The talker and all listeners on one server process."
                    if nodes == 1 else
                    "Two server processes sharing one Redis; the talker on the first, listeners "
                    "alternating between them (the second gets the audio through Redis "
                    "pub/sub). CPU is both processes together; Redis is in the notes below.")
            run = self._fanout(name, system, levels, self.p.packets, desc,
                               profile_at=self.p.profile_n if nodes == 1 else None,
                               repeats=self.p.top_repeats if nodes == 1 else 0)
            offers = run.levels[-1].server_offers if run.levels else 0
            if offers and nodes == 1:
                self.results["findings"].append(
                    f"The server answered each listener's recvonly offer without using its "
                    f"transceiver and then sent its own offer (renegotiation) for the downlink: "
                    f"{offers} of {run.connected} listeners. Each listener's setup costs an "
                    f"extra round trip and a second transceiver.")
            if run.levels and nodes == 2:
                redis_cpu = max(lv.aux_cpu_pct for lv in run.levels)
                self.results["findings"].append(
                    f"Two processes: Redis used up to {redis_cpu:.0f}% of a core relaying the "
                    f"audio to the second process.")
        finally:
            cutoff = time.time()
            self._stop_agents()  # clients leave first, then the servers stop
            self._server_drops(name, servers, cutoff)
            for s in servers:
                t0 = time.monotonic()
                env.stop_process(s.proc)
                log(f"stopped {s.url} in {time.monotonic() - t0:.1f} s")

    def _server_drops(self, name: str, servers: list[env.ServerProc], cutoff: float) -> None:
        """Sessions the server closed itself while its clients were still connected."""
        closed = failed = 0
        for server in servers:
            events = env.server_log_events(server.log_path, cutoff)
            closed += sum(v for k, v in events.items() if k.startswith("session closed"))
            failed += events.get("message handling failed", 0)
        self.results["fanout"].setdefault(name, {"levels": []})["server_closed"] = closed
        setup_failed = sum(lv.get("connect_failed", 0)
                           for lv in self.results["fanout"][name].get("levels", []))
        if closed or failed:
            self.results["findings"].append(
                f"{report.LABELS.get(name, name)}: {closed} sessions ended (server log) while "
                f"the generators still held them open ({setup_failed} listener setups had "
                f"failed and were given up), and the server logged {failed} failed message "
                "handlings. The generators close nothing else before the end of the sweep.")

    def relay(self) -> None:
        server = env.start_relay(self.root, cpus=self.server_cpus)
        try:
            system = fanout.System(
                name="relay", kind="ptt", listener_urls=[server.url], talker_url=server.url,
                server_pids=[server.pid], tagged=False, token=lambda n, t: "-", threaded=True,
                cpus=len(self.server_cpus) if self.server_cpus else None)
            self._fanout("relay", system, self.p.relay_levels, self.p.relay_packets,
                         "bench/relay.py: aiortc decodes the talker (jitter buffer, Opus "
                         "decoder) and MediaRelay hands the frames to every listener's sender, "
                         "which re-encodes them. Payloads are re-encoded, so they carry no "
                         "tag: delivery is counted per packet and latency is not measured "
                         "(the jitter buffer alone holds 4 packets, 80 ms).")
        finally:
            self._stop_agents()
            env.stop_process(server.proc)

    def janus(self, event_loops: int = 0) -> None:
        from . import janus as jn

        name = f"janus-el{event_loops}" if event_loops else "janus"
        reason = None
        if not os.environ.get(NETNS_ENV):
            reason = ("Janus gathers ICE candidates only on non-loopback interfaces; without "
                      "the private network namespace (needs root) it would use the machine's "
                      "real addresses, so it was not run")
        elif not jn.janus_binary():
            reason = "the `janus` Debian package is not installed (and could not be)"
        if reason:
            self.results["fanout"][name] = {"levels": [], "error": reason}
            return
        server = jn.JanusServer(self.root, event_loops=event_loops, cpus=self.server_cpus)
        server.start()
        mode = (f"`event_loops = {event_loops}` ({event_loops} shared event loop thread(s), its "
                "best mode for many subscribers)" if event_loops else
                "default settings (one event loop thread per handle)")
        try:
            system = fanout.System(
                name=name, kind="janus", listener_urls=[server.url], talker_url=server.url,
                server_pids=[server.pid], floor=False, janus={"room": jn.ROOM, "feed": None},
                threaded=True, cpus=len(self.server_cpus) if self.server_cpus else None)
            self._fanout(name, system, self.p.janus_levels, self.p.packets,
                         f"Janus 1.1 (Debian package) VideoRoom plugin, HTTP API, {mode}, an "
                         "audio-only room; the talker publishes, each listener subscribes. No "
                         "floor control: the publisher is always forwarded.")
        finally:
            self._stop_agents()
            server.stop()

    def floor(self) -> None:
        server = env.start_server(self.data, self.redis.url, "bench-floor", self.root,
                                  cpus=self.server_cpus)
        try:
            _talker, gens = self._agents("floor")
            for i, (tgs, per, secs) in enumerate(self.p.floor_cases):
                if time.monotonic() + secs + 30 > self.deadline:
                    self.results["warnings"].append("floor case skipped: time budget")
                    break
                res = floorbench.run_floor(
                    self.data, server, [env.redis_pid(self.redis)], gens, tgs, per, secs,
                    self.p.floor_think_s, self.p.floor_hold_s, prefix=f"F{i}x",
                    pause_s=self.p.pause_s)
                self.results["floor"].append(floorbench.as_dict(res))
        finally:
            self._stop_agents()
            env.stop_process(server.proc)

    def late(self) -> None:
        server = env.start_server(self.data, self.redis.url, "bench-late", self.root,
                                  cpus=self.server_cpus)
        try:
            talker, gens = self._agents("late")
            results = late.run_late(self.data, server.url, talker, gens[0], self.p.late_rounds)
            self.results["late"] = late.as_dicts(results)
        finally:
            self._stop_agents()
            env.stop_process(server.proc)

    def egress(self) -> None:
        """bench/egress_micro.py in a process of its own, on the server CPU."""
        cmd = [*env.taskset(self.server_cpus), sys.executable, "-m", "bench.egress_micro",
               "--listeners", str(self.p.egress_listeners)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=env.REPO)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip()[-300:])
        self.results["egress"] = json.loads(done.stdout)

    def close(self) -> None:
        self._stop_agents()
        self.redis.stop()
        if self.gen_cpus:
            env.pin(os.getpid(), self.all_cpus)  # the caller (a test run, say) gets its CPUs back
        self.results["wall_s"] = time.monotonic() - self.start


def _cpus(cpus: set[int] | None) -> str:
    return ",".join(map(str, sorted(cpus or ())))


SECTIONS = ("egress", "ptt-1node", "relay", "floor", "late", "ptt-2node", "janus-el1",
            "janus")


def run(preset_name: str = "full", md_path: Path | None = None,
        img_dir: Path | None = None, keep: Path | None = None,
        sections: list[str] | None = None) -> dict[str, Any]:
    preset = PRESETS[preset_name]
    md_path = md_path or env.REPO / "docs" / "performance.md"
    img_dir = img_dir or env.REPO / "docs" / "perf"
    work = env.Workdir()
    bench = Bench(preset, work.path)
    steps: dict[str, Callable[[], None]] = {
        "egress": bench.egress, "ptt-1node": lambda: bench.ptt(1), "relay": bench.relay,
        "floor": bench.floor, "late": bench.late, "ptt-2node": lambda: bench.ptt(2),
        "janus-el1": lambda: bench.janus(1), "janus": bench.janus,
    }
    try:
        for name in SECTIONS:
            if sections is not None and name not in sections:
                continue
            if name.startswith("janus") and not preset.janus:
                continue
            bench.section(name, steps[name])
    finally:
        bench.close()
        results = bench.results
        _findings(results)
        if keep is not None:
            keep.write_text(json.dumps(results, indent=1, default=str))
        report.write(results, md_path, img_dir)
        log(f"wrote {md_path} in {results['wall_s'] / 60:.1f} min")
        work.close()
    return results


def _netns_command(argv: list[str]) -> list[str] | None:
    """The command that reruns us inside a private network namespace, if we can make one."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        return None
    setup = (
        "ip link set lo up && "
        f"if ip link add {JANUS_IF} type veth peer name {JANUS_IF}p 2>/dev/null; then "
        f"echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 2>/dev/null; "
        f"ip link set {JANUS_IF} up && ip link set {JANUS_IF}p up && "
        f"ip addr add 127.0.0.1/32 dev {JANUS_IF}; fi && "
        'exec "$@"'
    )
    return ["unshare", "-n", "sh", "-c", setup, "sh", sys.executable, "-m", "bench.run_all",
            *argv]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description="Run the benchmarks; write docs/performance.md")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--out", type=Path, help="markdown file (default docs/performance.md)")
    parser.add_argument("--images", type=Path, help="plot directory (default docs/perf)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS,
                        help="run only these sections (the report shows only them)")
    parser.add_argument("--no-netns", action="store_true",
                        help="do not enter a private network namespace (no Janus then)")
    args = parser.parse_args(argv)
    if not os.environ.get(NETNS_ENV) and not args.no_netns:
        if PRESETS[args.preset].janus:
            from . import janus as jn

            problem = jn.ensure_installed()
            if problem:
                log(f"Janus baseline unavailable: {problem}")
        cmd = _netns_command(argv)
        if cmd is not None:
            log("entering a private network namespace (loopback only)")
            return subprocess.run(cmd, env={**os.environ, NETNS_ENV: "1"}).returncode
        log("no private network namespace (needs root and unshare): host namespace, "
            "127.0.0.1 only, no Janus")
    run(args.preset, args.out, args.images, args.json, args.sections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
