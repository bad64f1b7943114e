"""`ptt-server serve`: data directory, TLS, embedded Redis, worker processes, clean shutdown.

One asyncio (uvloop) process per core: the workers share the listening port (SO_REUSEPORT), the
data directory and one Redis, which keeps floor and presence consistent between them. A WebSocket
and its peer connection always live in the same worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import multiprocessing
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

from ptt_server.app import httplimits
from ptt_server.app.logs import setup_logging, stop_logging
from ptt_server.core.config import Config
from ptt_server.service import ws_relay

log = logging.getLogger("ptt.serve")

REDIS_STOP_S = 5.0  # redis-server saves its data on SIGTERM; then it is killed
WORKER_GRACE_S = 2.0


def lan_addresses() -> list[str]:
    """The machine's non-loopback IPv4 addresses (for the URLs printed to the operator).
    ifaddr is already installed as a dependency of aioice."""
    import ifaddr

    found: list[str] = []
    with contextlib.suppress(OSError):
        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                addr = ip.ip
                if isinstance(addr, str) and not addr.startswith("127.") and addr not in found:
                    found.append(addr)
    return found


def bootstrap_admin(data_dir: Path) -> str | None:
    """On a brand-new directory, create user 'admin' with a random password (shown once),
    so the operator can sign in; nothing ships with a default password."""
    from ptt_server.core.model import Role
    from ptt_server.identity.directory import Directory

    directory = Directory(data_dir / "directory.sqlite3")
    if directory.list_users():
        return None
    password = secrets.token_urlsafe(12)
    directory.add_user("admin", Role.ADMIN, [], password, alias="Administrator")
    return password


def prepare(config: Config) -> Config:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    if not config.http and (config.tls_cert is None or config.tls_key is None):
        from ptt_server.app.tls import ensure_dev_certificate

        cert, key = ensure_dev_certificate(config.data_dir)
        config = dataclasses.replace(config, tls_cert=cert, tls_key=key)
    return config


class GcPauses:
    """Collections and their pauses by generation (PTT_GC_STATS=1: logged at shutdown)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total_s = [0.0, 0.0, 0.0]
        self.max_s = [0.0, 0.0, 0.0]
        self._t0 = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        gen, spent = info["generation"], time.perf_counter() - self._t0
        self.count[gen] += 1
        self.total_s[gen] += spent
        self.max_s[gen] = max(self.max_s[gen], spent)

    def log(self) -> None:
        log.info("gc pauses", extra={"fields": {
            f"gen{g}": {"count": self.count[g], "total_ms": round(1e3 * self.total_s[g], 1),
                        "max_ms": round(1e3 * self.max_s[g], 2)} for g in range(3)}})


def tune_gc(mode: str) -> None:
    """A quieter event loop: fewer full garbage collections, none over start-up objects.

    Why: a full collection walks every tracked object, and with hundreds of listeners that is
    a pause of 0.2-0.4 s in the middle of a fan-out. Measured (PTT_GC_STATS=1) with 500
    listeners on a pinned core, two transmissions per run: CPython's defaults made 5 full
    collections per run, 0.68-0.98 s in all, the longest 0.19-0.42 s; freezing the start-up
    objects alone still 4-5 (0.42-0.82 s, longest 0.15-0.32 s); "quiet" none, with the same
    CPU per listener-packet and memory. So: objects that live as long as the process
    (modules, the app) move to the permanent generation before the first client, and a full
    collection waits for 1000 collections of the middle generation instead of 10 (young
    cycles are still collected as often as before; old ones wait longer, minutes at this
    rate). Nothing a client brings is frozen. PTT_GC=default keeps CPython's behaviour,
    PTT_GC=freeze freezes only.
    """
    if mode == "default":
        return
    gc.collect()
    gc.freeze()
    if mode == "quiet":
        gc.set_threshold(700, 10, 1000)


