"""A session's WebRTC side: one peer connection, its uplink tap and its downlink slots.

Owned by the session (signaling/session.py), which closes it. The client offers; the server
answers, and re-offers only to add a downlink transceiver for another talkgroup (a supervisor
monitoring several). Grants and revokes never touch SDP: they open and close router gates.

RED (RFC 2198): a section whose offer has RED over Opus is answered with it, at the offer's
payload type and fmtp, on that transceiver only (media/compat_red.py); our re-offers carry it
at the client's own number once its first offer had it. Uplink, RED packets are routed to the
tap and flagged by payload type (`red_uplink`); downlink, a slot's track is told its RED and
Opus payload types, and gets RED as it came (router.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from ptt_server.core import messages as m
from ptt_server.core import protocol as p
from ptt_server.core.config import Config
from ptt_server.core.errors import Code, SignalingError
from ptt_server.media import compat, compat_red, compat_routing, ice, sdp
from ptt_server.media.downlink import DownlinkTrack
from ptt_server.media.egress import DirectRtpWriter
from ptt_server.media.uplink import PacketCallback, tap_receiver


@dataclass
class Slot:
    """A send-capable transceiver with its long-lived track, bound to at most one talkgroup."""

    transceiver: Any
    track: DownlinkTrack
    talkgroup: str | None = None
    announced: bool = False


class MediaPeer:
    def __init__(
        self, config: Config, send: Callable[[m.ServerMessage], None],
        on_uplink: PacketCallback, on_failed: Callable[[], Any],
        attach: Callable[[str, DownlinkTrack], None],
    ) -> None:
        self._config = config
        self._send = send
        self._on_uplink = on_uplink
        self._on_failed = on_failed
        self._attach = attach  # (talkgroup, track): the node adds it to that router
        self.pc: RTCPeerConnection | None = None
        self.slots: list[Slot] = []
        self._pending_slots: list[Slot] = []
        self._negotiating = False
        self._numbering: sdp.Numbering | None = None  # the client's payload types and ext ids
        self._lock = asyncio.Lock()
        self._trickled = 0  # remote candidates added one by one
        self.closed = False
        # The client's RED payload types -> the Opus payload types its blocks may name.
        self.red_uplink: dict[int, frozenset[int]] = {}

    def _new_pc(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(ice.rtc_configuration(self._config.ice_servers))

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind != "audio":
                return
            for transceiver in pc.getTransceivers():
                if transceiver.receiver.track is track:
                    tap_receiver(transceiver.receiver, self._on_uplink)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc is not self.pc:
                return  # a connection whose first offer was refused: the client never had it
            state = pc.connectionState
            if state == "closed" and not self.closed:
                # Closed under us, not by close(): the ICE connection ended (consent expired,
                # media/consent.py), which aiortc reports as closed. For the client it failed.
                state = "failed"
            self._send(m.MediaState(state=state))
            if state == "failed":
                await self._on_failed()

        return pc

    def _track(self, transceiver: Any) -> DownlinkTrack:
        track = DownlinkTrack()
        if self._config.direct_send:
            track.direct = DirectRtpWriter(transceiver)
        return track

    async def on_offer(self, text: str, joined: Callable[[], list[str]]) -> None:
        async with self._lock:
            if self._negotiating:
                raise SignalingError(
                    Code.RENEGOTIATION_PENDING, "the server's own offer awaits an answer"
                )
            # Opus only, a strong DTLS fingerprint, capped sections, allowed candidates: aiortc
            # sees nothing else (media/sdp.py says why each).
            text = sdp.sanitize(text, "offer", self._config.ice_remote_networks)
            first = self.pc is None
            if not first:
                self._check_section_cap(text)
            if first:
                self.pc = self._new_pc()
            pc = self.pc
            assert pc is not None
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="offer"))
            except Exception:
                await self._refused(pc, first)
                # aiortc's exception texts ("'NoneType' object has no attribute ...") are no
                # use to a client and say too much about the server: a fixed message.
                raise SignalingError(Code.BAD_SDP, "offer refused") from None
            if first:
                self._numbering = sdp.numbering_of(text)
            offered = sdp.red_sections(text)
            self._negotiate_red(offered)
            known = {id(s.transceiver) for s in self.slots}
            for transceiver in pc.getTransceivers():
                if transceiver.kind != "audio" or id(transceiver) in known:
                    continue
                # The offer's direction as seen from our side: a client's sendrecv or
                # recvonly transceiver is one we can send on ("sendrecv" / "sendonly").
                direction = compat.offer_direction(transceiver)
                if direction in ("sendrecv", "sendonly"):
                    track = self._track(transceiver)
                    transceiver.sender.replaceTrack(track)
                    transceiver.direction = direction
                    self.slots.append(Slot(transceiver, track))
            ice.pin_host_addresses(pc, self._config.ice_addresses)
            try:
                answer = await pc.createAnswer()
                await pc.setLocalDescription(answer)
            except Exception:
                await self._refused(pc, first)
                raise SignalingError(Code.BAD_SDP, "offer refused") from None
            self._route_uplink(text, offered)
            answer_text = sdp.red_first(pc.localDescription.sdp, offered)
            self._send(m.Answer(sdp=sdp.prefer_fec(answer_text)))
        await self.reconcile(joined())

    def _negotiate_red(self, described: dict[str, sdp.RedOffer]) -> None:
        """RED on each transceiver whose section of the peer's description has it (aiortc
        has just set what each negotiated, without RED)."""
        if self.pc is None or "red" in compat.report().missing:
            return
        for transceiver in self.pc.getTransceivers():
            red = described.get(str(transceiver.mid))
            if red is not None:
                compat_red.negotiate(transceiver, red.payload_type, red.fmtp)

    def _route_uplink(self, text: str, described: dict[str, sdp.RedOffer]) -> None:
        """The peer's Opus and RED payload types to our receivers (compat_routing.py), and
        each send slot told whether RED may be sent to it."""
        assert self.pc is not None
        transceivers = self.pc.getTransceivers()
        reds = {t.mid: r for t in transceivers if (r := described.get(str(t.mid)))
                and compat_red.negotiated(t) is not None}
        self.red_uplink = {r.payload_type: r.opus_types for r in reds.values()}
        compat_routing.route_uplink(transceivers, sdp.opus_payload_types(text)
                                    | set(self.red_uplink))
        # RED leaves labelled per packet, which the direct writer's numbering does (egress.py).
        labels = compat.direct_path_enabled()
        for slot in [*self.slots, *self._pending_slots]:
            if slot.track.direct is None or not labels:
                slot.track.red = None
            else:
                slot.track.red = compat_red.negotiated(slot.transceiver)

    def _check_section_cap(self, text: str) -> None:
        """A renegotiation may bring new mids (aiortc adds a transceiver for each unknown one):
        the connection's sections, old and new, stay within MAX_MEDIA_SECTIONS."""
        assert self.pc is not None
        mids = {t.mid for t in self.pc.getTransceivers() if t.mid is not None}
        mids |= {line[len("a=mid:"):] for line in text.split("\r\n") if line.startswith("a=mid:")}
        if len(mids) + sum(t.mid is None for t in self.pc.getTransceivers()) > (
            p.MAX_MEDIA_SECTIONS
        ):
            raise SignalingError(
                Code.BAD_SDP, f"more than {p.MAX_MEDIA_SECTIONS} media sections in all"
            )

    async def _refused(self, pc: RTCPeerConnection, first: bool) -> None:
        """A refused first offer leaves nothing behind: no peer connection, no slots."""
        if first:
            self.pc = None
            self.slots = []
            self._numbering = None
            with contextlib.suppress(Exception):
                await pc.close()

    async def on_answer(self, text: str, joined: Callable[[], list[str]]) -> None:
        async with self._lock:
            if self.pc is None or not self._negotiating:
                raise SignalingError(Code.BAD_MESSAGE, "no offer of ours awaits an answer")
            text = sdp.sanitize(text, "answer", self._config.ice_remote_networks)
            try:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
            except Exception:
                raise SignalingError(Code.BAD_SDP, "answer refused") from None
            answered = sdp.red_sections(text)
            self._negotiate_red(answered)
            self._negotiating = False
            self.slots.extend(self._pending_slots)
            self._pending_slots = []
            self._route_uplink(text, answered)
        await self.reconcile(joined())

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
        if not sdp.candidate_allowed("candidate:" + line, self._config.ice_remote_networks):
            return  # not an address this server sends checks to: ignored, not an error
        # Each remote candidate is paired with every local one and checked (RFC 8445 section
        # 6.1.2): a bounded number, as for the candidates in an offer.
        if self._trickled >= sdp.MAX_CANDIDATES:
            raise SignalingError(Code.BAD_MESSAGE, "too many ICE candidates")
        self._trickled += 1
        candidate.sdpMid = msg.sdp_mid
        candidate.sdpMLineIndex = msg.sdp_mline_index
        if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            candidate.sdpMLineIndex = 0
        try:
            await self.pc.addIceCandidate(candidate)
        except Exception:
            raise SignalingError(Code.BAD_MESSAGE, "candidate refused") from None

    def unbind(self, talkgroup: str) -> None:
        """The session left a talkgroup: its slot is free for the next one."""
        for slot in self.slots:
            if slot.talkgroup == talkgroup:
                slot.talkgroup = None
                slot.announced = False
                slot.track.clear()

    async def reconcile(self, joined: list[str]) -> None:
        """Give each joined talkgroup a downlink slot: reuse a free one, else add transceivers
        and renegotiate (server offer, client answer)."""
        async with self._lock:
            if self.pc is None or self.closed:
                return
            bound = {s.talkgroup for s in self.slots if s.talkgroup}
            pending = {s.talkgroup for s in self._pending_slots}
            for talkgroup in joined:
                if talkgroup in bound or talkgroup in pending:
                    continue
                free = next((s for s in self.slots if s.talkgroup is None), None)
                if free is not None:
                    free.talkgroup = talkgroup
                elif not self._negotiating and (
                    len(self.pc.getTransceivers()) < p.MAX_MEDIA_SECTIONS
                ):  # (a session joins at most 16 talkgroups: the cap is for odd offers)
                    track = DownlinkTrack()
                    transceiver = self.pc.addTransceiver(track, direction="sendonly")
                    if self._config.direct_send:
                        track.direct = DirectRtpWriter(transceiver)
                    self._pending_slots.append(Slot(transceiver, track, talkgroup))
            for slot in self.slots:
                if slot.talkgroup and not slot.announced:
                    slot.announced = True
                    self._attach(slot.talkgroup, slot.track)
                    self._send(m.Downlink(talkgroup=slot.talkgroup, mid=slot.transceiver.mid))
            if self._pending_slots and not self._negotiating:
                self._negotiating = True
                ice.pin_host_addresses(self.pc, self._config.ice_addresses)
                offer = await self.pc.createOffer()
                if self._numbering is not None:
                    text = sdp.renumber(offer.sdp, self._numbering)
                    pts = self._numbering.payload_types
                    if "red/48000/2" in pts and "opus/48000/2" in pts:
                        text = sdp.offer_red(text, pts["red/48000/2"], pts["opus/48000/2"])
                    offer = RTCSessionDescription(sdp=text, type="offer")
                await self.pc.setLocalDescription(offer)
                self._send(m.Offer(sdp=sdp.prefer_fec(self.pc.localDescription.sdp)))

    async def close(self, timeout_s: float) -> None:
        if self.closed:
            return
        self.closed = True
        for slot in self.slots + self._pending_slots:
            slot.track.stop()
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.pc.close(), timeout_s)
