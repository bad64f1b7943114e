"""The bench environment: a temporary data directory, one Redis, real server processes (the
`ptt-server serve` command, as deployed), tokens, CPU and memory meters, machine facts.

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from ptt_server.app.redis_embed import EmbeddedRedis, free_port
from ptt_server.core.model import Role, User
from ptt_server.identity import directory as directory_module
from ptt_server.identity.auth import TokenAuthority, load_or_create_signing_key
from ptt_server.identity.directory import Directory

HOST = "127.0.0.1"
SERVER_NICE = -10
REPO = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- CPU and memory -------------------------------------------------------------------------------
def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of these processes (all their threads), in seconds."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def rss_bytes(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


class CpuMeter:
    """CPU used by groups of processes between start() and stop()."""

    def __init__(self, groups: dict[str, Sequence[int]]) -> None:
        self.groups = {k: list(v) for k, v in groups.items()}
        self._t0 = 0.0
        self._c0: dict[str, float] = {}
        self.wall = 0.0
        self.seconds: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._c0 = {k: cpu_seconds(v) for k, v in self.groups.items()}
        self._t0 = time.monotonic()
        return self

    def stop(self) -> CpuMeter:
        self.wall = time.monotonic() - self._t0
        self.seconds = {k: cpu_seconds(v) - self._c0[k] for k, v in self.groups.items()}
        return self

    def percent(self, group: str) -> float:
        """Percent of one core."""
        return 100.0 * self.seconds[group] / self.wall if self.wall else 0.0


# -- CPU pinning ----------------------------------------------------------------------------------
def cpu_split() -> tuple[set[int], set[int]] | None:
    """(server CPUs, generator CPUs): the first CPU for the server under test, the rest for the
    load generators, so neither steals the other's core and the server's CPU time is its own.
    None on a one-core machine (nothing to split)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]}, set(cpus[1:])


