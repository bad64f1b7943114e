"""Test audio: speech made with espeak-ng and sox, encoded with opuslib, compared by envelope."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import opuslib

RATE = 48000
FRAME = 960  # 20 ms


def make_speech(path: Path, text: str, lead_silence_s: float = 0.0) -> Path:
    """Mono 48 kHz 16-bit speech, optionally preceded by silence (a fake microphone starts
    playing before the connection is up, so browser tests need a lead-in)."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        raise RuntimeError("espeak-ng and sox are needed for test speech")
    raw = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True)
    args = ["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(path)]
    if lead_silence_s:
        args += ["pad", str(lead_silence_s), "0"]
    subprocess.run(args, check=True)
    raw.unlink()
    return path


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


def encode(pcm: np.ndarray) -> list[bytes]:
    enc = opuslib.Encoder(RATE, 1, opuslib.APPLICATION_VOIP)
    pad = (-len(pcm)) % FRAME
    pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)])
    return [enc.encode(pcm[i:i + FRAME].tobytes(), FRAME) for i in range(0, len(pcm), FRAME)]


def decode(packets: list[bytes]) -> np.ndarray:
    dec = opuslib.Decoder(RATE, 1)
    out = [np.frombuffer(dec.decode(p, FRAME), dtype=np.int16) for p in packets]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)


def envelope(pcm: np.ndarray, frame: int = FRAME) -> np.ndarray:
    n = len(pcm) // frame
    x = pcm[: n * frame].astype(np.float64).reshape(n, frame)
    return np.sqrt((x**2).mean(axis=1))


def envelope_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 50) -> float:
    """Best normalised correlation of the loudness envelopes over small lags (frames)."""
    ea, eb = envelope(a), envelope(b)
    best = -1.0
    for lag in range(-max_lag, max_lag + 1):
        x = ea[max(0, lag):]
        y = eb[max(0, -lag):]
        n = min(len(x), len(y))
        if n < 10:
            continue
        x, y = x[:n], y[:n]
        if x.std() == 0 or y.std() == 0:
            continue
        best = max(best, float(np.corrcoef(x, y)[0, 1]))
    return best


def tone_packets(freq: float, seconds: float, amplitude: float = 0.3) -> list[bytes]:
    """Opus packets (20 ms) of a sine: a talker a listener can recognise by frequency."""
    t = np.arange(int(48000 * seconds)) / 48000
    return encode((amplitude * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16))