def _rtcp_interval() -> float:
    """PTT_RTCP_INTERVAL: the mean seconds between a connection's RTCP reports, sender and
    receiver (1-60; default 5, RFC 3550 section 6.2; 1 is aiortc's own). Checked before any
    worker starts."""
    raw = os.environ.get("PTT_RTCP_INTERVAL", "5")
    try:
        interval = float(raw)
    except ValueError:
        interval = float("nan")
    if not 1.0 <= interval <= 60.0:
        raise SystemExit(f"PTT_RTCP_INTERVAL={raw!r}: seconds between RTCP reports, "
                         "1-60")
    return interval


def _install_rtcp_interval() -> None:
    from ptt_server.media import compat_rtcp

    installed = compat_rtcp.install(_rtcp_interval())
    log.info("rtcp reports", extra={"fields": {
        "interval_s": compat_rtcp.installed_interval() or 1.0, "patched": installed}})


def _install_shared_dtls() -> None:
    from ptt_server.media import compat_dtls

    shared = compat_dtls.install()  # one DTLS certificate per worker, rotated daily
    log.info("dtls certificate", extra={"fields": {
        "per": "worker" if shared else "connection", "rotate_s": compat_dtls.ROTATE_S}})


def _ssl_context(config: Config) -> object | None:
    if config.http:
        return None
    from ptt_server.app.tls import ssl_context

    assert config.tls_cert is not None and config.tls_key is not None
    return ssl_context(config.tls_cert, config.tls_key)


async def _serve(config: Config, reuse_port: bool) -> int:
    from ptt_server.app import lifecycle
    from ptt_server.app.wiring import create_app

    app = create_app(config)
    # aiohttp's own grace for connections still open after our sessions closed: short, the
    # lifecycle's deadline is what bounds the whole.
    # HTTP limits (app/httplimits.py): request sizes, keep-alive; the site adds a header
    # deadline and a connection cap against slowloris and connection floods.
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0,
                           **httplimits.HANDLER_ARGS)
    stopper = lifecycle.Stopper()
    stopper.install(asyncio.get_running_loop())
    await runner.setup()
    site = httplimits.GuardedSite(
        runner, config.host, config.port, ssl_context=_ssl_context(config),  # type: ignore[arg-type]
        reuse_port=reuse_port or None,
    )
    await site.start()
    await ws_relay.start_site(runner, config)  # several workers: resumes between them
    from ptt_server.media import compat_stun

    compat_stun.install()  # ICE consent responses without a string parse each (idle cost)
    _install_rtcp_interval()  # reports every 5 s (RFC 3550 6.2), not each second
    _install_shared_dtls()
    tune_gc(os.environ.get("PTT_GC", "quiet"))
    pauses = GcPauses() if os.environ.get("PTT_GC_STATS") == "1" else None
    log.info("listening", extra={"fields": {
        "host": config.host, "port": config.port, "scheme": config.scheme}})
    await stopper.requested.wait()
    ok = await lifecycle.shutdown(app, runner, config.shutdown_timeout_s)
    if pauses is not None:
        pauses.log()
    return 0 if ok else 1


def _worker(config: Config, reuse_port: bool) -> int:
    setup_logging(config.log_format, node_id=config.node_id)
    return int(uvloop.run(_serve(config, reuse_port)))


def _worker_process(config: Config) -> None:
    """A worker of several (spawned): its exit status is the shutdown's."""
    code = _worker(config, reuse_port=True)
    stop_logging(1.0)
    # Bounded exit: threads still running in the default executor (a ledger append, a
    # password hash) would otherwise be joined without limit at interpreter exit.
    os._exit(code)


def _check_mux_ports(config: Config, workers: int) -> None:
    """With the ICE mux each worker binds one port of --media-ports per announced address; a
    range that cannot hold them all would leave a worker failing to start again and again."""
    if not config.ice_mux or config.media_ports is None:
        return
    low, high = config.media_ports
    needed = workers * max(1, len(config.ice_addresses))
    if high - low + 1 < needed:
        raise SystemExit(f"--media-ports {low}-{high}: the ICE mux needs {needed} ports here "
                         f"(one per worker and --ice-address), e.g. {low}-{low + needed - 1}")


