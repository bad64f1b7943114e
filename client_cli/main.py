"""`ptt`: a command-line PTT client (listen, talk, monitor).

    ptt --server URL --token T listen TG --out DIR
    ptt --server URL --token T talk TG FILE.wav
    ptt --server URL --token T monitor TG
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import ssl
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import opuslib

from .client import FRAME_SAMPLES, ClientError, PttClient, Transmission

RATE = 48000
FLOOR_EVENTS = {
    "floor_granted", "floor_denied", "floor_queued", "floor_taken", "floor_idle",
    "floor_revoked", "emergency", "emergency_cleared", "error",
}


def read_wav_48k_mono(path: Path) -> np.ndarray:
    """16-bit PCM WAV at 48 kHz (mono, or stereo mixed down). Other rates: convert first
    (e.g. `sox in.wav -r 48000 -c 1 out.wav`)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: 16-bit PCM WAV required")
        if w.getframerate() != RATE:
            raise ValueError(f"{path}: 48000 Hz required (got {w.getframerate()} Hz)")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        if w.getnchannels() == 2:
            pcm = pcm.reshape(-1, 2).mean(axis=1).astype(np.int16)
        elif w.getnchannels() != 1:
            raise ValueError(f"{path}: mono or stereo required")
    return pcm


def encode_opus(pcm: np.ndarray) -> list[bytes]:
    encoder = opuslib.Encoder(RATE, 1, opuslib.APPLICATION_VOIP)
    pcm = np.concatenate([pcm, np.zeros((-len(pcm)) % FRAME_SAMPLES, dtype=np.int16)])
    return [
        encoder.encode(pcm[i:i + FRAME_SAMPLES].tobytes(), FRAME_SAMPLES)
        for i in range(0, len(pcm), FRAME_SAMPLES)
    ]


def save_transmission(t: Transmission, out_dir: Path) -> Path:
    """Write what was heard as `<transmission id>.wav` (decoded with opuslib), keeping real
    time: a gap in RTP timestamps (lost packets, DTX) is filled by the decoder's concealment."""
    decoder = opuslib.Decoder(RATE, 1)
    chunks: list[bytes] = []
    prev_ts: int | None = None
    for r in t.packets:
        if prev_ts is not None:
            missing = ((r.rtp_timestamp - prev_ts) % (1 << 32)) // FRAME_SAMPLES - 1
            for _ in range(min(int(missing), 250)):  # at most 5 s of concealment per gap
                chunks.append(decoder.decode(b"", FRAME_SAMPLES))
        chunks.append(decoder.decode(r.payload, FRAME_SAMPLES))
        prev_ts = r.rtp_timestamp
    path = out_dir / f"{t.transmission_id}.wav"
    tmp = path.with_suffix(".wav.part")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(b"".join(chunks))
    tmp.replace(path)
    return path


def print_event(msg: dict[str, Any]) -> None:
    shown = {k: v for k, v in msg.items() if not k.startswith("_") and k != "sdp"}
    print(json.dumps(shown), flush=True)


def ssl_arg(args: argparse.Namespace) -> ssl.SSLContext | bool | None:
    if args.insecure:
        return False
    if args.ca:
        return ssl.create_default_context(cafile=args.ca)
    return None


async def run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    listing = {"presence", "presence_delta", "joined"}
    shown = FLOOR_EVENTS | (listing if args.command == "monitor" else set())
    out_dir: Path | None = Path(args.out) if args.command == "listen" else None
    saved: set[str] = set()
    client: PttClient

    def on_event(msg: dict[str, Any]) -> None:
        if msg["type"] in shown:
            print_event(msg)
        if out_dir is not None and msg["type"] == "floor_idle":
            # Let the last packets of the burst arrive before writing the file.
            loop.call_later(0.3, save, msg["transmission_id"])

    def save(tid: str) -> None:
        t = client.transmissions.get(tid)
        if t is not None and out_dir is not None and tid not in saved and t.packets:
            saved.add(tid)
            path = save_transmission(t, out_dir)
            print_event({"type": "saved", "transmission_id": tid, "file": str(path),
                         "packets": len(t.packets), "unit": t.unit})

    client = PttClient(args.server, args.token, ice_addresses=args.ice_address or (),
                       ssl_context=ssl_arg(args), on_event=on_event)
    try:
        await client.connect()
        if args.command == "talk":
            packets = encode_opus(read_wav_48k_mono(Path(args.file)))
            await client.start_media(send=True)
            await client.join(args.talkgroup)
            reply = await client.talk(args.talkgroup, packets)
            return 0 if reply["type"] == "floor_granted" else 3
        await client.start_media(send=False)
        joined = await client.join(args.talkgroup, mode=args.mode)
        if joined["type"] == "error":
            print_event(joined)
            return 2
        waiter = asyncio.create_task(stop.wait())
        closed = asyncio.create_task(client.wait_for(lambda m: False, timeout=None))  # type: ignore[arg-type]
        await asyncio.wait(
            [waiter, closed], timeout=args.duration, return_when=asyncio.FIRST_COMPLETED
        )
        for task in (waiter, closed):
            task.cancel()
        if out_dir is not None:
            for tid in list(client.transmissions):
                save(tid)
        return 0
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ptt", description="Command-line push-to-talk client")
    parser.add_argument("--server", required=True, help="e.g. https://ptt.example:8443")
    parser.add_argument("--token", required=True, help="JWT (ptt-server token NAME)")
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    tls.add_argument("--ca", help="trust this CA certificate (development CA)")
    parser.add_argument("--ice-address", action="append",
                        help="gather ICE host candidates on this address only (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True)
    listen = sub.add_parser("listen", help="save each received transmission as a file")
    listen.add_argument("talkgroup")
    listen.add_argument("--out", required=True, help="directory for <transmission id>.wav")
    listen.add_argument("--mode", choices=["member", "monitor"], default="member")
    listen.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    talk = sub.add_parser("talk", help="request the floor, send a WAV file, release")
    talk.add_argument("talkgroup")
    talk.add_argument("file")
    monitor = sub.add_parser("monitor", help="print presence and floor events")
    monitor.add_argument("talkgroup")
    monitor.add_argument("--mode", choices=["member", "monitor"], default="monitor")
    monitor.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    args = parser.parse_args(argv)
    if args.command == "listen":
        Path(args.out).mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(run(args))
    except ClientError as exc:
        print(f"ptt: refused: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, OSError, ValueError) as exc:
        print(f"ptt: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
