"""One signed-in client: its WebSocket, its peer connection, its talkgroups and floor requests.

Lifecycle (as in mediasoup): a Session owns its outbox, its `MediaPeer` (signaling/peer.py) and
its talkgroup memberships. `close(reason)` is idempotent and the first reason wins. It cascades
in order: each talkgroup is left (the node ends the session's transmission there with this
reason, then releases the floor in Redis), the peer connection is closed, the outbox is flushed
and the WebSocket is closed with a code that says why (1001 when the server stops). Every step
is bounded, so a stuck client or an unreachable Redis cannot hold a shutdown.

Transmissions are not the session's: the node's transmission table owns them.

A dead spot (a tunnel, a lift, a network change) does not end a session: when the WebSocket
drops without a closing handshake the session is *detached* for a grace period. Its floor is
released at once (a talker who cannot be heard must not hold the floor), its memberships stay,
and what it would have been sent is kept (bounded). A client that reconnects with the session's
resume token within the grace gets it back: what it missed, then the current state of each
talkgroup. After the grace the session closes as `disconnected`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable
from typing import Any, Protocol, assert_never

from redis.exceptions import RedisError

from ptt_server.core import access
from ptt_server.core import floor as fl
from ptt_server.core import messages as m
from ptt_server.core import protocol as p
from ptt_server.core.errors import Code, SignalingError
from ptt_server.core.model import Claims, EndReason, TalkgroupInfo
from ptt_server.node import metrics as node_metrics
from ptt_server.node.node import Node
from ptt_server.signaling import locations, messaging, private_call, supervision
from ptt_server.signaling.peer import MediaPeer

log = logging.getLogger("ptt.session")

OUTBOX_MAX = 512
MAX_TALKGROUPS = 16
LEAVE_TIMEOUT_S = 2.0  # releasing one floor in Redis; the transmission has ended before
CLOSE_TIMEOUT_S = 2.0  # the peer connection, then the socket's close handshake
# WebSocket close codes (RFC 6455 section 7.4.1): 1001 "going away" tells a client the server
# is stopping (reconnect elsewhere or later), 1000 is a normal end.
CLOSE_GOING_AWAY = 1001
CLOSE_NORMAL = 1000
RECONNECT_AFTER_S = 1.0
# The last messages sent are kept, numbered: what was written into a connection that turned
# out dead (bytes a tunnel swallowed) is as lost as what came while detached, and the client's
# count of what it received says exactly where to resume.
REPLAY_MAX = 256
# Numbered but not kept: snapshots a resume sends anew (send_current_state: each talkgroup as it
# is now), the largest messages (a talkgroup's whole member list, O(N) each, so O(N^2) kept
# over a talkgroup of N listeners) and of no use stale; and an earlier welcome, whose resume
# token is spent (a client taking it up again would lose its session at the next resume).
NOT_REPLAYED = (m.Joined, m.Presence, m.Welcome)


class Transport(Protocol):
    """The WebSocket as the session uses it (aiohttp's WebSocketResponse satisfies it)."""

    async def send_str(self, data: str, compress: int | None = None) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = ..., drain: bool = ...) -> bool: ...


