"""Waiting, bounded, for something the test cannot be told of: polling a condition."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, *,
    every: float = 0.05,
) -> None:
    """Wait until `condition()` (a function, or a coroutine function) is true, checking every
    `every` seconds; an AssertionError if it still is not after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await _holds(condition):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(every)


async def _holds(condition: Callable[[], bool | Awaitable[bool]]) -> bool:
    result = condition()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)
