"""A bad day for Redis, with real processes: two `ptt-server serve` nodes share one
redis-server started by the test without persistence; a talker on node 0 is on the air with
listeners on both nodes, and then

* Redis is killed (kill -9) and restarted empty on the same port: the floor state is gone. The
  talker's own node must end the transmission (`service_interrupted`), every member must hear
  that it ended, requests meanwhile are answered `unavailable`, and no new grant may be made
  until the fence has passed (so nobody can be granted a floor someone else still thinks they
  hold);
* Redis is stalled for 2 s (SIGSTOP, SIGCONT) with its state intact: audio keeps flowing to the
  talker's own node during the stall, and across nodes again once Redis answers.

What is asserted comes from the server's own messages to each client (with their arrival
times), from what the listeners received, and from the ledger. Each scenario prints its
figures as one JSON line (`reliability: {...}`; run pytest with -s to see them), from which
docs/reliability.md is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import redis.asyncio as aioredis

from client_cli.client import PttClient
from ptt_server.app.redis_embed import free_port
from ptt_server.control.floor_store import (
    FENCE_MARGIN_S,
    EpochChanged,
    Fenced,
    FloorStore,
    NotListening,
)
from ptt_server.core import floor as fl
from ptt_server.core.config import Config
from ptt_server.core.model import Role
from ptt_server.identity.directory import Directory
from ptt_server.node.loops import local_hold_s

from .audio import encode
from .conftest import seed_directory
from .tcpcut import CuttableProxy
from .test_multinode import token

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
TG = "A"
CONTENDERS = ("c1", "c2", "c3", "c4")  # signaling-only officers asking for the floor
LEASE_S = Config(data_dir=Path()).floor_lease_s  # the default every node here runs with
LOCAL_HOLD_S = local_hold_s(LEASE_S)  # how long a node talks on without reaching Redis
STALL_S = 2.0  # how long the stopped Redis stays stopped
FENCE_S = LEASE_S + FENCE_MARGIN_S  # the tests check grants wait it out


# -- processes ------------------------------------------------------------------------------------
class RedisProcess:
    """A redis-server of our own, so the test can kill, stop and restart it on one port."""

    def __init__(self, workdir: Path, port: int | None = None, args: Sequence[str] = ()) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        self.starts += 1
        log = (self.dir / f"redis-{self.starts}.log").open("ab")
        # No persistence: a restart comes back empty, the case floor state must be fenced for.
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", HOST, "--dir", str(self.dir),
             "--save", "", "--appendonly", "no", *self.args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def redis_command(port: int, *words: str, timeout: float = 0.5) -> bytes:
    """One command in RESP, the raw reply: a probe that needs no client library state."""
    cmd = f"*{len(words)}\r\n".encode() + b"".join(
        f"${len(w.encode())}\r\n".encode() + w.encode() + b"\r\n" for w in words)
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(cmd)
        return s.recv(65536)


async def wait_redis(port: int, timeout: float = 10.0,
                     ready: Callable[[bytes], bool] = lambda r: r.startswith(b"+PONG")) -> float:
    """Wait until the Redis on `port` answers PING; the monotonic time it first did."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = await asyncio.to_thread(redis_command, port, "PING")
            if ready(reply):
                return time.monotonic()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"redis on {port} did not answer")
        await asyncio.sleep(0.02)


def epoch_fence_end(port: int) -> float:
    """When the current epoch's fence ends (`not_before`, wall clock), read from Redis."""
    reply = redis_command(port, "HGET", "ptt:epoch", "not_before").split(b"\r\n")
    assert reply[0].startswith(b"$") and reply[0] != b"$-1", reply
    return float(reply[1])


@dataclass
class ServerNode:
    node_id: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def start_server(
    data_dir: Path, node_id: str, log: Path, redis_args: Sequence[str],
    preexec_fn: Callable[[], None] | None = None,
) -> ServerNode:
    """The real `ptt-server serve` command, JSON logs into `log` (tracebacks are counted)."""
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ptt_server.app.cli", "--data-dir", str(data_dir),
             "--log-format", "json", "serve", "--http", "--host", HOST, "--port", str(port),
             *redis_args, "--workers", "1", "--node-id", node_id,
             "--ice-address", HOST, "--ice-allow-network", "127.0.0.0/8"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )
    return ServerNode(node_id, f"http://{HOST}:{port}", proc, log)


