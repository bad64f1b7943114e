"""A PTT client library: signaling over WebSocket, Opus over WebRTC (aiortc).

Used by the `ptt` command and by the integration tests. It sends already-encoded Opus
(encoded with opuslib) and keeps the Opus payloads it receives, per talkgroup and per
transmission, exactly as they arrived.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fractions
import json
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from client_cli.presence import Member, MemberLists
from ptt_server.media import compat, compat_red, ice, sdp
from ptt_server.media.uplink import tap_receiver

FRAME_SAMPLES = 960  # 20 ms at 48 kHz
OPUS_TIME_BASE = fractions.Fraction(1, 48000)
EARLY_PACKETS_S = 0.5
EARLY_PACKETS_MAX = 25
OPUS_PT = 96  # aiortc's own Opus payload type in its offers
RED_PT = 63  # as Chromium numbers RED (RFC 2198); offered with `red=True`


class ClientError(Exception):
    def __init__(self, message: dict[str, Any]) -> None:
        super().__init__(f"{message.get('code')}: {message.get('message')}")
        self.message = message
        self.code = message.get("code")


class OpusSourceTrack(MediaStreamTrack):
    """Microphone stand-in: yields queued Opus packets; waits (never ends) when idle."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: asyncio.Queue[tuple[bytes, int | None]] = asyncio.Queue()
        self._pts = 0
        self.queued = 0  # packets handed to the track so far (tests bound what could be heard)
        # The payload type of each packet handed to the sender, in order (None: its own, Opus):
        # the client relabels them on their way into SRTP (PttClient._label).
        self.labels: collections.deque[int | None] = collections.deque(maxlen=256)

    def put(self, payload: bytes, payload_type: int | None = None) -> None:
        """Queue one payload: Opus, or (with `payload_type`) e.g. RED (RFC 2198) as is."""
        self._queue.put_nowait((payload, payload_type))
        self.queued += 1

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        payload, payload_type = await self._queue.get()
        self.labels.append(payload_type)
        packet = av.Packet(payload)
        packet.pts = self._pts
        packet.time_base = OPUS_TIME_BASE
        self._pts += FRAME_SAMPLES
        return packet


@dataclass
class Received:
    payload: bytes
    arrival: float
    rtp_timestamp: int
    payload_type: int = 0
    sequence_number: int = 0


@dataclass
class Transmission:
    transmission_id: str
    talkgroup: str
    unit: str | None
    alias: str | None
    packets: list[Received] = field(default_factory=list)
    ended: str | None = None  # floor_idle reason once over


