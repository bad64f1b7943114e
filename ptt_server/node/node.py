"""One server node (process): local members, routers and transmissions, glued to Redis.

Data path: a talker's uplink tap -> `Node.forward_uplink` -> the talkgroup's router (gate check,
fan-out to local listeners) -> the transmission's recording, and -> the media bus for listeners
on other nodes. Control path: a session -> `Node.apply_floor` (atomic in Redis) -> outputs
published on `ptt:floor:{tg}` -> every node's subscriber -> `FloorEvents` (node/events.py).

Ownership: the node owns routers and the transmission table; a session owns its own fields and
reaches the node only through the methods here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from ptt_server.control.emergencies import EmergencyStore
from ptt_server.control.floor_store import FloorStore
from ptt_server.control.presence import Member, Presence
from ptt_server.core import floor as fl
from ptt_server.core import messages as m
from ptt_server.core.config import Config
from ptt_server.core.logthrottle import FailureLog
from ptt_server.core.model import EndReason
from ptt_server.core.sealing import Sealer
from ptt_server.identity.directory import Directory
from ptt_server.media.router import TalkgroupRouter
from ptt_server.node import (
    delivery,
    emergency_repeat,
    events,
    interruption,
    loops,
    policing,
    views,
)
from ptt_server.node.audit import AuditTrail
from ptt_server.node.endpoint import Endpoint
from ptt_server.node.health import Health
from ptt_server.node.mediabus import MediaBus
from ptt_server.node.redcheck import RedCheck
from ptt_server.node.transmission import Request, TransmissionTable
from ptt_server.recording.recorder import Recorder

log = logging.getLogger("ptt.node")

PREFIX = "ptt"
FLOOR_CHANNELS = f"{PREFIX}:floor:"
ALERTS = f"{PREFIX}:alerts"
EVENTS = f"{PREFIX}:events"  # patch changes: delivered to members of the talkgroups named
STOP_TASK_S = 2.0  # a background task that does not end this long after cancel is abandoned
LISTEN_POLL_S = 1.0
LISTEN_RETRY_S = 0.2  # between attempts to re-subscribe: floor changes wait for it


def new_transmission_id() -> str:
    return uuid.uuid4().hex


@dataclass(eq=False)
class Membership:
    endpoint: Endpoint
    mode: str
    welcomed: bool = False  # `joined` has been sent: presence updates may follow


class Node:
    def __init__(
        self, config: Config, redis: aioredis.Redis, directory: Directory,
        recorder: Recorder | None, *, bus_key: bytes,
        pubsub_redis: aioredis.Redis | None = None,
    ) -> None:
        self.config = config
        self.id = config.node_id
        self.redis = redis
        self._pubsub_redis = pubsub_redis or redis
        self.directory = directory
        self.recorder = recorder
        self.sealer = Sealer(bus_key)
        self.floors = FloorStore(
            redis, lease_s=config.floor_lease_s, prefix=PREFIX,
            queue_timeout_s=config.floor_queue_timeout_s, sealer=self.sealer,
        )
        self.presence = Presence(redis, ttl_s=config.presence_ttl_s, prefix=PREFIX)
        # Media, floor outputs, alerts and events between nodes are sealed with the data
        # directory's secret: reaching Redis is not enough to inject audio, forge a grant or
        # raise an emergency (core/sealing.py).
        self.media = MediaBus(redis, self.id, PREFIX, self.sealer)
        self.emergencies = EmergencyStore(redis)
        self.audit_trail = AuditTrail(recorder, self.id)
        self.transmissions = TransmissionTable()
        self.endpoints: dict[str, Endpoint] = {}
        # Sessions by resume token: a client that lost its connection takes its session back.
        self.resumable: dict[str, Endpoint] = {}
        self.routers: dict[str, TalkgroupRouter] = {}
        self.members: dict[str, dict[str, Membership]] = {}  # talkgroup -> session -> entry
        self.uplink_dropped = 0  # packets from sessions that held no floor
        self.red_check = RedCheck(log)  # RED payloads in, checked and split (and refused)
        self.stopping = False
        self._pubsub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._presence = views.PresencePush(self.members, self.member_views)
        self._events = events.FloorEvents(self)
        self.health = Health(
            self.id, redis, config.data_dir, config.disk_min_free_mb * 2**20,
            lambda: recorder.failures if recorder is not None else 0, self._deliver_system_alert,
            ledger_pending=lambda: self.audit_trail.pending,
        )
        self._forged = FailureLog(log, "pub/sub message check", level=logging.WARNING)
        self._listen_failures = FailureLog(logging.getLogger("ptt.node"), "pub/sub listener")

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.floors.check_epoch(time.time())
        self._pubsub = self._pubsub_redis.pubsub()
        await self._pubsub.psubscribe(f"{PREFIX}:floor:*", f"{PREFIX}:presence:*")
        await self._pubsub.subscribe(ALERTS, EVENTS)
        self._tasks = [
            asyncio.create_task(self._listen(), name="node-pubsub"),
            asyncio.create_task(loops.floor_ticker(self), name="node-ticker"),
            asyncio.create_task(loops.lease_refresher(self), name="node-leases"),
            asyncio.create_task(loops.presence_refresher(self), name="node-presence"),
            asyncio.create_task(self.media.run(), name="node-media-out"),
            asyncio.create_task(self.health.run(), name="node-health"),
            asyncio.create_task(self.audit_trail.run(), name="node-audit-retry"),
            asyncio.create_task(emergency_repeat.repeater(
                self.emergencies, self.id, self.config.emergency_repeat_s, self.alert,
            ), name="node-emergency-repeat"),
        ]
        log.info("node started")

    def register(self, endpoint: Endpoint) -> None:
        self.endpoints[endpoint.id] = endpoint
        if str(endpoint.claims.role) in delivery.ALERTED_ROLES:
            for alert in self.health.alerts():  # what is wrong right now, at once
                endpoint.send(alert)

    def remember(self, resume_token: str, endpoint: Endpoint) -> None:
        self.resumable[resume_token] = endpoint

    def forget(self, resume_token: str) -> None:
        self.resumable.pop(resume_token, None)

    def unregister(self, endpoint: Endpoint) -> None:
        if self.endpoints.get(endpoint.id) is endpoint:
            del self.endpoints[endpoint.id]

    async def close_sessions(self, reason: EndReason, timeout_s: float) -> None:
        """Close every session with `reason` (floors released, recordings finished), within
        `timeout_s`; what is still open then is ended locally."""
        self.stopping = True
        closing = [asyncio.ensure_future(e.close(reason)) for e in list(self.endpoints.values())]
        if closing and (pending := (await asyncio.wait(closing, timeout=timeout_s))[1]):
            log.warning("sessions not closed in time", extra={"fields": {
                "pending": len(pending), "timeout_s": timeout_s}})
        self.transmissions.end_all(reason)

    async def stop(self) -> None:
        """Stop background tasks (each bounded); sessions were closed before."""
        self.stopping = True
        self.transmissions.end_all(EndReason.SERVER_STOPPED)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_TASK_S)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pubsub.aclose(), STOP_TASK_S)

    # -- membership ---------------------------------------------------------------------------
    def router(self, talkgroup: str) -> TalkgroupRouter:
        router = self.routers.get(talkgroup)
        if router is None:
            router = self.routers[talkgroup] = TalkgroupRouter(talkgroup)
        return router

    def is_member(self, session: str, talkgroup: str) -> bool:
        return session in self.members.get(talkgroup, {})

    async def add_member(self, endpoint: Endpoint, talkgroup: str, mode: str) -> None:
        first_here = talkgroup not in self.members
        self.members.setdefault(talkgroup, {})[endpoint.id] = Membership(endpoint, mode)
        self.router(talkgroup)
        if first_here:
            await self._pubsub.subscribe(self.media.channel(talkgroup))
            # Late entry: a transmission already under way from another node opens our gate.
            await self._sync_gate(talkgroup)
        await self.presence.join(talkgroup, self.member_record(endpoint, talkgroup, mode),
                                 time.time())

    def welcomed(self, session: str, talkgroup: str, members: tuple[m.MemberView, ...]) -> int:
        """`members` is being sent to the session: their presence revision (views.py)."""
        entry = self.members.get(talkgroup, {}).get(session)
        if entry is not None:
            entry.welcomed = True
        return self._presence.welcomed(talkgroup, session, members)

    def member_record(self, endpoint: Endpoint, talkgroup: str, mode: str | None = None) -> Member:
        entry = self.members.get(talkgroup, {}).get(endpoint.id)
        return Member(
            session=endpoint.id, unit=endpoint.claims.sub, alias=endpoint.claims.alias,
            role=str(endpoint.claims.role), node=self.id,
            mode=mode or (entry.mode if entry else "member"), since=time.time(),
        )

    async def leave(self, endpoint: Endpoint, talkgroup: str, reason: EndReason) -> None:
        """A session leaves a talkgroup: its transmission there ends with `reason` first (the
        first reason wins, so the floor's own `idle` event cannot overwrite it), then the floor
        (held or queued) is released in Redis, then the membership goes."""
        await self.release(endpoint, talkgroup, reason)
        await self.remove_member(endpoint.id, talkgroup)

    async def release(self, endpoint: Endpoint, talkgroup: str, reason: EndReason) -> None:
        """End the session's transmission on a talkgroup with `reason` and give up its floor
        (held or queued) in Redis; the membership stays (a session in its resume grace)."""
        self.transmissions.end_session(endpoint.id, reason, talkgroup)
        with contextlib.suppress(fl.FloorError):
            await self.apply_floor(talkgroup, fl.Disconnect(endpoint.id, time.time()))

    async def remove_member(self, session: str, talkgroup: str) -> None:
        group = self.members.get(talkgroup)
        if group is None or group.pop(session, None) is None:
            return
        router = self.routers.get(talkgroup)
        if router is not None:
            router.remove_listener(session)
        if not group:
            del self.members[talkgroup]
            self.routers.pop(talkgroup, None)
            with contextlib.suppress(Exception):
                await self._pubsub.unsubscribe(self.media.channel(talkgroup))
        with contextlib.suppress(Exception):
            await self.presence.leave(talkgroup, session)

    async def _sync_gate(self, talkgroup: str) -> None:
        floor = await self.floors.get(talkgroup)
        if floor.grant is not None:
            self.router(talkgroup).open(floor.grant.participant.session,
                                        floor.grant.transmission_id)

    # -- views --------------------------------------------------------------------------------
    async def floor_view(self, talkgroup: str) -> m.FloorView:
        return await views.floor_view(self.floors, talkgroup)

    async def patch_view(self, talkgroup: str) -> m.PatchView | None:
        return await views.patch_view(self.floors, talkgroup)

    async def member_views(self, talkgroup: str) -> tuple[m.MemberView, ...]:
        return await views.member_views(
            self.floors, self.presence, self.routers.get(talkgroup), talkgroup)

    def schedule_presence(self, talkgroup: str) -> None:
        self._presence.schedule(talkgroup)

    # -- floor --------------------------------------------------------------------------------
    def participant(self, endpoint: Endpoint) -> fl.Participant:
        c = endpoint.claims
        return fl.Participant(
            session=endpoint.id, unit=c.sub, alias=c.alias, role=str(c.role), node=self.id,
            priority=c.priority,
        )

    def max_duration(self, talkgroup: str) -> float:
        info = self.directory.get_talkgroup(talkgroup)
        if info is not None and info.max_duration_s:
            return float(info.max_duration_s)
        return self.config.floor_max_duration_s

    async def request_floor(
        self, endpoint: Endpoint, talkgroup: str, *, queue: bool, emergency: bool = False,
        linked: str | None = None,
    ) -> list[fl.FloorOutput]:
        tid = new_transmission_id()
        self.transmissions.requested(tid, Request(endpoint.id, talkgroup, linked))
        limit = (
            self.config.floor_emergency_max_duration_s if emergency
            else self.max_duration(talkgroup)
        )
        event = fl.Request(
            participant=self.participant(endpoint), now=time.time(), max_duration_s=limit,
            transmission_id=tid, queue=queue, emergency=emergency,
        )
        try:
            return await self.apply_floor(talkgroup, event)
        except BaseException:
            self.transmissions.forget_request(tid)
            raise

    async def apply_floor(self, talkgroup: str, event: fl.FloorInput) -> list[fl.FloorOutput]:
        """Apply an event. Its outputs arrive through the subscriber, the one path every node
        shares, in the order Redis made the changes; a grant may be handled sooner, when the
        reply comes (node/events.py `applied`: only if nothing before it is still on its way)."""
        floor, outputs = await self.floors.apply(talkgroup, event)
        self._events.applied(talkgroup, floor.version, outputs)  # a grant, in order
        return outputs

    def holds(self, session: str, talkgroup: str) -> bool:
        return self.transmissions.holds(session, talkgroup)

    # -- sending ------------------------------------------------------------------------------
    def local_member(self, talkgroup: str, session: str) -> Endpoint | None:
        entry = self.members.get(talkgroup, {}).get(session)
        return entry.endpoint if entry else None

    def broadcast(self, talkgroup: str, msg: m.ServerMessage, skip: str | None = None) -> None:
        group = self.members.get(talkgroup)
        if not group:
            return
        text = m.encode(msg)  # once for every member
        for sid, entry in list(group.items()):
            if sid != skip:
                entry.endpoint.send_text(text)

    async def audit(self, kind: str, fields: dict[str, Any]) -> None:
        """A control event that happens whatever the ledger says (node/audit.py `record`:
        retried until written, supervisors told meanwhile)."""
        await self.audit_trail.record(kind, fields)

    async def announce(self, event: m.Patched | m.Unpatched) -> None:
        """Tell members of the talkgroups an event names, on every node."""
        await self.redis.publish(EVENTS, self.sealer.seal(EVENTS, m.encode(event).encode()))

    async def alert(
        self, alert: m.Emergency | m.EmergencyCleared | m.EmergencyAcknowledged | m.UnitLocation,
    ) -> None:
        """Reaches every supervisor and dispatcher online (and the talkgroup's members),
        whatever talkgroups they are in, on every node. A message without a `talkgroup`
        field (unit_location: it names `talkgroups`) reaches supervisors and dispatchers only."""
        await self.redis.publish(ALERTS, self.sealer.seal(ALERTS, m.encode(alert).encode()))

    def _deliver_event(self, event: dict[str, Any], text: str) -> None:
        delivery.to_talkgroups(self.members, event.get("talkgroups", []), text)

    def _deliver_alert(self, alert: dict[str, Any], text: str) -> None:
        tg = alert.get("talkgroup")
        delivery.to_command(self.endpoints, text, self.members.get(tg, {}) if isinstance(tg, str)
                            else {})

    def _deliver_system_alert(self, alert: m.SystemAlert) -> None:
        delivery.to_command(self.endpoints, m.encode(alert))

    def lost_floor(self, talkgroup: str, session: str) -> None:
        interruption.lost_floor(self, talkgroup, session)

    def interrupted(self, cause: str) -> None:
        interruption.interrupted(self, cause)

    # -- media --------------------------------------------------------------------------------
    def forward_uplink(self, session: str, payload: bytes, rtp_ts: int, seq: int,
                       arrival: float, red_over: frozenset[int] | None = None) -> None:
        """A talker's packet, to talkgroups whose floor it holds (`red_over`: node/redcheck)."""
        held = self.transmissions.of_session(session)
        if not held:
            self.uplink_dropped += 1
            return
        red = None if red_over is None else self.red_check(payload, red_over)
        if red_over is not None and red is None:
            for tx in held.values():
                tx.refused(seq, rtp_ts)  # not lost: nothing is recovered in its place
            return
        for talkgroup, tx in policing.admitted(self, held, len(payload), arrival):
            tid = tx.transmission_id
            router = self.routers.get(talkgroup)
            if router is not None and not router.forward(session, tid, payload, rtp_ts, seq, red):
                continue  # the local gate says no (revoked or pre-empted a moment ago)
            tx.packet(payload, rtp_ts, seq, arrival, red)
            self.media.publish(talkgroup, session, tid, payload, rtp_ts, seq, red is not None)

    # -- pub/sub ------------------------------------------------------------------------------
    async def _listen(self) -> None:
        floor_pattern = f"{PREFIX}:floor:*".encode()
        # Polled with a timeout until the node stops, rather than `async for ... listen()`:
        # redis-py's listen can swallow a cancellation, and a loop that cannot be stopped
        # holds the event loop's close for ever.
        while not self.stopping:
            try:
                while not self.stopping:
                    message = await self._pubsub.get_message(timeout=LISTEN_POLL_S)
                    if message is None:
                        continue
                    if message.get("type") == "psubscribe" and message.get("channel") in (
                        floor_pattern, floor_pattern.decode()
                    ):
                        # (Re)subscribed, by redis-py on reconnecting: floor events reach
                        # this node again, so floor changes may be made again.
                        self.floors.listening = True
                    self._dispatch(message)
                    self._listen_failures.success()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Until the subscription is back, an output published (a denial for the
                # requester, a floor_taken for members) would reach no one here.
                self.floors.listening = False
                self._listen_failures.failure(exc)
                await asyncio.sleep(LISTEN_RETRY_S)
                with contextlib.suppress(Exception):
                    for talkgroup in list(self.members):
                        await self._sync_gate(talkgroup)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") not in ("message", "pmessage"):
            return
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        data = message["data"]
        if self.media.is_media_channel(channel):
            packet = self.media.decode(channel, data)
            router = self.routers.get(packet.talkgroup) if packet is not None else None
            if packet is not None and router is not None:
                self.red_check.forward_remote(router, packet)
            return
        floor_channel = channel.startswith(FLOOR_CHANNELS)
        if channel in (ALERTS, EVENTS) or floor_channel:
            # Sealed by the node that sent it; anything else on these channels is a forgery.
            # Floor outputs are sealed once for all the channels of a patch (floor_store.py).
            scope = self.floors.sealed_scope if floor_channel else channel
            opened = self.sealer.open(scope, data if isinstance(data, bytes) else b"")
            if opened is None:
                self._forged.failure(ValueError(f"unsealed message on {channel}"))
                return
            data = opened
        try:
            body = json.loads(data)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        text = data.decode() if isinstance(data, bytes) else str(data)
        if channel == ALERTS:
            self._deliver_alert(body, text)
        elif channel == EVENTS:
            self._deliver_event(body, text)
        elif floor_channel:
            # Handled even without local members: a local talker may hold a patched floor.
            outputs = [fl.output_from_dict(d) for d in body.get("outputs", [])]
            version = body.get("version")
            self._events.handle_all(channel.removeprefix(FLOOR_CHANNELS), outputs,
                                    version if isinstance(version, int) else None)
        elif isinstance(talkgroup := body.get("talkgroup"), str):
            if channel.startswith(f"{PREFIX}:presence:"):
                self.schedule_presence(talkgroup)