async def healthz(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(
            url + "/healthz", timeout=aiohttp.ClientTimeout(total=timeout)
        ) as r:
            body: dict[str, Any] = await r.json()
            return body
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def wait_health(node: ServerNode, status: str = "ok", timeout: float = 30.0) -> float:
    """Wait until the node's /healthz says `status`; the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while True:
        if node.proc.poll() is not None:
            raise RuntimeError(f"{node.node_id} exited: {node.log.read_text()[-3000:]}")
        body = await healthz(node.url)
        if body is not None and body.get("status") == status:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{node.node_id}: /healthz never said {status} (last: {body})")
        await asyncio.sleep(0.05)


def stop_server(node: ServerNode) -> None:
    if node.proc.poll() is None:
        node.proc.send_signal(signal.SIGTERM)
        try:
            node.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(5)


def log_records(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict):
                out.append(rec)
    return out


def tracebacks(path: Path) -> int:
    """Records carrying a traceback (the JSON `exc` field)."""
    return sum(1 for r in log_records(path) if r.get("exc"))


# -- data -----------------------------------------------------------------------------------------
def seed(data_dir: Path, extra: Sequence[str] = CONTENDERS) -> None:
    seed_directory(data_dir)
    d = Directory(data_dir / "directory.sqlite3")
    for name in extra:
        d.add_user(name, Role.OFFICER, [TG], "pw-" + name, alias=name.upper())


def tone_packets(seconds: float) -> list[bytes]:
    """Opus packets of a warbling tone (no speech tools needed; every packet differs)."""
    n = int(seconds * 48000)
    t = np.arange(n) / 48000.0
    pcm = (8000 * np.sin(2 * np.pi * (300 + 100 * np.sin(2 * np.pi * 0.7 * t)) * t)
           * (0.6 + 0.4 * np.sin(2 * np.pi * 1.3 * t))).astype(np.int16)
    return encode(pcm)


def ledger(data_dir: Path) -> list[dict[str, Any]]:
    path = data_dir / "ledger" / "ledger.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def wait_ledger(data_dir: Path, ids: set[str], timeout: float = 20.0,
                      ) -> dict[str, dict[str, Any]]:
    """The ledger's transmission entries once every id in `ids` has one (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        entries = {e["transmission_id"]: e for e in ledger(data_dir)
                   if e.get("type") == "transmission"}
        if ids <= entries.keys():
            return entries
        if time.monotonic() > deadline:
            raise TimeoutError(f"no ledger entry for {sorted(ids - entries.keys())}")
        await asyncio.sleep(0.1)


def ledger_overlaps(entries: Sequence[dict[str, Any]], talkgroup: str,
                    ) -> list[tuple[str, str, int]]:
    """Pairs of transmissions on `talkgroup` whose [start, end] overlap in the ledger, with
    the overlap in ms."""
    spans = sorted((e["start_ms"], e["end_ms"], e["transmission_id"]) for e in entries
                   if e.get("type") == "transmission" and e.get("talkgroup") == talkgroup)
    return [(a[2], b[2], min(a[1], b[1]) - b[0])
            for i, a in enumerate(spans) for b in spans[i + 1:] if b[0] < a[1]]


# A released transmission is ledgered when its node sees the floor's `idle` event come back
# over pub/sub, and the next grant starts at its request's time: back to back, the ledger can
# show the two overlapping by about a pub/sub round trip although Redis never had two holders.
LEDGER_SKEW_MS = 100


# -- what each client was told --------------------------------------------------------------------
@dataclass
class Span:
    client: str
    transmission_id: str
    start: float
    end: float = math.inf
    end_reason: str | None = None


def held_spans(clients: dict[str, PttClient], talkgroup: str) -> list[Span]:
    """Per client, each floor it was granted: from its `floor_granted` to the first
    `floor_revoked`/`floor_idle` of that transmission it received (open if none)."""
    spans: list[Span] = []
    for name, c in clients.items():
        open_: dict[str, Span] = {}
        for ev in c.events:
            if ev.get("talkgroup") != talkgroup:
                continue
            tid = ev.get("transmission_id")
            if ev["type"] == "floor_granted":
                open_[tid] = Span(name, tid, ev["_at"])
                spans.append(open_[tid])
            elif ev["type"] in ("floor_revoked", "floor_idle") and tid in open_:
                span = open_.pop(tid)
                span.end, span.end_reason = ev["_at"], ev.get("reason")
    return spans


