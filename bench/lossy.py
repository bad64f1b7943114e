"""What a real browser hears behind a lossy network: Chromium listening to an aiortc talker.

    namespace A                          lossy link (tests/lossylink.py)     namespace B
    ptt-server serve (embedded Redis) <---- loss, delay +- jitter ---->  aiortc talker
                                                                         headless Chromium

The talker sends known speech (espeak-ng, Opus 32 kb/s voice, 20 ms, hybrid mode) with or
without Opus in-band FEC (RFC 6716 section 2.1.7; the LBRR copy of packet n-1 rides in packet
n). The impairment is on the talker's uplink (direction "ba", RTP only, so ICE, DTLS and
signalling are left alone and the counts are exact): the packets the SFU never got. The
listener's downlink is clean, so what the browser does with the gaps is the SFU's doing.

For each run the page records what it plays (WebAudio, from the received track) and its
inbound-rtp getStats (packetsLost, concealedSamples, ...). Reported per run:
  r          Pearson correlation of 20 ms RMS envelopes, played vs source, best lag
  lost       browser packetsLost (what its RTP statistics saw) vs uplink RTP dropped
  concealed  concealedSamples / totalSamplesReceived during the run (NetEq's PLC share)
  types      RTP payload types the talker sent and the browser received, read off the wire
             on namespace B's side (getStats names the decoded codec, Opus, even for RED),
             and whether both of the page's descriptions have RED

`--code before` runs this tree with the numbering of the commit before truthful sequence
numbers (router.py, egress.py, downlink.py from there: renumbered in arrival order, and
node.py's calls without the sequence number), copied to a temporary directory; `after` is
this tree as it is.
`--red on` has the talker send RED (RFC 2198): each Opus packet with the one before it as
its redundant block (what Chromium's RED encoder sends), negotiated with the server (the talker
offers red/48000/2; Chromium's listener offers it by default, and receives it as forwarded).
Only `after` runs send RED; `before` runs are made without it.

    .venv/bin/python -m bench.lossy [--loss 5,10,20] [--jitter 25] [--code before,after]
                                    [--fec off,on] [--red off,on] [--max-seconds 900]
                                    [--out results.json]

Needs root (network namespaces, TUN), /usr/bin/chromium, espeak-ng and sox. Bounded: every
step has a timeout and the whole run stops after --max-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import opuslib
import opuslib.api.ctl
import opuslib.api.encoder

from client_cli.client import OPUS_PT, PttClient
from ptt_server.core import red as rfc2198
from tests.audio import envelope, make_speech, read_wav
from tests.lossylink import ADDR_A, BROWSER_FLAGS, TUN_NAME, LossyLink, ServerProcess

REPO = Path(__file__).resolve().parent.parent
RATE = 48000
FRAME = 960
BEFORE_REV = "70ccc72^"  # the commit before truthful sequence numbers (router/egress)
SPEECH = ("Unit twelve to control. Suspect vehicle heading north on main street. "
          "Requesting backup at the corner of fifth and elm.")
LISTENER_URL_PATH = "/bench-lossy-listener.html"
STEP_S = 60.0

# The listener page: signs in, offers recvonly, joins talkgroup A, plays the downlink through
# an <audio> element (Chromium decodes nothing otherwise) and records the track's output.
PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>lossy listener</title>
</head><body><audio id="out" autoplay muted></audio><script>
"use strict";
const P = {state: "init", events: [], errors: [], capturing: false, chunks: [], idle: 0};
window.P = P;
const args = new URLSearchParams(location.hash.slice(1));
const ws = new WebSocket(`ws://${location.host}/ws`);
let pc = null;
const send = (m) => ws.send(JSON.stringify(m));
ws.onopen = () => send({type: "auth", token: args.get("token")});
ws.onclose = () => { P.state = "closed"; };
ws.onmessage = async (ev) => {
  const m = JSON.parse(ev.data);
  P.events.push(m.type);
  try {
    if (m.type === "welcome") { await startMedia(); send({type: "join", talkgroup: "A"}); }
    else if (m.type === "answer") { await pc.setRemoteDescription({type: "answer", sdp: m.sdp}); }
    else if (m.type === "offer") {
      await pc.setRemoteDescription({type: "offer", sdp: m.sdp});
      await pc.setLocalDescription();
      send({type: "answer", sdp: pc.localDescription.sdp});
    }
    else if (m.type === "downlink") { P.downlink = true; }
    else if (m.type === "floor_idle") { P.idle += 1; }
    else if (m.type === "error") { P.errors.push(JSON.stringify(m)); }
  } catch (e) { P.errors.push(String(e)); }
};
async function startMedia() {
  pc = new RTCPeerConnection({iceServers: []});
  pc.addTransceiver("audio", {direction: "recvonly"});
  pc.ontrack = (e) => attach(e.streams[0] || new MediaStream([e.track]))
    .catch((err) => P.errors.push(String(err)));
  pc.onconnectionstatechange = () => { P.pc = pc.connectionState; };
  await pc.setLocalDescription();
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && done();
    setTimeout(done, 3000);
  });
  send({type: "offer", sdp: pc.localDescription.sdp});
}
async function attach(stream) {
  document.getElementById("out").srcObject = stream;
  // Recorded from the track itself (MediaStreamTrackProcessor): the 10 ms frames the jitter
  // buffer put out, each with its media timestamp, so a late page loses no time.
  const track = stream.getAudioTracks()[0];
  const reader = new MediaStreamTrackProcessor({track}).readable.getReader();
  P.state = "attached";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    if (P.capturing) {
      const pcm = new Float32Array(value.numberOfFrames);
      value.copyTo(pcm, {planeIndex: 0, format: "f32-planar"});
      P.chunks.push([value.timestamp, value.sampleRate, pcm]);
    }
    value.close();
  }
}
window.startCapture = () => { P.chunks = []; P.capturing = true; };
window.stopCapture = () => {
  P.capturing = false;
  const chunks = P.chunks;
  P.chunks = [];
  if (!chunks.length) return {rate: 48000, pcm: ""};
  const rate = chunks[0][1], t0 = chunks[0][0];
  const last = chunks[chunks.length - 1];
  const n = Math.round((last[0] - t0) * rate / 1e6) + last[2].length;
  const pcm = new Int16Array(n);  // a frame that never came stays silent, in its place
  for (const [ts, , data] of chunks) {
    const at = Math.round((ts - t0) * rate / 1e6);
    for (let i = 0; i < data.length && at + i < n; i++) {
      pcm[at + i] = Math.max(-32768, Math.min(32767, Math.round(data[i] * 32767)));
    }
  }
  let s = "";
  const bytes = new Uint8Array(pcm.buffer);
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return {rate, pcm: btoa(s)};
};
window.inbound = async () => {
  if (!pc) return null;
  let out = null, playout = null;
  const report = await pc.getStats();
  report.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "audio") out = JSON.parse(JSON.stringify(r));
    if (r.type === "media-playout") playout = r;
  });
  if (out && playout) {
    out.synthesizedSamplesDuration = playout.synthesizedSamplesDuration;
    out.totalSamplesDuration = playout.totalSamplesDuration;
  }
  if (out) {  // RED in both descriptions (getStats' codec entry names only Opus)
    const red = (d) => !!d && d.sdp.toLowerCase().includes(" red/48000/2");
    out.redNegotiated = red(pc.localDescription) && red(pc.remoteDescription);
  }
  return out;
};
window.ready = () => P.state === "attached" && P.pc === "connected" && P.downlink;
</script></body></html>"""