def run(config: Config, workers: int | None = None) -> int:
    setup_logging(config.log_format, node_id=config.node_id)
    _rtcp_interval()  # a bad value stops here, not in every worker again and again
    count = max(1, workers or os.cpu_count() or 1)
    _check_mux_ports(config, count)
    config = prepare(config)
    embedded = None
    if config.redis_url is None and not config.redis_sentinels:
        from ptt_server.app.redis_embed import EmbeddedRedis

        embedded = EmbeddedRedis(config.data_dir / "redis", secure=True)
        embedded.start()
        config = dataclasses.replace(config, redis_url=embedded.url)
        log.info("embedded redis-server started", extra={"fields": {"url": embedded.public_url}})
    password = bootstrap_admin(config.data_dir)
    _announce(config, password, count)
    code = 1
    try:
        if count == 1:
            code = _worker(config, reuse_port=False)
        else:
            code = _supervise(config, count)
    finally:
        if embedded is not None:
            embedded.stop(timeout_s=REDIS_STOP_S)
            log.info("embedded redis-server stopped")
    return code


def _supervise(config: Config, count: int) -> int:
    """Run `count` worker processes; SIGTERM/SIGINT is passed on to them, a second one kills
    them. A worker that dies on its own is logged and started again (a radio service keeps its
    capacity), unless the server is stopping."""
    ctx = multiprocessing.get_context("spawn")
    sockets = ws_relay.socket_paths(config.data_dir, count)
    configs = [dataclasses.replace(config, node_id=f"{config.node_id}-w{i}", worker_index=i,
                                   worker_sockets=sockets) for i in range(count)]
    procs: list[Any] = [None] * count
    signals = 0

    def start(i: int) -> None:
        proc = ctx.Process(target=_worker_process, args=(configs[i],), name=f"ptt-worker-{i}")
        proc.start()
        procs[i] = proc

    def forward(signum: int, _frame: object) -> None:
        nonlocal signals
        signals += 1
        for proc in procs:
            if proc is not None and proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL if signals > 1 else signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for i in range(count):
        start(i)
    while not signals:
        for i, proc in enumerate(procs):
            proc.join(timeout=0.2 / count)
            if not signals and proc.exitcode is not None:
                log.error("worker exited; starting it again", extra={"fields": {
                    "worker": i, "exitcode": proc.exitcode}})
                start(i)
    deadline = time.monotonic() + config.shutdown_timeout_s + WORKER_GRACE_S
    code = 0
    for proc in procs:
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
        if proc.exitcode is None:
            proc.kill()
            proc.join(timeout=WORKER_GRACE_S)
            code = 1
        elif proc.exitcode != 0:
            code = 1
    return code


def _announce(config: Config, password: str | None, workers: int) -> None:
    host = config.host if config.host not in ("0.0.0.0", "::") else "localhost"
    urls = [f"{config.scheme}://{host}:{config.port}/"]
    if config.host in ("0.0.0.0", "::"):
        urls += [f"{config.scheme}://{a}:{config.port}/" for a in lan_addresses()]
    lines = [
        f"PTT server: {workers} worker(s), data in {config.data_dir}",
        "Open: " + "  ".join(urls),
    ]
    if not config.http:
        lines.append(
            f"Phones must trust the development CA: {config.data_dir / 'tls' / 'ca.crt'} "
            "(see certs/README.md)"
        )
    if password is not None:
        lines.append(f"First run: signed-in user 'admin' created with password: {password}")
        lines.append("  (shown once; change it with: ptt-server user passwd admin --password ...)")
    lines.append(
        "Add people with: ptt-server talkgroup add TG1 && "
        "ptt-server user add NAME --role officer --talkgroups TG1 --password PW"
    )
    print("\n".join(lines), file=sys.stderr, flush=True)