def two_holders(spans: Sequence[Span]) -> list[tuple[Span, Span]]:
    """Grants made while another client's transmission was still open by its own messages."""
    bad = []
    for a in spans:
        for b in spans:
            if a is not b and a.transmission_id != b.transmission_id and a.start < b.start < a.end:
                bad.append((a, b))
    return bad


def seen_overlaps(c: PttClient, talkgroup: str) -> list[tuple[str, str]]:
    """From one member's own messages: a transmission announced (taken/granted) while another
    it was told of had not ended (idle/revoked)."""
    current: str | None = None
    bad = []
    for ev in c.events:
        if ev.get("talkgroup") != talkgroup:
            continue
        kind, tid = ev["type"], ev.get("transmission_id")
        if kind in ("floor_taken", "floor_granted"):
            if current is not None and current != tid:
                bad.append((current, tid))
            current = tid
        elif kind in ("floor_idle", "floor_revoked") and tid == current:
            current = None
    return bad


@dataclass
class Contention:
    """Clients asking for the floor over and over while a fault lasts: every reply kept."""

    replies: dict[str, list[tuple[float, str, str | None]]] = field(default_factory=dict)

    def record(self, name: str, reply: dict[str, Any]) -> None:
        self.replies.setdefault(name, []).append(
            (reply["_at"], reply["type"], reply.get("code")))

    def kinds(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rs in self.replies.values():
            for _at, kind, code in rs:
                key = f"{kind}:{code}" if code else kind
                counts[key] = counts.get(key, 0) + 1
        return counts


async def contend(
    clients: dict[str, PttClient], until: asyncio.Event, out: Contention, pause: float = 0.15,
) -> None:
    """Each client requests the floor, again and again, until `until` is set; a grant is
    released at once (these clients only test the floor, they do not talk)."""

    async def one(name: str, c: PttClient) -> None:
        while not until.is_set():
            try:
                reply = await c.request_floor(TG)
            except TimeoutError:
                reply = {"type": "no_reply", "_at": time.monotonic()}
            out.record(name, reply)
            if reply["type"] == "floor_granted":
                await c.release_floor(TG)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), pause)

    await asyncio.gather(*(one(n, c) for n, c in clients.items()))


async def request_until_granted(c: PttClient, timeout: float) -> tuple[dict[str, Any], int]:
    """Ask for the floor until granted (retrying `unavailable`); the grant and the retries."""
    deadline = time.monotonic() + timeout
    tries = 0
    while True:
        tries += 1
        reply = await c.request_floor(TG)
        if reply["type"] == "floor_granted":
            return reply, tries
        assert reply["type"] == "error" and reply["code"] == "unavailable", reply
        if time.monotonic() > deadline:
            raise TimeoutError(f"no grant in {timeout} s (last: {reply})")
        await asyncio.sleep(0.1)


async def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)
    return time.monotonic()


def arrivals(c: PttClient, tid: str) -> list[float]:
    t = c.transmissions.get(tid)
    return [r.arrival for r in t.packets] if t is not None else []


def max_gap(times: Sequence[float], start: float, end: float) -> float:
    """The longest silence between `start` and `end` in a list of arrival times."""
    inside = [start, *[t for t in times if start <= t <= end], end]
    return max(b - a for a, b in itertools.pairwise(inside))


def report(scenario: str, figures: dict[str, Any]) -> None:
    print("reliability: " + json.dumps({"scenario": scenario, **figures}, sort_keys=True),
          flush=True)


# -- the cluster ----------------------------------------------------------------------------------
@dataclass
class Cluster:
    data_dir: Path
    redis: RedisProcess
    nodes: list[ServerNode]
    clients: dict[str, PttClient] = field(default_factory=dict)

    async def client(self, name: str, user: str, node: int, media: bool) -> PttClient:
        c = PttClient(self.nodes[node].url, token(self.data_dir, user),
                      ice_addresses=(HOST,))
        self.clients[name] = c
        await c.connect()
        if media:
            await c.start_media()
        await c.join(TG)
        return c


