"""One signed-in client: its WebSocket, its peer connection, its talkgroups and floor.

Lifecycle (as in mediasoup): a Session owns one uplink (the client's microphone track, tapped)
and one downlink slot per talkgroup it listens to. `close(reason)` is idempotent and cascades:
floors released, talkgroups left, peer connection closed; the reason reaches the audit record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, assert_never

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from ptt_server.core import access
from ptt_server.core import floor as fl
from ptt_server.core import protocol as p
from ptt_server.core.errors import Code, SignalingError
from ptt_server.core.model import Claims, EndReason
from ptt_server.media import ice, sdp
from ptt_server.media.downlink import DownlinkTrack
from ptt_server.media.egress import DirectRtpWriter
from ptt_server.media.uplink import tap_receiver
from ptt_server.node.node import Node, new_transmission_id

log = logging.getLogger("ptt.session")

OUTBOX_MAX = 512
EMERGENCY_KEY = "ptt:emergency"  # talkgroup -> unit that raised the emergency
MAX_TALKGROUPS = 16


@dataclass
class Slot:
    """A send-capable transceiver with its long-lived track, bound to at most one talkgroup."""

    transceiver: Any
    track: DownlinkTrack
    talkgroup: str | None = None
    announced: bool = False


class Session:
    def __init__(
        self, node: Node, claims: Claims, send_raw: Callable[[str], Any], remote: str
    ) -> None:
        self.id = uuid.uuid4().hex
        self.node = node
        self.claims = claims
        self.remote = remote
        self._send_raw = send_raw
        self.joined: dict[str, str] = {}  # talkgroup -> mode
        self.welcomed: set[str] = set()  # talkgroups whose `joined` message has been sent
        self.holding: dict[str, str] = {}  # talkgroup -> transmission id (set by the node)
        self.grants: dict[str, tuple[str, float]] = {}  # tid -> (talkgroup, transmit limit)
        self.warned: set[str] = set()  # tids already warned of their time limit
        self.requests: dict[str, str] = {}  # tid -> talkgroup this session asked the floor of
        self.linked: dict[str, str] = {}  # tid -> all-call id
        self.all_call: dict[str, str] = {}  # the current all-call: talkgroup -> tid
        self.pc: RTCPeerConnection | None = None
        self.slots: list[Slot] = []
        self._pending_slots: list[Slot] = []
        self._negotiating = False
        self._numbering: sdp.Numbering | None = None  # the client's payload types and ext ids
        self._lock = asyncio.Lock()
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue(OUTBOX_MAX)
        self._writer = asyncio.create_task(self._write_loop(), name=f"session-{self.id[:8]}")
        self.closed = False
        self.close_reason: EndReason | None = None
        self.dropped_uplink = 0
        self.on_close: Callable[[Session], None] | None = None

    # -- output -------------------------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        self.send_text(p.encode(message))

    def send_text(self, text: str) -> None:
        """Queue an already-encoded message (shared by many recipients)."""
        if self.closed:
            return
        try:
            self._outbox.put_nowait(text)
        except asyncio.QueueFull:
            # A client that cannot keep up with signaling is gone in all but name.
            log.warning("outbox full, closing session %s", self.id)
            asyncio.get_running_loop().create_task(self.close(EndReason.DISCONNECTED))

    async def _write_loop(self) -> None:
        while True:
            text = await self._outbox.get()
            if text is None:
                return
            try:
                await self._send_raw(text)
            except Exception:
                return

    # -- dispatch -----------------------------------------------------------------------------
    async def handle(self, msg: p.ClientMessage) -> None:
        match msg:
            case p.Auth():
                raise SignalingError(Code.ALREADY_AUTHENTICATED, "already authenticated")
            case p.Join():
                await self.join(msg.talkgroup, msg.mode)
            case p.Leave():
                await self.leave(msg.talkgroup)
            case p.Offer():
                await self.on_offer(msg.sdp)
            case p.Answer():
                await self.on_answer(msg.sdp)
            case p.Candidate():
                await self.on_candidate(msg)
            case p.FloorRequest():
                await self.floor_request(msg.talkgroup, queue=msg.queue)
            case p.FloorRelease():
                await self.floor_release(msg.talkgroup)
            case p.FloorCancel():
                self._require_joined(msg.talkgroup)
                await self._apply(msg.talkgroup, fl.CancelQueue(self.id, time.time()))
                self.send({"type": "floor_cancelled", "talkgroup": msg.talkgroup})
            case p.FloorRevoke():
                await self.floor_revoke(msg.talkgroup)
            case p.EmergencyStart():
                await self.emergency_start(msg.talkgroup, msg.location)
            case p.EmergencyCancel():
                await self.emergency_cancel(msg.talkgroup)
            case p.AllCall():
                await self.all_call_start(msg.talkgroups)
            case p.AllCallRelease():
                await self.all_call_release()
            case p.PatchCreate():
                await self.patch_create(msg.talkgroups)
            case p.PatchRemove():
                await self.patch_remove(msg.patch_id)
            case p.Ping():
                self.send({"type": "pong", "id": msg.id, "ts": time.time()})
            case _:
                assert_never(msg)

    async def _apply(self, talkgroup: str, event: fl.FloorInput) -> list[fl.FloorOutput]:
        try:
            return await self.node.apply_floor(talkgroup, event)
        except fl.FloorError as exc:
            raise SignalingError(exc.code, str(exc)) from None

    def _require_joined(self, talkgroup: str) -> str:
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
        allowed = (
            access.can_join(self.claims, info) if mode == "member"
            else access.can_monitor(self.claims, info)
        )
        if not allowed:
            log.warning(
                "join refused",
                extra={"fields": {"unit": self.claims.sub, "talkgroup": talkgroup,
                                  "mode": mode, "remote": self.remote}},
            )
            raise SignalingError(Code.FORBIDDEN, f"not allowed to {mode} '{talkgroup}'")
        if len(self.joined) >= MAX_TALKGROUPS:
            raise SignalingError(Code.FORBIDDEN, f"at most {MAX_TALKGROUPS} talkgroups at once")
        self.joined[talkgroup] = mode
        await self.node.add_member(self, talkgroup, mode)
        self.send({
            "type": "joined", "talkgroup": talkgroup, "mode": mode, "name": info.name,
            "kind": str(info.kind), "members": await self.node.member_views(talkgroup),
            "floor": (await self.node.floor_view(talkgroup)).to_dict(),
            "patch": await self.node.patch_view(talkgroup),
        })
        self.welcomed.add(talkgroup)
        await self._reconcile_downlinks()

    async def leave(self, talkgroup: str, reason: EndReason = EndReason.LEFT) -> None:
        self._require_joined(talkgroup)
        await self._drop_floor(talkgroup, reason)
        del self.joined[talkgroup]
        self.welcomed.discard(talkgroup)
        for slot in self.slots:
            if slot.talkgroup == talkgroup:
                slot.talkgroup = None
                slot.announced = False
                slot.track.clear()
        await self.node.remove_member(self, talkgroup)
        self.send({"type": "left", "talkgroup": talkgroup})

    async def _drop_floor(self, talkgroup: str, reason: EndReason) -> None:
        """Leave the floor (holder or queued) of a talkgroup we are leaving."""
        with contextlib.suppress(fl.FloorError, SignalingError):
            await self.node.apply_floor(talkgroup, fl.Disconnect(self.id, time.time()))
        tid = self.holding.pop(talkgroup, None)
        if tid is not None:
            # Finish here with our own reason: the floor's pub/sub event may never reach a
            # node that no longer has members in this talkgroup.
            handle = self.node.recordings.pop((tid, talkgroup), None)
            if handle is not None:
                handle.finish(reason, time.time())

    # -- floor --------------------------------------------------------------------------------
    async def floor_request(
        self, talkgroup: str, *, queue: bool, emergency: bool = False, linked: str | None = None
    ) -> list[fl.FloorOutput]:
        mode = self._require_joined(talkgroup)
        info = self.node.directory.get_talkgroup(talkgroup)
        may_transmit = info is not None and (
            access.can_transmit(self.claims, info, mode)
            or (linked is not None and access.can_override(self.claims))  # all-call
        )
        if not may_transmit:
            raise SignalingError(Code.FORBIDDEN, f"not allowed to transmit on '{talkgroup}'")
        tid = new_transmission_id()
        self.requests[tid] = talkgroup
        if linked is not None:
            self.linked[tid] = linked
        limit = (
            self.node.config.floor_emergency_max_duration_s if emergency
            else self.node.max_duration(talkgroup)
        )
        event = fl.Request(
            participant=self.node.participant(self), now=time.time(), max_duration_s=limit,
            transmission_id=tid, queue=queue, emergency=emergency,
        )
        return await self._apply(talkgroup, event)

    async def floor_release(self, talkgroup: str) -> None:
        self._require_joined(talkgroup)
        await self._apply(talkgroup, fl.Release(self.id, time.time()))

    def _require_override(self, talkgroup: str) -> None:
        info = self.node.directory.get_talkgroup(talkgroup)
        if info is None:
            raise SignalingError(Code.UNKNOWN_TALKGROUP, f"no talkgroup '{talkgroup}'")
        if not access.can_override(self.claims) or not access.can_monitor(self.claims, info):
            raise SignalingError(
                Code.FORBIDDEN, f"only supervisors and dispatchers may do that on '{talkgroup}'"
            )

    async def floor_revoke(self, talkgroup: str) -> None:
        self._require_override(talkgroup)
        before = await self.node.floors.get(talkgroup)
        await self._apply(talkgroup, fl.Revoke(time.time(), "revoked", by=self.claims.sub))
        if before.grant is not None:
            await self.node.audit("floor_revoke", {
                "talkgroup": talkgroup, "transmission_id": before.grant.transmission_id,
                "unit": before.grant.participant.unit, "by": self.claims.sub,
                "reason": "revoked",
            })

    async def emergency_start(self, talkgroup: str, location: dict[str, float] | None) -> None:
        self._require_joined(talkgroup)
        await self.node.redis.hset(EMERGENCY_KEY, talkgroup, self.claims.sub)
        await self.node.audit("emergency", {
            "action": "start", "talkgroup": talkgroup, "unit": self.claims.sub,
            "alias": self.claims.alias, "location": location,
        })
        await self.node.alert_emergency(self, talkgroup, location)
        await self.floor_request(talkgroup, queue=True, emergency=True)

    async def emergency_cancel(self, talkgroup: str) -> None:
        self._require_joined(talkgroup)
        raised_by = await self.node.redis.hget(EMERGENCY_KEY, talkgroup)
        owner = raised_by.decode() if isinstance(raised_by, bytes) else raised_by
        if owner != self.claims.sub and not access.can_override(self.claims):
            raise SignalingError(
                Code.FORBIDDEN, "only the unit that raised it or a supervisor may clear it"
            )
        await self._apply(talkgroup, fl.EmergencyClear(time.time(), by=self.claims.sub))
        await self.node.redis.hdel(EMERGENCY_KEY, talkgroup)
        await self.node.audit("emergency", {
            "action": "clear", "talkgroup": talkgroup, "raised_by": owner, "by": self.claims.sub,
        })
        await self.node.alert({
            "type": "emergency_cleared", "talkgroup": talkgroup, "by": self.claims.sub,
            "alias": self.claims.alias,
        })

    # -- all-call and patches -------------------------------------------------------------
    async def all_call_start(self, talkgroups: tuple[str, ...]) -> None:
        """Take every named floor for one transmission, or none (all or nothing)."""
        if self.all_call:
            raise SignalingError(Code.BAD_MESSAGE, "an all-call is already under way")
        for tg in talkgroups:
            self._require_override(tg)
            self._require_joined(tg)
        call_id = new_transmission_id()
        granted: dict[str, str] = {}
        refused: dict[str, Any] | None = None
        for tg in talkgroups:
            outputs = await self.floor_request(tg, queue=False, linked=call_id)
            grant = next((o for o in outputs if isinstance(o, fl.Granted)
                          and o.session == self.id), None)
            if grant is None:
                denied = next((o for o in outputs if isinstance(o, fl.Denied)), None)
                refused = {"talkgroup": tg, "reason": denied.reason if denied else "denied",
                           "holder": {"unit": denied.holder_unit, "alias": denied.holder_alias}
                           if denied else None}
                break
            granted[tg] = grant.transmission_id
        if refused is not None:
            for tg in granted:
                with contextlib.suppress(fl.FloorError):
                    await self.node.apply_floor(tg, fl.Release(self.id, time.time()))
            self.send({"type": "all_call_denied", "talkgroups": list(talkgroups), **refused})
            return
        self.all_call = granted
        self.send({"type": "all_call_granted", "all_call_id": call_id, "talkgroups": granted})

    async def all_call_release(self) -> None:
        if not self.all_call:
            raise SignalingError(Code.NOT_HOLDER, "no all-call under way")
        calls, self.all_call = self.all_call, {}
        for tg in calls:
            with contextlib.suppress(fl.FloorError):
                await self.node.apply_floor(tg, fl.Release(self.id, time.time()))

    async def patch_create(self, talkgroups: tuple[str, ...]) -> None:
        for tg in talkgroups:
            self._require_override(tg)
        patch_id = uuid.uuid4().hex[:12]
        try:
            await self.node.floors.patch(patch_id, list(talkgroups))
        except fl.FloorError as exc:
            raise SignalingError(exc.code, str(exc)) from None
        await self.node.audit("patch", {
            "action": "create", "patch_id": patch_id, "talkgroups": list(talkgroups),
            "by": self.claims.sub,
        })
        await self.node.announce({
            "type": "patched", "patch_id": patch_id, "talkgroups": list(talkgroups),
            "by": self.claims.sub,
        })

    async def patch_remove(self, patch_id: str) -> None:
        talkgroups = await self.node.floors.patch_members(patch_id)
        if not talkgroups:
            raise SignalingError("unknown_patch", f"no patch '{patch_id}'")
        for tg in talkgroups:
            self._require_override(tg)
        try:
            await self.node.floors.unpatch(patch_id)
        except fl.FloorError as exc:
            raise SignalingError(exc.code, str(exc)) from None
        await self.node.audit("patch", {
            "action": "remove", "patch_id": patch_id, "talkgroups": talkgroups,
            "by": self.claims.sub,
        })
        await self.node.announce({
            "type": "unpatched", "patch_id": patch_id, "talkgroups": talkgroups,
            "by": self.claims.sub,
        })

    # -- WebRTC -------------------------------------------------------------------------------
    def _new_pc(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(ice.rtc_configuration(self.node.config.ice_servers))

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind != "audio":
                return
            for transceiver in pc.getTransceivers():
                if transceiver.receiver.track is track:
                    tap_receiver(transceiver.receiver, self._on_uplink)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            self.send({"type": "media_state", "state": state})
            if state == "failed" and pc is self.pc:
                await self.close(EndReason.DISCONNECTED)

        return pc

    def _downlink_track(self, transceiver: Any) -> DownlinkTrack:
        track = DownlinkTrack()
        self._attach_direct(track, transceiver)
        return track

    def _attach_direct(self, track: DownlinkTrack, transceiver: Any) -> None:
        if self.node.config.direct_send:
            track.direct = DirectRtpWriter(transceiver)

    def _on_uplink(self, payload: bytes, rtp_ts: int, seq: int, arrival: float) -> None:
        self.node.forward_uplink(self, payload, rtp_ts, seq, arrival)

    async def on_offer(self, text: str) -> None:
        async with self._lock:
            if self._negotiating:
                raise SignalingError(
                    Code.RENEGOTIATION_PENDING, "the server's own offer awaits an answer"
                )
            sdp.validate(text)
            text = sdp.filter_candidates(text, self.node.config.ice_remote_networks)
            first = self.pc is None
            if first:
                self._numbering = sdp.numbering_of(text)
            if first:
                self.pc = self._new_pc()
            pc = self.pc
            assert pc is not None
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="offer"))
            except Exception as exc:
                if first:
                    self.pc = None
                    await pc.close()
                raise SignalingError(Code.BAD_SDP, f"offer rejected: {exc}") from None
            known = {id(s.transceiver) for s in self.slots}
            for transceiver in pc.getTransceivers():
                if transceiver.kind != "audio" or id(transceiver) in known:
                    continue
                # aiortc stores the offer's direction from our side: a client's sendrecv or
                # recvonly transceiver is one we can send on ("sendrecv" / "sendonly").
                if transceiver._offerDirection in ("sendrecv", "sendonly"):
                    track = self._downlink_track(transceiver)
                    transceiver.sender.replaceTrack(track)
                    transceiver.direction = transceiver._offerDirection
                    self.slots.append(Slot(transceiver, track))
            ice.pin_host_addresses(pc, self.node.config.ice_addresses)
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
            self.send({"type": "answer", "sdp": sdp.prefer_fec(pc.localDescription.sdp)})
        await self._reconcile_downlinks()

    async def on_answer(self, text: str) -> None:
        async with self._lock:
            if self.pc is None or not self._negotiating:
                raise SignalingError(Code.BAD_MESSAGE, "no offer of ours awaits an answer")
            sdp.validate(text)
            text = sdp.filter_candidates(text, self.node.config.ice_remote_networks)
            try:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
            except Exception as exc:
                raise SignalingError(Code.BAD_SDP, f"answer rejected: {exc}") from None
            self._negotiating = False
            self.slots.extend(self._pending_slots)
            self._pending_slots = []
        await self._reconcile_downlinks()

    async def on_candidate(self, msg: p.Candidate) -> None:
        if self.pc is None:
            raise SignalingError(Code.NO_PEER_CONNECTION, "send an offer first")
        line = msg.candidate.removeprefix("a=").removeprefix("candidate:")
        if not line:
            return  # end of candidates
        try:
            candidate = candidate_from_sdp(line)
        except Exception:
            raise SignalingError(Code.BAD_MESSAGE, "malformed ICE candidate") from None
        if not sdp.candidate_allowed("candidate:" + line, self.node.config.ice_remote_networks):
            return  # outside the networks this server talks to: ignored, not an error
        candidate.sdpMid = msg.sdp_mid
        candidate.sdpMLineIndex = msg.sdp_mline_index
        if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            candidate.sdpMLineIndex = 0
        try:
            await self.pc.addIceCandidate(candidate)
        except Exception as exc:
            raise SignalingError(Code.BAD_MESSAGE, f"candidate rejected: {exc}") from None

    async def _reconcile_downlinks(self) -> None:
        """Give each joined talkgroup a downlink slot: reuse a free one, else add transceivers
        and renegotiate (server offer, client answer). Grants never touch SDP."""
        async with self._lock:
            if self.pc is None or self.closed:
                return
            bound = {s.talkgroup for s in self.slots if s.talkgroup}
            pending = {s.talkgroup for s in self._pending_slots}
            for talkgroup in self.joined:
                if talkgroup in bound or talkgroup in pending:
                    continue
                free = next((s for s in self.slots if s.talkgroup is None), None)
                if free is not None:
                    free.talkgroup = talkgroup
                elif not self._negotiating:
                    track = DownlinkTrack()
                    transceiver = self.pc.addTransceiver(track, direction="sendonly")
                    self._attach_direct(track, transceiver)
                    self._pending_slots.append(Slot(transceiver, track, talkgroup))
            for slot in self.slots:
                if slot.talkgroup and not slot.announced:
                    slot.announced = True
                    router = self.node.routers.get(slot.talkgroup)
                    if router is not None:
                        router.add_listener(self.id, slot.track)
                    self.send({
                        "type": "downlink", "talkgroup": slot.talkgroup,
                        "mid": slot.transceiver.mid,
                    })
            if self._pending_slots and not self._negotiating:
                self._negotiating = True
                ice.pin_host_addresses(self.pc, self.node.config.ice_addresses)
                offer = await self.pc.createOffer()
                if self._numbering is not None:
                    offer = RTCSessionDescription(
                        sdp=sdp.renumber(offer.sdp, self._numbering), type="offer"
                    )
                await self.pc.setLocalDescription(offer)
                self.send({"type": "offer", "sdp": sdp.prefer_fec(self.pc.localDescription.sdp)})

    # -- teardown -----------------------------------------------------------------------------
    async def close(self, reason: EndReason) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        for talkgroup in list(self.joined):
            with contextlib.suppress(Exception):
                await self._drop_floor(talkgroup, reason)
                await self.node.remove_member(self, talkgroup)
        self.joined.clear()
        for slot in self.slots + self._pending_slots:
            slot.track.stop()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()
        if self._outbox.full():
            self._writer.cancel()  # a stuck client: drop what it has not read
        else:
            self._outbox.put_nowait(None)  # let the writer flush, then end
        if self.on_close is not None:
            self.on_close(self)
        log.info(
            "session closed",
            extra={"fields": {"session": self.id, "unit": self.claims.sub, "reason": reason}},
        )