STATS = ("packetsReceived", "packetsLost", "concealedSamples", "silentConcealedSamples",
         "concealmentEvents", "totalSamplesReceived", "fecPacketsReceived",
         "fecPacketsDiscarded", "packetsDiscarded", "jitterBufferDelay",
         "jitterBufferEmittedCount", "insertedSamplesForDeceleration",
         "removedSamplesForAcceleration")


# -- audio --------------------------------------------------------------------------------------
def encode_speech(pcm: np.ndarray, fec: bool) -> list[bytes]:
    """20 ms Opus packets as a phone would send them: voice, 32 kb/s (hybrid mode, whose SILK
    layer carries the LBRR copy), in-band FEC on or off."""
    enc = opuslib.Encoder(RATE, 1, opuslib.APPLICATION_VOIP)
    enc.bitrate = 32000
    enc.signal = opuslib.SIGNAL_VOICE
    # opuslib's inband_fec setter drops its argument: call the ctl itself.
    opuslib.api.encoder.encoder_ctl(enc.encoder_state, opuslib.api.ctl.set_inband_fec,
                                    1 if fec else 0)
    enc.packet_loss_perc = 20 if fec else 0  # LBRR is only spent when loss is expected
    pad = (-len(pcm)) % FRAME
    pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
    return [enc.encode(pcm[i:i + FRAME].tobytes(), FRAME) for i in range(0, len(pcm), FRAME)]


