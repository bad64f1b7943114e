"""Fan-out capacity and server-added latency: one talker at 50 packets/s, N light listeners.

Listeners are added level by level (N = 10, 50, 100, ...) to the same talkgroup; at each level
the server's CPU is measured while idle and during one transmission of `packets` packets.
Delivery, latency and fan-out time come from the talker's send times and the listeners' kernel
receive timestamps (both CLOCK_REALTIME on one machine), so they do not depend on how busy the
generator processes are, as long as they keep reading (their loss would show as loss).

  latency of a listener-packet = kernel receive time at the listener - talker's send time
  fan-out time of a packet      = the latest of its listener copies - talker's send time
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import env
from .env import CpuMeter, log
from .loadgen import AgentProcess, call_all

PACKET_INTERVAL_S = 0.02
P99_TARGET_MS = 15.0
STEADY_AFTER = 25  # packets (0.5 s): the start of a transmission also pays for floor events
QUIET_MAX_S = 60.0
_run_ids = itertools.count(1)


@dataclass
class System:
    """What the generators talk to."""

    name: str
    kind: str  # "ptt" (our protocol: the server or the relay) or "janus"
    listener_urls: list[str]  # listeners are spread over these, round robin
    talker_url: str
    server_pids: list[int]
    aux_pids: dict[str, list[int]] = field(default_factory=dict)  # e.g. redis
    talkgroup: str = "FAN"
    floor: bool = True
    tagged: bool = True  # payloads arrive unchanged (an SFU); False for a transcoder
    janus: dict[str, Any] | None = None
    token: Callable[[str, Sequence[str]], str] | None = None
    threaded: bool = False  # uses several cores (Janus's threads, the relay's encoders)
    cpus: int | None = None  # pinned to this many CPUs (taskset), if pinned

    @property
    def cpu_capacity_pct(self) -> float:
        if self.threaded:
            return 100.0 * (self.cpus or os.cpu_count() or 1)
        return 100.0 * min(len(self.server_pids), self.cpus or len(self.server_pids))


@dataclass
class Level:
    system: str
    n: int  # listeners connected
    packets: int
    expected: int
    delivered: int
    loss_pct: float
    server_cpu_pct: float  # percent of one core, during the transmission
    server_cpu_capacity_pct: float  # what the server could use (processes or cores x 100)
    server_idle_cpu_pct: float  # same listeners, no transmission
    aux_cpu_pct: float  # e.g. Redis
    generator_cpu_pct: float  # the busiest listener-generator process
    talker_cpu_pct: float
    machine_cpu_pct: float  # every measured process together (of cores x 100 available)
    us_per_listener_packet: float  # (talk CPU - idle CPU) / delivered listener-packets
    lat_p50_ms: float | None
    lat_p99_ms: float | None
    lat_max_ms: float | None
    fanout_p50_ms: float | None
    fanout_p99_ms: float | None
    steady_p99_ms: float | None  # fan-out p99 without the first STEADY_AFTER packets
    start_max_ms: float | None  # the worst fan-out among the first STEADY_AFTER packets
    spread_p50_ms: float | None  # first to last copy of one packet
    connect_s: float  # wall time to connect the listeners added at this level
    settle_s: float  # then until the server's CPU was steady again (join/presence backlog)
    connect_rate: float  # listeners per second at this level
    connect_p50_ms: float | None
    connect_p99_ms: float | None
    connect_failed: int
    rss_mb: float  # server resident memory after connecting (sum over nodes)
    grant_ms: float
    server_offers: int = 0  # listeners (so far) to which the server sent its own offer
    notes: str = ""
    # All of the server's CPU during the transmission (idle cost of the connected listeners
    # and the fixed per-packet cost included) / delivered listener-packets: what a machine
    # full of such talkgroups would pay, and the figure compared between systems at one N.
    us_total_per_listener_packet: float = float("nan")

    @property
    def ok(self) -> bool:
        return (self.loss_pct == 0.0 and self.fanout_p99_ms is not None
                and self.fanout_p99_ms <= P99_TARGET_MS)

    @property
    def ok_steady(self) -> bool:
        return (self.loss_pct == 0.0 and self.steady_p99_ms is not None
                and self.steady_p99_ms <= P99_TARGET_MS)


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if values.size else None


class FanoutRun:
    def __init__(self, system: System, talker: AgentProcess, agents: list[AgentProcess],
                 concurrency: int = 16, idle_s: float = 2.0, settle_s: float = 1.0,
                 warmup_packets: int = 75, quiet_window_s: float = 0.5) -> None:
        self.system = system
        self.talker = talker
        self.agents = agents
        self.concurrency = concurrency
        self.idle_s = idle_s
        self.settle_s = settle_s
        self.warmup_packets = warmup_packets
        self.quiet_window_s = quiet_window_s
        self.connected = 0
        self._names = itertools.count()
        self.feed: Any = None
        self.levels: list[Level] = []
        self.talker_ready = False
        self.stopped = ""  # why the sweep ended early, if it did
        self.warmed = False

    def _meter(self) -> CpuMeter:
        groups: dict[str, list[int]] = {"server": self.system.server_pids,
                                        "talker": [self.talker.pid]}
        for a in self.agents:
            groups[a.name] = [a.pid]
        for k, v in self.system.aux_pids.items():
            groups["aux:" + k] = v
        return CpuMeter(groups)

    def connect_talker(self) -> None:
        s = self.system
        kw: dict[str, Any] = {"system": s.kind, "url": s.talker_url}
        if s.kind == "janus":
            kw["janus"] = s.janus
        else:
            assert s.token is not None
            kw.update(token=s.token("talker", [s.talkgroup]), talkgroup=s.talkgroup)
        reply = self.talker.call("talker", timeout=60, **kw)
        if s.kind == "janus":
            assert s.janus is not None
            s.janus["feed"] = reply["feed"]
        self.talker_ready = True

    def grow(self, n: int) -> tuple[float, list[list[float]], int]:
        """Connect listeners until `n` are connected; (wall s, per-connection times, failed)."""
        s = self.system
        add = n - self.connected
        if add <= 0:
            return 0.0, [], 0
        calls = []
        per = [add // len(self.agents) + (1 if i < add % len(self.agents) else 0)
               for i in range(len(self.agents))]
        for agent, count in zip(self.agents, per, strict=True):
            if count == 0:
                continue
            names = [f"l{next(self._names):05d}" for _ in range(count)]
            urls = [s.listener_urls[(self.connected + i) % len(s.listener_urls)]
                    for i in range(count)]
            tokens = [s.token(nm, [s.talkgroup]) if s.token else "" for nm in names]
            calls.append((agent, "listeners", {
                "system": s.kind, "urls": urls, "tokens": tokens, "talkgroup": s.talkgroup,
                "concurrency": max(1, self.concurrency // len(self.agents)),
                "janus": s.janus}))
        t0 = time.monotonic()
        replies = call_all(calls, timeout=60 + add * 2.0)
        wall = time.monotonic() - t0
        times: list[list[float]] = []
        failed = 0
        for r in replies:
            times += r["times_ms"]
            failed += r["failed"]
            if r["errors"]:
                log(f"{s.name}: connection errors: {r['errors'][:2]}")
        self.connected = sum(r["total"] for r in replies)
        return wall, times, failed

    def level(self, n: int, packets: int) -> Level:
        s = self.system
        if not self.talker_ready:
            self.connect_talker()
        wall, times, failed = self.grow(n)
        time.sleep(self.settle_s)  # let joins, presence and ICE settle
        quiet = wait_quiet(s.server_pids, QUIET_MAX_S, self.quiet_window_s)
        settle = self.settle_s + quiet
        if not self.warmed:
            self.warm_up(self.warmup_packets)
        rss = sum(env.rss_bytes(p) for p in s.server_pids) / 2**20
        idle = self._meter().start()
        time.sleep(self.idle_s)
        idle.stop()
        run = next(_run_ids)
        call_all([(a, "arm", {"run": run, "count": packets}) for a in self.agents], timeout=30)
        grant_ms = self.talker.call("floor", timeout=30)["grant_ms"] if s.floor else 0.0
        talk = self._meter().start()
        reply = self.talker.call("send", timeout=packets * PACKET_INTERVAL_S + 60, run=run,
                                 count=packets)
        talk.stop()
        time.sleep(0.3)  # the last packets reach the listeners before the release
        if s.floor:
            self.talker.call("release", timeout=30)
        collected = call_all([(a, "collect", {}) for a in self.agents], timeout=60)
        sent = np.asarray(reply["sent_ns"], dtype=np.int64)
        rx = np.concatenate([c["rx"] for c in collected]) if collected else np.zeros((0, 0))
        received = np.concatenate([c["received"] for c in collected])
        listeners = rx.shape[0]
        expected = listeners * packets
        if s.tagged:
            delivered = int(np.count_nonzero(rx))
        else:  # re-encoded payloads carry no tag: count packets
            delivered = int(min(received.clip(max=packets).sum(), expected))
        lat = fan = spread = np.zeros(0)
        if s.tagged and delivered:
            got = rx > 0
            lat_ms = (rx - sent[None, :]) / 1e6
            lat = lat_ms[got]
            masked = np.where(got, lat_ms, np.nan)
            cols = got.any(axis=0)
            fan = np.nanmax(masked[:, cols], axis=0)
            spread = fan - np.nanmin(masked[:, cols], axis=0)
        self.last_fanout = fan  # per packet, for diagnostics
        idle_rate = idle.seconds["server"] / idle.wall if idle.wall else 0.0
        net_cpu = talk.seconds["server"] - idle_rate * talk.wall
        gen = max((talk.percent(a.name) for a in self.agents), default=0.0)
        aux = sum(talk.percent(k) for k in talk.seconds if k.startswith("aux:"))
        notes = []
        if quiet >= QUIET_MAX_S - 1:
            notes.append(f"server still busy {QUIET_MAX_S:.0f} s after the joins")
        if failed:
            notes.append(f"{failed} listeners failed to connect")
        misaligned = sum(c["misaligned"] for c in collected)
        if misaligned:
            notes.append(f"{misaligned} misaligned")
        if gen > 85:
            notes.append("generator near a full core")
        total = sum(talk.percent(k) for k in talk.seconds)
        cores = os.cpu_count() or 1
        if total > 90 * cores:
            notes.append(f"all processes together {total:.0f}% of {100 * cores}%")
        lv = Level(
            system=s.name, n=listeners, packets=packets, expected=expected,
            delivered=delivered,
            loss_pct=round(100.0 * (1 - delivered / expected), 3) if expected else 100.0,
            server_cpu_pct=talk.percent("server"),
            server_cpu_capacity_pct=s.cpu_capacity_pct,
            server_idle_cpu_pct=100.0 * idle_rate,
            aux_cpu_pct=aux, generator_cpu_pct=gen, talker_cpu_pct=talk.percent("talker"),
            machine_cpu_pct=sum(talk.percent(k) for k in talk.seconds),
            us_per_listener_packet=1e6 * net_cpu / delivered if delivered else float("nan"),
            lat_p50_ms=_pct(lat, 50), lat_p99_ms=_pct(lat, 99),
            lat_max_ms=float(lat.max()) if lat.size else None,
            fanout_p50_ms=_pct(fan, 50), fanout_p99_ms=_pct(fan, 99),
            steady_p99_ms=_pct(fan[STEADY_AFTER:], 99),
            start_max_ms=float(fan[:STEADY_AFTER].max()) if fan.size else None,
            spread_p50_ms=_pct(spread, 50),
            connect_s=wall, settle_s=settle,
            connect_rate=(len(times) / wall) if wall else 0.0,
            connect_p50_ms=_pct(np.array([t[0] for t in times]), 50),
            connect_p99_ms=_pct(np.array([t[0] for t in times]), 99),
            connect_failed=failed, rss_mb=rss, grant_ms=float(grant_ms),
            server_offers=sum(int(c.get("server_offers", 0)) for c in collected),
            notes="; ".join(notes),
            us_total_per_listener_packet=(1e6 * talk.seconds["server"] / delivered
                                          if delivered else float("nan")),
        )
        self.levels.append(lv)
        log(f"{s.name} N={lv.n}: cpu {lv.server_cpu_pct:.0f}% (idle {lv.server_idle_cpu_pct:.0f}%)"
            f" loss {lv.loss_pct}% fan-out p99 {lv.fanout_p99_ms} ms "
            f"{lv.us_per_listener_packet:.1f} us/lp marginal-ish, "
            f"{lv.us_total_per_listener_packet:.1f} us/lp total, gen {gen:.0f}% {lv.notes}")
        return lv

    def warm_up(self, packets: int) -> None:
        """One unmeasured transmission: the first after a start pays one-off costs (imports,
        a transcoder's decoder start-up, first recording files)."""
        s = self.system
        run = next(_run_ids)
        call_all([(a, "arm", {"run": run, "count": packets}) for a in self.agents], timeout=30)
        if s.floor:
            self.talker.call("floor", timeout=30)
        if packets:
            self.talker.call("send", timeout=packets * PACKET_INTERVAL_S + 60, run=run,
                             count=packets)
            time.sleep(0.3)
        if s.floor:
            self.talker.call("release", timeout=30)
        self.warmed = True

    def profile(self, packets: int, out: Any) -> Any:
        """One more transmission at the current size, sampled by py-spy (not measured)."""
        from . import profiling

        s = self.system
        run = next(_run_ids)
        call_all([(a, "arm", {"run": run, "count": packets}) for a in self.agents], timeout=30)
        if s.floor:
            self.talker.call("floor", timeout=30)
        spy = profiling.start(s.server_pids[0], packets * PACKET_INTERVAL_S, out)
        self.talker.call("send", timeout=packets * PACKET_INTERVAL_S + 60, run=run,
                         count=packets)
        time.sleep(0.3)
        if s.floor:
            self.talker.call("release", timeout=30)
        return profiling.finish(spy, out)

    def profile_idle(self, seconds: float, out: Any) -> Any:
        """The same listeners, no transmission, sampled by py-spy: what the idle cost is."""
        from . import profiling

        spy = profiling.start(self.system.server_pids[0], seconds, out)
        time.sleep(seconds)
        return profiling.finish(spy, out)

    def sweep(self, levels: Sequence[int], packets: int, deadline: float,
              stop_when: Callable[[Level], bool] | None = None,
              after_level: Callable[[Level], None] | None = None) -> list[Level]:
        self.stopped = ""
        for n in levels:
            # A level costs the new connections plus the transmission; skip it if late.
            new = max(0, n - self.connected)
            rate = self.levels[-1].connect_rate if self.levels and self.levels[-1].connect_rate \
                else 20.0
            need = packets * PACKET_INTERVAL_S + 6 + new / max(rate, 1.0)
            if time.monotonic() + need > deadline:
                self.stopped = f"time budget reached before N={n}"
                log(f"{self.system.name}: {self.stopped}")
                break
            try:
                lv = self.level(n, packets)
            except Exception as exc:
                self.stopped = f"failed while going to N={n}: {str(exc).splitlines()[0][:200]}"
                log(f"{self.system.name}: {self.stopped}")
                break
            if after_level is not None:
                after_level(lv)
            # One level whose p99 alone says saturated may be another process's doing on a
            # shared machine: the sweep stops on a second in a row, or at once on loss, a full
            # CPU or failed connections.
            if stop_when is not None and stop_when(lv) and (
                    overloaded(lv) or (len(self.levels) > 1 and stop_when(self.levels[-2]))):
                self.stopped = f"saturated at N={n}"
                log(f"{self.system.name}: saturated at N={n}, stopping the sweep")
                break
        return self.levels


def overloaded(lv: Level) -> bool:
    return (lv.loss_pct > 5.0 or lv.server_cpu_pct > 0.97 * lv.server_cpu_capacity_pct
            or lv.connect_failed > max(2, lv.n // 20))


def saturated(lv: Level) -> bool:
    return overloaded(lv) or (lv.steady_p99_ms or 0) > 200.0


def wait_quiet(pids: Sequence[int], limit_s: float, window_s: float = 0.5,
               ceiling_pct: float = 60.0) -> float:
    """Wait until the processes' CPU use is steady and moderate (three windows within 8
    points of each other, the last below `ceiling_pct` per process): joins leave work behind
    (presence updates to every member). Returns the time waited (`limit_s`: gave up)."""
    t0 = time.monotonic()
    recent: list[float] = []
    while time.monotonic() - t0 < limit_s:
        m = CpuMeter({"p": list(pids)}).start()
        time.sleep(window_s)
        recent = [*recent[-2:], m.stop().percent("p")]
        if (len(recent) == 3 and max(recent) - min(recent) < 8.0
                and recent[-1] < ceiling_pct * len(pids)):
            break
    return time.monotonic() - t0


def marginal_cost(levels: Sequence[Level]) -> float | None:
    """Server CPU per listener-packet from a least-squares line through the unsaturated levels
    (talk CPU minus idle CPU, against listener-packets per second): the cost of one more
    listener-packet, free of fixed costs."""
    pts = [(lv.n * (lv.delivered / lv.expected) / PACKET_INTERVAL_S,
            (lv.server_cpu_pct - lv.server_idle_cpu_pct) / 100.0)
           for lv in levels if lv.expected and not saturated(lv) and lv.loss_pct < 1.0]
    if len(pts) < 2:
        return None
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    slope = float(np.polyfit(x, y, 1)[0])
    return slope * 1e6


def largest_ok(levels: Sequence[Level], steady: bool = False) -> int | None:
    ok = [lv.n for lv in levels if (lv.ok_steady if steady else lv.ok)]
    return max(ok) if ok else None


def as_dicts(levels: Sequence[Level]) -> list[dict[str, Any]]:
    return [asdict(lv) for lv in levels]
