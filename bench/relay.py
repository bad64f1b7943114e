"""Baseline: a transcoding relay built the textbook aiortc way, for comparison with the SFU.

The talker's track is decoded by aiortc (jitter buffer, Opus decoder) and handed to each
listener through `aiortc.contrib.media.MediaRelay`; each listener's RTCRtpSender re-encodes
the frames with its own Opus encoder. It speaks just enough of the server's signaling
protocol (auth, offer/answer, join, floor_request/floor_release) for the same load generator.
No authentication, no floor rules, no recording: it is only a cost reference.

    python -m bench.relay --port P        (listens on 127.0.0.1 only)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import uuid
from typing import Any

from aiohttp import WSMsgType, web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

from ptt_server.media import compat, ice

HOST = "127.0.0.1"


class Relay:
    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.source: Any = None  # the talker's remote track
        self.pcs: set[RTCPeerConnection] = set()

    async def handle_ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=1.0, max_msg_size=1 << 20)
        await ws.prepare(request)
        pc: RTCPeerConnection | None = None
        session = uuid.uuid4().hex
        mid = None

        async def send(msg: dict[str, Any]) -> None:
            await ws.send_str(json.dumps(msg, separators=(",", ":")))

        try:
            async for raw in ws:
                if raw.type != WSMsgType.TEXT:
                    continue
                msg = json.loads(raw.data)
                kind = msg.get("type")
                if kind == "auth":
                    await send({"type": "welcome", "session": session, "node": "relay"})
                elif kind == "offer":
                    pc = RTCPeerConnection(ice.rtc_configuration([]))
                    self.pcs.add(pc)

                    @pc.on("track")
                    def on_track(track: Any) -> None:
                        if track.kind == "audio" and self.source is None:
                            self.source = track

                    await pc.setRemoteDescription(RTCSessionDescription(msg["sdp"], "offer"))
                    for t in pc.getTransceivers():
                        if compat.offer_direction(t) == "sendonly":  # a listener (recvonly offer)
                            if self.source is None:
                                raise RuntimeError("connect the talker first")
                            t.sender.replaceTrack(self.relay.subscribe(self.source,
                                                                       buffered=False))
                            t.direction = "sendonly"
                        else:  # the talker: receive only
                            t.direction = "recvonly"
                        mid = t.mid
                    ice.pin_host_addresses(pc, [HOST])
                    await pc.setLocalDescription(await pc.createAnswer())
                    await send({"type": "answer", "sdp": pc.localDescription.sdp})
                elif kind == "join":
                    tg = msg.get("talkgroup")
                    await send({"type": "joined", "talkgroup": tg, "mode": "member",
                                "members": [], "floor": {"state": "idle"}})
                    await send({"type": "downlink", "talkgroup": tg, "mid": mid})
                elif kind == "floor_request":
                    await send({"type": "floor_granted", "talkgroup": msg.get("talkgroup"),
                                "transmission_id": uuid.uuid4().hex})
                elif kind == "floor_release":
                    await send({"type": "floor_idle", "talkgroup": msg.get("talkgroup"),
                                "reason": "released"})
        finally:
            if pc is not None:
                self.pcs.discard(pc)
                with contextlib.suppress(Exception):
                    await pc.close()
        return ws


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def serve(port: int) -> None:
    relay = Relay()
    app = web.Application()
    app.router.add_get("/ws", relay.handle_ws)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
