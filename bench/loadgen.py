"""The load generator: a separate process (so the server's CPU is measured alone) that holds
light listeners, a talker, or signaling-only clients, driven by the orchestrator over a pipe.

Each command is a dict {"op": name, ...}; the reply is {"ok": True, ...} or {"ok": False,
"error": ...}. The process runs the default asyncio event loop (see peer.py for why).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import random
import signal
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import numpy as np

from ptt_server.media import compat_rtcp

from .peer import LightListener, RunSink, Talker
from .signal_ptt import PttSignal

BROWSER_RTCP_INTERVAL_S = 5.0  # a WebRTC audio receiver's report interval

CONNECT_TIMEOUT_S = 30.0


def _ms(ns: int) -> float:
    return ns / 1e6


class Agent:
    def __init__(self, conn: multiprocessing.connection.Connection, name: str) -> None:
        self.conn = conn
        self.name = name
        self.sink = RunSink()
        self.listeners: list[LightListener] = []
        self.signals: list[Any] = []
        self.talker: Talker | None = None
        self.talker_signal: Any = None
        self.talker_talkgroup = ""
        self.http: aiohttp.ClientSession | None = None
        self.janus: Any = None
        self.ws_clients: list[Any] = []
        self.floor_log: list[tuple[Any, ...]] = []
        self.taken_log: list[tuple[str, int]] = []
        self.server_offers = 0  # renegotiations the server started with our listeners
        self._sending: asyncio.Task[Any] | None = None

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            while True:
                cmd = await loop.run_in_executor(None, self.conn.recv)
                op = cmd.pop("op")
                try:
                    result = await getattr(self, "op_" + op)(**cmd)
                    reply = {"ok": True, **(result or {})}
                except Exception as exc:
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                             "trace": traceback.format_exc()}
                self.conn.send(reply)
                if op == "close":
                    return
        finally:
            await self.http.close()

    # -- listeners ----------------------------------------------------------------------------
    async def op_listeners(self, system: str, urls: list[str], tokens: list[str],
                           talkgroup: str, concurrency: int = 16,
                           janus: dict[str, Any] | None = None) -> dict[str, Any]:
        """Connect len(tokens) light listeners (concurrency at a time); per-connection times."""
        sem = asyncio.Semaphore(concurrency)
        first = len(self.listeners)
        times: list[list[float]] = []
        errors: list[str] = []
        if system == "janus" and self.janus is None:
            from .janus import JanusClient

            assert janus is not None and self.http is not None
            self.janus = JanusClient(urls[0], self.http)
            await self.janus.start()

        async def one(i: int) -> None:
            async with sem:
                listener = LightListener(first + i, self.sink)
                t0 = time.monotonic_ns()
                try:
                    if system == "janus":
                        assert janus is not None
                        steps = await asyncio.wait_for(
                            self._janus_listener(listener, janus), CONNECT_TIMEOUT_S)
                    else:
                        steps = await asyncio.wait_for(
                            self._ptt_listener(listener, urls[i], tokens[i], talkgroup),
                            CONNECT_TIMEOUT_S)
                    listener.take_over()
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    await listener.close()
                    return
                self.listeners.append(listener)
                times.append([_ms(time.monotonic_ns() - t0), *steps])

        wall0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(len(tokens))))
        # Listeners that failed leave gaps in the index space: renumber densely.
        for n, listener in enumerate(self.listeners):
            listener.index = n
        return {"connected": len(self.listeners) - first, "failed": len(errors),
                "errors": errors[:5], "times_ms": times, "wall_s": time.monotonic() - wall0,
                "total": len(self.listeners)}

    async def _ptt_listener(self, listener: LightListener, url: str, token: str,
                            talkgroup: str) -> list[float]:
        assert self.http is not None
        t0 = time.monotonic_ns()
        async def answer(sdp: str) -> str:
            self.server_offers += 1
            return await listener.answer_offer(sdp)

        sig = PttSignal(url, token, self.http, on_offer=answer)
        self.signals.append(sig)
        await sig.connect()
        t1 = time.monotonic_ns()
        answer = await sig.offer(await listener.make_offer())
        await listener.accept_answer(answer)
        t2 = time.monotonic_ns()
        await sig.join(talkgroup, downlink=True)
        t3 = time.monotonic_ns()
        await listener.wait_connected(CONNECT_TIMEOUT_S)
        t4 = time.monotonic_ns()
        # signaling, offer->answer, join->downlink, then->media connected
        return [_ms(t1 - t0), _ms(t2 - t1), _ms(t3 - t2), _ms(t4 - t3)]

    async def _janus_listener(self, listener: LightListener, janus: dict[str, Any],
                              ) -> list[float]:
        t0 = time.monotonic_ns()
        handle = await self.janus.attach()
        t1 = time.monotonic_ns()
        offer = await self.janus.subscribe(handle, janus["room"], janus["feed"])
        sdp = await listener.answer_offer(offer)
        await self.janus.start_subscriber(handle, janus["room"], sdp)
        t2 = time.monotonic_ns()
        await listener.wait_connected(CONNECT_TIMEOUT_S)
        t3 = time.monotonic_ns()
        return [_ms(t1 - t0), _ms(t2 - t1), 0.0, _ms(t3 - t2)]

    async def op_arm(self, run: int, count: int) -> dict[str, Any]:
        self.sink.arm(run, count, len(self.listeners))
        for listener in self.listeners:
            listener.new_run()
        return {"listeners": len(self.listeners)}

    async def op_collect(self) -> dict[str, Any]:
        ls = self.listeners
        return {
            "rx": self.sink.rx,
            "received": np.array([x.received for x in ls], dtype=np.int64),
            "rtcp": sum(x.rtcp for x in ls),
            "untagged": sum(x.untagged for x in ls),
            "misaligned": sum(x.misaligned for x in ls),
            "late": sum(x.late for x in ls),
            "connected": sum(1 for x in ls if x.pc.connectionState == "connected"),
            "server_offers": self.server_offers,
        }

    # -- talker -------------------------------------------------------------------------------
    async def op_talker(self, system: str, url: str, token: str = "", talkgroup: str = "",
                        janus: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.http is not None
        talker = self.talker = Talker()
        t0 = time.monotonic_ns()
        if system == "janus":
            from .janus import JanusClient

            self.janus = JanusClient(url, self.http)
            await self.janus.start()
            assert janus is not None
            handle = await self.janus.attach()
            offer = await talker.make_offer(direction="sendonly")
            feed, answer = await self.janus.publish(handle, janus["room"], offer)
            await talker.accept_answer(answer)
            await talker.wait_connected(CONNECT_TIMEOUT_S)
            return {"feed": feed, "setup_ms": _ms(time.monotonic_ns() - t0)}
        sig = self.talker_signal = PttSignal(url, token, self.http)
        await sig.connect()
        answer = await sig.offer(await talker.make_offer())
        await talker.accept_answer(answer)
        await sig.join(talkgroup)
        await talker.wait_connected(CONNECT_TIMEOUT_S)
        self.talker_talkgroup = talkgroup
        return {"setup_ms": _ms(time.monotonic_ns() - t0)}

    async def op_floor(self) -> dict[str, Any]:
        """Request the floor (our protocol); the time to floor_granted."""
        sig, tg = self.talker_signal, self.talker_talkgroup
        t0 = time.monotonic_ns()
        reply = await sig.request({"type": "floor_request", "talkgroup": tg, "queue": False},
                                  lambda m: m["type"] in ("floor_granted", "floor_denied"))
        if reply["type"] != "floor_granted":
            raise RuntimeError(f"floor not granted: {reply}")
        return {"grant_ms": _ms(reply["_at"] - t0)}

    async def op_send(self, run: int, count: int, interval: float = 0.02) -> dict[str, Any]:
        assert self.talker is not None
        return {"sent_ns": await self.talker.send_run(run, count, interval)}

    async def op_send_start(self, run: int, count: int, interval: float = 0.02,
                            ) -> dict[str, Any]:
        """Start sending in the background (op_send_stop ends it early)."""
        assert self.talker is not None
        self._sending = asyncio.create_task(self.talker.send_run(run, count, interval))
        return {}

    async def op_send_stop(self) -> dict[str, Any]:
        assert self.talker is not None and self._sending is not None
        self.talker.stop_sending = True
        sent = await self._sending
        self._sending = None
        return {"sent_ns": sent}

    async def op_release(self) -> dict[str, Any]:
        await self.talker_signal.request(
            {"type": "floor_release", "talkgroup": self.talker_talkgroup},
            lambda m: m["type"] == "floor_idle")
        return {}

    # -- signaling-only clients (floor benchmark) ---------------------------------------------
    async def op_ws_connect(self, urls: list[str], tokens: list[str], talkgroups: list[str],
                            join: bool = True, concurrency: int = 32) -> dict[str, Any]:
        """Connect WebSocket-only clients (no media) and join each to its talkgroup."""
        assert self.http is not None
        sem = asyncio.Semaphore(concurrency)
        errors: list[str] = []
        clients: list[tuple[PttSignal, str] | None] = [None] * len(tokens)

        def log_taken(msg: dict[str, Any]) -> None:
            if msg.get("type") == "floor_taken":
                self.taken_log.append((str(msg["transmission_id"]), int(msg["_at"])))

        async def one(i: int) -> None:
            async with sem:
                sig = PttSignal(urls[i], tokens[i], self.http, on_message=log_taken)
                try:
                    await sig.connect()
                    if join:
                        await sig.join(talkgroups[i])
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    await sig.close()
                    return
                clients[i] = (sig, talkgroups[i])

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(len(tokens))))
        self.ws_clients += [c for c in clients if c is not None]
        return {"connected": sum(1 for c in clients if c), "failed": len(errors),
                "errors": errors[:5], "wall_s": time.monotonic() - t0}

    async def op_floor_contend(self, duration_s: float, think_s: tuple[float, float],
                               hold_s: tuple[float, float], max_requests: int = 100,
                               ) -> dict[str, Any]:
        """Every client keeps asking for its talkgroup's floor (no queueing): hold it a while
        when granted, think a while after a denial or a release. Bounded by time and count."""
        self.floor_log = []
        self.taken_log = []
        deadline = time.monotonic() + duration_s
        rng = random.Random(os.getpid())

        async def client(sig: PttSignal, tg: str) -> None:
            await asyncio.sleep(rng.uniform(0, think_s[1]))
            for _ in range(max_requests):
                if time.monotonic() >= deadline or sig.closed:
                    return
                t0 = time.monotonic_ns()
                try:
                    reply = await sig.request(
                        {"type": "floor_request", "talkgroup": tg, "queue": False},
                        lambda m: m["type"] in ("floor_granted", "floor_denied")
                        and m.get("talkgroup") == tg, timeout=10)
                except Exception as exc:
                    self.floor_log.append((tg, t0, time.monotonic_ns(), "error:" + str(exc)[:70],
                                           ""))
                    await asyncio.sleep(rng.uniform(*think_s))
                    continue
                self.floor_log.append((tg, t0, int(reply["_at"]), reply["type"],
                                       str(reply.get("transmission_id", ""))))
                if reply["type"] == "floor_granted":
                    await asyncio.sleep(rng.uniform(*hold_s))
                    with contextlib.suppress(Exception):
                        await sig.request({"type": "floor_release", "talkgroup": tg},
                                          lambda m: m["type"] == "floor_idle"
                                          and m.get("talkgroup") == tg, timeout=10)
                await asyncio.sleep(rng.uniform(*think_s))

        await asyncio.gather(*(client(sig, tg) for sig, tg in self.ws_clients))
        return {"requests": self.floor_log, "taken": self.taken_log}

    async def op_floor_hold_all(self, hold: bool = True, concurrency: int = 0,
                                ) -> dict[str, Any]:
        """The first client of each talkgroup requests (or releases) its floor, all at once
        (concurrency 0) or `concurrency` at a time. Per request: (ms, outcome)."""
        firsts: dict[str, PttSignal] = {}
        for sig, tg in self.ws_clients:
            firsts.setdefault(tg, sig)
        kind = "floor_request" if hold else "floor_release"
        want = ("floor_granted", "floor_denied") if hold else ("floor_idle",)
        sem = asyncio.Semaphore(concurrency or len(firsts) or 1)

        async def one(tg: str, sig: PttSignal) -> tuple[float, str]:
            async with sem:
                t0 = time.monotonic_ns()
                try:
                    reply = await sig.request(
                        {"type": kind, "talkgroup": tg, "queue": False},
                        lambda m: m["type"] in want and m.get("talkgroup") == tg, timeout=20)
                    return (reply["_at"] - t0) / 1e6, str(reply["type"])
                except Exception as exc:
                    return (time.monotonic_ns() - t0) / 1e6, "error:" + str(exc)[:70]

        results = await asyncio.gather(*(one(tg, sig) for tg, sig in firsts.items()))
        ok = sum(1 for _ms, r in results if r in ("floor_granted", "floor_idle"))
        return {"talkgroups": len(firsts), "ok": ok, "results": results}

    async def op_close_ws(self) -> dict[str, Any]:
        clients, self.ws_clients = self.ws_clients, []
        await asyncio.gather(*(sig.close() for sig, _tg in clients), return_exceptions=True)
        return {"closed": len(clients)}

    # -- late entry ---------------------------------------------------------------------------
    async def op_late_entry(self, url: str, tokens: list[str], talkgroup: str,
                            mode: str, timeout: float = 10.0) -> dict[str, Any]:
        """Time to a joining listener's first audio packet while a transmission goes on.
        mode "offer": a new client (signed in) sends its offer, then joins once answered;
        measured from sending the offer. mode "join": one listener already connected joins,
        leaves and joins again; measured from sending the join. One result per token/round."""
        from .peer import first_packet_probe

        assert self.http is not None
        results: list[dict[str, float]] = []
        errors: list[str] = []
        if mode == "offer":
            for token in tokens:
                listener = LightListener(0, RunSink())
                sig = PttSignal(url, token, self.http, on_offer=listener.answer_offer)
                try:
                    await sig.connect()
                    t0 = time.time_ns()
                    offer = await listener.make_offer()
                    answer = await sig.offer(offer)
                    await listener.accept_answer(answer)
                    t1 = time.time_ns()
                    first = first_packet_probe(listener)
                    await sig.join(talkgroup)
                    t3 = await asyncio.wait_for(first, timeout)
                    results.append({"total_ms": (t3 - t0) / 1e6, "answer_ms": (t1 - t0) / 1e6})
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                finally:
                    await sig.close()
                    await listener.close()
        else:
            listener = LightListener(0, RunSink())
            sig = PttSignal(url, tokens[0], self.http, on_offer=listener.answer_offer)
            try:
                await sig.connect()
                await listener.accept_answer(await sig.offer(await listener.make_offer()))
                await listener.wait_connected(timeout)
                for _ in range(len(tokens)):
                    first = first_packet_probe(listener)
                    t0 = time.time_ns()
                    await sig.join(talkgroup, downlink=True)
                    t3 = await asyncio.wait_for(first, timeout)
                    results.append({"total_ms": (t3 - t0) / 1e6})
                    await sig.request({"type": "leave", "talkgroup": talkgroup},
                                      lambda m: m["type"] == "left")
                    await asyncio.sleep(0.25)  # packets in flight at the leave are gone
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                await sig.close()
                await listener.close()
        return {"results": results, "errors": errors[:5], "failed": len(errors)}

    # -- misc ---------------------------------------------------------------------------------
    async def op_ping(self) -> dict[str, Any]:
        return {"pid": os.getpid()}

    async def op_close(self) -> dict[str, Any]:
        closers: list[Awaitable[Any]] = [x.close() for x in self.listeners]
        closers += [s.close() for s in self.signals]
        closers += [sig.close() for sig, _tg in self.ws_clients]
        if self.talker is not None:
            closers.append(self.talker.close())
        if self.talker_signal is not None:
            closers.append(self.talker_signal.close())
        if self.janus is not None:
            closers.append(self.janus.close())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*closers, return_exceptions=True), 30)
        return {}


def _agent_main(conn: multiprocessing.connection.Connection, name: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator stops us
    random.seed()
    # The listeners report as a browser's audio receiver does (every 5 s), not at aiortc's
    # one second: the servers under test are charged for a real client's RTCP, whichever
    # server it is (the same driver measures Janus).
    compat_rtcp.install(BROWSER_RTCP_INTERVAL_S)
    asyncio.run(Agent(conn, name).serve())


class AgentProcess:
    """The orchestrator's handle on one generator process."""

    def __init__(self, name: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_agent_main, args=(child, name), name=name, daemon=True)
        self.proc.start()
        child.close()
        self.pid = self.proc.pid
        self.pending = False

    def send(self, op: str, **kw: Any) -> None:
        assert not self.pending, "one command at a time"
        self.conn.send({"op": op, **kw})
        self.pending = True

    def recv(self, timeout: float) -> dict[str, Any]:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"{self.name}: no reply in {timeout:.0f} s")
        self.pending = False
        reply: dict[str, Any] = self.conn.recv()
        if not reply.get("ok"):
            raise RuntimeError(f"{self.name}: {reply.get('error')}\n{reply.get('trace', '')}")
        return reply

    def call(self, op: str, timeout: float = 120.0, **kw: Any) -> dict[str, Any]:
        self.send(op, **kw)
        return self.recv(timeout)

    def stop(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(Exception):
                if not self.pending:
                    self.call("close", timeout=40)
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def call_all(calls: list[tuple[AgentProcess, str, dict[str, Any]]], timeout: float,
             ) -> list[dict[str, Any]]:
    """Send every command first, then gather the replies (they run concurrently)."""
    for agent, op, kw in calls:
        agent.send(op, **kw)
    deadline = time.monotonic() + timeout
    return [agent.recv(max(0.1, deadline - time.monotonic())) for agent, _op, _kw in calls]


Hook = Callable[[], None]