def envelope_r(played: np.ndarray, source: np.ndarray, max_lag_s: float = 4.0,
               block_s: float = 1.0, drift_s: float = 0.3) -> float:
    """Pearson r of the 20 ms RMS envelopes, played vs source, aligned block by block.

    The recording starts before the speech arrives (a lag of up to `max_lag_s`), and a
    browser on a loaded machine now and then renders late and loses a few quanta of output
    (its media-playout stats count them as synthesized samples): one lag for the whole
    recording would misalign everything after such a hiccup. So each `block_s` of the source
    takes its best lag within `drift_s` of the previous block's (lost time shrinks it, and the
    jitter buffer's own time-stretching moves it either way), and r is computed over all
    blocks together.
    """
    es, ep = envelope(source), envelope(played)
    frames_s = RATE / FRAME
    block, max_lag, step = int(block_s * frames_s), int(max_lag_s * frames_s), int(
        drift_s * frames_s)
    n = len(es)
    if len(ep) < n // 2 or es.std() == 0:
        return 0.0
    ep = np.concatenate([ep, np.zeros(n + max_lag)])
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    lag: int | None = None
    for start in range(0, n - block // 2, block):
        a = es[start:start + block]
        if a.std() == 0:
            continue
        lo, hi = (0, max_lag) if lag is None else (max(0, lag - step), lag + step)
        best, best_lag = -2.0, lo
        for candidate in range(lo, hi + 1):
            b = ep[start + candidate:start + candidate + len(a)]
            if b.std() > 0:
                r = float(np.corrcoef(a, b)[0, 1])
                if r > best:
                    best, best_lag = r, candidate
        lag = best_lag
        xs.append(a)
        ys.append(ep[start + lag:start + lag + len(a)])
    if not xs:
        return 0.0
    x, y = np.concatenate(xs), np.concatenate(ys)
    return float(np.corrcoef(x, y)[0, 1]) if y.std() > 0 else 0.0


def write_wav(path: Path, pcm: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.astype(np.int16).tobytes())


# -- the listener page -----------------------------------------------------------------------------
class ListenerPage:
    def __init__(self, page: Any) -> None:
        self.page = page

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, playwright: Any, link: LossyLink, server: ServerProcess,
                   profile: Path, user: str = "u2") -> AsyncIterator[ListenerPage]:
        # Media capture APIs want a secure context; the server is plain HTTP on a test address.
        secure = f"--unsafely-treat-insecure-origin-as-secure={server.url}"
        context = await playwright.chromium.launch_persistent_context(
            str(profile), executable_path=link.chromium("b"), headless=True,
            args=[*BROWSER_FLAGS, secure], ignore_default_args=["--mute-audio"])
        try:
            url = server.url + LISTENER_URL_PATH
            await context.route(url, lambda route: route.fulfill(
                status=200, content_type="text/html", body=PAGE))
            page = await context.new_page()
            await page.goto(f"{url}#token={server.token(user)}", wait_until="load")
            listener = cls(page)
            await listener.wait("() => window.ready()", "connected and joined")
            yield listener
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(context.close(), 15)

    async def wait(self, expression: str, what: str, timeout: float = STEP_S) -> Any:
        try:
            handle = await self.page.wait_for_function(expression, timeout=timeout * 1000,
                                                       polling=100)
        except Exception:
            state = await self.page.evaluate("() => JSON.stringify(window.P || null)")
            raise TimeoutError(f"listener page not {what}: {state[:1500]}") from None
        return await handle.json_value()

    async def inbound(self) -> dict[str, Any]:
        return dict(await self.page.evaluate("() => window.inbound()") or {})

    async def start_capture(self) -> None:
        await self.page.evaluate("() => window.startCapture()")

    async def stop_capture(self) -> np.ndarray:
        got = await self.page.evaluate("() => window.stopCapture()")
        assert int(got["rate"]) == RATE, got["rate"]
        return np.frombuffer(base64.b64decode(got["pcm"]), dtype=np.int16)

    async def settled(self, timeout: float = 10.0, quiet_s: float = 0.6) -> dict[str, Any]:
        """getStats once packetsReceived has not moved for `quiet_s` (the transmission's
        last packets played out), bounded by `timeout`."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while True:
            stats = await self.inbound()
            now = time.monotonic()
            if stats.get("packetsReceived") != last:
                last, since = stats.get("packetsReceived"), now
            elif now - since >= quiet_s or now > deadline:
                return stats
            await asyncio.sleep(0.1)


# -- the talker (an aiortc client on an event loop inside namespace B) ---------------------------
class Talker:
    def __init__(self, link: LossyLink, server: ServerProcess, user: str = "u1") -> None:
        self.link = link
        self.client = PttClient(server.url, server.token(user),
                                ice_addresses=(link.address("b"),), red=True)

    async def start(self) -> None:
        async def go() -> None:
            await self.client.connect(timeout=STEP_S)
            await self.client.start_media(send=True, timeout=STEP_S)
            await self.client.join("A")

        await self.link.loop("b").run(go(), STEP_S * 2)

    async def talk(self, packets: Sequence[bytes], red: bool = False) -> dict[str, Any]:
        """Request the floor, send the packets in real time (as RED when asked and the
        server answered it), release."""
        timeout = len(packets) * 0.02 + STEP_S
        client = self.client
        if red and client.red_pt is None:
            raise RuntimeError("the server did not answer RED")

        async def go() -> dict[str, Any]:
            reply = await client.request_floor("A")
            if reply["type"] != "floor_granted":
                return reply
            if red:
                await client.send_audio(red_stream(packets), payload_type=client.red_pt)
            else:
                await client.send_audio(packets)
            await asyncio.sleep(0.1)  # the last packets leave before the release overtakes
            await client.release_floor("A")
            return reply

        return await self.link.loop("b").run(go(), timeout)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.link.loop("b").run(self.client.close(), 15)


def red_stream(packets: Sequence[bytes]) -> list[bytes]:
    """RED payloads (RFC 2198 section 3): packet k as the primary, packet k-1 as one
    redundant block 960 samples back (none for the first)."""
    return [rfc2198.build(p, OPUS_PT, (rfc2198.Block(OPUS_PT, FRAME, packets[k - 1]),)
                          if k else ()) for k, p in enumerate(packets)]


class WireTypes:
    """RTP payload types on namespace B's side of the link, by direction: what the talker
    sent (before the link's loss) and what reached the browser. getStats cannot tell: its
    codec entry names what the receiver decoded (Opus) even while RED arrives. The RTP header
    stays clear under SRTP (RFC 3711 section 3.1), so a packet socket on the TUN device reads
    it; it is opened from namespace B's loop thread, so it lives in that namespace."""

    def __init__(self, link: LossyLink) -> None:
        def open_socket() -> socket.socket:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003))
            s.bind((TUN_NAME, 0))
            s.settimeout(0.2)
            return s

        self.sock = link.loop("b").run_sync(open_socket)
        self.lock = threading.Lock()
        self.up: dict[int, int] = {}
        self.down: dict[int, int] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, name="wire-types", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        server = socket.inet_aton(ADDR_A)
        while not self.done.is_set():
            try:
                packet = self.sock.recv(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != 17:
                continue
            off = (packet[0] & 0x0F) * 4 + 8
            if len(packet) < off + 12 or packet[off] >> 6 != 2 or 191 < packet[off + 1] < 224:
                continue  # not RTP (STUN, DTLS, RTCP)
            pt = packet[off + 1] & 0x7F
            counts = self.down if packet[12:16] == server else self.up
            with self.lock:
                counts[pt] = counts.get(pt, 0) + 1

    def take(self) -> tuple[str, str]:
        """("pt:count ..." sent by the talker, reached the browser) since the last take."""
        with self.lock:
            up, down = self.up, self.down
            self.up, self.down = {}, {}
        return (" ".join(f"{k}:{v}" for k, v in sorted(up.items())),
                " ".join(f"{k}:{v}" for k, v in sorted(down.items())))

    def close(self) -> None:
        self.done.set()
        self.thread.join(2)
        self.sock.close()


# -- one measurement -----------------------------------------------------------------------------
@dataclass
class Result:
    code: str
    fec: bool
    loss_pct: float
    jitter_ms: float
    r: float
    sent: int
    uplink_dropped: int
    browser_lost: int
    browser_received: int
    concealed_pct: float
    fec_packets: int
    discarded: int
    jitter_buffer_ms: float
    glitch_ms: float  # output the browser's audio device synthesized: it rendered late
    red: bool = False
    red_negotiated: bool = False  # RED in both of the listener's descriptions
    uplink_types: str = ""  # RTP payload types the talker sent, "pt:packets"
    downlink_types: str = ""  # ...and those that reached the browser (RED: the RED type)

    def row(self) -> str:
        return (f"{self.code:6} fec={'on ' if self.fec else 'off'} "
                f"red={'on ' if self.red else 'off'} loss={self.loss_pct:4.1f}% "
                f"jitter=+-{self.jitter_ms:.0f}ms  r={self.r:.3f}  "
                f"uplink dropped {self.uplink_dropped:3}/{self.sent}  "
                f"browser lost {self.browser_lost:3} recv {self.browser_received:3}  "
                f"concealed {self.concealed_pct:5.1f}%  fec pkts {self.fec_packets} "
                f"jb {self.jitter_buffer_ms:.0f} ms glitch {self.glitch_ms:.0f} ms  "
                f"red negotiated {self.red_negotiated}  payload types sent "
                f"{self.uplink_types or '-'} received {self.downlink_types or '-'}")


def delta(after: dict[str, Any], before: dict[str, Any], key: str) -> float:
    return float(after.get(key, 0) or 0) - float(before.get(key, 0) or 0)


async def measure(link: LossyLink, page: ListenerPage, talker: Talker, source: np.ndarray,
                  packets: Sequence[bytes], *, code: str, fec: bool, loss: float,
                  jitter_ms: float, delay_ms: float, save: Path | None = None,
                  red: bool = False, wire: WireTypes | None = None) -> Result:
    before = await page.settled()
    if wire is not None:
        wire.take()
    link.clear()
    link.set(loss=loss, delay_ms=delay_ms, jitter_ms=jitter_ms, match="rtp", direction="ba")
    link.reset_stats()
    await page.start_capture()
    grant = await talker.talk(packets, red)
    if grant.get("type") != "floor_granted":
        raise RuntimeError(f"floor not granted: {grant}")
    after = await page.settled()
    played = await page.stop_capture()
    if save is not None:
        write_wav(save / f"{code}-fec{'on' if fec else 'off'}-red{'on' if red else 'off'}-"
                  f"loss{loss * 100:.0f}-"
                  f"{time.strftime('%H%M%S')}.wav", played)
    dropped = int(link.stats()["ba"]["rtp_dropped"])
    link.clear()
    up_types, down_types = wire.take() if wire is not None else ("", "")
    total = delta(after, before, "totalSamplesReceived")
    concealed = delta(after, before, "concealedSamples") - delta(
        after, before, "silentConcealedSamples")
    emitted = delta(after, before, "jitterBufferEmittedCount")
    return Result(
        code=code, fec=fec, red=red, loss_pct=loss * 100, jitter_ms=jitter_ms,
        r=round(envelope_r(played, source), 4), sent=len(packets), uplink_dropped=dropped,
        browser_lost=int(delta(after, before, "packetsLost")),
        browser_received=int(delta(after, before, "packetsReceived")),
        concealed_pct=round(100 * concealed / total, 2) if total else 0.0,
        fec_packets=int(delta(after, before, "fecPacketsReceived")),
        discarded=int(delta(after, before, "packetsDiscarded")),
        jitter_buffer_ms=round(1000 * delta(after, before, "jitterBufferDelay") / emitted, 1)
        if emitted else 0.0,
        glitch_ms=round(1000 * delta(after, before, "synthesizedSamplesDuration"), 1),
        red_negotiated=bool(after.get("redNegotiated")), uplink_types=up_types,
        downlink_types=down_types,
    )


NUMBERING_FILES = ("ptt_server/media/router.py", "ptt_server/media/egress.py",
                   "ptt_server/media/downlink.py")
NODE_CALLS = (("router.forward(session, tid, payload, rtp_ts, seq)",
               "router.forward(session, tid, payload, rtp_ts)"),
              ("packet.rtp_ts, packet.seq)", "packet.rtp_ts)"))


def before_tree(into: Path, rev: str = BEFORE_REV) -> Path:
    """This tree with only the numbering as it was before (`rev`'s router, egress and
    downlink, and node.py's two calls without the sequence number): everything else equal."""
    for name in ("ptt_server", "client_web"):
        shutil.copytree(REPO / name, into / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for path in NUMBERING_FILES:
        old = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], check=True,
                             capture_output=True, timeout=60).stdout
        (into / path).write_bytes(old)
    node = into / "ptt_server/node/node.py"
    text = node.read_text()
    for new, old_call in NODE_CALLS:
        if new not in text:
            raise RuntimeError(f"node.py no longer calls {new!r}: update bench/lossy.py")
        text = text.replace(new, old_call)
    node.write_text(text)
    return into


