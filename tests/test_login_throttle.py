"""Login throttling that holds: counted atomically before the password is checked, per account
and per address, with a progressive delay instead of a lock-out; and a login that only takes
JSON (no cross-site form can post one). Real Redis, the real app, real scrypt."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from ptt_server.core.model import User
from ptt_server.identity.auth import AuthError, LoginLimiter
from ptt_server.identity.directory import Directory
from ptt_server.service.keys import DIRECTORY

from .conftest import RunningServer


class Counted:
    """Wraps Directory.verify_password: how many passwords were actually hashed."""

    def __init__(self, directory: Directory) -> None:
        self.inner = directory.verify_password
        self.calls = 0
        self._lock = threading.Lock()  # called from executor threads

    def __call__(self, name: str, password: str) -> User | None:
        with self._lock:
            self.calls += 1
        return self.inner(name, password)


@pytest.fixture
def scrypt_calls(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> Counted:
    directory = server.app[DIRECTORY]  # type: ignore[index]
    counted = Counted(directory)
    monkeypatch.setattr(directory, "verify_password", counted)
    return counted


async def post_login(http: aiohttp.ClientSession, server: RunningServer, name: str,
                     password: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with http.post(f"{server.url}/api/login",
                         json={"username": name, "password": password}) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def burst(server: RunningServer, logins: list[tuple[str, str]]) -> list[tuple[int, Any,
                                                                                    Any]]:
    # One connection per request: all of them in flight at once.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        return await asyncio.gather(*(post_login(http, server, n, p) for n, p in logins))


@pytest.mark.timeout(120)
async def test_concurrent_guesses_for_one_account_evaluate_at_most_its_budget(
    server: RunningServer, scrypt_calls: Counted
) -> None:
    results = await burst(server, [("u1", f"guess-{i}") for i in range(100)])
    statuses = sorted(status for status, _, _ in results)
    assert scrypt_calls.calls <= 5
    assert statuses.count(401) == scrypt_calls.calls
    assert statuses.count(429) == 100 - scrypt_calls.calls
    for status, body, headers in results:
        if status == 429:
            assert body["error"]["code"] == "login_rate_limited"
            assert body["error"]["retry_after"] == int(headers["Retry-After"]) >= 1


@pytest.mark.timeout(120)
async def test_concurrent_guesses_from_one_address_evaluate_at_most_its_budget(
    server: RunningServer, scrypt_calls: Counted
) -> None:
    # A different account each time: only the address's budget (20) can stop these.
    results = await burst(server, [(f"user-{i}", "guess") for i in range(100)])
    assert scrypt_calls.calls <= 20
    assert sum(status == 401 for status, _, _ in results) == scrypt_calls.calls
    assert sum(status == 429 for status, _, _ in results) == 100 - scrypt_calls.calls


async def test_wrong_passwords_delay_the_real_user_briefly_not_for_minutes(
    server: RunningServer, scrypt_calls: Counted
) -> None:
    """The old limiter locked an account for 300 s after 5 wrong passwords from anyone."""
    async with aiohttp.ClientSession() as http:
        for i in range(5):
            assert (await post_login(http, server, "u2", f"wrong-{i}"))[0] == 401
        status, body, headers = await post_login(http, server, "u2", "pw-u2")
        assert status == 429 and int(headers["Retry-After"]) <= 2
        assert scrypt_calls.calls == 5  # the refused attempt hashed nothing
        deadline = time.monotonic() + 10
        while status != 200:
            assert time.monotonic() < deadline, "the real user stayed locked out"
            await asyncio.sleep(0.2)
            status, body, _ = await post_login(http, server, "u2", "pw-u2")
        assert body["user"]["name"] == "u2"
        # A success starts the account afresh.
        assert (await post_login(http, server, "u2", "wrong"))[0] == 401


@pytest.mark.parametrize(("content_type", "data"), [
    ("text/plain", '{"username": "u1", "password": "pw-u1"}'),
    ("application/x-www-form-urlencoded", "username=u1&password=pw-u1"),
    ("multipart/form-data; boundary=x", "--x--"),
    (None, '{"username": "u1", "password": "pw-u1"}'),
])
async def test_login_takes_json_only(
    server: RunningServer, scrypt_calls: Counted, content_type: str | None, data: str
) -> None:
    """A cross-site form (or text/plain fetch without preflight) cannot log anyone in."""
    headers = {"Origin": "https://evil.example"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as http:
        async with http.post(f"{server.url}/api/login", data=data.encode(),
                             headers=headers) as resp:
            assert resp.status == 415
            assert (await resp.json())["error"]["code"] == "unsupported_media_type"
            assert "token" not in await resp.text()
    assert scrypt_calls.calls == 0


# -- the limiter itself ------------------------------------------------------------------------
async def take(limiter: LoginLimiter, user: str = "u1", remote: str = "10.0.0.1") -> int | None:
    """None if a slot was given, else the retry_after."""
    try:
        await limiter.attempt(user, remote)
    except AuthError as exc:
        assert exc.code == "login_rate_limited"
        return exc.retry_after
    return None


async def when_allowed(limiter: LoginLimiter, timeout: float, **kw: str) -> float:
    """Seconds until the next slot (polled; bounded)."""
    start = time.monotonic()
    while (await take(limiter, **kw)) is not None:
        assert time.monotonic() - start < timeout, "never allowed again"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_delay_doubles_up_to_its_cap(redis: aioredis.Redis) -> None:
    limiter = LoginLimiter(redis, account_budget=2, base_delay_s=0.2, max_delay_s=0.8,
                           window_s=60)
    assert await take(limiter) is None and await take(limiter) is None
    waits = [await when_allowed(limiter, 10) for _ in range(4)]
    # Lower bounds only: a loaded machine may answer late, never early.
    for wait, floor in zip(waits, (0.2, 0.4, 0.8, 0.8), strict=True):
        assert wait >= floor - 0.05, waits
    assert waits[3] < 5  # capped: never a lock-out


async def test_retry_after_is_whole_seconds(redis: aioredis.Redis) -> None:
    limiter = LoginLimiter(redis, account_budget=1, base_delay_s=2, max_delay_s=60)
    assert await take(limiter) is None
    retry = await take(limiter)
    assert retry is not None and 1 <= retry <= 2


async def test_account_and_address_budgets_are_separate(redis: aioredis.Redis) -> None:
    limiter = LoginLimiter(redis, account_budget=2, address_budget=4, base_delay_s=30,
                           max_delay_s=60)
    # The account's budget, spread over addresses.
    assert await take(limiter, "u1", "10.0.0.1") is None
    assert await take(limiter, "u1", "10.0.0.2") is None
    assert await take(limiter, "u1", "10.0.0.3") is not None
    assert await take(limiter, "u2", "10.0.0.3") is None  # other accounts unaffected
    # The address's budget, spread over accounts.
    for i in range(3):
        assert await take(limiter, f"v{i}", "203.0.113.7") is None
    assert await take(limiter, "v9", "203.0.113.7") is None  # the 4th
    assert await take(limiter, "v10", "203.0.113.7") is not None
    assert await take(limiter, "v10", "203.0.113.8") is None


async def test_success_resets_the_account_and_refunds_the_address(redis: aioredis.Redis) -> None:
    limiter = LoginLimiter(redis, account_budget=2, address_budget=3, base_delay_s=30,
                           max_delay_s=60)
    assert await take(limiter, "u1", "10.0.0.1") is None
    assert await take(limiter, "u1", "10.0.0.1") is None
    await limiter.succeeded("u1", "10.0.0.1")
    # The account starts again; the address counts the one failure only.
    assert await take(limiter, "u1", "10.0.0.1") is None
    assert await take(limiter, "u9", "10.0.0.1") is None
    assert await take(limiter, "u8", "10.0.0.1") is not None
    # Valid logins never use up an address (a whole station behind one NAT address).
    fresh = LoginLimiter(redis, account_budget=5, address_budget=2, base_delay_s=30,
                         max_delay_s=60, prefix="nat")
    for i in range(10):
        assert await take(fresh, f"officer{i}", "192.0.2.1") is None
        await fresh.succeeded(f"officer{i}", "192.0.2.1")


async def test_shared_between_processes(redis: aioredis.Redis, redis_url: str) -> None:
    other = aioredis.Redis.from_url(redis_url)
    try:
        a = LoginLimiter(redis, account_budget=2, base_delay_s=30, max_delay_s=60)
        b = LoginLimiter(other, account_budget=2, base_delay_s=30, max_delay_s=60)
        assert await take(a, "u1", "10.0.0.1") is None
        assert await take(b, "u1", "10.0.0.2") is None
        assert await take(a, "u1", "10.0.0.3") is not None
        assert await take(b, "u1", "10.0.0.4") is not None
    finally:
        await other.aclose()


async def test_concurrent_attempts_never_exceed_the_budget(redis: aioredis.Redis) -> None:
    limiter = LoginLimiter(redis, account_budget=5, address_budget=1000, base_delay_s=30,
                           max_delay_s=60)
    # (The test client's pool holds 100 connections.)
    results = await asyncio.gather(*(take(limiter, "u1", f"10.0.0.{i}") for i in range(100)))
    assert sum(r is None for r in results) == 5


async def test_state_expires_after_the_window(redis: aioredis.Redis) -> None:
    limiter = LoginLimiter(redis, account_budget=1, base_delay_s=0.1, max_delay_s=0.1,
                           window_s=0.5, prefix="win")
    assert await take(limiter) is None
    assert 0 < await redis.pttl("win:login:acct:u1") <= 500
    deadline = time.monotonic() + 10
    while await redis.exists("win:login:acct:u1"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert await take(limiter) is None
    assert await redis.hget("win:login:acct:u1", "n") == b"1"  # counted afresh


async def test_limiter_arguments_checked(redis: aioredis.Redis) -> None:
    bad: list[Callable[[], object]] = [
        lambda: LoginLimiter(redis, account_budget=0),
        lambda: LoginLimiter(redis, address_budget=0),
        lambda: LoginLimiter(redis, base_delay_s=0),
        lambda: LoginLimiter(redis, base_delay_s=10, max_delay_s=5),
        lambda: LoginLimiter(redis, max_delay_s=100, window_s=50),
    ]
    for make in bad:
        with pytest.raises(ValueError):
            make()


async def test_bounded_key_sizes(redis: aioredis.Redis) -> None:
    limiter = LoginLimiter(redis)
    await limiter.attempt("x" * 10_000, "y" * 10_000)
    assert all(len(k) < 220 for k in await redis.keys("ptt:login:*"))
