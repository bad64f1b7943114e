"""A lossy, delaying, reordering IP link between two network namespaces, in user space.

This kernel has no `sch_netem`, so the link is a small forwarder process between two TUN
devices. Nothing here touches the host's own network: both namespaces are created by the
fixture (names carry the test process's pid), the addresses exist only inside them, and the
namespaces, the forwarder and every process started in them are removed at teardown, by PID
and by the names created, each step bounded in time.

    namespace A (ns_a)                       namespace B (ns_b)
    lo up, tun "lltun" 10.231.0.1/30  <--forwarder-->  tun "lltun" 10.231.0.2/30, lo up

Packets A->B are direction "ab", B->A are "ba"; each direction has its own impairment.

API (tests get a `LossyLink` from the `lossy_link` fixture, registered in conftest.py):

    link.ns_a, link.ns_b            namespace names; link.addr_a, link.addr_b their addresses
    link.set(loss=0.2, delay_ms=50, jitter_ms=25, burst=1.0, reorder=True, match="all",
             direction="both")      change the impairment while traffic flows; omitted
                                    parameters keep their value. `loss` is a probability;
                                    `burst` > 1 makes losses come in bursts of that mean length
                                    (a two-state Gilbert model with the same average loss);
                                    delay is `delay_ms` plus uniform jitter in +-`jitter_ms`
                                    (never negative); `reorder=False` keeps the packet order
                                    (jitter then only delays); `match` limits loss to "udp" or
                                    "rtp" packets ("all" by default: cut always drops all).
    link.cut(seconds=None, direction="both")
                                    a total outage: nothing passes until `restore()`, or for
                                    `seconds` (timed by the forwarder itself, so a 2 s dead
                                    spot lasts 2 s whatever the test is doing).
    link.restore(direction="both")  end an outage (impairment parameters are kept).
    link.clear()                    no loss, no delay, no outage: a clean link.
    link.stats() -> {"ab": {...}, "ba": {...}}
                                    counters per direction: received, forwarded, dropped
                                    (= dropped_loss + dropped_cut + overflow), rtp_received,
                                    rtp_forwarded, rtp_dropped, reordered, queued.
    link.reset_stats()
    link.argv(side, argv)           ["ip", "netns", "exec", ns, *argv] for side "a" or "b".
    link.popen(side, argv, **kw)    start a process in a namespace; tracked and killed (by its
                                    PID) at teardown.
    link.loop(side)                 an asyncio event loop on a thread that lives in the
                                    namespace: `await link.loop("b").run(coro_factory())` runs a
                                    coroutine there (its sockets are the namespace's) from the
                                    test's own loop; `run_sync(fn)` does the same for a function.
    link.chromium(side)             an executable for Playwright's `executable_path` that starts
                                    /usr/bin/chromium inside the namespace (see BROWSER_FLAGS).
    link.serve(data_dir, side="a")  `ptt-server serve` (plain HTTP, embedded Redis, one worker,
                                    ICE on the side's address) in a namespace, on `port` (8080);
                                    an empty data directory is seeded with talkgroups A, B and
                                    officers u1..u4 (password "pw-<name>"); `cwd` runs another
                                    source tree. Returns a `ServerProcess` with `url`,
                                    `token(user)`, `proc`; ready (/readyz answered 200).
    link.stop(proc)                 stop one process started here, by PID (bounded).
    link.close()                    teardown (the fixture calls it).

Typical use: a server in A (`link.serve`), clients in B (`link.loop("b")` for aiortc,
`link.chromium("b")` for a browser), impairment on "ab" (downlink) and/or "ba" (uplink).
The forwarder is this module run as a script (`python -m tests.lossylink forward ...`); it
handles a few thousand packets per second on one core, enough for a handful of clients.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import ctypes
import fcntl
import heapq
import itertools
import json
import os
import random
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
ADDR_A = "10.231.0.1"  # a private test range; assigned only inside the fixture's namespaces
ADDR_B = "10.231.0.2"
PREFIX_LEN = 30
NETWORK = "10.231.0.0/30"
TUN_NAME = "lltun"
STEP_TIMEOUT_S = 10.0  # each teardown / setup step is bounded by this
MAX_QUEUED = 20000  # packets in flight in one direction; more are dropped (overflow)
CHROMIUM = "/usr/bin/chromium"

# Chromium in a namespace: real host candidates (no mDNS names aioice cannot resolve), and no
# Local Network Access checks (10.231.x is a private range: a page whose response Playwright
# fulfilled counts as public, and its WebSocket to the server would be blocked).
# Only the last --disable-features counts, so Playwright's own list is repeated here.
_PLAYWRIGHT_DISABLED = (
    "AvoidUnnecessaryBeforeUnloadCheckSync,DestroyProfileOnBrowserClose,HttpsUpgrades,"
    "HttpsFirstBalancedModeAutoEnable,LensOverlay,MediaRouter,PaintHolding,"
    "ThirdPartyStoragePartitioning,AvoidCorsURLLoaderRestartOnRedirect,"
    "TcpPortRandomizationWin,OptimizationHints,NetworkTimeServiceQuerying,AimEnabled,"
    "PreconnectToSearch"
)
BROWSER_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    f"--disable-features={_PLAYWRIGHT_DISABLED},WebRtcHideLocalIpsWithMdns,"
    "LocalNetworkAccessChecks,PrivateNetworkAccessChecks,BlockInsecurePrivateNetworkRequests",
]

_counter = itertools.count()


# -- namespaces ----------------------------------------------------------------------------
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name: str) -> None:
    """Move the calling *thread* into network namespace `name` (setns(2) is per thread)."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _run(argv: Sequence[str], *, check: bool = True,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True,
                          timeout=STEP_TIMEOUT_S, cwd=cwd)


