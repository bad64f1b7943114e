"""/metrics: the node in Prometheus's exposition format (prometheus-client).

One `CollectorRegistry` per app, so several apps in a process (tests, several nodes) never mix
their series. Almost everything is read at scrape time from what the node keeps anyway
(sessions, routers and listeners, transmissions, drops, the recorder's failures, health), so
the media path pays nothing for it; what only exists as an event is counted by
node/metrics.py. Every series carries the node's id as the label `node`: with several workers
on one machine each worker is its own target (`--metrics-listen`, one port each).

Counters that live on objects which come and go (a router's forwarded packets, a listener's
drops, a transmission's policed packets) are summed over the objects alive now plus, for those
gone since the last scrape, their last value seen (`_Retiring`): monotonic, as Prometheus
counters must be, at the price of what a vanished object counted after the previous scrape.

Protected: on the main listener only with the bearer token (`--metrics-token`,
RFC 6750), and on an address of its own (`--metrics-listen HOST:PORT`) meant for a private
network; a token, when configured, is required on both.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import logging
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ptt_server.core import protocol as p
from ptt_server.core.errors import Code, SignalingError
from ptt_server.media import compat
from ptt_server.node import health
from ptt_server.node import metrics as node_metrics
from ptt_server.node.node import Node
from ptt_server.recording import layout
from ptt_server.service.keys import CONFIG, ICE_MUX, NODE, RECORDER, REDIS
from ptt_server.signaling.session import Session

log = logging.getLogger("ptt.metrics")

PROBE_S = 1.0  # Redis round trip, measured this often on the commands' own pool
PROBE_TIMEOUT_S = 1.0
DISK_TIMEOUT_S = 1.0  # statvfs of a hung network file system must not hold a scrape
LISTEN_TRIES = 64  # --metrics-listen with N workers: each takes the first free of PORT+0..63
REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
ALERTS = (health.REDIS_UNREACHABLE, health.RECORDING_FAILING, health.DISK_LOW)


class _Retiring:
    """A monotonic total of a counter kept on short-lived objects (see the module doc)."""

    def __init__(self) -> None:
        self._retired = 0
        self._last: dict[int, tuple[object, int]] = {}  # id -> (the object, its last value)

    def total(self, alive: Iterable[tuple[object, int]]) -> int:
        now: dict[int, tuple[object, int]] = {}
        for obj, value in alive:
            now[id(obj)] = (obj, value)  # the object is held until gone: its id stays unique
        for key, (_obj, value) in self._last.items():
            if key not in now:
                self._retired += value
        self._last = now
        return self._retired + sum(value for _obj, value in now.values())


class _LedgerTap:
    """Counts the recorder's ledger appends by type and the bytes of finished recordings
    (the `file_size` of each `transmission` entry). Appends run on the recorder's writer
    thread and in worker threads: hence the lock."""

    def __init__(self) -> None:
        self.appends: dict[str, int] = {}
        self.recording_bytes = 0
        self._lock = threading.Lock()
        self._ledger: Any = None
        self._original: Any = None

    def install(self, ledger: Any) -> None:
        original = ledger.append

        def append(type: str, fields: Any) -> Any:
            entry = original(type, fields)
            size = fields.get("file_size") if type == "transmission" else None
            with self._lock:
                self.appends[type] = self.appends.get(type, 0) + 1
                if isinstance(size, int):
                    self.recording_bytes += size
            return entry

        self._ledger, self._original = ledger, original
        ledger.append = append

    def remove(self) -> None:
        if self._ledger is not None:
            self._ledger.append = self._original
            self._ledger = None

    def snapshot(self) -> tuple[dict[str, int], int]:
        with self._lock:
            return dict(self.appends), self.recording_bytes


class AppMetrics:
    """The app's registry and what its collector reads besides the node."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.registry = CollectorRegistry()
        self.redis_rtt = node_metrics.Histogram(REDIS_BUCKETS)
        self.redis_errors: dict[str, int] = {}
        self.redis_up = 0
        self.disk: tuple[int, int] | None = None  # (free, total) bytes at the last scrape
        self.ledger = _LedgerTap()
        self.listen_port: int | None = None  # the port --metrics-listen got
        self._retiring: dict[str, _Retiring] = {}
        self.registry.register(_NodeCollector(self))
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=self.registry)

    def retiring(self, name: str, alive: Iterable[tuple[object, int]]) -> int:
        return self._retiring.setdefault(name, _Retiring()).total(alive)

    async def probe_redis(self) -> None:
        redis = self.app[REDIS]
        while True:
            started = time.perf_counter()
            try:
                # asyncio.timeout, not wait_for: in a loop, Python 3.11's wait_for can
                # swallow a cancellation that arrives as the ping completes.
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    await redis.ping()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                name = type(exc).__name__
                self.redis_errors[name] = self.redis_errors.get(name, 0) + 1
                self.redis_up = 0
            else:
                self.redis_rtt.observe(time.perf_counter() - started)
                self.redis_up = 1
            await asyncio.sleep(PROBE_S)

    async def refresh_disk(self) -> None:
        root = layout.recordings_root(self.app[CONFIG].data_dir)
        if not root.is_dir():
            root = self.app[CONFIG].data_dir
        try:
            usage = await asyncio.wait_for(asyncio.to_thread(shutil.disk_usage, root),
                                           DISK_TIMEOUT_S)
        except (OSError, TimeoutError):
            self.disk = None
        else:
            self.disk = (usage.free, usage.total)

    def exposition(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


METRICS: web.AppKey[AppMetrics] = web.AppKey("metrics")


class _NodeCollector(Collector):
    def __init__(self, metrics: AppMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        app = self._m.app
        node = app.get(NODE)
        if node is None:
            return
        yield from _families(self._m, node, node_metrics.of(node))


def _families(m: AppMetrics, node: Node, stats: node_metrics.NodeStats | None) -> Iterator[Metric]:
    nid = node.id

    def gauge(name: str, doc: str, value: float, **labels: str) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=["node", *labels])
        family.add_metric([nid, *labels.values()], value)
        return family

    def counter(name: str, doc: str, labels: tuple[str, ...],
                values: Iterable[tuple[tuple[str, ...], float]]) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=["node", *labels])
        for label_values, value in values:
            family.add_metric([nid, *label_values], value)
        return family

    def histogram(name: str, doc: str, labels: tuple[str, ...],
                  hists: Iterable[tuple[tuple[str, ...], node_metrics.Histogram]]) -> Metric:
        family = HistogramMetricFamily(name, doc, labels=["node", *labels])
        for label_values, hist in hists:
            family.add_metric([nid, *label_values], hist.cumulative(), hist.sum)
        return family

    routers = list(node.routers.values())
    tracks = {id(t): t for r in routers for t in r.listeners.values()}.values()
    yield gauge("ptt_sessions", "Signed-in sessions on this node (detached ones included).",
                len(node.endpoints))
    listeners = GaugeMetricFamily("ptt_listeners", "Local listeners per talkgroup.",
                                  labels=["node", "talkgroup"])
    for router in routers:
        listeners.add_metric([nid, router.talkgroup], len(router.listeners))
    yield listeners
    yield gauge("ptt_transmissions_active", "Transmissions this node's talkers are making.",
                len(node.transmissions))
    egress = GaugeMetricFamily("ptt_media_egress_path", "1 for the egress path in use "
                               "(direct RTP writer, or aiortc's sender).", labels=["node", "path"])
    for path in ("direct", "public"):
        egress.add_metric([nid, path], 1 if compat.egress_path() == path else 0)
    yield egress
    yield counter("ptt_packets_forwarded_total", "Packets a talkgroup router fanned out.", (),
                  [((), m.retiring("forwarded", ((r, r.forwarded) for r in routers)))])
    yield counter("ptt_listener_packets_total", "Copies sent to listeners.", (), [((), m.retiring(
        "sent", ((t, t.sent + (t.direct.sent if t.direct else 0)) for t in tracks)))])
    drops = [
        (("no_floor",), node.uplink_dropped),
        (("red_malformed",), node.red_check.malformed),  # RFC 2198 payloads refused
        (("gate_closed",), m.retiring("rejected", ((r, r.rejected) for r in routers))),
        (("policed",), m.retiring("policed", ((tx, tx.policer.dropped)
                                              for tx in node.transmissions))),
        (("media_bus_backlog",), node.media.dropped),
        (("listener_queue",), m.retiring("listener", ((t, t.dropped) for t in tracks))),
        (("egress",), m.retiring("egress", ((t, t.direct.dropped if t.direct else 0)
                                            for t in tracks))),
    ]
    yield counter("ptt_packets_dropped_total", "Packets dropped, by reason.", ("reason",), drops)
    recorder = m.app.get(RECORDER)
    if recorder is not None:
        yield counter("ptt_recording_failures_total", "Recordings that failed (I/O).", (),
                      [((), recorder.failures)])
    appends, recorded = m.ledger.snapshot()
    yield counter("ptt_recording_bytes_total", "Bytes of finished recordings' files.", (),
                  [((), recorded)])
    yield counter("ptt_ledger_appends_total", "Audit ledger entries appended, by type.",
                  ("type",), [((k,), v) for k, v in sorted(appends.items())])
    if m.disk is not None:
        yield gauge("ptt_recording_disk_free_bytes", "Free space for recordings.", m.disk[0])
        yield gauge("ptt_recording_disk_total_bytes", "Size of the recordings' file system.",
                    m.disk[1])
    yield gauge("ptt_recording_disk_min_free_bytes", "Free space below which the node reports "
                "disk_low.", m.app[CONFIG].disk_min_free_mb * 2**20)
    problems = GaugeMetricFamily("ptt_health_problem", "1 while the node reports this alert.",
                                 labels=["node", "alert"])
    for alert in ALERTS:
        problems.add_metric([nid, alert], 1 if alert in node.health.problems else 0)
    yield problems
    yield gauge("ptt_redis_up", "1 when the last Redis PING was answered.", m.redis_up)
    yield histogram("ptt_redis_rtt_seconds", "Redis PING round-trip time.", (),
                    [((), m.redis_rtt)])
    yield counter("ptt_redis_errors_total", "Redis PINGs failed, by error.", ("error",),
                  [((k,), v) for k, v in sorted(m.redis_errors.items())])
    mux = m.app.get(ICE_MUX)
    if mux is not None:
        ms = mux.stats()
        yield gauge("ptt_ice_mux_connections", "Client ICE connections on the shared media "
                    "sockets.", ms.connections)
        yield counter("ptt_ice_mux_unknown_datagrams_total", "Datagrams on the shared media "
                      "sockets that no connection could claim (dropped).", (),
                      [((), ms.unknown)])
        yield counter("ptt_ice_consent_expired_total", "Client ICE connections closed because "
                      "no consent check came from the client for 30 s (RFC 7675).", (),
                      [((), ms.consent_expired)])
    if stats is None:
        return
    yield counter("ptt_uplink_packets_total", "Packets received from talkers.", (),
                  [((), stats.uplink_packets)])
    yield histogram("ptt_fanout_seconds", "Time one uplink packet takes through the node.", (),
                    [((), stats.fanout)])
    yield histogram("ptt_floor_access_seconds", "Floor request to answer, by outcome.",
                    ("outcome",), [((k,), h) for k, h in sorted(stats.floor_access.items())])
    yield counter("ptt_floor_events_total", "Floor outcomes for this node's sessions.",
                  ("event", "reason"), sorted(stats.floor_events.items()))
    yield counter("ptt_ws_messages_total", "Client messages, by type.", ("type",),
                  [((k,), v) for k, v in sorted(stats.ws_messages.items())])
    yield counter("ptt_ws_errors_total", "Errors answered to client messages, by code.",
                  ("code",), [((k,), v) for k, v in sorted(stats.ws_errors.items())])


