"""Logging for operations that fail over and over (a ticker, a listener, per-message handling).

A loop that logs a traceback on every failure turns one outage into thousands of identical
tracebacks: during a Redis outage that flood filled stderr and stalled the node. FailureLog
keeps the first traceback (the one worth reading), counts the rest, and sums them up once per
interval:

    failures = FailureLog(log, "node ticker")
    while True:
        try:
            await tick()
        except Exception:
            failures.failure()
        else:
            failures.success()

* the first failure logs its full traceback, and so does the first failure of a kind
  (exception type) not yet shown: a new fault deserves its own traceback;
* later ones only count; the first failure (or success) once `interval_s` has passed since the
  last line logs one line, "<what> failed N more times in T s (last error: X)";
* `success()` after a failure that was logged says "<what> recovered after N failures";
* an operation with no natural success (handling one message among many) just calls
  failure(): it then logs at most one summary per interval, and a traceback only for the
  first failure after a quiet interval or for a new kind of fault.

A success does not reopen the traceback budget: a flapping operation (fail, succeed, fail...)
logs one traceback and one recovery, then counts, instead of two lines per flap.

Not thread-safe: one instance per loop (an event loop is one thread). The clock is a parameter
so the behaviour can be tested without waiting.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

INTERVAL_S = 10.0
MAX_KINDS = 16  # exception types shown until a quiet interval: tracebacks stay bounded
MAX_ERROR_CHARS = 300


def describe(exc: BaseException | None) -> str:
    """One line for an exception: its type and message, cut to a sane length."""
    if exc is None:
        return "unknown"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(text.split())  # one line, whatever the message holds
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


class FailureLog:
    def __init__(
        self, logger: logging.Logger, what: str, *, interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic, level: int = logging.ERROR,
    ) -> None:
        self.logger = logger
        self.what = what
        self.interval_s = interval_s
        self.clock = clock
        self.level = level
        self.failures = 0  # consecutive failures: since the last success
        self.total = 0  # every failure since creation (for health reports)
        self._pending = 0  # failures counted but not yet written
        self._pending_since = 0.0
        self._last_error: BaseException | None = None
        self._kinds: set[type[BaseException]] = set()  # exception types shown with a traceback
        self._logged_at: float | None = None  # the last traceback or summary (the budget)
        self._episode_logged = False  # this run of failures has been written about

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def failure(self, exc: BaseException | None = None) -> None:
        """Record a failure; `exc` defaults to the exception being handled."""
        if exc is None:
            exc = sys.exc_info()[1]
        now = self.clock()
        self.failures += 1
        self.total += 1
        kind = type(exc) if exc is not None else BaseException
        if self._due(now) and not self._pending:
            # Quiet for an interval (or the very first failure): this one is worth reading.
            self._kinds = {kind}
            self._traceback(exc)
            self._logged_at = now
            return
        if kind not in self._kinds and len(self._kinds) < MAX_KINDS:
            # A different fault in the middle of a run: shown, without delaying the summary.
            self._kinds.add(kind)
            self._traceback(exc)
            return
        if not self._pending:
            self._pending_since = now
        self._pending += 1
        self._last_error = exc
        if self._due(now):
            self._summary(now)

    def success(self) -> None:
        """Record a success: if it had been failing, and said so, say it recovered."""
        if not self.failures:
            now = self.clock()
            if self._pending and self._due(now):
                self._summary(now)  # counts left by silent recoveries: written in time
                self._episode_logged = False  # that run is over; the next starts unlogged
            return
        if self._episode_logged:
            fields: dict[str, object] = {"failures": self.failures}
            if self._pending:
                fields["last_error"] = describe(self._last_error)
                self.logger.warning(
                    "%s recovered after %d failures (last error: %s)", self.what,
                    self.failures, fields["last_error"], extra={"fields": fields},
                )
            else:
                self.logger.warning(
                    "%s recovered after %d failures", self.what, self.failures,
                    extra={"fields": fields},
                )
            self._pending = 0
            self._last_error = None
        self.failures = 0
        self._episode_logged = False

    def flush(self) -> None:
        """Write the pending count now (at shutdown, say), whatever the interval."""
        if self._pending:
            self._summary(self.clock())

    def _due(self, now: float) -> bool:
        return self._logged_at is None or now - self._logged_at >= self.interval_s

    def _traceback(self, exc: BaseException | None) -> None:
        self.logger.log(
            self.level, "%s failed", self.what, exc_info=exc,
            extra={"fields": {"failures": self.failures}},
        )
        self._episode_logged = True

    def _summary(self, now: float) -> None:
        error = describe(self._last_error)
        self.logger.log(
            self.level, "%s failed %d more times in %.0f s (last error: %s)", self.what,
            self._pending, now - self._pending_since, error,
            extra={"fields": {"failures": self.failures, "more": self._pending,
                              "last_error": error}},
        )
        self._logged_at = now
        self._episode_logged = True
        self._pending = 0
        self._last_error = None
