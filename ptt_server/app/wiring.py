"""Application wiring (aiohttp): create_app(config), typed keys, cleanup contexts.

No module-level state: everything a request needs hangs off the app under an AppKey.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from aiohttp import web

from ptt_server.control import redis_client
from ptt_server.core import maptiles
from ptt_server.core.config import Config
from ptt_server.core.model import EndReason
from ptt_server.identity.auth import (
    LoginLimiter,
    TokenAuthority,
    load_or_create_secret,
    load_or_create_signing_key,
)
from ptt_server.identity.directory import Directory
from ptt_server.media import compat, compat_ice, ice, icemux
from ptt_server.node import health
from ptt_server.node.node import Node
from ptt_server.recording import layout
from ptt_server.service import command_api
from ptt_server.service import keys as K
from ptt_server.service.ws import HEARTBEAT_S, PONG_TIMEOUT_S, handle_ws
from ptt_server.service.ws_liveness import Liveness

# Seals media, alerts and events between nodes (core/sealing.py); shared like the JWT key.
BUS_KEY_FILE = "bus.key"
BUS_KEY_LEN = 32

log = logging.getLogger("ptt.app")

CLEANUP_STEP_S = 5.0  # each cleanup step; the lifecycle's deadline bounds them all together
READY_PING_S = 1.0
READY_STORE_S = 1.0  # the recordings' file system answering (a hung network mount does not)
STORE_MIN_FREE = 2**20  # below this a recording cannot even begin its file

# Strict CSP: our own scripts, styles, media and sockets only; no inline script (a closed
# police network must not need, and an attacker must not get, anything from elsewhere).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


CSP_POLICY: web.AppKey[str] = web.AppKey("csp_policy")


def content_security_policy(config: Config) -> str:
    """CSP for this server: the operator's map tile server (`--map-tiles`) is the one image
    source allowed from elsewhere, and only when one is configured."""
    if config.map_tiles is None:
        return CSP
    source = maptiles.tile_source(config.map_tiles)
    return CSP.replace("img-src 'self' data: blob:", f"img-src 'self' data: blob: {source}")


def client_web_dir(config: Config) -> Path:
    if config.client_web_dir is not None:
        return config.client_web_dir
    return Path(__file__).resolve().parents[2] / "client_web"


async def security_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Security headers on every response (an on_response_prepare hook, not a middleware).

    A middleware only sees what handlers return: an HTTPException (every 401, 403 and 404, the
    router's own 404s), a response a handler prepares itself (a streamed export, the WebSocket
    upgrade) and aiohttp's 500 page never passed through it, and went out without the CSP. This
    hook runs just before any response's headers are sent, however it was made.
    """
    headers = response.headers
    policy = request.app.get(CSP_POLICY, CSP) if isinstance(request, web.Request) else CSP
    headers.setdefault("Content-Security-Policy", policy)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Permissions-Policy", "microphone=(self), geolocation=(self)")
    if request.secure:
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if request.path.startswith("/api/"):
        # Tokens, recordings' metadata, audio and the access log: nothing under /api/ may be
        # kept by a browser or shared cache (cf. RFC 6749 section 5.1, RFC 9111 section 5.2).
        headers["Cache-Control"] = "no-store"
    # aiohttp would announce "Python/3.x aiohttp/3.y": versions only help an attacker pick.
    headers["Server"] = "ptt"


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[K.CONFIG]
    if config.redis_url is None and not config.redis_sentinels:
        raise RuntimeError("no Redis URL: the serve command starts an embedded redis-server")
    client, pubsub = redis_client.connect(redis_client.RedisTarget(
        url=config.redis_url, sentinels=redis_client.parse_sentinels(config.redis_sentinels),
        master=config.redis_master,
    ))
    await client.ping()
    app[K.REDIS] = client
    app[K.REDIS_PUBSUB] = pubsub
    app[K.LOGIN_LIMITER] = LoginLimiter(client)
    yield
    for each in (pubsub, client):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(each.aclose(), CLEANUP_STEP_S)