# -- the endpoint ---------------------------------------------------------------------------
def _token_ok(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Compared in constant time, as bytes (compare_digest refuses non-ASCII str).
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode())


def metrics_handler(
    metrics_of: Callable[[web.Request], AppMetrics],
) -> Callable[[web.Request], Any]:
    async def handle_metrics(request: web.Request) -> web.Response:
        m = metrics_of(request)
        token = m.app[CONFIG].metrics_token
        if token is not None and not _token_ok(request, token):
            # RFC 6750 section 3: say which scheme is wanted, not why it failed.
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        await m.refresh_disk()
        body, content_type = m.exposition(request.headers.get("Accept", ""))
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    return handle_metrics


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on the first free port of PORT, PORT+1, ... (one per worker
    process: each is a scrape target of its own); port 0: any free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for offset in range(LISTEN_TRIES if port else 1):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port + offset if port else 0))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                continue
            raise
        sock.listen(64)
        sock.setblocking(False)
        return sock
    raise OSError(errno.EADDRINUSE, f"--metrics-listen: ports {port}..{port + LISTEN_TRIES - 1} "
                  "are all in use")


async def _listen(app: web.Application, m: AppMetrics) -> web.AppRunner | None:
    """Serve /metrics on --metrics-listen, an address of its own (a private network)."""
    listen = app[CONFIG].metrics_listen
    if listen is None:
        return None
    sock = _bind(*listen)
    side = web.Application()
    side.on_response_prepare.append(_no_store)
    side.router.add_get("/metrics", metrics_handler(lambda _request: m))
    runner = web.AppRunner(side, access_log=None, handle_signals=False)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    m.listen_port = sock.getsockname()[1]
    log.info("metrics listening", extra={"fields": {"host": listen[0], "port": m.listen_port}})
    return runner


