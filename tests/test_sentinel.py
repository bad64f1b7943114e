"""Redis Sentinel failover under a transmission, with real processes: a primary, one replica
and three sentinels (`redis-server --sentinel`: Debian's redis-server binary runs as a
sentinel too) on loopback, and the real `ptt-server serve` given the three sentinels. The
primary is killed (kill -9) while a talker is on the air.

Asserted: the sentinels promote the replica, the server follows the new primary by itself
(requests are answered again, a floor is granted, /healthz says ok), never two holders, and
the transmission under way either went on (the failover was quicker than a node keeps
talking without Redis) or was ended by its node as `service_interrupted` — both are the
design's; which one happened is reported with the times (`reliability: {...}` with -s).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from client_cli.client import PttClient
from ptt_server.app.redis_embed import free_port

from .test_multinode import token
from .test_redis_restart import (
    CONTENDERS,
    HOST,
    TG,
    Contention,
    RedisProcess,
    ServerNode,
    arrivals,
    contend,
    healthz,
    held_spans,
    ledger_overlaps,
    max_gap,
    redis_command,
    report,
    seed,
    seen_overlaps,
    start_server,
    stop_server,
    tone_packets,
    tracebacks,
    two_holders,
    wait_health,
    wait_ledger,
    wait_redis,
    wait_until,
)

pytestmark = pytest.mark.slow

MASTER = "ptt"
SENTINELS = 3
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


class Sentinel:
    """One `redis-server <conf> --sentinel` (it rewrites its own config file)."""

    def __init__(self, workdir: Path, primary_port: int) -> None:
        self.port = free_port()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "sentinel.conf"
        self.conf.write_text(
            f"port {self.port}\nbind {HOST}\ndir {self.dir}\n"
            f"sentinel monitor {MASTER} {HOST} {primary_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        with (self.dir / "sentinel.log").open("ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", str(self.conf), "--sentinel"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )

    def ask(self, *words: str) -> bytes:
        return redis_command(self.port, "SENTINEL", *words)

    def master_port(self) -> int | None:
        """The primary this sentinel names now."""
        try:
            reply = self.ask("get-master-addr-by-name", MASTER).split(b"\r\n")
        except OSError:
            return None
        # *2 $9 127.0.0.1 $5 PORT
        return int(reply[4]) if len(reply) > 4 and reply[4].isdigit() else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def resp_count(reply: bytes) -> int:
    """The length of a RESP array reply ("*N")."""
    return int(reply.split(b"\r\n", 1)[0][1:]) if reply.startswith(b"*") else -1


@dataclass
class SentinelSetup:
    data_dir: Path
    primary: RedisProcess
    replica: RedisProcess
    sentinels: list[Sentinel]
    node: ServerNode | None = None
    clients: dict[str, PttClient] = field(default_factory=dict)

    async def client(self, name: str, user: str, media: bool) -> PttClient:
        assert self.node is not None
        c = PttClient(self.node.url, token(self.data_dir, user), ice_addresses=(HOST,))
        self.clients[name] = c
        await c.connect()
        if media:
            await c.start_media()
        await c.join(TG)
        return c


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[SentinelSetup]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    seed(data_dir)
    primary = RedisProcess(tmp_path / "primary")
    primary.start()
    await wait_redis(primary.port)
    replica = RedisProcess(tmp_path / "replica", args=["--replicaof", HOST, str(primary.port)])
    replica.start()
    s = SentinelSetup(data_dir, primary, replica, [])
    try:
        await wait_redis(replica.port)
        await wait_until(
            lambda: b"master_link_status:up" in redis_command(replica.port, "INFO", "replication"),
            15, "the replica never synchronised")
        s.sentinels = [Sentinel(tmp_path / f"sentinel{i}", primary.port) for i in range(SENTINELS)]
        # A failover needs the sentinels to know the replica and each other (they find both
        # through the primary, every couple of seconds).
        await wait_until(lambda: all(
            _safe_count(x, "replicas") == 1 and _safe_count(x, "sentinels") == SENTINELS - 1
            for x in s.sentinels), 30, "the sentinels did not find the replica and each other")
        args = [a for x in s.sentinels for a in ("--redis-sentinel", f"{HOST}:{x.port}")]
        s.node = start_server(data_dir, "node0", tmp_path / "node0.log",
                              [*args, "--redis-master", MASTER])
        await wait_health(s.node)
        yield s
    finally:
        await asyncio.gather(*(c.close() for c in s.clients.values()), return_exceptions=True)
        if s.node is not None:
            stop_server(s.node)
        for x in s.sentinels:
            x.stop()
        replica.stop()
        primary.stop()


def _safe_count(sentinel: Sentinel, what: str) -> int:
    try:
        return resp_count(sentinel.ask(what, MASTER))
    except OSError:
        return -1


@pytest.mark.timeout(170)
async def test_sentinel_failover_under_a_transmission(setup: SentinelSetup) -> None:
    s = setup
    assert s.node is not None
    # Encoded before anyone connects (it blocks the event loop; see test_redis_restart.py).
    packets = await asyncio.to_thread(tone_packets, 40)
    more = await asyncio.to_thread(tone_packets, 1.0)
    talker = await s.client("talker", "u1", media=True)
    listener = await s.client("listener", "u2", media=True)
    for name in CONTENDERS[:2]:
        await s.client(name, name, media=False)
    contenders = {n: s.clients[n] for n in CONTENDERS[:2]}
    grant = await talker.request_floor(TG)
    assert grant["type"] == "floor_granted", grant
    tid = grant["transmission_id"]
    sending = asyncio.create_task(talker.send_audio(packets))
    await wait_until(lambda: len(arrivals(listener, tid)) >= 25, 15, "no audio before the kill")
    tracebacks_before = tracebacks(s.node.log)

    done = asyncio.Event()
    contention = Contention()
    contending = asyncio.create_task(contend(contenders, done, contention, pause=0.2))
    try:
        t_kill = time.monotonic()
        s.primary.kill9()
        # The sentinels agree on the replica as the new primary (asked from a thread: the
        # clients on this event loop must keep answering the server's pings).
        deadline = time.monotonic() + 30
        while True:
            ports = await asyncio.gather(*(asyncio.to_thread(x.master_port)
                                           for x in s.sentinels))
            if all(p == s.replica.port for p in ports):
                t_promoted = time.monotonic()
                break
            assert time.monotonic() < deadline, ("no failover", ports)
            await asyncio.sleep(0.05)
        # The server is answering floor requests again (a denial is an answer: the floor is
        # still taken, or the contender lost to another).
        t_served = await wait_until(lambda: any(
            at > t_kill and kind != "error" for rs in contention.replies.values()
            for at, kind, _c in rs), 30, "requests never answered after the failover")
        t_health = await wait_health(s.node, "ok", 20)
        # What became of the transmission: ended by its node, or still going two seconds on.
        await wait_until(lambda: any(
            e["type"] == "floor_revoked" and e["transmission_id"] == tid for e in talker.events)
            or len([a for a in arrivals(listener, tid) if a > t_served]) >= 100, 20,
            "the transmission neither ended nor went on")
    finally:
        done.set()
        await asyncio.wait_for(contending, 20)
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
    revoked = next((e for e in talker.events
                    if e["type"] == "floor_revoked" and e["transmission_id"] == tid), None)
    if revoked is None:
        outcome = "continued"
        ended = await talker.release_floor(TG)
        assert ended["type"] == "floor_idle" and ended["reason"] == "released", ended
        gap = max_gap(arrivals(listener, tid), t_kill, t_served)
        assert gap < 0.5, gap  # the talker's own node went on forwarding through it all
    else:
        outcome = "interrupted"
        assert revoked["reason"] == "service_interrupted", revoked
        for name, c in s.clients.items():
            idle = await c.wait_for(
                lambda m: m["type"] == "floor_idle" and m.get("transmission_id") == tid, 10)
            assert idle["reason"] == "service_interrupted", (name, idle)
        gap = max_gap(arrivals(listener, tid), t_kill, revoked["_at"])

    # A new talker is granted on the new primary and heard.
    t_ask = time.monotonic()
    deadline = t_ask + 20
    while True:
        reply = await listener.request_floor(TG)
        if reply["type"] == "floor_granted":
            break
        assert reply["type"] == "floor_denied" or reply.get("code") == "unavailable", reply
        assert time.monotonic() < deadline, reply
        await asyncio.sleep(0.2)
    new_tid = reply["transmission_id"]
    await listener.send_audio(more)
    await wait_until(lambda: len(arrivals(talker, new_tid)) >= 30, 10, "new talker not heard")
    await listener.release_floor(TG)
    assert (await healthz(s.node.url) or {}).get("status") == "ok"
    assert s.node.proc.poll() is None

    kinds = contention.kinds()
    assert set(kinds) <= {"error:unavailable", "floor_granted", "floor_denied"}, kinds
    spans = held_spans(s.clients, TG)
    assert not two_holders(spans), two_holders(spans)
    for name, c in s.clients.items():
        assert not seen_overlaps(c, TG), (name, seen_overlaps(c, TG))
    entries = await wait_ledger(s.data_dir, {tid, new_tid})
    expected = "released" if outcome == "continued" else "service_interrupted"
    assert entries[tid]["end_reason"] == expected, entries[tid]
    assert entries[new_tid]["end_reason"] == "released"
    overlaps = ledger_overlaps(list(entries.values()), TG)
    assert all(tid not in (a, b) and new_tid not in (a, b) for a, b, _ms in overlaps), overlaps
    counts = tracebacks(s.node.log) - tracebacks_before
    assert counts <= 15, counts
    report("sentinel_failover", {
        "outcome": outcome,
        "promoted_after_kill_s": round(t_promoted - t_kill, 2),
        "requests_answered_after_kill_s": round(t_served - t_kill, 2),
        "new_talker_granted_after_kill_s": round(reply["_at"] - t_kill, 2),
        "healthz_ok_after_kill_s": round(t_health - t_kill, 2),
        "own_node_longest_gap_ms": round(1000 * gap),
        "requests": kinds,
        "tracebacks": counts,
    })
