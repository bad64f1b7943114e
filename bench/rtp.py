"""RTP details the load generator needs: a tagged Opus payload, header fields, kernel timestamps.

The talker sends real Opus frames (so a transcoding relay can decode them) carrying an 8-byte
tag in Opus padding (RFC 6716 section 3.2.5, code 3 with the padding flag): decoders ignore
padding, an SFU forwards it untouched. The tag names the run and the packet's index in it, so a
listener can tell which talker packet it received after decrypting one packet, and the rest by
RTP timestamp alone (the SRTP header is not encrypted), without decrypting every packet.
"""

from __future__ import annotations

import socket
import struct

import numpy as np
import opuslib

RATE = 48000
FRAME = 960  # samples in 20 ms
TAG = struct.Struct("!2sHI")  # magic, run id, packet index
MAGIC = b"PT"
# Linux: SO_TIMESTAMPNS (and the control message type SCM_TIMESTAMPNS) on x86/arm: 35.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
ANC_SIZE = socket.CMSG_SPACE(16)
TIMESPEC = struct.Struct("@qq")


def opus_frames(count: int = 50, bitrate: int = 24000) -> list[bytes]:
    """`count` 20 ms Opus frames of a voice-like signal (a gliding tone with noise), at a
    typical PTT voice bitrate."""
    enc = opuslib.Encoder(RATE, 1, opuslib.APPLICATION_VOIP)
    enc.bitrate = bitrate
    rng = np.random.default_rng(7)
    t = np.arange(count * FRAME) / RATE
    f = 180 + 80 * np.sin(2 * np.pi * 0.7 * t)
    sig = 6000 * np.sin(2 * np.pi * np.cumsum(f) / RATE) + rng.normal(0, 300, t.size)
    pcm = sig.astype("<i2")
    return [enc.encode(pcm[i * FRAME:(i + 1) * FRAME].tobytes(), FRAME) for i in range(count)]


def tag_payload(frame: bytes, run: int, index: int) -> bytes:
    """The Opus frame as a code-3 packet with one frame and the tag as padding."""
    tag = TAG.pack(MAGIC, run & 0xFFFF, index)
    toc = frame[0]
    if toc & 0x03 != 0:
        raise ValueError("expects a single-frame (code 0) Opus packet")
    return bytes((toc | 0x03, 0x41, len(tag))) + frame[1:] + tag


def read_tag(payload: bytes) -> tuple[int, int] | None:
    """(run, index) from a tagged payload, or None."""
    if len(payload) < TAG.size:
        return None
    magic, run, index = TAG.unpack_from(payload, len(payload) - TAG.size)
    if magic != MAGIC:
        return None
    return run, index


def rtp_payload(packet: bytes) -> bytes:
    """The payload of a (decrypted) RTP packet."""
    cc = packet[0] & 0x0F
    off = 12 + 4 * cc
    if packet[0] & 0x10:  # header extension
        (words,) = struct.unpack_from("!H", packet, off + 2)
        off += 4 + 4 * words
    end = len(packet)
    if packet[0] & 0x20:  # RTP padding
        end -= packet[-1]
    return packet[off:end]


def kernel_ns(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The kernel's receive timestamp (CLOCK_REALTIME, ns) from recvmsg's ancillary data."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = TIMESPEC.unpack_from(data)
            return sec * 1_000_000_000 + nsec
    return 0
