"""Control events (emergencies, revokes, patches, acknowledgements) in the audit ledger.

Two ways to write, chosen per event (docs/security.md, "security events"):

- `require(kind, fields)`: the event is written *before* it takes effect, or it does not
  happen (the caller refuses it). Revokes, patches, acknowledgements and clears: a change of
  who may talk that nobody could later prove must not be made.
- `record(kind, fields)`: the event happens whatever the ledger says, and an entry that could
  not be written is kept and retried until it is, while supervisors are told the ledger is
  failing. An officer's emergency: a full disk must never silence an alarm.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from ptt_server.core.logthrottle import FailureLog
from ptt_server.recording.recorder import Recorder

log = logging.getLogger("ptt.audit")

RETRY_S = 2.0
PENDING_MAX = 10_000  # entries kept for retry; beyond that the oldest are lost (and counted)


class AuditTrail:
    def __init__(self, recorder: Recorder | None, node_id: str) -> None:
        self._recorder = recorder
        self._node_id = node_id
        self._pending: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(
            maxlen=PENDING_MAX
        )
        self.lost = 0  # entries dropped from a full retry queue
        self._failures = FailureLog(log, "audit ledger append")

    @property
    def pending(self) -> int:
        """Entries waiting to be written (the ledger is failing while this is not zero)."""
        return len(self._pending)

    async def _append(self, kind: str, entry: dict[str, Any]) -> None:
        assert self._recorder is not None
        await asyncio.to_thread(self._recorder.ledger.append, kind, entry)

    async def require(self, kind: str, fields: dict[str, Any]) -> None:
        """Write now, or raise OSError (the caller does not carry the event out)."""
        if self._recorder is None:
            return  # a node without recording (unit tests) has no ledger at all
        try:
            await self._append(kind, {"node_id": self._node_id, **fields})
        except Exception as exc:
            self._failures.failure(exc)
            raise OSError(f"audit ledger append failed: {exc}") from exc

    async def record(self, kind: str, fields: dict[str, Any]) -> None:
        """Write now if possible; otherwise keep it for retry. Never raises."""
        if self._recorder is None:
            return
        entry = {"node_id": self._node_id, **fields}
        try:
            await self._append(kind, entry)
        except Exception as exc:
            self._failures.failure(exc)
            if len(self._pending) == self._pending.maxlen:
                self.lost += 1
            self._pending.append((kind, entry))

    async def run(self) -> None:
        """Retry what could not be written, oldest first, until cancelled."""
        while True:
            await asyncio.sleep(RETRY_S)
            while self._pending:
                kind, entry = self._pending[0]
                try:
                    await self._append(kind, entry)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._failures.failure(exc)
                    break
                self._pending.popleft()
                self._failures.success()