@contextlib.asynccontextmanager
async def session(link: LossyLink, workdir: Path, code: str, playwright: Any,
                  ) -> AsyncIterator[tuple[ListenerPage, Talker]]:
    """A server (this tree, or the one before the numbering change) in A, a Chromium
    listener and an aiortc talker in B, all connected."""
    data = workdir / f"data-{code}"
    cwd = REPO if code == "after" else before_tree(workdir / "before-tree")
    server = link.serve(data, port=8080 if code == "after" else 8081, cwd=cwd)
    try:
        async with ListenerPage.open(playwright, link, server, workdir / f"prof-{code}") as page:
            talker = Talker(link, server)
            try:
                await talker.start()
                yield page, talker
            finally:
                await talker.close()
    finally:
        link.stop(server.proc)


async def run(losses: Sequence[float], jitter_ms: float, delay_ms: float, codes: Sequence[str],
              fecs: Sequence[bool], max_seconds: float, repeat: int = 1,
              save: Path | None = None, reds: Sequence[bool] = (False,)) -> list[Result]:
    from playwright.async_api import async_playwright

    deadline = time.monotonic() + max_seconds
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-lossy-") as tmp:
        work = Path(tmp)
        source = read_wav(make_speech(work / "speech.wav", SPEECH))
        encoded = {fec: encode_speech(source, fec) for fec in fecs}
        with LossyLink() as link, contextlib.closing(WireTypes(link)) as wire:
            async with async_playwright() as pw:
                for code in codes:
                    async with session(link, work, code, pw) as (page, talker):
                        for _ in range(repeat):
                            plan = [(fec, red, loss) for fec in fecs for red in reds
                                    for loss in losses if code == "after" or not red]
                            for fec, red, loss in plan:
                                if time.monotonic() > deadline:
                                    print("time is up", file=sys.stderr)
                                    return results
                                res = await measure(
                                    link, page, talker, source, encoded[fec], code=code,
                                    fec=fec, loss=loss, jitter_ms=jitter_ms,
                                    delay_ms=delay_ms, save=save, red=red, wire=wire)
                                print(res.row(), file=sys.stderr, flush=True)
                                results.append(res)
    return results


