"""Typed application keys: the one place where the app's shared services are named."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from .auth import LoginLimiter, TokenAuthority
    from .config import Config
    from .directory import Directory
    from .node import Node
    from .recording.recorder import Recorder
    from .recording.store import RecordingStore

CONFIG: web.AppKey[Config] = web.AppKey("config")
REDIS: web.AppKey[aioredis.Redis] = web.AppKey("redis")
DIRECTORY: web.AppKey[Directory] = web.AppKey("directory")
TOKENS: web.AppKey[TokenAuthority] = web.AppKey("tokens")
LOGIN_LIMITER: web.AppKey[LoginLimiter] = web.AppKey("login_limiter")
NODE: web.AppKey[Node] = web.AppKey("node")
RECORDER: web.AppKey[Recorder] = web.AppKey("recorder")
RECORDINGS: web.AppKey[RecordingStore] = web.AppKey("recordings")