class Session:
    def __init__(self, node: Node, claims: Claims, transport: Transport, remote: str) -> None:
        self.id = uuid.uuid4().hex
        self.node = node
        self.claims = claims
        self.remote = remote
        self._transport = transport
        self.joined: dict[str, str] = {}  # talkgroup -> mode
        self.all_call: dict[str, str] = {}  # the current all-call: talkgroup -> tid
        self.peer = MediaPeer(
            node.config, self.send, self._on_uplink,
            lambda: self.close(EndReason.DISCONNECTED), self._attach_downlink,
        )
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue(OUTBOX_MAX)
        self._writer = asyncio.create_task(self._write_loop(), name=f"session-{self.id[:8]}")
        self.closed = False
        self.close_reason: EndReason | None = None
        self._close_code = CLOSE_NORMAL
        self.resume_token = secrets.token_urlsafe(24)
        node.remember(self.resume_token, self)
        self.detached = False
        # The last REPLAY_MAX messages' texts (None: not replayed), oldest first; the last is
        # number _next_index - 1. Texts only, their numbers implied: a number and a tuple per
        # entry were 20 KiB per session once the window had filled.
        self._sent: collections.deque[str | None] = collections.deque(maxlen=REPLAY_MAX)
        self._next_index = 0  # messages sent in this session, over all its connections
        self._expiry: asyncio.TimerHandle | None = None
        self.connection = 0  # +1 each time a new connection takes the session over

    # -- output -------------------------------------------------------------------------------
    def send(self, message: m.ServerMessage) -> None:
        self.send_text(m.encode(message), not isinstance(message, NOT_REPLAYED))

    def send_text(self, text: str, replayed: bool = True) -> None:
        """Queue an already-encoded message (shared by many recipients); `replayed`: kept for
        a resume (see NOT_REPLAYED)."""
        if self.closed:
            return
        self._sent.append(text if replayed else None)
        self._next_index += 1
        if self.detached:
            return  # kept in _sent for the client to get on resume
        try:
            self._outbox.put_nowait(text)
        except asyncio.QueueFull:
            # A client that cannot keep up with signaling is gone in all but name.
            log.warning("outbox full, closing session", extra={"fields": {"session": self.id}})
            asyncio.get_running_loop().create_task(self.close(EndReason.DISCONNECTED))

    async def _write_loop(self) -> None:
        while True:
            text = await self._outbox.get()
            if text is None:
                break
            try:
                await self._transport.send_str(text)
            except Exception:
                return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self._transport.close(code=self._close_code, message=b""), CLOSE_TIMEOUT_S
            )

    # -- dispatch -----------------------------------------------------------------------------
    async def handle(self, msg: p.ClientMessage) -> None:
        try:
            await self._handle(msg)
        except RedisError:
            # Redis unreachable (restarting, failing over): retryable, and the client's
            # message was fine. Audio of a transmission under way keeps flowing locally.
            raise SignalingError(
                Code.UNAVAILABLE, "the service is briefly unavailable; try again"
            ) from None

    async def _handle(self, msg: p.ClientMessage) -> None:
        match msg:
            case p.Auth():
                raise SignalingError(Code.ALREADY_AUTHENTICATED, "already authenticated")
            case p.Join():
                await self.join(msg.talkgroup, msg.mode)
            case p.Leave():
                await self.leave(msg.talkgroup)
            case p.PresenceRequest():
                await self.presence_request(msg.talkgroup)
            case p.Offer():
                if msg.restart and self.peer.pc is not None:
                    await self.restart_media()
                await self.peer.on_offer(msg.sdp, lambda: list(self.joined))
            case p.Answer():
                await self.peer.on_answer(msg.sdp, lambda: list(self.joined))
            case p.Candidate():
                await self.peer.on_candidate(msg)
            case p.FloorRequest():
                await self.floor_request(msg.talkgroup, queue=msg.queue)
            case p.FloorRelease():
                self.require_joined(msg.talkgroup)
                await self.apply(msg.talkgroup, fl.Release(self.id, time.time()))
            case p.FloorCancel():
                self.require_joined(msg.talkgroup)
                await self.apply(msg.talkgroup, fl.CancelQueue(self.id, time.time()))
                self.send(m.FloorCancelled(talkgroup=msg.talkgroup))
            case p.FloorRevoke():
                await supervision.floor_revoke(self, msg.talkgroup)
            case p.EmergencyStart():
                await supervision.emergency_start(self, msg.talkgroup, msg.location)
            case p.EmergencyCancel():
                await supervision.emergency_cancel(self, msg.talkgroup)
            case p.EmergencyAck():
                await supervision.emergency_ack(self, msg.talkgroup)
            case p.Location():
                await locations.location(self, msg)
            case p.AllCall():
                await supervision.all_call_start(self, msg.talkgroups)
            case p.AllCallRelease():
                await supervision.all_call_release(self)
            case p.PatchCreate():
                await supervision.patch_create(self, msg.talkgroups)
            case p.PatchRemove():
                await supervision.patch_remove(self, msg.patch_id)
            case p.Ping():
                self.send(m.Pong(id=msg.id, ts=time.time()))
            case p.Status() | p.Text():
                await messaging.from_session(self, msg)
            case p.Read():
                await messaging.read(self, msg.message_id)
            case p.PrivateCallRequest():
                await private_call.request(self, msg.unit)
            case p.PrivateCallAnswer():
                await private_call.answer(self, msg.call_id, msg.accept)
            case p.PrivateCallEnd():
                await private_call.hang_up(self, msg.call_id)
            case _:
                assert_never(msg)

    async def apply(self, talkgroup: str, event: fl.FloorInput) -> list[fl.FloorOutput]:
        try:
            return await self.node.apply_floor(talkgroup, event)
        except fl.FloorError as exc:
            raise SignalingError(exc.code, str(exc)) from None

    def require_joined(self, talkgroup: str) -> str:
        mode = self.joined.get(talkgroup)
        if mode is None:
            raise SignalingError(Code.NOT_JOINED, f"not joined to talkgroup '{talkgroup}'")
        return mode

    # -- talkgroups ---------------------------------------------------------------------------
    async def join(self, talkgroup: str, mode: p.Mode) -> None:
        if talkgroup in self.joined:
            raise SignalingError(Code.ALREADY_JOINED, f"already joined to '{talkgroup}'")
        info = self.node.directory.get_talkgroup(talkgroup)
        if info is None:
            raise SignalingError(Code.UNKNOWN_TALKGROUP, f"no talkgroup '{talkgroup}'")
        # The directory as it is now, not at sign-in: an incident talkgroup given to this unit
        # a moment ago (service/incident_api.py) can be joined at once.
        self.claims = messaging.current_claims(self.node, self.claims)
        allowed = (
            access.can_join(self.claims, info) if mode == "member"
            else access.can_monitor(self.claims, info)
        )
        if not allowed:
            log.warning("join refused", extra={"fields": {
                "unit": self.claims.sub, "talkgroup": talkgroup, "mode": mode,
                "remote": self.remote}})
            raise SignalingError(Code.FORBIDDEN, f"not allowed to {mode} '{talkgroup}'")
        if len(self.joined) >= MAX_TALKGROUPS:
            raise SignalingError(Code.FORBIDDEN, f"at most {MAX_TALKGROUPS} talkgroups at once")
        self.joined[talkgroup] = mode
        await self.node.add_member(self, talkgroup, mode)
        self.send(await self._joined(talkgroup, mode, info))
        await self.peer.reconcile(list(self.joined))

    async def leave(self, talkgroup: str, reason: EndReason = EndReason.LEFT) -> None:
        self.require_joined(talkgroup)
        del self.joined[talkgroup]
        self.peer.unbind(talkgroup)
        await self.node.leave(self, talkgroup, reason)
        self.send(m.Left(talkgroup=talkgroup))

    def _attach_downlink(self, talkgroup: str, track: Any) -> None:
        router = self.node.routers.get(talkgroup)
        if router is not None:
            router.add_listener(self.id, track)

    def _on_uplink(
        self, payload: bytes, rtp_ts: int, seq: int, arrival: float, payload_type: int
    ) -> None:
        # A RED payload type this peer negotiated (signaling/peer.py): the Opus types under it.
        red_over = self.peer.red_uplink.get(payload_type)
        node_metrics.forward_uplink(self.node, self.id, payload, rtp_ts, seq, arrival,
                                    red_over)  # timed

    # -- floor --------------------------------------------------------------------------------
    async def floor_request(
        self, talkgroup: str, *, queue: bool, emergency: bool = False, linked: str | None = None
    ) -> list[fl.FloorOutput]:
        mode = self.require_joined(talkgroup)
        info = self.node.directory.get_talkgroup(talkgroup)
        may_transmit = info is not None and (
            access.can_transmit(self.claims, info, mode)
            or (linked is not None and access.can_override(self.claims))  # all-call
        )
        if not may_transmit:
            raise SignalingError(Code.FORBIDDEN, f"not allowed to transmit on '{talkgroup}'")
        try:
            return await node_metrics.floor_request(self.node, self.id, self.node.request_floor(
                self, talkgroup, queue=queue, emergency=emergency, linked=linked
            ))  # floor access time, by outcome
        except fl.FloorError as exc:
            raise SignalingError(exc.code, str(exc)) from None

    # -- dead spots ---------------------------------------------------------------------------
    async def detach(self, grace_s: float) -> None:
        """The connection dropped: keep the session for `grace_s`, floors released."""
        if self.closed or self.detached:
            return
        self.detached = True
        self._writer.cancel()  # its socket is gone
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_later(
            grace_s, lambda: loop.create_task(self.close(EndReason.DISCONNECTED))
        )
        log.info("session detached", extra={"fields": {
            "session": self.id, "unit": self.claims.sub, "grace_s": grace_s}})
        for talkgroup in list(self.joined):
            await self._bounded(self.node.release(self, talkgroup, EndReason.DISCONNECTED),
                                "release")

    async def attach(self, transport: Transport, received: int) -> list[str]:
        """A reconnected client takes the session back: a new socket and resume token; the
        messages it missed are returned, oldest first, for the caller to send after welcome.
        `received` is how many messages of this session the client got (its own count).
        The old connection may not have been noticed dead yet (a phone that changed networks
        reconnects before the server's liveness check fires): it is taken over the same way."""
        self.connection += 1
        if not self.detached:
            self.detached = True  # from here on, what is sent is kept for the new socket
            self._writer.cancel()
            for talkgroup in list(self.joined):
                await self._bounded(
                    self.node.release(self, talkgroup, EndReason.DISCONNECTED), "release")
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.node.forget(self.resume_token)
        self.resume_token = secrets.token_urlsafe(24)  # each token takes a session back once
        self.node.remember(self.resume_token, self)
        self._transport = transport
        self._outbox = asyncio.Queue(OUTBOX_MAX)
        self._writer = asyncio.create_task(self._write_loop(), name=f"session-{self.id[:8]}")
        self.detached = False
        # What the client never got is sent again and numbered again from its own count, so
        # that count and ours agree at the next resume too.
        received = min(received, self._next_index)
        first = self._next_index - len(self._sent)  # the number of the oldest one kept
        keep = max(0, received - first)  # those the client has
        missed = [text for text in itertools.islice(self._sent, keep, None) if text is not None]
        for _ in range(len(self._sent) - keep):
            self._sent.pop()
        self._next_index = received
        log.info("session resumed", extra={"fields": {
            "session": self.id, "unit": self.claims.sub, "missed": len(missed)}})
        return missed

    async def send_current_state(self) -> None:
        """Each talkgroup as it is now (a resumed client's view may be stale)."""
        for talkgroup, mode in list(self.joined.items()):
            info = self.node.directory.get_talkgroup(talkgroup)
            if info is not None:
                self.send(await self._joined(talkgroup, mode, info))

    async def _joined(self, talkgroup: str, mode: str, info: TalkgroupInfo) -> m.Joined:
        """To be sent as soon as it is returned: it marks the membership welcomed and takes
        the presence revision it lists, so no presence push may run in between."""
        members = await self.node.member_views(talkgroup)
        floor = await self.node.floor_view(talkgroup)
        patch = await self.node.patch_view(talkgroup)
        return m.Joined(
            talkgroup=talkgroup, mode=mode, name=info.name, kind=str(info.kind),
            members=members, presence_revision=self.node.welcomed(self.id, talkgroup, members),
            floor=floor, patch=patch,
        )

    async def presence_request(self, talkgroup: str) -> None:
        """The whole list again, for a client that saw a gap in revisions."""
        self.require_joined(talkgroup)
        members = await self.node.member_views(talkgroup)
        self.send(m.Presence(talkgroup=talkgroup, members=members,
                             revision=self.node.welcomed(self.id, talkgroup, members)))

    async def restart_media(self) -> None:
        """The client brings a new peer connection: the old one is closed and replaced."""
        old = self.peer
        self.peer = MediaPeer(
            self.node.config, self.send, self._on_uplink,
            lambda: self.close(EndReason.DISCONNECTED), self._attach_downlink,
        )
        for talkgroup in self.joined:
            router = self.node.routers.get(talkgroup)
            if router is not None:
                router.remove_listener(self.id)
        await old.close(CLOSE_TIMEOUT_S)

    # -- teardown -----------------------------------------------------------------------------
    async def close(self, reason: EndReason) -> None:
        if self.closed:
            return
        if self._expiry is not None:
            self._expiry.cancel()
        self.node.forget(self.resume_token)
        if reason is EndReason.SERVER_STOPPED:
            # Before anything is released: the client learns why before it sees its floor go.
            self.send(m.ServerStopping(reason=str(reason), reconnect_after_s=RECONNECT_AFTER_S))
            self._close_code = CLOSE_GOING_AWAY
        self.closed = True
        self.close_reason = reason
        # The other party of a private call is told, the call's talkgroup removed.
        await self._bounded(private_call.session_closed(self, reason), "private call")
        for talkgroup in list(self.joined):
            await self._bounded(self.node.leave(self, talkgroup, reason), "leave")
        self.joined.clear()
        await self.peer.close(CLOSE_TIMEOUT_S)
        if self.detached:
            pass  # no socket to flush or close: it is already gone
        elif self._outbox.full():
            self._writer.cancel()  # a stuck client: drop what it has not read
            await self._bounded(self._transport.close(code=self._close_code), "socket close")
        else:
            self._outbox.put_nowait(None)  # let the writer flush, then close the socket
            await self._bounded(asyncio.shield(self._writer), "socket flush")
        self.node.unregister(self)
        log.info("session closed", extra={"fields": {
            "session": self.id, "unit": self.claims.sub, "reason": reason}})

    async def _bounded(self, step: Awaitable[Any], what: str) -> None:
        try:
            await asyncio.wait_for(step, LEAVE_TIMEOUT_S + CLOSE_TIMEOUT_S)
        except Exception as exc:  # includes TimeoutError: closing goes on regardless
            log.warning("session close step failed", extra={"fields": {
                "session": self.id, "step": what, "error": type(exc).__name__}})
