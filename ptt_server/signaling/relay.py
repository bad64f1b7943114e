"""Delivery of status and text messages on every node (the other half of messaging.py).

Each node subscribes to one channel and delivers what concerns its own sessions:

* `deliver`: a message, to the local members of its talkgroup, or to the local sessions of
  the unit it is addressed to, or (neither) to the command centre's sessions. For each session
  it was queued to, a `delivered` receipt goes back to the sender's session;
* `receipts`: receipts for a sender whose session is here;
* `talkgroup_added` / `talkgroup_removed`: an incident talkgroup given to units (and shown to
  the command centre), or taken away: local sessions in it leave it first.

A delivered message is in the session's numbered outbox (signaling/session.py): a phone in a
dead spot gets it when it resumes. The relay has its own pub/sub connection, so a burst of
messages never queues behind the floor events on the node's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis

from ptt_server.core import access
from ptt_server.core import messages as m
from ptt_server.core import messaging as msg
from ptt_server.core.logthrottle import FailureLog
from ptt_server.core.model import EndReason
from ptt_server.node.endpoint import Endpoint
from ptt_server.node.node import Node
from ptt_server.signaling.messaging import CHANNEL, KEEP_S, key, send_receipts
from ptt_server.signaling.session import Session

log = logging.getLogger("ptt.messaging")

RETRY_S = 0.5
POLL_S = 1.0


class Relay:
    def __init__(self, node: Node, pubsub_redis: aioredis.Redis) -> None:
        self.node = node
        self._redis = pubsub_redis
        self._failures = FailureLog(log, "message relay")
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True

    async def run(self) -> None:
        # Polled with a timeout and a stop flag rather than `async for ... listen()`: redis-py's
        # listen can swallow a cancellation (seen at shutdown), and a loop that cannot be
        # stopped holds the event loop's close for ever.
        while not self.stopped:
            pubsub: Any = self._redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                while not self.stopped:
                    message = await pubsub.get_message(timeout=POLL_S)
                    if message is None:
                        continue
                    if message.get("type") == "message":
                        await self.handle(message["data"])
                    self._failures.success()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures.failure(exc)
                await asyncio.sleep(RETRY_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def handle(self, data: Any) -> None:
        try:
            body = json.loads(data)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        match body.get("kind"):
            case "deliver":
                await self._deliver(body)
            case "receipts":
                endpoint = self.node.endpoints.get(str(body.get("session")))
                if endpoint is not None:
                    for text in body.get("texts", []):
                        endpoint.send_text(str(text))
            case "talkgroup_added":
                self._added(body)
            case "talkgroup_removed":
                await self._removed(body)

    def _recipients(self, body: dict[str, Any]) -> dict[str, Endpoint]:
        node, sender = self.node, body.get("sender")
        talkgroup, to = body.get("talkgroup"), body.get("to")
        found: dict[str, Endpoint] = {}
        if isinstance(talkgroup, str):
            for sid, entry in list(node.members.get(talkgroup, {}).items()):
                found[sid] = entry.endpoint
        elif isinstance(to, str):
            found = {sid: e for sid, e in list(node.endpoints.items()) if e.claims.sub == to}
        else:  # to the command centre
            found = {sid: e for sid, e in list(node.endpoints.items())
                     if e.claims.role in access.OVERSIGHT_ROLES}
        found.pop(str(sender), None)  # the sender has its copy already
        return found

    async def _deliver(self, body: dict[str, Any]) -> None:
        recipients = self._recipients(body)
        message_id = str(body.get("message_id"))
        if not recipients:
            return
        # Recorded as recipients before they can see it: their `read` may come back at once.
        k = f"{key(message_id)}:to"
        await self.node.redis.sadd(k, *{e.claims.sub for e in recipients.values()})
        await self.node.redis.expire(k, KEEP_S)
        text, now, receipts = str(body.get("text")), time.time(), []
        for endpoint in recipients.values():
            endpoint.send_text(text)
            receipts.append(m.encode(msg.MessageReceipt(
                message_id=message_id, state="delivered", unit=endpoint.claims.sub,
                alias=endpoint.claims.alias, ts=now, ref=None)))
        await send_receipts(self.node, str(body.get("sender") or ""), receipts)

    def _added(self, body: dict[str, Any]) -> None:
        units = set(body.get("units") or [])
        for endpoint in list(self.node.endpoints.values()):
            if endpoint.claims.sub in units:
                endpoint.send_text(str(body.get("member_text")))
            elif endpoint.claims.role in access.OVERSIGHT_ROLES:
                endpoint.send_text(str(body.get("monitor_text")))

    async def _removed(self, body: dict[str, Any]) -> None:
        """The units named lose the talkgroup; a closed one is also left by everyone in it,
        and the command centre is told."""
        talkgroup, units = str(body.get("talkgroup")), set(body.get("units") or [])
        closed = bool(body.get("closed"))
        for endpoint in list(self.node.endpoints.values()):
            joined = isinstance(endpoint, Session) and talkgroup in endpoint.joined
            oversight = endpoint.claims.role in access.OVERSIGHT_ROLES
            if endpoint.claims.sub not in units and not (closed and (joined or oversight)):
                continue
            if isinstance(endpoint, Session) and joined:
                try:
                    await endpoint.leave(talkgroup, EndReason.LEFT)
                except Exception as exc:  # a session closing meanwhile: it is out anyway
                    log.info("leave on removal failed: %s", type(exc).__name__)
            endpoint.send_text(str(body.get("text")))
