"""Is this node healthy, and if not, why: for `/healthz` and for the people on duty.

Checked every couple of seconds on its own task: Redis answering, recordings being written,
free space in the data directory (checked before it is full, so a supervisor hears of it while
there is still time). A change is announced to the node's supervisors, dispatchers and admins as
a `system_alert`, raised once and cleared once: an alert that repeats every check would be
ignored by the people it is meant for.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from ptt_server.core import messages as m
from ptt_server.core.logthrottle import FailureLog

log = logging.getLogger("ptt.health")

CHECK_S = 2.0
PING_TIMEOUT_S = 1.0
RECORDING_FAILURE_HOLD_S = 30.0  # "recording failing" lasts this long after the last failure

REDIS_UNREACHABLE = "redis_unreachable"
RECORDING_FAILING = "recording_failing"
DISK_LOW = "disk_low"
LEDGER_FAILING = "ledger_failing"


@dataclass(frozen=True, slots=True)
class Problem:
    alert: str
    detail: str


class Health:
    def __init__(
        self, node_id: str, redis: aioredis.Redis, data_dir: Path, min_free_bytes: int,
        recording_failures: Callable[[], int], announce: Callable[[m.SystemAlert], None],
        ledger_pending: Callable[[], int] = lambda: 0,
    ) -> None:
        self._ledger_pending = ledger_pending
        self._node_id = node_id
        self._redis = redis
        self._data_dir = data_dir
        self._min_free = min_free_bytes
        self._recording_failures = recording_failures
        self._announce = announce
        self.problems: dict[str, Problem] = {}
        self._failures_seen = recording_failures()
        self._failed_at = 0.0
        self._errors = FailureLog(log, "health check")

    @property
    def status(self) -> str:
        return "degraded" if self.problems else "ok"

    def alerts(self) -> list[m.SystemAlert]:
        """The alerts in force, for a supervisor who has just connected."""
        return [self._message(p, True) for p in self.problems.values()]

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._errors.failure(exc)
            await asyncio.sleep(CHECK_S)

    async def check(self) -> None:
        found: dict[str, Problem] = {}
        try:
            # asyncio.timeout, not wait_for: in a loop, Python 3.11's wait_for can swallow a
            # cancellation that arrives as the ping completes, and the loop never ends.
            async with asyncio.timeout(PING_TIMEOUT_S):
                await self._redis.ping()
        except Exception as exc:
            found[REDIS_UNREACHABLE] = Problem(REDIS_UNREACHABLE, f"Redis: {type(exc).__name__}")
        failures = self._recording_failures()
        now = time.monotonic()
        if failures > self._failures_seen:
            self._failures_seen = failures
            self._failed_at = now
        if self._failed_at and now - self._failed_at < RECORDING_FAILURE_HOLD_S:
            found[RECORDING_FAILING] = Problem(
                RECORDING_FAILING, f"{failures} recording failures; see the server log")
        pending = self._ledger_pending()
        if pending:
            found[LEDGER_FAILING] = Problem(LEDGER_FAILING, (
                f"{pending} audit ledger entries not yet written (retrying); "
                "see the server log"))
        free = await asyncio.to_thread(self._free_bytes)
        if free is not None and free < self._min_free:
            found[DISK_LOW] = Problem(DISK_LOW, (
                f"{free // 2**20} MB free in the data directory "
                f"(threshold {self._min_free // 2**20} MB)"))
        self._update(found)

    def _free_bytes(self) -> int | None:
        try:
            return shutil.disk_usage(self._data_dir).free
        except OSError:
            return None

    def _update(self, found: dict[str, Problem]) -> None:
        for alert, problem in found.items():
            if alert not in self.problems:
                log.warning("degraded", extra={"fields": {
                    "alert": alert, "detail": problem.detail}})
                self._announce(self._message(problem, True))
        for alert, problem in self.problems.items():
            if alert not in found:
                log.info("recovered", extra={"fields": {"alert": alert}})
                self._announce(self._message(problem, False))
        self.problems = found

    def _message(self, problem: Problem, active: bool) -> m.SystemAlert:
        return m.SystemAlert(
            alert=problem.alert, active=active, node=self._node_id, detail=problem.detail
        )