async def _recorder_ctx(app: web.Application) -> AsyncIterator[None]:
    from ptt_server.recording.recorder import Recorder
    from ptt_server.recording.store import RecordingStore

    config = app[K.CONFIG]
    recorder = Recorder(config.data_dir, config.node_id)
    await recorder.start()
    app[K.RECORDER] = recorder
    app[K.RECORDINGS] = RecordingStore(config.data_dir)
    yield
    try:
        await asyncio.wait_for(recorder.stop(), CLEANUP_STEP_S)
    except TimeoutError:
        log.error("recorder did not stop in time; recordings are recovered at next start")


async def _node_ctx(app: web.Application) -> AsyncIterator[None]:
    compat.log_egress_path()
    node = Node(app[K.CONFIG], app[K.REDIS], app[K.DIRECTORY], app[K.RECORDER],
                pubsub_redis=app[K.REDIS_PUBSUB],
                bus_key=load_or_create_secret(app[K.CONFIG].data_dir, BUS_KEY_FILE, BUS_KEY_LEN))
    await node.start()
    app[K.NODE] = node
    yield
    await node.stop()


async def _close_sessions(app: web.Application) -> None:
    """aiohttp's own shutdown (when not stopped through app/lifecycle.py, e.g. a test
    server): every session ends with reason server_stopped before connections are torn down."""
    await app[K.NODE].close_sessions(EndReason.SERVER_STOPPED, CLEANUP_STEP_S)


async def _stop_liveness(app: web.Application) -> None:
    app[K.LIVENESS].close()


async def healthz(request: web.Request) -> web.Response:
    """Alive (200) as long as this process answers; `degraded` with its reasons when something
    it depends on is failing (node/health.py)."""
    node = request.app[K.NODE]
    await node.health.check()
    return web.json_response({
        "status": node.health.status,
        "problems": [{"alert": p.alert, "detail": p.detail}
                     for p in node.health.problems.values()],
        "node": node.id, "sessions": len(node.endpoints),
        "talkgroups": len(node.routers), "media_dropped": node.media.dropped,
        "egress": compat.egress_path(),
    })


def _store_problem(root: Path) -> str | None:
    """Why a recording could not be written under `root` now, or None. Cheap: no file is
    written (a load balancer asks every few seconds, and the store may be a network mount)."""
    if root.exists() and not root.is_dir():
        return f"{root} is not a directory"
    target = root if root.is_dir() else root.parent  # created with the first recording
    if not target.is_dir():
        return f"{target} does not exist"
    if not os.access(target, os.W_OK | os.X_OK):  # also EROFS: a read-only mount
        return f"{target} is not writable"
    if shutil.disk_usage(target).free < STORE_MIN_FREE:
        return f"{target}: no free space"
    return None