@contextlib.asynccontextmanager
async def make_cluster(tmp_path: Path, node0_redis: CuttableProxy | None = None,
                       ) -> AsyncIterator[Cluster]:
    """Redis and two nodes; node 0 reaches Redis through `node0_redis` if given (a link the
    test can cut for that node alone)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    seed(data_dir)
    redis = RedisProcess(tmp_path / "redis")
    redis.start()
    nodes: list[ServerNode] = []
    c = Cluster(data_dir, redis, nodes)
    try:
        await wait_redis(redis.port)
        if node0_redis is not None:
            node0_redis.target = (HOST, redis.port)
            await node0_redis.start()
        # One after the other: two processes opening a new data directory's recording index
        # at the same moment can fail ("database is locked"), which is not this test's fault.
        for i in range(2):
            url = redis.url
            if i == 0 and node0_redis is not None:
                url = f"redis://{HOST}:{node0_redis.port}/0"
            nodes.append(start_server(data_dir, f"node{i}", tmp_path / f"node{i}.log",
                                      ["--redis-url", url]))
            await wait_health(nodes[-1])
        yield c
    finally:
        await asyncio.gather(*(x.close() for x in c.clients.values()), return_exceptions=True)
        for n in nodes:
            stop_server(n)
        if node0_redis is not None:
            await node0_redis.close()
        redis.stop()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with make_cluster(tmp_path) as c:
        yield c


async def on_the_air(cl: Cluster, seconds: float = 30.0,
                     ) -> tuple[dict[str, Any], asyncio.Task[None]]:
    """Talker u1 on node 0 granted and sending; listeners u2 (node 0) and u3 (node 1) hearing
    it; the contenders joined on both nodes. Returns the grant and the sending task."""
    # Encoded before anyone connects: encoding blocks this event loop for a while, and a
    # client that does not answer the server's pings in time is taken for gone.
    packets = await asyncio.to_thread(tone_packets, seconds)
    talker = await cl.client("talker", "u1", 0, media=True)
    near = await cl.client("near", "u2", 0, media=True)
    far = await cl.client("far", "u3", 1, media=True)
    for i, name in enumerate(CONTENDERS):
        await cl.client(name, name, i % 2, media=False)
    grant = await talker.request_floor(TG)
    assert grant["type"] == "floor_granted", grant
    sending = asyncio.create_task(talker.send_audio(packets))
    tid = grant["transmission_id"]
    # Media flows on both nodes before anything breaks.
    await wait_until(lambda: len(arrivals(near, tid)) >= 25 and len(arrivals(far, tid)) >= 25,
                     15, "audio did not reach both nodes")
    return grant, sending


@pytest.mark.timeout(150)
@pytest.mark.parametrize("down_s", [1.0, 5.0], ids=["down-1s", "down-5s"])
async def test_redis_killed_and_restarted_empty(cluster: Cluster, down_s: float) -> None:
    """Down 1 s: the talker's node finds the new, empty Redis and ends the transmission.
    Down 5 s: it ends it by itself after LOCAL_HOLD_S without Redis, before Redis is back."""
    cl = cluster
    grant, sending = await on_the_air(cl)
    tid = grant["transmission_id"]
    talker, near, far = cl.clients["talker"], cl.clients["near"], cl.clients["far"]
    contenders = {n: cl.clients[n] for n in CONTENDERS}
    tracebacks_before = [tracebacks(n.log) for n in cl.nodes]

    # Kill Redis mid-transmission; contenders on both nodes keep asking for the floor.
    done = asyncio.Event()
    contention = Contention()
    contending = asyncio.create_task(contend(contenders, done, contention))
    try:
        t_kill = time.monotonic()
        cl.redis.kill9()
        # Down for about a second (a supervisor restarting it), and at least until every
        # contender has been answered while it was down.
        await wait_until(lambda: time.monotonic() - t_kill >= down_s
                         and all(contention.replies.get(n) for n in CONTENDERS), 15,
                         "contenders got no answer while Redis was down")
        cl.redis.start()
        t_back = await wait_redis(cl.redis.port)

        # The talker's own node ends the transmission, and every member hears that it ended.
        revoked = await talker.wait_for(
            lambda m: m["type"] == "floor_revoked" and m["transmission_id"] == tid, 10)
        assert revoked["reason"] == "service_interrupted", revoked
        if down_s > LOCAL_HOLD_S + 1:
            # On its own, in time for any fence: LOCAL_HOLD_S after it sent the last refresh
            # (at most a refresh period before the kill), plus one refresh period.
            assert LOCAL_HOLD_S - 0.6 < revoked["_at"] - t_kill < LOCAL_HOLD_S + 0.8, (
                revoked["_at"] - t_kill)
        idle_at = {}
        for name, c in cl.clients.items():
            idle = await c.wait_for(
                lambda m: m["type"] == "floor_idle" and m.get("transmission_id") == tid, 10)
            assert idle["reason"] == "service_interrupted", (name, idle)
            idle_at[name] = idle["_at"]

        # Contention goes on through the fence until someone is granted (or it has long
        # passed); then a listener on node 1 takes the floor and talks.
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: any(k == "floor_granted" for rs in contention.replies.values()
                                         for _a, k, _c in rs), FENCE_S + 6, "no grant")
    finally:
        done.set()
        await asyncio.wait_for(contending, 15)
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending

    more = await asyncio.to_thread(tone_packets, 1.5)
    new_grant, tries = await request_until_granted(far, 15)
    t_new_grant = new_grant["_at"]
    new_tid = new_grant["transmission_id"]
    await far.send_audio(more)
    await wait_until(lambda: len(arrivals(near, new_tid)) >= 50, 10,
                     "node 0 did not hear node 1's talker after the restart")
    await far.release_floor(TG)
    first_heard = min(arrivals(near, new_tid))

    # Never two holders: by every grantee's own messages, and by every member's.
    spans = held_spans(cl.clients, TG)
    assert not two_holders(spans), two_holders(spans)
    for name, c in cl.clients.items():
        assert not seen_overlaps(c, TG), (name, seen_overlaps(c, TG))
    # Requests in the outage and the fence: `unavailable`, never an internal error; no grant
    # before the fence was over (it began once Redis was back, so after t_back).
    kinds = contention.kinds()
    assert set(kinds) <= {"error:unavailable", "floor_granted", "floor_denied"}, kinds
    during = [k for rs in contention.replies.values() for at, k, _c in rs if at < t_back]
    assert during and set(during) == {"error"}, during
    grants = [at for rs in contention.replies.values() for at, k, _c in rs if k == "floor_granted"]
    first_grant = min([*grants, t_new_grant])
    # The fence runs from the new epoch's creation (stored as its end, wall clock); a grant
    # reaches its client only after it was decided, so no client may have one before.
    fence_end = epoch_fence_end(cl.redis.port) - (time.time() - time.monotonic())
    assert fence_end - t_back >= FENCE_S - 1.0, fence_end - t_back  # the fence began then
    assert first_grant >= fence_end - 0.01, (first_grant - fence_end)
    # Media of the new talker crosses nodes as soon as it is granted.
    assert first_heard - t_new_grant < 1.0, first_heard - t_new_grant

    # The ledger: the interrupted transmission, the new one, and no overlap on the talkgroup.
    entries = await wait_ledger(cl.data_dir, {tid, new_tid})
    assert entries[tid]["end_reason"] == "service_interrupted", entries[tid]
    assert entries[new_tid]["end_reason"] == "released", entries[new_tid]
    assert entries[new_tid]["packet_count"] >= 60
    overlaps = ledger_overlaps(list(entries.values()), TG)
    assert all(ms <= LEDGER_SKEW_MS and tid not in (a, b) and new_tid not in (a, b)
               for a, b, ms in overlaps), overlaps

    counts = [tracebacks(n.log) - b for n, b in zip(cl.nodes, tracebacks_before, strict=True)]
    assert all(c <= 10 for c in counts), counts
    heard_near = [a for a in arrivals(near, tid) if a > t_kill]
    heard_far = [a for a in arrivals(far, tid) if a > t_kill]
    report(f"redis_kill_restart_empty_down_{down_s:.0f}s", {
        "redis_down_s": round(t_back - t_kill, 2),
        "talker_revoked_after_kill_s": round(revoked["_at"] - t_kill, 2),
        "talker_revoked_after_redis_back_s": round(revoked["_at"] - t_back, 2),
        "members_idle_after_redis_back_s_max": round(max(idle_at.values()) - t_back, 2),
        "first_grant_after_redis_back_s": round(first_grant - t_back, 2),
        "fence_began_after_redis_back_s": round(fence_end - FENCE_S - t_back, 2),
        "new_talker_retries": tries,
        "other_node_first_packet_after_grant_ms": round(1000 * (first_heard - t_new_grant)),
        "own_node_heard_after_kill_s": round(max(heard_near, default=t_kill) - t_kill, 2),
        "other_node_heard_after_kill_s": round(max(heard_far, default=t_kill) - t_kill, 2),
        "requests": kinds,
        "ledger_back_to_back_overlap_ms_max": max((ms for _a, _b, ms in overlaps), default=0),
        "tracebacks_per_node": counts,
    })


@pytest.mark.timeout(150)
async def test_redis_stalled_two_seconds(cluster: Cluster) -> None:
    cl = cluster
    grant, sending = await on_the_air(cl)
    tid = grant["transmission_id"]
    talker, near, far = cl.clients["talker"], cl.clients["near"], cl.clients["far"]
    contenders = {n: cl.clients[n] for n in CONTENDERS}
    tracebacks_before = [tracebacks(n.log) for n in cl.nodes]

    done = asyncio.Event()
    contention = Contention()
    contending = asyncio.create_task(contend(contenders, done, contention))
    try:
        t_stop = time.monotonic()
        cl.redis.signal(signal.SIGSTOP)
        # Two seconds of a Redis that accepts connections and answers nothing.
        await wait_until(lambda: time.monotonic() - t_stop >= STALL_S, 5, "clock")
        cl.redis.signal(signal.SIGCONT)
        t_cont = time.monotonic()
        # Across nodes, media comes back once Redis answers again.
        await wait_until(lambda: any(a > t_cont for a in arrivals(far, tid)), 10,
                         "node 1 heard nothing after Redis came back")
        # The transmission outlives the stall: two more seconds of it on both nodes.
        await wait_until(lambda: min(len([a for a in arrivals(c, tid) if a > t_cont])
                                     for c in (near, far)) >= 100, 10,
                         "the transmission did not go on after the stall")
        await wait_until(lambda: all(contention.replies.get(n) for n in CONTENDERS), 15,
                         "contenders got no answer")
    finally:
        done.set()
        await asyncio.wait_for(contending, 15)
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
    ended = await talker.release_floor(TG)
    assert ended["type"] == "floor_idle" and ended["reason"] == "released", ended

    # During the stall, node 0's listener kept hearing the talker; node 1's heard it again
    # within a moment of Redis answering.
    far_resumed = min(a for a in arrivals(far, tid) if a > t_cont)
    near_gap = max_gap(arrivals(near, tid), t_stop, t_cont)
    near_during = len([a for a in arrivals(near, tid) if t_stop <= a <= t_cont])
    far_gap = max_gap(arrivals(far, tid), t_stop, far_resumed)
    assert near_gap < 0.5, near_gap
    assert near_during >= 0.7 * 50 * (t_cont - t_stop), near_during
    assert far_resumed - t_cont < 1.0, far_resumed - t_cont

    # Nobody was granted the floor the talker held; replies were denials or `unavailable`.
    kinds = contention.kinds()
    assert set(kinds) <= {"error:unavailable", "floor_denied"}, kinds
    spans = held_spans(cl.clients, TG)
    assert not two_holders(spans), two_holders(spans)
    for name, c in cl.clients.items():
        assert not seen_overlaps(c, TG), (name, seen_overlaps(c, TG))
    entries = await wait_ledger(cl.data_dir, {tid})
    assert entries[tid]["end_reason"] == "released", entries[tid]
    assert not ledger_overlaps(list(entries.values()), TG)
    counts = [tracebacks(n.log) - b for n, b in zip(cl.nodes, tracebacks_before, strict=True)]
    assert all(c <= 10 for c in counts), counts
    report("redis_stall_2s", {
        "stall_s": round(t_cont - t_stop, 2),
        "own_node_packets_during_stall": near_during,
        "own_node_longest_gap_ms": round(1000 * near_gap),
        "other_node_longest_gap_ms": round(1000 * far_gap),
        "other_node_media_resumed_after_s": round(far_resumed - t_cont, 2),
        "requests": kinds,
        "transmission_end_reason": entries[tid]["end_reason"],
        "recorded_packets": entries[tid]["packet_count"],
        "tracebacks_per_node": counts,
    })


@pytest.mark.timeout(150)
async def test_a_node_cut_off_alone_stops_its_talker_before_another_node_may_grant(
    tmp_path: Path,
) -> None:
    """Node 0 alone loses Redis (its link holds every byte, closes nothing); Redis and node 1
    go on. Node 1 expires the talker's lease when it lapses and grants the floor to a
    contender; node 0 must have stopped its talker before then, by its own clock: never two
    talkers on one talkgroup, by the server's own messages and by what listeners heard."""
    link = CuttableProxy(HOST, 0)
    async with make_cluster(tmp_path, link) as cl:
        grant, sending = await on_the_air(cl)
        tid = grant["transmission_id"]
        talker, near, far = cl.clients["talker"], cl.clients["near"], cl.clients["far"]
        # Only node 1's contenders: node 0's would just wait on the cut link.
        contenders = {n: cl.clients[n] for n in CONTENDERS[1::2]}
        done = asyncio.Event()
        contention = Contention()
        try:
            t_cut = time.monotonic()
            link.cut_link()
            contending = asyncio.create_task(contend(contenders, done, contention))
            revoked = await talker.wait_for(
                lambda m: m["type"] == "floor_revoked" and m["transmission_id"] == tid, 15)
            assert revoked["reason"] == "service_interrupted", revoked
            await wait_until(lambda: any(k == "floor_granted" for rs in contention.replies.values()
                                         for _a, k, _c in rs), LEASE_S + 10,
                             "node 1 never granted the floor")
        finally:
            done.set()
            await asyncio.wait_for(contending, 15)
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
        grants = sorted(at for rs in contention.replies.values() for at, k, _c in rs
                        if k == "floor_granted")
        # The talker was told before anyone else was granted, and its own node's listener
        # heard nothing of it after that grant; until the revoke, that listener kept hearing
        # it (the cut cost node 0's members nothing while the lease lasted).
        assert revoked["_at"] < grants[0], (revoked["_at"] - t_cut, grants[0] - t_cut)
        heard_near = [a for a in arrivals(near, tid) if a > t_cut]
        assert heard_near and max(heard_near) < grants[0], (max(heard_near) - t_cut)
        assert max(heard_near) - t_cut > 1.0, max(heard_near) - t_cut
        spans = held_spans(cl.clients, TG)
        assert not two_holders(spans), two_holders(spans)
        for name in ("talker", "near", *contenders):
            assert not seen_overlaps(cl.clients[name], TG), name
        kinds = contention.kinds()
        assert set(kinds) <= {"error:unavailable", "floor_granted", "floor_denied"}, kinds

        # The link comes back: node 0 recovers and its members can talk to node 1's again.
        link.restore()
        await wait_health(cl.nodes[0])
        more = await asyncio.to_thread(tone_packets, 1.5)
        new_grant, tries = await request_until_granted(near, 20)
        await near.send_audio(more)
        await wait_until(lambda: len(arrivals(far, new_grant["transmission_id"])) >= 50, 10,
                         "node 1 did not hear node 0's talker after the link came back")
        await near.release_floor(TG)
        entries = await wait_ledger(cl.data_dir, {tid, new_grant["transmission_id"]})
        assert entries[tid]["end_reason"] == "service_interrupted", entries[tid]
        report("node_cut_off_alone", {
            "talker_revoked_after_cut_s": round(revoked["_at"] - t_cut, 2),
            "first_grant_elsewhere_after_cut_s": round(grants[0] - t_cut, 2),
            "own_node_heard_after_cut_s": round(max(heard_near) - t_cut, 2),
            "gap_between_talkers_s": round(grants[0] - max(heard_near), 2),
            "requests": kinds,
            "retries_after_restore": tries,
        })