def summary(results: Sequence[Result]) -> str:
    lines = ["| code | FEC | RED | uplink loss | r (played vs source) | browser packetsLost / "
             "uplink dropped | concealed |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.code} | {'on' if r.fec else 'off'} | {'on' if r.red else 'off'} "
                     f"| {r.loss_pct:.0f} % "
                     f"| {r.r:.3f} | {r.browser_lost} / {r.uplink_dropped} "
                     f"| {r.concealed_pct:.1f} % |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loss", default="5,10,20", help="uplink loss levels, percent")
    parser.add_argument("--jitter", type=float, default=25.0, help="+- ms, uniform")
    parser.add_argument("--delay", type=float, default=30.0, help="ms, fixed part")
    parser.add_argument("--code", default="before,after")
    parser.add_argument("--fec", default="off,on")
    parser.add_argument("--red", default="off", help="off, on or off,on (RED: code after only)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=None, help="results as JSON")
    parser.add_argument("--save-audio", type=Path, default=None,
                        help="keep what the browser played, one WAV per run")
    args = parser.parse_args(argv)
    results = asyncio.run(run(
        [float(x) / 100 for x in args.loss.split(",")], args.jitter, args.delay,
        args.code.split(","), [x == "on" for x in args.fec.split(",")], args.max_seconds,
        args.repeat, args.save_audio, [x == "on" for x in args.red.split(",")]))
    print(summary(results))
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
