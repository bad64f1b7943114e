"""Typed application keys: the one place where the app's shared services are named."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ptt_server.core.config import Config
    from ptt_server.identity.auth import LoginLimiter, TokenAuthority
    from ptt_server.identity.directory import Directory
    from ptt_server.media.icemux import UdpMux
    from ptt_server.node.node import Node
    from ptt_server.recording.recorder import Recorder
    from ptt_server.recording.store import RecordingStore
    from ptt_server.service.ws_liveness import Liveness

CONFIG: web.AppKey[Config] = web.AppKey("config")
REDIS: web.AppKey[aioredis.Redis] = web.AppKey("redis")
REDIS_PUBSUB: web.AppKey[aioredis.Redis] = web.AppKey("redis_pubsub")
DIRECTORY: web.AppKey[Directory] = web.AppKey("directory")
TOKENS: web.AppKey[TokenAuthority] = web.AppKey("tokens")
LOGIN_LIMITER: web.AppKey[LoginLimiter] = web.AppKey("login_limiter")
NODE: web.AppKey[Node] = web.AppKey("node")
RECORDER: web.AppKey[Recorder] = web.AppKey("recorder")
RECORDINGS: web.AppKey[RecordingStore] = web.AppKey("recordings")
ICE_MUX: web.AppKey[UdpMux] = web.AppKey("ice_mux")
LIVENESS: web.AppKey[Liveness] = web.AppKey("ws_liveness")