# -- the forwarder (runs as `python -m tests.lossylink forward ...`) --------------------------
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    return fd


def classify(packet: bytes) -> tuple[bool, bool]:
    """(is UDP, is RTP) for an IPv4 packet. RTP: version 2 (RFC 3550 5.1) and not RTCP, whose
    packet types 192-223 sit where RTP has marker and payload type (RFC 5761 section 4).
    STUN (first two bits 00) and DTLS (first byte 20-63) are not version 2."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != 17:
        return False, False
    off = (packet[0] & 0x0F) * 4 + 8
    if len(packet) < off + 12:
        return True, False
    return True, packet[off] >> 6 == 2 and not 191 < packet[off + 1] < 224


@dataclass
class Impairment:
    loss: float = 0.0
    burst: float = 1.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder: bool = True
    match: str = "all"
    cut: bool = False
    cut_until: float | None = None  # monotonic time a timed outage ends


@dataclass
class Direction:
    name: str
    out_fd: int
    rng: random.Random
    imp: Impairment = field(default_factory=Impairment)
    bad: bool = False  # Gilbert model state
    last_due: float = 0.0
    arrivals: int = 0
    released_max: int = -1
    counters: dict[str, int] = field(default_factory=dict)

    def reset(self) -> None:
        self.counters = dict.fromkeys(
            ("received", "forwarded", "dropped", "dropped_loss", "dropped_cut", "overflow",
             "rtp_received", "rtp_forwarded", "rtp_dropped", "reordered", "write_errors"), 0)

    def count(self, key: str, rtp: bool) -> None:
        self.counters[key] += 1
        if key.startswith("dropped") or key == "overflow":
            self.counters["dropped"] += 1
            if rtp:
                self.counters["rtp_dropped"] += 1

    def lose(self) -> bool:
        """One loss decision. With burst B > 1 a two-state model: the bad state drops all and
        lasts B packets on average; entering it is tuned so the long-run loss is `loss`."""
        imp = self.imp
        if imp.loss <= 0:
            self.bad = False
            return False
        if imp.loss >= 1:
            return True
        if imp.burst <= 1:
            return self.rng.random() < imp.loss
        leave = 1.0 / imp.burst
        enter = imp.loss * leave / (1.0 - imp.loss)
        if self.bad:
            self.bad = self.rng.random() >= leave
        else:
            self.bad = self.rng.random() < enter
        return self.bad


class Forwarder:
    def __init__(self, fd_a: int, fd_b: int, control: socket.socket, seed: int) -> None:
        self.dirs = {
            "ab": Direction("ab", fd_b, random.Random(seed)),
            "ba": Direction("ba", fd_a, random.Random(seed + 1)),
        }
        for d in self.dirs.values():
            d.reset()
        self.inputs = {fd_a: self.dirs["ab"], fd_b: self.dirs["ba"]}
        self.control = control
        self.heap: list[tuple[float, int, int, str, bytes, bool]] = []
        self.seq = itertools.count()
        self.running = True

    def on_packet(self, d: Direction, packet: bytes, now: float) -> None:
        udp, rtp = classify(packet)
        d.count("received", False)
        if rtp:
            d.counters["rtp_received"] += 1
        imp = d.imp
        if imp.cut and imp.cut_until is not None and now >= imp.cut_until:
            imp.cut, imp.cut_until = False, None
        if imp.cut:
            d.count("dropped_cut", rtp)
            return
        applies = imp.match == "all" or (imp.match == "udp" and udp) or (
            imp.match == "rtp" and rtp)
        if applies and d.lose():
            d.count("dropped_loss", rtp)
            return
        if len(self.heap) >= MAX_QUEUED:
            d.count("overflow", rtp)
            return
        delay = imp.delay_ms
        if imp.jitter_ms:
            delay += d.rng.uniform(-imp.jitter_ms, imp.jitter_ms)
        due = now + max(0.0, delay) / 1000.0
        if not imp.reorder:
            due = max(due, d.last_due)
        d.last_due = max(d.last_due, due)
        heapq.heappush(self.heap, (due, next(self.seq), d.arrivals, d.name, packet, rtp))
        d.arrivals += 1

    def release(self, now: float) -> None:
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, index, name, packet, rtp = heapq.heappop(heap)
            d = self.dirs[name]
            if index < d.released_max:
                d.counters["reordered"] += 1
            d.released_max = max(d.released_max, index)
            try:
                os.write(d.out_fd, packet)
            except OSError:
                d.counters["write_errors"] += 1
                continue
            d.counters["forwarded"] += 1
            if rtp:
                d.counters["rtp_forwarded"] += 1

    def handle_control(self, conn: socket.socket) -> None:
        conn.settimeout(STEP_TIMEOUT_S)
        with conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            try:
                reply = self.command(json.loads(data))
            except Exception as exc:  # a bad request is answered, never fatal
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            conn.sendall(json.dumps(reply).encode() + b"\n")

    def command(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        names = ["ab", "ba"] if req.get("direction", "both") == "both" else [req["direction"]]
        targets = [self.dirs[n] for n in names]
        now = time.monotonic()
        if op == "set":
            for d in targets:
                for key in ("loss", "burst", "delay_ms", "jitter_ms"):
                    if req.get(key) is not None:
                        setattr(d.imp, key, float(req[key]))
                if req.get("reorder") is not None:
                    d.imp.reorder = bool(req["reorder"])
                if req.get("match") is not None:
                    if req["match"] not in ("all", "udp", "rtp"):
                        raise ValueError(f"match {req['match']!r}")
                    d.imp.match = req["match"]
        elif op == "cut":
            seconds = req.get("seconds")
            for d in targets:
                d.imp.cut = True
                d.imp.cut_until = None if seconds is None else now + float(seconds)
        elif op == "restore":
            for d in targets:
                d.imp.cut, d.imp.cut_until = False, None
        elif op == "clear":
            for d in targets:
                d.imp = Impairment()
                d.bad = False
        elif op == "reset":
            for d in targets:
                d.reset()
        elif op == "stop":
            self.running = False
        elif op != "stats":
            raise ValueError(f"unknown op {op!r}")
        return {"ok": True, "stats": self.stats(now)}

    def stats(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, d in self.dirs.items():
            cut = d.imp.cut and (d.imp.cut_until is None or now < d.imp.cut_until)
            queued = sum(1 for item in self.heap if item[3] == name)
            out[name] = {**d.counters, "queued": queued, "cut": cut}
        return out

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        for fd in self.inputs:
            sel.register(fd, selectors.EVENT_READ, "tun")
        sel.register(self.control, selectors.EVENT_READ, "control")
        while self.running:
            now = time.monotonic()
            timeout = 0.2 if not self.heap else max(0.0, min(0.2, self.heap[0][0] - now))
            for key, _ in sel.select(timeout):
                if key.data == "control":
                    conn, _ = self.control.accept()
                    self.handle_control(conn)
                    continue
                d = self.inputs[key.fd]  # type: ignore[index]
                for _ in range(256):  # drain what is there, but let the other side in too
                    try:
                        packet = os.read(key.fd, 65536)  # type: ignore[arg-type]
                    except BlockingIOError:
                        break
                    self.on_packet(d, packet, time.monotonic())
            self.release(time.monotonic())


def forward_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="lossylink forward")
    parser.add_argument("--ns-a", required=True)
    parser.add_argument("--ns-b", required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    # The TUN fds keep working from any namespace once opened: open each inside its own.
    enter_netns(args.ns_a)
    fd_a = _open_tun(TUN_NAME)
    enter_netns(args.ns_b)
    fd_b = _open_tun(TUN_NAME)
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control.bind(args.control)
    control.listen(8)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    Forwarder(fd_a, fd_b, control, args.seed).run()
    return 0


# -- running things inside a namespace -------------------------------------------------------
class NetnsLoop:
    """An asyncio event loop on its own thread, inside a network namespace."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._loop: asyncio.AbstractEventLoop | None = None
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, args=(ready,), daemon=True,
                                        name=f"netns-{netns}")
        self._thread.start()
        ready.result(STEP_TIMEOUT_S)

    def _main(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            enter_netns(self.netns)
            self._loop = asyncio.new_event_loop()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on this loop (inside the namespace) and await its result here."""
        fut = asyncio.wrap_future(self.submit(coro))
        return await (asyncio.wait_for(fut, timeout) if timeout else fut)

    def run_sync(self, fn: Callable[[], T], timeout: float = STEP_TIMEOUT_S) -> T:
        async def call() -> T:
            return fn()

        return self.submit(call()).result(timeout)

    def close(self, timeout: float = STEP_TIMEOUT_S) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout / 2)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout)


@dataclass
class ServerProcess:
    """`ptt-server serve` in a namespace."""

    proc: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log: Path
    cwd: Path = ROOT

    def token(self, user: str, ttl_s: int = 3600) -> str:
        """A token for `user`, signed by that server's own code and key."""
        out = _run([sys.executable, "-m", "ptt_server.app.cli", "--data-dir",
                    str(self.data_dir), "token", "--ttl", str(ttl_s), user], cwd=self.cwd)
        return out.stdout.strip().splitlines()[-1]

    def log_tail(self, chars: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""


class LossyLink:
    def __init__(self, seed: int = 1) -> None:
        n = next(_counter)
        tag = f"ll{os.getpid()}x{n}"
        self.ns_a, self.ns_b = f"{tag}a", f"{tag}b"
        self.addr_a, self.addr_b = ADDR_A, ADDR_B
        self._dir = Path(tempfile.mkdtemp(prefix=f"{tag}-"))
        self.control_path = self._dir / "control.sock"
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._loops: dict[str, NetnsLoop] = {}
        self.forwarder: subprocess.Popen[bytes] | None = None
        try:
            self._setup(seed)
        except BaseException:
            self.close()
            raise

    # -- setup / teardown --------------------------------------------------------------------
    def _setup(self, seed: int) -> None:
        for ns, addr in ((self.ns_a, ADDR_A), (self.ns_b, ADDR_B)):
            _run(["ip", "netns", "add", ns])
            self._namespaces.append(ns)
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            # IPv4 only: no IPv6 link-local candidates for browsers to try.
            _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                  "net.ipv6.conf.all.disable_ipv6=1"])
            _run(["ip", "-n", ns, "tuntap", "add", "dev", TUN_NAME, "mode", "tun"])
            _run(["ip", "-n", ns, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", TUN_NAME])
            _run(["ip", "-n", ns, "link", "set", TUN_NAME, "up"])
        with open(self._dir / "forwarder.log", "wb") as err:
            self.forwarder = subprocess.Popen(
                [sys.executable, "-m", "tests.lossylink", "forward", "--ns-a", self.ns_a,
                 "--ns-b", self.ns_b, "--control", str(self.control_path),
                 "--seed", str(seed)],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
            )
        assert self.forwarder.stdout is not None
        ready = concurrent.futures.ThreadPoolExecutor(1)
        try:
            line = ready.submit(self.forwarder.stdout.readline).result(STEP_TIMEOUT_S)
        finally:
            ready.shutdown(wait=False)
        if line.strip() != b"ready":
            raise RuntimeError("forwarder did not start: " + self._forwarder_log())

    def _forwarder_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self._dir / "forwarder.log").read_text(errors="replace")[-2000:]
        return ""

    @staticmethod
    def _kill(proc: subprocess.Popen[Any], timeout: float = STEP_TIMEOUT_S / 2) -> None:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)

    def close(self) -> None:
        for loop in self._loops.values():
            with contextlib.suppress(Exception):
                loop.close()
        self._loops.clear()
        for proc in reversed(self._procs):
            self._kill(proc)
        self._procs.clear()
        if self.forwarder is not None:
            self._kill(self.forwarder, 2.0)
            if self.forwarder.stdout is not None:
                self.forwarder.stdout.close()
            self.forwarder = None
        for ns in reversed(self._namespaces):
            # Anything still running inside (a grandchild a test forgot) would keep the
            # namespace alive after `ip netns del`: kill what is left there, by PID.
            pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _run(["ip", "-n", ns, "link", "del", TUN_NAME], check=False)
            _run(["ip", "netns", "del", ns], check=False)
        self._namespaces.clear()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> LossyLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- control ------------------------------------------------------------------------------
    def _request(self, req: dict[str, Any]) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(STEP_TIMEOUT_S)
            s.connect(str(self.control_path))
            s.sendall(json.dumps(req).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        reply: dict[str, Any] = json.loads(data)
        if not reply.get("ok"):
            raise RuntimeError(f"lossy link: {reply.get('error')}")
        return reply

    def set(self, *, loss: float | None = None, delay_ms: float | None = None,
            jitter_ms: float | None = None, burst: float | None = None,
            reorder: bool | None = None, match: str | None = None,
            direction: str = "both") -> None:
        self._request({"op": "set", "direction": direction, "loss": loss, "delay_ms": delay_ms,
                       "jitter_ms": jitter_ms, "burst": burst, "reorder": reorder,
                       "match": match})

    def cut(self, seconds: float | None = None, direction: str = "both") -> None:
        self._request({"op": "cut", "direction": direction, "seconds": seconds})

    def restore(self, direction: str = "both") -> None:
        self._request({"op": "restore", "direction": direction})

    def clear(self, direction: str = "both") -> None:
        self._request({"op": "clear", "direction": direction})

    def stats(self) -> dict[str, dict[str, Any]]:
        return dict(self._request({"op": "stats"})["stats"])

    def reset_stats(self, direction: str = "both") -> None:
        self._request({"op": "reset", "direction": direction})

    # -- processes in the namespaces ----------------------------------------------------------
    def netns(self, side: str) -> str:
        return {"a": self.ns_a, "b": self.ns_b}[side]

    def address(self, side: str) -> str:
        return {"a": self.addr_a, "b": self.addr_b}[side]

    def argv(self, side: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns(side), *argv]

    def popen(self, side: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.argv(side, argv), **kw)
        self._procs.append(proc)
        return proc

    def loop(self, side: str) -> NetnsLoop:
        if side not in self._loops:
            self._loops[side] = NetnsLoop(self.netns(side))
        return self._loops[side]

    def chromium(self, side: str, executable: str = CHROMIUM) -> str:
        """A wrapper that execs Chromium inside the namespace. `ip netns exec` execs in place
        (same PID, same pipes), so Playwright's pipe to the browser and its kill still work."""
        path = self._dir / f"chromium-{side}"
        path.write_text(
            f'#!/bin/sh\nexec ip netns exec {self.netns(side)} {executable} "$@"\n')
        path.chmod(0o755)
        return str(path)

    def serve(self, data_dir: Path, side: str = "a", port: int = 8080,
              extra: Sequence[str] = (), timeout: float = 60.0, cwd: Path = ROOT,
              seed: bool = True) -> ServerProcess:
        """`ptt-server serve` inside a namespace, ready (its /readyz answered 200).

        `cwd` is the source tree to run (another checkout, e.g. an older commit exported with
        `git archive`, runs its own code). With `seed`, an empty data directory first gets
        talkgroups A and B and officers u1..u4 in both (password "pw-<name>"), written by that
        tree's own code.
        """
        addr = self.address(side)
        data_dir.mkdir(parents=True, exist_ok=True)
        if seed and not (data_dir / "directory.sqlite3").exists():
            _run([sys.executable, "-c", _SEED, str(data_dir / "directory.sqlite3")], cwd=cwd)
        log = self._dir / f"server-{side}-{port}.log"
        argv = [sys.executable, "-m", "ptt_server.app.cli", "--data-dir", str(data_dir),
                "--log-format", "text", "serve", "--http", "--host", addr, "--port", str(port),
                "--workers", "1", "--ice-address", addr, "--ice-allow-network", NETWORK,
                *extra]
        with open(log, "wb") as out:
            proc = self.popen(side, argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        server = ServerProcess(proc, f"http://{addr}:{port}", data_dir, log, cwd)
        self.loop(side).run_sync(lambda: _wait_ready(server, timeout), timeout + 5)
        return server

    def stop(self, proc: subprocess.Popen[Any], timeout: float = STEP_TIMEOUT_S) -> int | None:
        """Stop one process started here (SIGTERM, then SIGKILL), by its PID."""
        self._kill(proc, timeout)
        if proc in self._procs:
            self._procs.remove(proc)
        return proc.returncode


_SEED = """
import sys
from ptt_server.core.model import Role
from ptt_server.identity.directory import Directory
d = Directory(sys.argv[1])
d.add_talkgroup("A", name="Alpha")
d.add_talkgroup("B", name="Bravo")
for n in ("u1", "u2", "u3", "u4"):
    d.add_user(n, Role.OFFICER, ["A", "B"], "pw-" + n, alias="Unit " + n[1:])
"""


def _wait_ready(server: ServerProcess, timeout: float) -> None:
    """Poll /readyz from inside the namespace (this runs on a NetnsLoop thread)."""
    host, port = server.url.removeprefix("http://").split(":")
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited: {server.log_tail()}")
        with contextlib.suppress(OSError):
            with socket.create_connection((host, int(port)), timeout=1.0) as s:
                s.sendall(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
                status = s.recv(64).split(b"\r\n", 1)[0].split()
                if len(status) > 1 and status[1] == b"200":
                    return
        if time.monotonic() > deadline:
            raise TimeoutError(f"server not ready: {server.log_tail()}")
        time.sleep(0.1)


@pytest.fixture
def lossy_link() -> Iterator[LossyLink]:
    """A fresh link for one test (registered for all tests in conftest.py)."""
    link = LossyLink()
    try:
        yield link
    finally:
        link.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "forward":
        sys.exit(forward_main(sys.argv[2:]))
    sys.exit("usage: python -m tests.lossylink forward --ns-a A --ns-b B --control PATH")