def taskset(cpus: set[int] | None) -> list[str]:
    """A command prefix that starts a process (and every thread it creates) on `cpus`, and,
    as root, at a higher priority (nice -10): on a shared machine, pinning the generators to
    the other CPUs pushes everything else onto the server's, and a server that waits for the
    CPU shows latency that is not its own. Every server under test gets the same."""
    if not cpus or shutil.which("taskset") is None:
        return []
    prefix = ["taskset", "-c", ",".join(map(str, sorted(cpus)))]
    if os.geteuid() == 0 and shutil.which("nice"):
        prefix += ["nice", "-n", f"{SERVER_NICE}"]
    return prefix


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin a running process, every thread it has now; threads it creates later inherit it."""
    if not cpus or not pid:
        return
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cpus)


# -- the machine ----------------------------------------------------------------------------------
def machine_info() -> dict[str, str]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = "unknown"
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True, timeout=10).stdout
        if dirty.strip():
            commit += " (with uncommitted changes)"
    load = os.getloadavg()
    import aiortc

    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "memory_gib": f"{psutil.virtual_memory().total / 2**30:.0f}",
        "python": platform.python_version(),
        "aiortc": aiortc.__version__,
        "kernel": platform.release(),
        "commit": commit,
        "loadavg_at_start": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


# -- data, users, tokens --------------------------------------------------------------------------
class BenchData:
    """A data directory with the talkgroups and users the benchmarks use, and their tokens.

    The server looks every signing-in user up in the directory, so bench users are real rows.
    Their password is never used; adding hundreds with scrypt (tens of ms each) would only
    slow the bench, so one hash is computed and given to all of them.
    """

    def __init__(self, root: Path) -> None:
        self.dir = root / "data"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.directory = Directory(self.dir / "directory.sqlite3")
        self.tokens = TokenAuthority(load_or_create_signing_key(self.dir), issuer="ptt-server",
                                     audience="ptt")
        self._talkgroups: set[str] = set()
        self._hash: str | None = None

    def talkgroups(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self._talkgroups:
                # A long transmit limit: runs must not be cut by the 60 s default.
                self.directory.add_talkgroup(name, max_duration_s=3600, replace=True)
                self._talkgroups.add(name)

    def token(self, name: str, talkgroups: Sequence[str], role: Role = Role.OFFICER,
              ttl_s: int = 4 * 3600) -> str:
        user = self.directory.get_user(name)
        if user is None or user.talkgroups != tuple(talkgroups) or user.role != role:
            user = self._add_user(name, role, talkgroups)
        return str(self.tokens.issue(user, ttl_s))

    def _add_user(self, name: str, role: Role, talkgroups: Sequence[str]) -> User:
        if self._hash is None:
            self._hash = directory_module.hash_password(secrets.token_urlsafe(16))
        original = directory_module.hash_password
        fixed = self._hash
        directory_module.hash_password = lambda _password: fixed
        try:
            return self.directory.add_user(name, role, list(talkgroups), "unused-" + name,
                                           alias=name, replace=True)
        finally:
            directory_module.hash_password = original


# -- processes ------------------------------------------------------------------------------------
@dataclass
class ServerProc:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return int(self.proc.pid)


def start_redis(root: Path) -> EmbeddedRedis:
    redis = EmbeddedRedis(root / "redis", persist=False)
    redis.start()
    return redis


def redis_pid(redis: EmbeddedRedis) -> int:
    proc = getattr(redis, "_proc", None)
    return int(proc.pid) if proc is not None else 0


# The load generators are thousands of clients from one address and a few users: exactly what
# the per-address and per-user limits are there to stop, so the benchmark lifts them.
LOAD_LIMITS = (
    "--max-unauthenticated-per-address", "100000", "--max-unauthenticated", "100000",
    "--max-sessions-per-user", "10000", "--message-rate", "100000",
)


def start_server(data: BenchData, redis_url: str, node_id: str, root: Path,
                 extra_env: dict[str, str] | None = None,
                 cpus: set[int] | None = None) -> ServerProc:
    port = free_port()
    log_path = root / f"{node_id}.log"
    env = dict(os.environ)
    env.update(extra_env or {})
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [*taskset(cpus), sys.executable, "-m", "ptt_server.app.cli",
             "--data-dir", str(data.dir),
             "--log-format", "json", "serve", "--http", "--host", HOST, "--port", str(port),
             "--redis-url", redis_url, "--workers", "1", "--node-id", node_id,
             "--ice-address", HOST, "--ice-allow-network", "127.0.0.0/8", *LOAD_LIMITS,
             *os.environ.get("BENCH_SERVE_ARGS", "").split()],  # an A/B: "--ice-mux off"
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env,
        )
    server = ServerProc(f"http://{HOST}:{port}", proc, log_path)
    wait_http(server.url + "/healthz", proc, log_path)
    return server


def wait_http(url: str, proc: subprocess.Popen[bytes], log_path: Path | None,
              timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
            raise RuntimeError(f"process exited ({proc.returncode}): {tail}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Workdir:
    """A temporary directory removed at the end (unless PTT_BENCH_KEEP is set)."""

    def __init__(self, prefix: str = "ptt-bench-") -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))

    def close(self) -> None:
        if not os.environ.get("PTT_BENCH_KEEP"):
            shutil.rmtree(self.path, ignore_errors=True)


def start_relay(root: Path, cpus: set[int] | None = None) -> ServerProc:
    """The transcoding relay baseline (bench/relay.py) in its own process."""
    port = free_port()
    log_path = root / "relay.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([*taskset(cpus), sys.executable, "-m", "bench.relay", "--port",
                                 str(port)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd=REPO)
    server = ServerProc(f"http://{HOST}:{port}", proc, log_path)
    wait_http(server.url + "/healthz", proc, log_path)
    return server


def server_log_events(path: Path, before: float) -> dict[str, int]:
    """Counts of the server's own log messages (JSON lines) logged before `before` (epoch s):
    sessions it closed while the clients were still there, handler failures."""
    import datetime
    import json

    counts: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
                at = datetime.datetime.fromisoformat(rec["ts"].replace("Z", "+00:00"))
            except (ValueError, KeyError, TypeError):
                continue
            if at.timestamp() >= before:
                continue
            key = str(rec.get("msg"))
            if key == "session closed":
                key += f" ({rec.get('reason')})"
            counts[key] = counts.get(key, 0) + 1
    return counts