async def _no_store(request: web.BaseRequest, response: web.StreamResponse) -> None:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Server"] = "ptt"


def enabled(app: web.Application) -> bool:
    config = app[CONFIG]
    return config.metrics_token is not None or config.metrics_listen is not None


async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context, after the node's: the node's event counts, the Redis probe, the
    ledger tap and the separate listener live exactly as long as the node."""
    if not enabled(app):
        yield
        return
    m = app[METRICS]
    node = app[NODE]
    node_metrics.attach(node)
    recorder = app.get(RECORDER)
    if recorder is not None:
        m.ledger.install(recorder.ledger)
    probe = asyncio.create_task(m.probe_redis(), name="metrics-redis-probe")
    runner = await _listen(app, m)
    try:
        yield
    finally:
        probe.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(probe, PROBE_TIMEOUT_S)
        if runner is not None:
            await runner.cleanup()
        m.ledger.remove()
        node_metrics.detach(node)


def install(app: web.Application) -> None:
    """Register the registry, the context and (with a token) the route on the main app."""
    app[METRICS] = AppMetrics(app)
    app.cleanup_ctx.append(metrics_ctx)
    if app[CONFIG].metrics_token is not None:
        app.router.add_get("/metrics", metrics_handler(lambda request: request.app[METRICS]))


# -- WebSocket accounting (service/ws.py) ----------------------------------------------------
async def handled(session: Session, msg: p.ClientMessage) -> None:
    """`session.handle(msg)`, counting the message by type and the error it is answered with
    (a SignalingError's code, or `internal`) by code; errors propagate unchanged."""
    stats = node_metrics.of(session.node)
    if stats is None:
        await session.handle(msg)
        return
    stats.ws_message(msg.type)
    try:
        await session.handle(msg)
    except SignalingError as exc:
        stats.ws_error(exc.code)
        raise
    except Exception:
        stats.ws_error(Code.INTERNAL)
        raise