class PttClient:
    def __init__(
        self,
        server: str,
        token: str,
        *,
        ice_addresses: Sequence[str] = (),
        ssl_context: ssl.SSLContext | bool | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        red: bool = False,
    ) -> None:
        """`red`: offer RED (RFC 2198) over Opus too, and take it when answered (`red_pt`)."""
        self.server = server.rstrip("/")
        self.offer_red = red
        self.red_pt: int | None = None  # the RED payload type the server answered, if any
        # With RED: packets of ours (counted from 0) never sent, as if the uplink lost them.
        self.lose_uplink: Callable[[int], bool] | None = None
        self._labelled = 0
        self.token = token
        self.ice_addresses = tuple(ice_addresses)
        self.ssl = ssl_context
        self.on_event = on_event
        self.events: list[dict[str, Any]] = []
        self.welcome: dict[str, Any] = {}
        self.pc: RTCPeerConnection | None = None
        self.source = OpusSourceTrack()
        self.mid_talkgroup: dict[str, str] = {}
        self.current: dict[str, Transmission] = {}  # talkgroup -> transmission being heard
        self.transmissions: dict[str, Transmission] = {}
        self.unattributed: list[Received] = []
        self._tapped: list[Any] = []
        self._early: dict[str, list[Received]] = {}  # talkgroup -> packets not yet attributed
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._cond = asyncio.Condition()
        self.closed_code: int | None = None
        self.messages_received = 0  # server messages in this session (for resuming it)
        # Each joined talkgroup's members, kept up from joined/presence/presence_delta.
        self.presence = MemberLists()

    # -- connection ---------------------------------------------------------------------------
    @property
    def ws_url(self) -> str:
        if self.server.startswith("https://"):
            return "wss://" + self.server[len("https://"):] + "/ws"
        return "ws://" + self.server.removeprefix("http://") + "/ws"

    async def connect(
        self, timeout: float = 10.0, resume_token: str | None = None, received: int = 0
    ) -> dict[str, Any]:
        """Sign in; with `resume_token` (from an earlier welcome), take that session back,
        `received` being how many of its messages arrived (`messages_received`)."""
        self.messages_received = received
        if self._http is not None:  # connecting again (a resume): the old session is done
            await self._http.close()
        self._http = aiohttp.ClientSession()
        ssl_arg: Any = self.ssl if self.ssl is not None else True
        try:
            self._ws = await self._http.ws_connect(self.ws_url, ssl=ssl_arg, heartbeat=None)
        except BaseException:
            await self._http.close()
            self._http = None
            raise
        self._reader = asyncio.create_task(self._read())
        auth: dict[str, Any] = {"type": "auth", "token": self.token}
        if resume_token:
            auth["resume_token"] = resume_token
            auth["received"] = received
        await self.send(auth)
        msg = await self.wait_for(lambda m: m["type"] in ("welcome", "error"), timeout)
        if msg["type"] == "error":
            raise ClientError(msg)
        self.welcome = msg
        return msg

    async def send(self, message: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send_str(json.dumps(message))

    async def send_raw(self, text: str) -> None:
        assert self._ws is not None
        await self._ws.send_str(text)

    async def _read(self) -> None:
        assert self._ws is not None
        async for raw in self._ws:
            if raw.type != aiohttp.WSMsgType.TEXT:
                continue
            msg = json.loads(raw.data)
            self.messages_received += 1
            msg["_at"] = time.monotonic()
            await self._on_message(msg)
            async with self._cond:
                self.events.append(msg)
                self._cond.notify_all()
            if self.on_event is not None:
                self.on_event(msg)
        self.closed_code = self._ws.close_code
        async with self._cond:
            self._cond.notify_all()

    def members(self, talkgroup: str) -> list[Member] | None:
        """The talkgroup's members as this client knows them (None: not joined)."""
        return self.presence.members(talkgroup)

    async def wait_members(
        self, talkgroup: str, pred: Callable[[list[Member]], bool], timeout: float = 10.0
    ) -> list[Member]:
        """The talkgroup's member list once `pred` holds for it; TimeoutError otherwise."""
        async def until() -> list[Member]:
            async with self._cond:
                while True:
                    members = self.presence.members(talkgroup)
                    if members is not None and pred(members):
                        return members
                    if self._reader is not None and self._reader.done():
                        raise ConnectionError(f"connection closed ({self.closed_code})")
                    await self._cond.wait()

        return await asyncio.wait_for(until(), timeout)

    async def _on_message(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        gap = self.presence.on_message(msg)
        if gap is not None:
            await self.send({"type": "presence_request", "talkgroup": gap})
        if kind == "offer" and self.pc is not None:
            await self.pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "offer"))
            if self.offer_red:
                self._take_red(msg["sdp"])
            self._tap_new_receivers()
            ice.pin_host_addresses(self.pc, self.ice_addresses)
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
            await self.send({"type": "answer", "sdp": self.pc.localDescription.sdp})
        elif kind == "downlink":
            self.mid_talkgroup[str(msg["mid"])] = msg["talkgroup"]
        elif kind == "floor_taken":
            self._begin(msg["talkgroup"], msg["transmission_id"], msg["unit"], msg["alias"])
        elif kind == "joined" and msg["floor"]["state"] == "taken":
            f = msg["floor"]
            self._begin(msg["talkgroup"], f["transmission_id"], f["unit"], f["alias"])
        elif kind == "floor_idle":
            t = self.current.get(msg["talkgroup"])
            if t is not None and t.transmission_id == msg["transmission_id"]:
                t.ended = msg["reason"]
                del self.current[msg["talkgroup"]]

    def _begin(self, talkgroup: str, tid: str, unit: str | None, alias: str | None) -> None:
        t = self.transmissions.get(tid)
        if t is None:
            t = self.transmissions[tid] = Transmission(tid, talkgroup, unit, alias)
            # Media and signaling travel separately: the first packets of a transmission may
            # arrive a moment before its floor_taken. They belong to it.
            horizon = time.monotonic() - EARLY_PACKETS_S
            early = [r for r in self._early.pop(talkgroup, []) if r.arrival >= horizon]
            t.packets[:0] = early
            self.unattributed = [r for r in self.unattributed if r not in early]
        self.current[talkgroup] = t

    async def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0, *, since: int = 0
    ) -> dict[str, Any]:
        """The first event (from index `since`) matching `pred`; TimeoutError otherwise."""
        async def find() -> dict[str, Any]:
            async with self._cond:
                while True:
                    for msg in self.events[since:]:
                        if pred(msg):
                            return msg
                    if self._reader is not None and self._reader.done():
                        raise ConnectionError(f"connection closed ({self.closed_code})")
                    await self._cond.wait()

        return await asyncio.wait_for(find(), timeout)

    async def request(
        self, message: dict[str, Any], reply: Callable[[dict[str, Any]], bool],
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        since = len(self.events)
        await self.send(message)
        return await self.wait_for(lambda m: reply(m) or m["type"] == "error", timeout,
                                   since=since)

    # -- talkgroups and floor -----------------------------------------------------------------
    async def join(self, talkgroup: str, mode: str = "member") -> dict[str, Any]:
        msg = await self.request(
            {"type": "join", "talkgroup": talkgroup, "mode": mode},
            lambda m: m["type"] == "joined" and m["talkgroup"] == talkgroup,
        )
        if msg["type"] == "error":
            raise ClientError(msg)
        return msg

    async def leave(self, talkgroup: str) -> dict[str, Any]:
        return await self.request(
            {"type": "leave", "talkgroup": talkgroup},
            lambda m: m["type"] == "left" and m["talkgroup"] == talkgroup,
        )

    async def request_floor(self, talkgroup: str, *, queue: bool = False) -> dict[str, Any]:
        return await self.request(
            {"type": "floor_request", "talkgroup": talkgroup, "queue": queue},
            lambda m: m["type"] in ("floor_granted", "floor_denied", "floor_queued")
            and m["talkgroup"] == talkgroup,
        )

    async def release_floor(self, talkgroup: str) -> dict[str, Any]:
        return await self.request(
            {"type": "floor_release", "talkgroup": talkgroup},
            lambda m: m["type"] == "floor_idle" and m["talkgroup"] == talkgroup,
        )

    # -- media --------------------------------------------------------------------------------
    async def start_media(self, *, send: bool = True, timeout: float = 15.0) -> None:
        """Offer one audio transceiver (sendrecv, or recvonly for a listener) and wait until
        the peer connection is up."""
        pc = self.pc = RTCPeerConnection(ice.rtc_configuration([]))
        if send:
            pc.addTransceiver(self.source, direction="sendrecv")
        else:
            pc.addTransceiver("audio", direction="recvonly")
        self._tap_new_receivers()
        ice.pin_host_addresses(pc, self.ice_addresses)
        await pc.setLocalDescription(await pc.createOffer())
        text = pc.localDescription.sdp
        if self.offer_red:  # aiortc offers only its own table: RED 63 over its Opus 96
            text = sdp.offer_red(text, RED_PT, OPUS_PT)
        since = len(self.events)
        await self.send({"type": "offer", "sdp": text})
        answer = await self.wait_for(lambda m: m["type"] in ("answer", "error"), timeout,
                                     since=since)
        if answer["type"] == "error":
            raise ClientError(answer)
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        if self.offer_red:
            self._take_red(answer["sdp"])
        deadline = time.monotonic() + timeout
        while pc.connectionState != "connected":
            if pc.connectionState in ("failed", "closed") or time.monotonic() > deadline:
                raise ConnectionError(f"media connection {pc.connectionState}")
            await asyncio.sleep(0.02)
        if send and self.red_pt is not None:
            sender = pc.getTransceivers()[0].sender
            compat.intercept_rtp_out(sender.transport, compat.sender_ssrc(sender), self._label)

    def _take_red(self, description: str) -> None:
        """RED on the transceivers the server's description has it for (compat_red.py: so
        aiortc routes its packets to our receivers, and answers it in a re-offer)."""
        assert self.pc is not None
        red = sdp.red_sections(description)
        for transceiver in self.pc.getTransceivers():
            offer = red.get(str(transceiver.mid))
            if offer is not None and compat_red.negotiate(transceiver, offer.payload_type,
                                                          offer.fmtp):
                self.red_pt = self.red_pt or offer.payload_type

    def _label(self, packet: bytes) -> bytes | None:
        """Our sender's RTP on its way into SRTP: a payload queued with its own payload type
        (RED) gets it; aiortc labels everything with its first codec, Opus. A packet that
        `lose_uplink` names is not sent (its sequence number is used all the same)."""
        pt = self.source.labels.popleft() if self.source.labels else None
        index = self._labelled
        self._labelled += 1
        if self.lose_uplink is not None and self.lose_uplink(index):
            return None
        if pt is None:
            return packet
        out = bytearray(packet)
        out[1] = (out[1] & 0x80) | pt
        return bytes(out)

    def _tap_new_receivers(self) -> None:
        assert self.pc is not None
        for transceiver in self.pc.getTransceivers():
            receiver = transceiver.receiver
            if receiver in self._tapped:
                continue
            self._tapped.append(receiver)

            def on_packet(payload: bytes, ts: int, seq: int, arrival: float, pt: int,
                          transceiver: Any = transceiver) -> None:
                self._on_audio(transceiver, Received(payload, time.monotonic(), ts, pt, seq))

            tap_receiver(receiver, on_packet)

    def _on_audio(self, transceiver: Any, received: Received) -> None:
        talkgroup = self.mid_talkgroup.get(str(transceiver.mid))
        t = self.current.get(talkgroup) if talkgroup else None
        if t is None:
            self.unattributed.append(received)
            if talkgroup:
                early = self._early.setdefault(talkgroup, [])
                early.append(received)
                del early[:-EARLY_PACKETS_MAX]
        else:
            t.packets.append(received)

    def received(self, talkgroup: str | None = None) -> list[Received]:
        out = []
        for t in self.transmissions.values():
            if talkgroup is None or t.talkgroup == talkgroup:
                out.extend(t.packets)
        return out

    async def send_audio(self, packets: Sequence[bytes], interval: float = 0.02,
                         payload_type: int | None = None) -> None:
        """Send Opus packets in real time (one per `interval`, drift-free); with
        `payload_type` (e.g. `red_pt`), payloads of that type as they are."""
        start = time.monotonic()
        for i, payload in enumerate(packets):
            self.source.put(payload, payload_type)
            delay = start + (i + 1) * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    async def talk(self, talkgroup: str, packets: Sequence[bytes]) -> dict[str, Any]:
        """Request the floor, send the packets in real time, release. Returns the grant (or
        the denial, without sending)."""
        reply = await self.request_floor(talkgroup)
        if reply["type"] != "floor_granted":
            return reply
        await self.send_audio(packets)
        await asyncio.sleep(0.1)  # let the last packets leave before the release overtakes them
        await self.release_floor(talkgroup)
        return reply

    async def close(self) -> None:
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()
        self.source.stop()
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._http is not None:
            await self._http.close()