# -- the rules these scenarios rely on, against the real (shared) redis-server ---------------------
T0 = 1_700_000_000.0


def _request(session: str, now: float, max_duration_s: float = 60.0) -> fl.Request:
    who = fl.Participant(session, f"unit-{session}", session, "officer", "node-a", 100)
    return fl.Request(who, now, max_duration_s, f"tx-{session}", False, False)


async def test_ticks_spare_a_lapsed_lease_but_not_the_transmit_limit(
    redis: aioredis.Redis,
) -> None:
    store = FloorStore(redis, lease_s=2.0)
    await store.apply("tg1", _request("a", T0))
    await store.apply("tg2", _request("b", T0, max_duration_s=1.0))
    # Right after an outage: a's lease lapsed (nobody could refresh), b's time is up.
    ticked = dict(await store.tick_due(T0 + 3, spare_leases=True))
    assert set(ticked) == {"tg2"}
    assert any(isinstance(o, fl.Revoked) and o.reason == "timeout" for o in ticked["tg2"])
    assert (await store.get("tg1")).grant is not None
    # Once holders have had their chance, a lapsed lease ends the grant as before.
    ticked = dict(await store.tick_due(T0 + 3))
    assert any(isinstance(o, fl.Revoked) and o.reason == "disconnected" for o in ticked["tg1"])


