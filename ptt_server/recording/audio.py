"""Decoding a recording for listening (WAV) and looking (waveform peaks).

Only playback decodes; the stored evidence is never re-encoded.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import opuslib

from ptt_server.recording.ogg_reader import read_ogg_opus
from ptt_server.recording.opus import MAX_PACKET_SAMPLES, SAMPLE_RATE, opus_packet_samples


def decode_file(path: Path) -> npt.NDArray[np.int16]:
    """48 kHz mono 16-bit PCM of an Ogg Opus file, trimmed as RFC 7845 says: pre-skip
    samples dropped from the start (section 5.1), and the end cut at the last granule
    position (section 4.5). A packet libopus rejects is concealed, not fatal."""
    info = read_ogg_opus(path.read_bytes())
    # Always decode to mono: libopus downmixes stereo packets itself (RFC 7845 section 5.1.1).
    decoder = opuslib.Decoder(SAMPLE_RATE, 1)
    chunks: list[npt.NDArray[np.int16]] = []
    for packet in info.packets:
        try:
            pcm = decoder.decode(packet, MAX_PACKET_SAMPLES)
        except opuslib.OpusError:
            try:
                frame = opus_packet_samples(packet)
            except ValueError:
                continue
            pcm = decoder.decode(b"", frame)  # packet loss concealment
        chunks.append(np.frombuffer(pcm, dtype=np.int16))
    pcm_all = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return pcm_all[info.pre_skip:info.final_granule]


def wav_bytes(pcm: npt.NDArray[np.int16]) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def peaks(pcm: npt.NDArray[np.int16], points: int) -> tuple[list[float], list[float]]:
    """Min and max of each of `points` equal slices, scaled to [-1, 1]: what a waveform view
    draws. Fewer samples than points gives one point per sample."""
    if len(pcm) == 0:
        return [], []
    points = max(1, min(points, len(pcm)))
    edges = np.linspace(0, len(pcm), points + 1).astype(np.int64)[:-1]
    lows = np.minimum.reduceat(pcm, edges).astype(np.float64) / 32768.0
    highs = np.maximum.reduceat(pcm, edges).astype(np.float64) / 32768.0
    return np.round(lows, 4).tolist(), np.round(highs, 4).tolist()
