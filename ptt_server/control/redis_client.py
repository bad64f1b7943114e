"""Redis clients for one node: commands, and a separate connection for pub/sub.

Two pools on purpose: commands get short socket timeouts, so a Redis that is gone fails a
request in about a second (the client gets `unavailable`, a retryable code) instead of hanging
it; the pub/sub connection waits for messages without a read timeout (an idle channel is not a
failure) and redis-py re-subscribes it when it reconnects.

With Sentinel (a primary, replicas and sentinels; no single Redis), both clients ask the
sentinels for the current primary on every new connection, so after a failover they follow the
new primary by themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo

MAX_CONNECTIONS = 64  # per process; pub/sub holds one more
POOL_WAIT_S = 10.0  # a burst of floor requests waits for a free connection this long
SOCKET_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 1.0
RETRIES = 1  # per command, on a fresh connection
# What each new connection tells Redis it is (CLIENT SETINFO), made once. Without it redis-py
# builds one per connection and looks its own version up in the installed packages' metadata
# each time: measured, the largest cost of a new connection on the event loop (a burst of
# floor requests grows the pool by dozens of connections at once).
DRIVER = DriverInfo()


def _retry() -> Retry:
    """One retry, at once: enough for a pooled connection that died with the Redis it was
    connected to (restarted, or failed over) to be replaced. redis-py's own default (10
    retries, backoff up to 1 s, each attempt with its own timeout; and again inside each
    Sentinel connect) made a request wait 10 s after a failover, and could make one wait
    20 s against a Redis that accepts connections and answers nothing."""
    return Retry(NoBackoff(), RETRIES)


@dataclass(frozen=True)
class RedisTarget:
    url: str | None = None  # redis://[user:password@]host:port/db or rediss:// for TLS
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = "ptt"
    password: str | None = None  # for the data nodes behind sentinels


def parse_sentinels(values: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """HOST:PORT strings (IPv6 as [addr]:port) -> pairs; ValueError with the bad one named."""
    out: list[tuple[str, int]] = []
    for value in values:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"not HOST:PORT: {value!r}")
        out.append((host.strip("[]"), int(port)))
    return tuple(out)


def connect(target: RedisTarget) -> tuple[aioredis.Redis, aioredis.Redis]:
    """(commands client, pub/sub client). Closing each client closes its pool."""
    if target.sentinels:
        sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
            list(target.sentinels),
            # A sentinel that is down is skipped at once for the next one, not retried.
            sentinel_kwargs={"socket_timeout": SOCKET_TIMEOUT_S,
                             "socket_connect_timeout": CONNECT_TIMEOUT_S,
                             "retry": Retry(NoBackoff(), 0)},
        )
        commands = sentinel.master_for(
            target.master, socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S, password=target.password,
            max_connections=MAX_CONNECTIONS, retry=_retry(), driver_info=DRIVER,
        )
        pubsub = sentinel.master_for(
            target.master, socket_connect_timeout=CONNECT_TIMEOUT_S, password=target.password,
            max_connections=4, retry=_retry(), driver_info=DRIVER,
        )
        return commands, pubsub
    if target.url is None:
        raise ValueError("no Redis URL and no sentinels")
    # A blocking pool: a burst of floor requests waits for a free connection instead of
    # failing when the pool is exhausted (redis-py's default pool raises at once).
    pool = aioredis.BlockingConnectionPool.from_url(
        target.url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT_S,
        socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S,
        retry=_retry(), driver_info=DRIVER,
    )
    sub_pool = aioredis.ConnectionPool.from_url(
        target.url, max_connections=4, socket_connect_timeout=CONNECT_TIMEOUT_S,
        retry=_retry(), driver_info=DRIVER,
    )
    return aioredis.Redis.from_pool(pool), aioredis.Redis.from_pool(sub_pool)
