"""Redis commands from many callers, sent together: everything asked for in one turn of the
event loop goes out as one pipeline (no MULTI), one round trip on one pooled connection.

Why: a burst of floor requests (every talkgroup at once: an incident, an all-call) used to
cost each request two round trips of its own (the floor read, the compare-and-set), and
redis-py's cost per round trip (a pooled connection taken and given back, the write, the
wake-up for the reply, a retry wrapper) is paid on the event loop, far above the cost of one
more command in a pipeline. Serialised on one loop, those round trips were most of a grant.

What does not change: each command runs on its own in Redis, in the order asked for, and a
Lua script stays atomic (a pipeline without MULTI interleaves nothing inside a script). An
error reply is that caller's alone; a lost connection fails every caller of the batch, as it
would have failed each of their own commands. A caller cancelled before its batch is sent is
left out of it, so nothing is written for a request nobody waits for any more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

MAX_BATCH = 256  # commands per pipeline: bounds one reply's size and its parse in one go

Command = tuple[Any, ...]


class Coalescer:
    def __init__(self, redis: aioredis.Redis, max_batch: int = MAX_BATCH) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self._pending: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        self._tasks: set[asyncio.Task[None]] = set()  # held, so a batch in flight is not lost
        self.batches = 0  # pipelines sent (tests and benchmarks read these)
        self.commands = 0

    async def run(self, *commands: Command) -> list[Any]:
        """Each command's reply, in order; an error reply is returned as its ResponseError
        (the caller decides), a connection failure is raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if not self._pending:
            # After the callbacks already due this turn: the other requests woken by the
            # same read from the network join this batch.
            loop.call_soon(self._flush)
        self._pending.append((commands, future))
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        batch: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]] = []
        size = 0
        for commands, future in pending:
            if future.done():  # cancelled while waiting for the batch
                continue
            if batch and size + len(commands) > self.max_batch:
                self._send(batch)
                batch, size = [], 0
            batch.append((commands, future))
            size += len(commands)
        if batch:
            self._send(batch)

    def _send(self, batch: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]]) -> None:
        task = asyncio.get_running_loop().create_task(self._execute(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(
        self, batch: list[tuple[Sequence[Command], asyncio.Future[list[Any]]]]
    ) -> None:
        self.batches += 1
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for commands, _future in batch:
                    for command in commands:
                        pipe.execute_command(*command)
                        self.commands += 1
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _commands, future in batch:
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:
                    future.cancel()
            if not isinstance(exc, Exception):
                raise  # a cancellation (the loop closing): the callers were cancelled too
            return
        at = 0
        for commands, future in batch:
            if not future.done():
                future.set_result(list(replies[at:at + len(commands)]))
            at += len(commands)