class _StoreCheck:
    """At most one check of the recording store at a time: on a hung mount each would keep a
    thread forever, so while one is still stuck the answer is 'not answering'."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._running: asyncio.Future[str | None] | None = None

    async def problem(self) -> str | None:
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(asyncio.to_thread(_store_problem, self._root))
        try:
            return await asyncio.wait_for(asyncio.shield(self._running), READY_STORE_S)
        except TimeoutError:
            return "the recording store is not answering"
        except OSError as exc:
            return f"the recording store: {exc}"


STORE_CHECK: web.AppKey[_StoreCheck] = web.AppKey("store_check")


async def readyz(request: web.Request) -> web.Response:
    """Ready to take sessions (for a load balancer): not stopping, Redis answering, and a new
    transmission could be recorded (the recordings directory writable, with space).

    `recording_failing` and `disk_low` (node/health.py) are reported as warnings, not 503: the
    first says recent recordings failed (it may have passed), the second is an early warning;
    taking every node that shares a store out of rotation for either would silence the radio,
    which supervisors already hear about through their system alerts.
    """
    node = request.app[K.NODE]
    if node.stopping:
        return web.json_response({"status": "stopping"}, status=503)
    try:
        await asyncio.wait_for(request.app[K.REDIS].ping(), READY_PING_S)
    except Exception:
        return web.json_response({"status": "unavailable", "reason": "redis"}, status=503)
    problem = await request.app[STORE_CHECK].problem()
    if problem is not None:
        return web.json_response({"status": "unavailable", "reason": "recording_store",
                                  "detail": problem}, status=503)
    warnings = [a for a in (health.RECORDING_FAILING, health.DISK_LOW)
                if a in node.health.problems]
    return web.json_response({"status": "ready", "warnings": warnings})


def _media_policy(app: web.Application, turn: ice.TurnRest | None) -> ice.MediaPolicy | None:
    config = app[K.CONFIG]
    ports = ice.PortRange(*config.media_ports) if config.media_ports is not None else None
    server_turn = turn if config.turn_for_server else None
    mux = None
    if config.ice_mux:
        missing = compat_ice.probe()
        if missing:
            log.warning("ICE mux off, a socket per client: aioice lacks %s", ", ".join(missing))
        else:
            mux = app[K.ICE_MUX] = icemux.UdpMux(config.ice_addresses, ports)
    if ports is None and server_turn is None and mux is None:
        return None
    return ice.MediaPolicy(ports=ports, turn=server_turn, mux=mux)


async def _mux_ctx(app: web.Application) -> AsyncIterator[None]:
    """The shared media sockets: bound before the first session can gather, closed after the
    last peer connection (the node's cleanup runs first)."""
    mux = app.get(K.ICE_MUX)
    if mux is not None:
        await mux.open()  # a port range with no free port, or no address: start-up fails
    yield
    if mux is not None:
        mux.close()


def _with_media_policy(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    policy: ice.MediaPolicy | None,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler, run under the app's media policy (media/ice.py): the peer connections its
    sessions create bind in the port range and use TURN as configured."""
    if policy is None:
        return handler

    async def wrapped(request: web.Request) -> web.StreamResponse:
        with ice.media_policy(policy):
            return await handler(request)

    return wrapped


def create_app(config: Config) -> web.Application:
    from ptt_server.service import ice_api, integration, metrics, openapi, replay_api
    from ptt_server.service.http_auth import add_routes as add_auth_routes
    from ptt_server.service.recording_api import add_routes as add_recording_routes

    app = web.Application(client_max_size=1024 * 1024)
    app.on_response_prepare.append(security_headers)
    app[K.CONFIG] = config
    app[CSP_POLICY] = content_security_policy(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    app[K.DIRECTORY] = Directory(config.data_dir / "directory.sqlite3")
    app[K.TOKENS] = TokenAuthority(
        load_or_create_signing_key(config.data_dir), issuer=config.jwt_issuer,
        audience=config.jwt_audience, external=config.external_issuer,
    )
    # Order matters: the node closes sessions (finishing recordings) before the recorder stops.
    app.cleanup_ctx.extend([_mux_ctx, _redis_ctx, _recorder_ctx, _node_ctx])
    app.on_shutdown.append(_close_sessions)
    app[STORE_CHECK] = _StoreCheck(layout.recordings_root(config.data_dir))
    ice_api.add_routes(app)  # before /ws: the server's own ICE may use the same TURN
    policy = _media_policy(app, app[ice_api.TURN])
    app[K.LIVENESS] = Liveness(HEARTBEAT_S, PONG_TIMEOUT_S)  # one timer for all sockets
    app.on_cleanup.append(_stop_liveness)
    app.router.add_get("/ws", _with_media_policy(handle_ws, policy))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    metrics.install(app)  # after the node's context: its cleanup runs first
    openapi.add_routes(app)
    add_auth_routes(app)
    add_recording_routes(app)
    replay_api.add_routes(app)  # members replay their talkgroups' recent transmissions
    integration.add_routes(app)  # incidents, alerts, statuses; message delivery, webhooks
    command_api.add_routes(app, client_web_dir(config).parent)  # before the pages' "/"
    static = client_web_dir(config)
    if (static / "index.html").exists():
        _add_client_routes(app, static)
    return app


def _add_client_routes(app: web.Application, static: Path) -> None:
    # The allow-list, compression and cache headers live in app/static_files.py.
    from ptt_server.app import static_files

    static_files.add_client_routes(app, static)
