"""One server node (process): local sessions and routers, glued to Redis floor and presence.

Data path: a talker's uplink tap -> Node.forward_uplink -> the talkgroup's router (gate check,
fan-out to local listeners) -> the recorder, and -> Redis pub/sub for listeners on other nodes.
Control path: Session -> FloorStore.apply (atomic in Redis) -> outputs published on
`ptt:floor:{tg}` -> every node's subscriber -> local sessions and gates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from ptt_server.control.floor_store import PATCH_PREFIX, FloorStore
from ptt_server.control.presence import Member, Presence
from ptt_server.core import floor as fl
from ptt_server.core.config import Config
from ptt_server.core.model import EndReason
from ptt_server.core.protocol import FloorView, MemberView, encode
from ptt_server.media.router import TalkgroupRouter

if TYPE_CHECKING:
    from ptt_server.identity.directory import Directory
    from ptt_server.recording.recorder import Recorder, RecordingHandle
    from ptt_server.signaling.session import Session

log = logging.getLogger("ptt.node")

PREFIX = "ptt"
TICK_S = 0.2
LEASE_REFRESH_S = 0.5
PRESENCE_REFRESH_S = 3.0
PRESENCE_COALESCE_S = 0.2
MEDIA_HEADER = struct.Struct("!BHHIH")  # version, len(node), len(session+tid), rtp ts, seq
MEDIA_QUEUE_MAX = 512
ALERTS = f"{PREFIX}:alerts"
EVENTS = f"{PREFIX}:events"  # patch changes: delivered to members of the talkgroups named
ALERTED_ROLES = frozenset({"supervisor", "dispatcher", "admin"})

FLOOR_END_REASONS: dict[str, EndReason] = {
    "released": EndReason.RELEASED,
    "timeout": EndReason.TIMEOUT,
    "revoked": EndReason.REVOKED,
    "preempted": EndReason.PREEMPTED,
    "disconnected": EndReason.DISCONNECTED,
    "server_stopped": EndReason.SERVER_STOPPED,
    "left": EndReason.LEFT,
}


def new_transmission_id() -> str:
    return uuid.uuid4().hex


class Node:
    def __init__(
        self,
        config: Config,
        redis: aioredis.Redis,
        directory: Directory,
        recorder: Recorder | None,
    ) -> None:
        self.config = config
        self.id = config.node_id
        self.redis = redis
        self.directory = directory
        self.recorder = recorder
        self.floors = FloorStore(
            redis, lease_s=config.floor_lease_s, prefix=PREFIX,
            queue_timeout_s=config.floor_queue_timeout_s,
        )
        self.presence = Presence(redis, ttl_s=config.presence_ttl_s, prefix=PREFIX)
        self.sessions: dict[str, Session] = {}
        self.routers: dict[str, TalkgroupRouter] = {}
        self.members: dict[str, dict[str, Session]] = {}  # talkgroup -> session id -> session
        # (transmission id, talkgroup) -> handle: a patched or all-call transmission is
        # recorded once per talkgroup, linked by the transmission id.
        self.recordings: dict[tuple[str, str], RecordingHandle] = {}
        self._pubsub: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._media_out: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(MEDIA_QUEUE_MAX)
        self.media_dropped = 0  # packets for other nodes lost to a backed-up Redis link
        self._presence_due: set[str] = set()

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        self._pubsub = self.redis.pubsub()
        await self._pubsub.psubscribe(f"{PREFIX}:floor:*", f"{PREFIX}:presence:*")
        await self._pubsub.subscribe(ALERTS, EVENTS)
        self._tasks = [
            asyncio.create_task(self._listen(), name="node-pubsub"),
            asyncio.create_task(self._ticker(), name="node-ticker"),
            asyncio.create_task(self._media_publisher(), name="node-media-out"),
        ]
        log.info("node started")

    async def close_sessions(self) -> None:
        """Close every session with reason server_stopped (floors released)."""
        await asyncio.gather(
            *(s.close(EndReason.SERVER_STOPPED) for s in list(self.sessions.values())),
            return_exceptions=True,
        )

    async def stop(self) -> None:
        """Close every session (floors released, recordings finished), then stop tasks."""
        await self.close_sessions()
        for handle in list(self.recordings.values()):
            handle.finish(EndReason.SERVER_STOPPED, time.time())
        self.recordings.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()

    # -- membership ---------------------------------------------------------------------------
    def router(self, talkgroup: str) -> TalkgroupRouter:
        router = self.routers.get(talkgroup)
        if router is None:
            router = self.routers[talkgroup] = TalkgroupRouter(talkgroup)
        return router

    async def add_member(self, session: Session, talkgroup: str, mode: str) -> None:
        first_here = talkgroup not in self.members
        self.members.setdefault(talkgroup, {})[session.id] = session
        self.router(talkgroup)
        if first_here:
            await self._pubsub.subscribe(f"{PREFIX}:media:{talkgroup}")
            # Late entry: a transmission already under way from another node opens our gate.
            await self._sync_gate(talkgroup)
        await self.presence.join(talkgroup, self._member(session, talkgroup, mode), time.time())

    def _member(self, session: Session, talkgroup: str, mode: str | None = None) -> Member:
        return Member(
            session=session.id, unit=session.claims.sub, alias=session.claims.alias,
            role=str(session.claims.role), node=self.id,
            mode=mode or session.joined.get(talkgroup, "member"), since=time.time(),
        )

    async def remove_member(self, session: Session, talkgroup: str) -> None:
        group = self.members.get(talkgroup)
        if group is None or group.pop(session.id, None) is None:
            return
        router = self.routers.get(talkgroup)
        if router is not None:
            router.remove_listener(session.id)
        if not group:
            del self.members[talkgroup]
            self.routers.pop(talkgroup, None)
            with contextlib.suppress(Exception):
                await self._pubsub.unsubscribe(f"{PREFIX}:media:{talkgroup}")
        with contextlib.suppress(Exception):
            await self.presence.leave(talkgroup, session.id)

    async def _sync_gate(self, talkgroup: str) -> None:
        floor = await self.floors.get(talkgroup)
        router = self.router(talkgroup)
        if floor.grant is not None:
            router.open(floor.grant.participant.session, floor.grant.transmission_id)

    # -- views --------------------------------------------------------------------------------
    async def floor_view(self, talkgroup: str) -> FloorView:
        floor = await self.floors.get(talkgroup)
        grant = floor.grant
        if grant is None:
            return FloorView(state="idle", emergency=floor.emergency)
        return FloorView(
            state="taken", unit=grant.participant.unit, alias=grant.participant.alias,
            transmission_id=grant.transmission_id, emergency=floor.emergency or grant.emergency,
        )

    async def patch_view(self, talkgroup: str) -> dict[str, Any] | None:
        """The patch a talkgroup is in, if any (so a client joining later knows it)."""
        floor_id = await self.floors.floor_key_for(talkgroup)
        if not floor_id.startswith(PATCH_PREFIX):
            return None
        patch_id = floor_id.removeprefix(PATCH_PREFIX)
        return {"patch_id": patch_id, "talkgroups": await self.floors.patch_members(patch_id)}

    async def member_views(self, talkgroup: str) -> list[dict[str, Any]]:
        members = await self.presence.members(talkgroup, time.time())
        router = self.routers.get(talkgroup)
        talking = router.gate.session if router is not None and router.gate else None
        if router is None:
            floor = await self.floors.get(talkgroup)
            talking = floor.grant.participant.session if floor.grant else None
        return [
            MemberView(
                unit=m.unit, alias=m.alias, role=m.role, mode=m.mode, session=m.session,
                state="talking" if m.session == talking else "idle",
            ).to_dict()
            for m in members
        ]

    async def push_presence(self, talkgroup: str) -> None:
        group = self.members.get(talkgroup)
        if not group:
            return
        views = await self.member_views(talkgroup)
        # Encoded once for every member: the list grows with the talkgroup, so per-member
        # encoding would make each change cost O(members^2) on the media event loop.
        text = encode({"type": "presence", "talkgroup": talkgroup, "members": views})
        for session in list(group.values()):
            if talkgroup in session.welcomed:  # `joined` first, then presence updates
                session.send_text(text)

    # -- floor --------------------------------------------------------------------------------
    def participant(self, session: Session, emergency: bool = False) -> fl.Participant:
        c = session.claims
        return fl.Participant(
            session=session.id, unit=c.sub, alias=c.alias, role=str(c.role), node=self.id,
            priority=c.priority,
        )

    def max_duration(self, talkgroup: str) -> float:
        info = self.directory.get_talkgroup(talkgroup)
        if info is not None and info.max_duration_s:
            return float(info.max_duration_s)
        return self.config.floor_max_duration_s

    async def apply_floor(self, talkgroup: str, event: fl.FloorInput) -> list[fl.FloorOutput]:
        """Apply an event. A grant is handled at once (the talker's gate opens and it hears
        its grant without a pub/sub round trip); everything, the grant included, also arrives
        through the subscriber, the one path every node shares (grants are de-duplicated)."""
        _floor, outputs = await self.floors.apply(talkgroup, event)
        for out in outputs:
            if isinstance(out, fl.Granted):
                self._handle_output(talkgroup, out)
        return outputs

    def _handle_outputs(self, talkgroup: str, outputs: Iterable[fl.FloorOutput]) -> None:
        for out in outputs:
            try:
                self._handle_output(talkgroup, out)
            except Exception:
                log.exception("floor output handling failed")
        self._schedule_presence(talkgroup)

    def _schedule_presence(self, talkgroup: str) -> None:
        """Push the member list soon, once for any number of changes in that time: a burst
        of joins, or a floor change, costs one push instead of one per event."""
        if talkgroup in self.members and talkgroup not in self._presence_due:
            self._presence_due.add(talkgroup)
            asyncio.get_running_loop().call_later(
                PRESENCE_COALESCE_S, self._spawn_presence, talkgroup
            )

    def _spawn_presence(self, talkgroup: str) -> None:
        self._presence_due.discard(talkgroup)
        asyncio.get_running_loop().create_task(self._safe_push_presence(talkgroup))

    async def _safe_push_presence(self, talkgroup: str) -> None:
        with contextlib.suppress(Exception):
            await self.push_presence(talkgroup)

    def _local(self, talkgroup: str, session_id: str) -> Session | None:
        group = self.members.get(talkgroup)
        return group.get(session_id) if group else None

    def _broadcast(self, talkgroup: str, msg: dict[str, Any], skip: str | None = None) -> None:
        for sid, session in list(self.members.get(talkgroup, {}).items()):
            if sid != skip:
                session.send(msg)

    def _handle_output(self, talkgroup: str, out: fl.FloorOutput) -> None:
        match out:
            case fl.Granted():
                session = self._local(talkgroup, out.session)
                if session is None or out.transmission_id in session.grants:
                    return
                session.holding[talkgroup] = out.transmission_id
                session.grants[out.transmission_id] = (
                    talkgroup, out.granted_at + out.max_duration_s
                )
                self.router(talkgroup).open(out.session, out.transmission_id)
                self._ensure_recording(talkgroup, session, out.transmission_id, out.emergency,
                                       out.granted_at)
                session.send({
                    "type": "floor_granted", "talkgroup": talkgroup,
                    "transmission_id": out.transmission_id,
                    "max_duration_s": out.max_duration_s, "emergency": out.emergency,
                    "from_queue": out.from_queue,
                })
            case fl.Taken():
                if talkgroup in self.routers:
                    self.routers[talkgroup].open(out.session, out.transmission_id)
                talker = self.sessions.get(out.session)
                if talker is not None:
                    # Our session talks on this talkgroup: the one it asked for, or another one
                    # that shares its floor (a patch); its uplink is routed to each of them.
                    talker.holding[talkgroup] = out.transmission_id
                    self._ensure_recording(talkgroup, talker, out.transmission_id,
                                           out.emergency, time.time())
                self._broadcast(talkgroup, {
                    "type": "floor_taken", "talkgroup": talkgroup, "unit": out.unit,
                    "alias": out.alias, "transmission_id": out.transmission_id,
                    "emergency": out.emergency, "priority": out.priority,
                }, skip=out.session)
            case fl.Denied():
                session = self._local(talkgroup, out.session)
                if session is not None:
                    session.send({
                        "type": "floor_denied", "talkgroup": talkgroup, "reason": out.reason,
                        "holder": {"unit": out.holder_unit, "alias": out.holder_alias},
                    })
            case fl.Queued() | fl.QueuePosition():
                session = self._local(talkgroup, out.session)
                if session is not None:
                    session.send({
                        "type": "floor_queued", "talkgroup": talkgroup,
                        "position": out.position,
                    })
            case fl.QueueExpired():
                session = self._local(talkgroup, out.session)
                if session is not None:
                    session.send({
                        "type": "floor_denied", "talkgroup": talkgroup,
                        "reason": "queue_timeout", "holder": None,
                    })
            case fl.Revoked():
                self._end_transmission(talkgroup, out.transmission_id, out.reason)
                session = self._local(talkgroup, out.session)
                if session is not None:
                    session.send({
                        "type": "floor_revoked", "talkgroup": talkgroup,
                        "transmission_id": out.transmission_id, "reason": out.reason,
                    })
            case fl.Idle():
                self._end_transmission(talkgroup, out.transmission_id, out.reason)
                self._broadcast(talkgroup, {
                    "type": "floor_idle", "talkgroup": talkgroup,
                    "transmission_id": out.transmission_id, "reason": out.reason,
                })
            case fl.EmergencyCleared():
                pass  # announced by the session that cleared it, on the alert channel
            case _:
                log.warning("unhandled floor output %r", out)

    def _end_transmission(self, talkgroup: str, transmission_id: str, reason: str) -> None:
        router = self.routers.get(talkgroup)
        if router is not None:
            router.close(transmission_id)
        for session in self.sessions.values():
            if session.holding.get(talkgroup) == transmission_id:
                del session.holding[talkgroup]
                session.grants.pop(transmission_id, None)
        handle = self.recordings.pop((transmission_id, talkgroup), None)
        if handle is not None:
            handle.finish(FLOOR_END_REASONS.get(reason, EndReason.REVOKED), time.time())

    def _ensure_recording(
        self, talkgroup: str, session: Session, tid: str, emergency: bool, started_at: float
    ) -> None:
        """Start recording a local talker's transmission on a talkgroup (once). The talkgroup
        the talker asked for is recorded under the transmission id; another talkgroup that
        shares the floor (a patch) gets its own recording, linked by that id."""
        if self.recorder is None or (tid, talkgroup) in self.recordings:
            return
        from ptt_server.recording.recorder import TransmissionMeta

        primary = session.requests.get(tid) == talkgroup
        recording_id = tid if primary else uuid.uuid5(uuid.NAMESPACE_URL, f"{tid}/{talkgroup}").hex
        linked = session.linked.get(tid) if primary else tid
        meta = TransmissionMeta(
            transmission_id=recording_id, talkgroup=talkgroup, unit=session.claims.sub,
            alias=session.claims.alias, role=str(session.claims.role), node_id=self.id,
            started_at=started_at, emergency=emergency, linked_id=linked,
        )
        self.recordings[(tid, talkgroup)] = self.recorder.begin(meta)

    async def audit(self, kind: str, fields: dict[str, Any]) -> None:
        """Append a control event (emergency, patch, override) to the audit ledger."""
        if self.recorder is None:
            return
        entry = {"node_id": self.id, **fields}
        try:
            await asyncio.to_thread(self.recorder.ledger.append, kind, entry)
        except Exception:
            log.exception("audit ledger append failed", extra={"fields": {"kind": kind}})

    async def announce(self, event: dict[str, Any]) -> None:
        """Tell members of the talkgroups an event names, on every node."""
        await self.redis.publish(EVENTS, json.dumps(event))

    def _deliver_event(self, event: dict[str, Any]) -> None:
        told: set[str] = set()
        for talkgroup in event.get("talkgroups", []):
            for sid, session in list(self.members.get(talkgroup, {}).items()):
                if sid not in told:
                    told.add(sid)
                    session.send(event)

    # -- alerts -------------------------------------------------------------------------------
    async def alert_emergency(
        self, session: Session, talkgroup: str, location: dict[str, float] | None
    ) -> None:
        """An officer's emergency reaches every supervisor and dispatcher online, whatever
        talkgroups they are in, on every node."""
        await self.alert({
            "type": "emergency", "talkgroup": talkgroup, "unit": session.claims.sub,
            "alias": session.claims.alias, "location": location, "ts": time.time(),
        })

    async def alert(self, alert: dict[str, Any]) -> None:
        await self.redis.publish(ALERTS, json.dumps(alert))

    def _deliver_alert(self, alert: dict[str, Any]) -> None:
        for session in list(self.sessions.values()):
            if str(session.claims.role) in ALERTED_ROLES or alert.get("talkgroup") in (
                session.joined
            ):
                session.send(alert)

    # -- media --------------------------------------------------------------------------------
    def forward_uplink(
        self, session: Session, payload: bytes, rtp_ts: int, seq: int, arrival: float
    ) -> None:
        """A talker's packet: forwarded only on a talkgroup whose floor this session holds."""
        for talkgroup, tid in session.holding.items():
            router = self.routers.get(talkgroup)
            if router is not None and not router.forward(session.id, tid, payload, rtp_ts):
                continue  # the local gate says no (revoked or pre-empted a moment ago)
            handle = self.recordings.get((tid, talkgroup))
            if handle is not None:
                handle.packet(payload, rtp_ts, seq, arrival)
            self._publish_media(talkgroup, session.id, tid, payload, rtp_ts, seq)
        if not session.holding:
            session.dropped_uplink += 1

    def _publish_media(
        self, talkgroup: str, session: str, tid: str, payload: bytes, rtp_ts: int, seq: int
    ) -> None:
        node = self.id.encode()
        ident = f"{session}/{tid}".encode()
        data = MEDIA_HEADER.pack(1, len(node), len(ident), rtp_ts, seq) + node + ident + payload
        try:
            self._media_out.put_nowait((f"{PREFIX}:media:{talkgroup}", data))
        except asyncio.QueueFull:
            # Real-time: a backed-up Redis link loses the oldest audio, never blocks forwarding.
            with contextlib.suppress(asyncio.QueueEmpty):
                self._media_out.get_nowait()
            self._media_out.put_nowait((f"{PREFIX}:media:{talkgroup}", data))
            self.media_dropped += 1

    async def _media_publisher(self) -> None:
        while True:
            channel, data = await self._media_out.get()
            batch = [(channel, data)]
            while not self._media_out.empty() and len(batch) < 64:
                batch.append(self._media_out.get_nowait())
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for ch, d in batch:
                        pipe.publish(ch, d)
                    await pipe.execute()
            except Exception:
                log.exception("media publish failed")
                await asyncio.sleep(0.1)

    def _remote_media(self, channel: str, data: bytes) -> None:
        talkgroup = channel.rsplit(":", 1)[-1]
        try:
            version, nlen, ilen, rtp_ts, _seq = MEDIA_HEADER.unpack_from(data)
        except struct.error:
            return
        if version != 1:
            return
        off = MEDIA_HEADER.size
        node = data[off:off + nlen].decode(errors="replace")
        if node == self.id:
            return
        session, _, tid = data[off + nlen:off + nlen + ilen].decode(errors="replace").partition("/")
        router = self.routers.get(talkgroup)
        if router is not None:
            router.forward(session, tid, data[off + nlen + ilen:], rtp_ts)

    # -- background ---------------------------------------------------------------------------
    async def _listen(self) -> None:
        while True:
            try:
                async for message in self._pubsub.listen():
                    self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pub/sub listener failed; resubscribing")
                await asyncio.sleep(0.5)
                with contextlib.suppress(Exception):
                    await self._resync()

    async def _resync(self) -> None:
        for talkgroup in list(self.members):
            await self._sync_gate(talkgroup)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind not in ("message", "pmessage"):
            return
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        data = message["data"]
        if channel.startswith(f"{PREFIX}:media:"):
            self._remote_media(channel, data)
            return
        try:
            body = json.loads(data)
        except ValueError:
            return
        if channel == ALERTS:
            self._deliver_alert(body)
            return
        if channel == EVENTS:
            self._deliver_event(body)
            return
        talkgroup = body.get("talkgroup")
        if not isinstance(talkgroup, str):
            return
        if channel.startswith(f"{PREFIX}:floor:"):
            # Handled even without local members: a local talker may hold a patched floor.
            outputs = [fl.output_from_dict(d) for d in body.get("outputs", [])]
            self._handle_outputs(talkgroup, outputs)
        elif channel.startswith(f"{PREFIX}:presence:"):
            self._schedule_presence(talkgroup)

    async def _ticker(self) -> None:
        last_lease = last_presence = 0.0
        while True:
            await asyncio.sleep(TICK_S)
            now = time.time()
            try:
                await self.floors.tick_due(now)
                self._warn_time_limits(now)
                if now - last_lease >= LEASE_REFRESH_S:
                    last_lease = now
                    await self._refresh_leases(now)
                if now - last_presence >= PRESENCE_REFRESH_S:
                    last_presence = now
                    pairs = [(tg, sid) for tg, group in self.members.items() for sid in group]
                    if pairs:
                        missing = await self.presence.refresh(pairs, now)
                        await self._rejoin(missing, now)
                    await self.presence.sweep(now)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node ticker failed")

    def _warn_time_limits(self, now: float) -> None:
        """TS 24.380's stop-talking timer warning: tell a talker shortly before the limit."""
        for session in list(self.sessions.values()):
            for tid, (talkgroup, expires_at) in list(session.grants.items()):
                remaining = expires_at - now
                if remaining <= self.config.floor_warning_s and tid not in session.warned:
                    session.warned.add(tid)
                    session.send({
                        "type": "floor_warning", "talkgroup": talkgroup,
                        "transmission_id": tid, "remaining_s": round(max(0.0, remaining), 1),
                    })

    async def _rejoin(self, missing: Iterable[tuple[str, str]], now: float) -> None:
        """Entries swept while this node could not refresh them (e.g. cut off from Redis for
        a while): its members are still here, so they come back."""
        for talkgroup, sid in missing:
            session = self.members.get(talkgroup, {}).get(sid)
            if session is not None:
                await self.presence.join(talkgroup, self._member(session, talkgroup), now)

    async def _refresh_leases(self, now: float) -> None:
        for session in list(self.sessions.values()):
            for talkgroup in list(session.holding):
                with contextlib.suppress(fl.FloorError):
                    await self.floors.apply(
                        talkgroup, fl.Refresh(session.id, now, self.config.floor_lease_s)
                    )