async def test_a_floor_redis_forgot_is_an_epoch_change_not_a_rules_error(
    redis: aioredis.Redis,
) -> None:
    store = FloorStore(redis, lease_s=2.0)
    await store.apply("tg1", _request("a", T0))
    await redis.flushall()  # what a restart without persistence leaves
    with pytest.raises(EpochChanged):
        await store.apply("tg1", fl.Refresh("a", T0 + 0.5, 2.0))
    with pytest.raises(EpochChanged):
        await store.apply("tg1", fl.Release("a", T0 + 0.5))
    # The node re-creates the epoch, fenced: no grant until the fence is over.
    assert await store.check_epoch(time.time()) is False
    with pytest.raises(Fenced):
        await store.apply("tg1", _request("b", time.time()))


async def test_no_floor_changes_while_the_node_cannot_hear_them(redis: aioredis.Redis) -> None:
    store = FloorStore(redis, lease_s=2.0)
    await store.apply("tg1", _request("a", T0))
    store.listening = False
    with pytest.raises(NotListening):
        await store.apply("tg1", _request("b", T0 + 0.1))
    with pytest.raises(NotListening):
        await store.apply("tg1", fl.Release("a", T0 + 0.1))
    assert await store.tick_due(T0 + 100) == []
    await store.apply("tg1", fl.Refresh("a", T0 + 0.2, 2.0))  # a refresh publishes nothing
    store.listening = True
    _floor, outputs = await store.apply("tg1", fl.Release("a", T0 + 0.3))
    assert any(isinstance(o, fl.Idle) for o in outputs)


