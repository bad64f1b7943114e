"""Signed webhooks: other systems are told of emergencies, acknowledgements, clears and failed
recordings (docs/integration.md has the payload and how to check a signature).

Events come from the ledger, not from the code paths that raise them: whatever is ledgered as
an emergency (raised, acknowledged, cleared) or a failed recording is sent, from whichever
node wrote it, with no hook in those paths to forget. Each process follows the ledger's end
(polling its size: a stat is cheap); processes sharing a data directory see the same lines, so
an event is claimed in Redis (SET NX on its entry hash) and sent by one of them. Redis down:
sent anyway, a duplicate (same `id`) is better than a missed emergency.

Delivery, per receiver: a bounded queue (the oldest event is dropped when it is full, and
counted), one POST at a time in ledger order, retried on network errors, 408, 429 and 5xx
after `retry_s`, doubling up to RETRY_MAX_S, for at most MAX_ATTEMPTS attempts; each attempt is
signed afresh (a new timestamp), so receivers may refuse old timestamps (replays).

    X-PTT-Event: emergency
    X-PTT-Delivery: <the event id: its ledger entry hash>
    X-PTT-Timestamp: <Unix seconds>
    X-PTT-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from ptt_server.core.config import Webhook
from ptt_server.recording import layout
from ptt_server.recording.ledger import Ledger, parse_line

log = logging.getLogger("ptt.webhooks")

EVENTS = ("emergency", "emergency_ack", "emergency_cleared", "recording_failed")
POLL_S = 0.2
QUEUE_MAX = 1000
MAX_ATTEMPTS = 10
RETRY_MAX_S = 300.0
ATTEMPT_TIMEOUT_S = 10.0
CLAIM_S = 86400
CONFIG_FILE = "webhooks.json"
RETRYABLE = frozenset({408, 425, 429})
_HIDDEN = frozenset({"seq", "ts", "type", "prev_hash", "entry_hash"})


def event_of(entry: dict[str, Any]) -> str | None:
    """The webhook event a ledger entry is, or None: an emergency entry says what happened in
    `action` (start, ack, clear: signaling/supervision.py)."""
    kind, action = entry.get("type"), entry.get("action")
    if kind == "emergency":
        return {"start": "emergency", "ack": "emergency_ack",
                "clear": "emergency_cleared"}.get(str(action))
    if kind == "recording_failed":
        return "recording_failed"
    return None


def payload(entry: dict[str, Any], event: str) -> bytes:
    body = {"id": entry["entry_hash"], "event": event, "ts": entry.get("ts"),
            "ledger_seq": entry.get("seq"),
            "data": {k: v for k, v in entry.items() if k not in _HIDDEN}}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def load_config_file(data_dir: Path) -> list[Webhook]:
    """`<data_dir>/webhooks.json`: `[{"url", "secret", "events": [...]}]` (optional).
    Raises ValueError for a file that is there but wrong: a receiver silently not told of
    emergencies is worse than a server that says why it does not start."""
    path = data_dir / CONFIG_FILE
    if not path.exists():
        return []
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: a list of receivers")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: receiver {i} is not an object")
        out.append(check(str(item.get("url", "")), item.get("secret"), item.get("events", [])))
    return out


def check(url: str, secret: object, events: object = ()) -> Webhook:
    if not url.startswith(("https://", "http://")) or len(url) > 2048:
        raise ValueError(f"webhook {url[:80]!r}: an http(s) URL")
    if not isinstance(secret, str) or len(secret.strip()) < 16:
        raise ValueError(f"webhook {url[:80]}: a secret of at least 16 characters")
    if not isinstance(events, list | tuple) or any(e not in EVENTS for e in events):
        raise ValueError(f"webhook {url[:80]}: events among {', '.join(EVENTS)}")
    return Webhook(url=url, secret=secret.strip(), events=tuple(events))


@dataclass
class Receiver:
    hook: Webhook
    queue: collections.deque[tuple[str, str, bytes]] = field(
        default_factory=lambda: collections.deque(maxlen=QUEUE_MAX))
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0  # events pushed out of a full queue
    queued: int = 0
    delivered: int = 0
    failed: int = 0  # events given up after MAX_ATTEMPTS

    def put(self, item: tuple[str, str, bytes]) -> None:
        if len(self.queue) == QUEUE_MAX:
            self.dropped += 1
            log.error("webhook queue full: oldest event dropped", extra={"fields": {
                "url": self.hook.url, "dropped": self.dropped}})
        self.queue.append(item)
        self.queued += 1
        self.ready.set()


class Webhooks:
    def __init__(self, data_dir: Path, hooks: list[Webhook], redis: aioredis.Redis | None, *,
                 retry_s: float = 1.0) -> None:
        self.ledger = Ledger(layout.ledger_path(data_dir))
        self.receivers = [Receiver(h) for h in hooks]
        self.redis = redis
        self.retry_s = retry_s
        self._offset = 0
        self.started = asyncio.Event()  # following the ledger from its end (tests wait on it)
        self.done = asyncio.Event()  # set whenever a delivery ends (delivered or given up)

    async def run(self) -> None:
        if not self.receivers:
            return
        self._offset = await asyncio.to_thread(self.ledger.size)  # from now on
        self.started.set()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                total=ATTEMPT_TIMEOUT_S)) as http:
            senders = [asyncio.create_task(self._send_loop(http, r)) for r in self.receivers]
            try:
                while True:
                    await self._poll()
                    await asyncio.sleep(POLL_S)
            finally:
                for task in senders:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*senders, return_exceptions=True)

    async def _poll(self) -> None:
        try:
            if await asyncio.to_thread(self.ledger.size) == self._offset:
                return
            lines, self._offset = await asyncio.to_thread(self.ledger.read_raw, self._offset)
        except OSError as exc:
            log.error("webhooks cannot read the ledger: %s", exc)
            return
        for raw in lines:
            entry = parse_line(raw.line)
            event = event_of(entry) if entry is not None else None
            if entry is None or event is None or not await self._claim(entry["entry_hash"]):
                continue
            body = payload(entry, event)
            for receiver in self.receivers:
                if not receiver.hook.events or event in receiver.hook.events:
                    receiver.put((entry["entry_hash"], event, body))

    async def _claim(self, entry_hash: str) -> bool:
        if self.redis is None:
            return True
        try:
            return bool(await self.redis.set(f"ptt:webhook:{entry_hash}", b"1", nx=True,
                                             ex=CLAIM_S))
        except Exception as exc:
            log.warning("webhook claim without Redis (%s): sending", type(exc).__name__)
            return True

    async def _send_loop(self, http: aiohttp.ClientSession, receiver: Receiver) -> None:
        while True:
            while not receiver.queue:
                receiver.ready.clear()
                await receiver.ready.wait()
            event_id, event, body = receiver.queue.popleft()
            if await self._deliver(http, receiver.hook, event_id, event, body):
                receiver.delivered += 1
            else:
                receiver.failed += 1
            self.done.set()

    async def _deliver(self, http: aiohttp.ClientSession, hook: Webhook, event_id: str,
                       event: str, body: bytes) -> bool:
        delay = self.retry_s
        for attempt in range(1, MAX_ATTEMPTS + 1):
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json", "User-Agent": "ptt-server-webhooks",
                "X-PTT-Event": event, "X-PTT-Delivery": event_id,
                "X-PTT-Timestamp": timestamp,
                "X-PTT-Signature": signature(hook.secret, timestamp, body),
            }
            try:
                async with http.post(hook.url, data=body, headers=headers) as resp:
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, why = 0, type(exc).__name__
            else:
                why = f"HTTP {status}"
                if 200 <= status < 300:
                    return True
                if status < 500 and status not in RETRYABLE:
                    log.error("webhook refused, not retried", extra={"fields": {
                        "url": hook.url, "event": event, "id": event_id, "status": status}})
                    return False
            log.warning("webhook delivery failed", extra={"fields": {
                "url": hook.url, "event": event, "id": event_id, "attempt": attempt,
                "reason": why}})
            if attempt < MAX_ATTEMPTS:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        log.error("webhook given up", extra={"fields": {
            "url": hook.url, "event": event, "id": event_id, "attempts": MAX_ATTEMPTS}})
        return False