async def test_a_request_cannot_slip_in_under_a_new_epoch_without_its_fence(
    redis: aioredis.Redis,
) -> None:
    class Racing(FloorStore):
        """Its lease refresher notices the reset (and adopts the new, fenced epoch) while a
        request is waiting for the floor's read: what happened at 0.4 s after a restart."""

        async def _read(self, talkgroup: str) -> tuple[str, fl.Floor]:
            await self.check_epoch(time.time())
            return await super()._read(talkgroup)

    store = Racing(redis, lease_s=2.0)
    await store.check_epoch(time.time())
    await redis.flushall()
    with pytest.raises(EpochChanged):
        await store.apply("tg1", _request("b", time.time()))
    assert (await store.get("tg1")).grant is None
    with pytest.raises(Fenced):  # and from now on, the new epoch's fence
        await store.apply("tg1", _request("b", time.time()))


async def test_a_node_new_to_a_redis_that_has_just_started_waits_out_a_lease(
    tmp_path: Path,
) -> None:
    """A node (re)started right after Redis restarted empty knew no epoch, so it cannot tell
    the restart from a fresh deployment; but a node that was talking through the restart may
    not have noticed yet. It stops within a lease time of its last refresh, which Redis saw
    before it started: so a Redis that has just started grants nothing until a lease (and the
    margin) after its start. Requests wait it out instead of being refused."""
    redis_proc = RedisProcess(tmp_path / "fresh-redis")
    redis_proc.start()
    client = aioredis.Redis.from_url(redis_proc.url)
    try:
        await wait_redis(redis_proc.port)
        started = time.time()  # Redis started no later than this
        store = FloorStore(client, lease_s=LEASE_S)
        assert await store.check_epoch(time.time()) is True
        assert store.fence_waits
        # The fence runs from Redis's start (its uptime, in whole seconds: up to 1 s more).
        assert started + FENCE_S - 1.5 <= store.not_before <= started + FENCE_S + 1.5
        _floor, outputs = await store.apply("tg1", _request("a", time.time()))
        granted_at = time.time()
        assert any(isinstance(o, fl.Granted) for o in outputs), outputs
        assert granted_at >= store.not_before
        # A second node adopts the same epoch and its fence, as it is.
        other = FloorStore(client, lease_s=LEASE_S)
        assert await other.check_epoch(time.time()) is True
        assert (other.epoch, other.not_before) == (store.epoch, store.not_before)
    finally:
        await client.aclose()
        redis_proc.stop()


async def test_a_node_new_to_a_redis_up_for_long_grants_at_once(redis: aioredis.Redis) -> None:
    info = await redis.info("server")
    if int(info["uptime_in_seconds"]) < FENCE_S + 1:
        await asyncio.sleep(FENCE_S + 1 - int(info["uptime_in_seconds"]))
    store = FloorStore(redis, lease_s=LEASE_S)
    assert await store.check_epoch(time.time()) is True
    assert store.not_before <= time.time()
    before = time.monotonic()
    _floor, outputs = await store.apply("tg1", _request("a", time.time()))
    assert any(isinstance(o, fl.Granted) for o in outputs)
    assert time.monotonic() - before < FENCE_S  # not held back by any fence
