"""Opus as Ogg Opus stores it, without decoding: packet durations from the TOC byte
(RFC 6716 section 3.1), PLC filler packets for gaps (RFC 7845 section 4.1) and the
OpusHead/OpusTags header packets (RFC 7845 section 5).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

SAMPLE_RATE = 48000  # RFC 7845 section 4: granule positions always count 48 kHz samples
# RFC 7845 section 5.1: pre-skip is what the decoder discards at the start. libopus encoders
# (every browser's WebRTC stack) have 6.5 ms of look-ahead = 312 samples at 48 kHz, and
# opusenc writes exactly this value, so the decoded audio lines up with what was spoken.
PRE_SKIP = 312
VENDOR = "ptt-server recorder"
MAX_PACKET_SAMPLES = 5760  # RFC 6716 section 3.2.5: no packet lasts more than 120 ms


# --- Opus TOC (RFC 6716 section 3.1) -------------------------------------------------------
def toc_frame_samples(toc: int) -> int:
    """Samples (48 kHz) in one frame of a packet with this TOC byte (RFC 6716 Table 2)."""
    config = toc >> 3
    if config < 12:  # SILK-only: 10, 20, 40, 60 ms
        return (480, 960, 1920, 2880)[config & 3]
    if config < 16:  # Hybrid: 10, 20 ms
        return (480, 960)[config & 1]
    return (120, 240, 480, 960)[config & 3]  # CELT-only: 2.5, 5, 10, 20 ms


def opus_packet_samples(packet: bytes) -> int:
    """Duration of an Opus packet in 48 kHz samples, from its TOC byte (RFC 6716 3.1-3.2).

    Raises ValueError for packets whose duration cannot be known (empty, or a code 3 packet
    without a valid frame count): those are not valid Opus packets (RFC 6716 section 3.4).
    """
    if not packet:
        raise ValueError("empty Opus packet (RFC 6716 3.4 R1: at least one byte)")
    toc = packet[0]
    code = toc & 3
    if code == 0:
        frames = 1  # 3.2.2: one frame
    elif code in (1, 2):
        frames = 2  # 3.2.3 / 3.2.4: two frames, equal or different sizes
    else:
        # 3.2.5: code 3 carries the frame count M in the low 6 bits of the second byte.
        if len(packet) < 2:
            raise ValueError("code 3 Opus packet without frame count byte")
        frames = packet[1] & 0x3F
        if frames == 0:
            raise ValueError("code 3 Opus packet with zero frames (RFC 6716 3.4 R5)")
    samples = frames * toc_frame_samples(toc)
    if samples > MAX_PACKET_SAMPLES:
        raise ValueError("Opus packet longer than 120 ms (RFC 6716 3.4 R5)")
    return samples


def toc_channels(toc: int) -> int:
    return 2 if toc & 0x04 else 1  # RFC 6716 section 3.1: the 's' bit


def _mode_frame_configs(config: int) -> dict[int, int]:
    """frame samples -> config number, for the mode and audio bandwidth of `config`."""
    if config < 12:
        base = config & ~3
        return {480: base, 960: base + 1, 1920: base + 2, 2880: base + 3}
    if config < 16:
        base = config & ~1
        return {480: base, 960: base + 1}
    base = config & ~3
    return {120: base, 240: base + 1, 480: base + 2, 960: base + 3}


def _celt_configs_for(config: int) -> dict[int, int]:
    """CELT-only configs at the closest audio bandwidth: the only mode with 2.5/5 ms frames."""
    if config >= 16:
        base = config & ~3
    elif config >= 14:
        base = 28  # hybrid FB -> CELT FB
    elif config >= 12:
        base = 24  # hybrid SWB -> CELT SWB
    elif config >= 8:
        base = 20  # SILK WB -> CELT WB
    elif config >= 4:
        base = 20  # SILK MB: CELT has no MB (RFC 6716 Table 2), WB is nearest
    else:
        base = 16  # SILK NB -> CELT NB
    return {120: base, 240: base + 1, 480: base + 2, 960: base + 3}


DEFAULT_FILLER_TOC = (31 << 3)  # CELT-only fullband 20 ms, mono, code 0


def plc_packets(prev_toc: int | None, gap_samples: int) -> list[bytes]:
    """Opus packets that make a decoder conceal `gap_samples` of missing audio.

    RFC 7845 section 4.1 (repairing gaps in real-time streams): a muxer SHOULD fill a gap left
    by packet loss or DTX with packets that explicitly request packet loss concealment, i.e. a
    synthesized TOC byte with zero-length frames (RFC 6716 section 3.2.1); it recommends the
    previous packet's mode, bandwidth, channel count and frame size so the PLC continues
    smoothly. A 1-byte code 0 packet is exactly that: one frame of length zero. A remainder
    the previous frame size cannot express uses smaller frames of the same mode, then
    CELT-only frames (2.5/5 ms); less than 2.5 ms cannot come from loss or DTX and is dropped.
    """
    if gap_samples < 120:
        return []
    toc = DEFAULT_FILLER_TOC if prev_toc is None else prev_toc
    config = toc >> 3
    stereo = toc & 0x04
    prev_size = toc_frame_samples(toc)
    same_mode = _mode_frame_configs(config)
    sizes: list[tuple[int, int]] = [(prev_size, config)]
    sizes += sorted(((s, c) for s, c in same_mode.items() if s < prev_size), reverse=True)
    sizes += sorted(
        ((s, c) for s, c in _celt_configs_for(config).items() if s < prev_size), reverse=True
    )
    out: list[bytes] = []
    remaining = gap_samples
    for size, cfg in sizes:
        n, remaining = divmod(remaining, size)
        out.extend([bytes([(cfg << 3) | stereo])] * n)
        if remaining < 120:
            break
    return out


def is_plc_filler(packet: bytes) -> bool:
    """A TOC-only packet: what plc_packets() writes (browsers never send 1-byte packets)."""
    return len(packet) == 1


# --- headers (RFC 7845 section 5) ------------------------------------------------------------
def opus_head(channels: int, pre_skip: int = PRE_SKIP, input_rate: int = SAMPLE_RATE) -> bytes:
    # Section 5.1: magic, version 1, channel count, pre-skip, input rate, output gain 0,
    # channel mapping family 0 (mono/stereo, no mapping table).
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, pre_skip, input_rate, 0, 0)


def opus_tags(vendor: str, comments: Sequence[tuple[str, str]]) -> bytes:
    # Section 5.2: vendor string and user comments, each a UTF-8 "KEY=value" with a 32-bit
    # little-endian length; keys are ASCII 0x20-0x7D without '=' (Vorbis comment rules).
    out = bytearray(b"OpusTags")
    v = vendor.encode()
    out += struct.pack("<I", len(v)) + v
    out += struct.pack("<I", len(comments))
    for key, value in comments:
        if not key or "=" in key or any(not 0x20 <= ord(ch) <= 0x7D for ch in key):
            raise ValueError(f"invalid comment key {key!r}")
        c = f"{key}={value}".encode()
        out += struct.pack("<I", len(c)) + c
    return bytes(out)


def parse_opus_head(packet: bytes) -> tuple[int, int, int]:
    """(channels, pre_skip, input_rate) from an OpusHead packet."""
    if len(packet) < 19 or packet[:8] != b"OpusHead":
        raise ValueError("not an OpusHead packet")
    version, channels, pre_skip, rate, _gain, _family = struct.unpack_from("<BBHIhB", packet, 8)
    if version >> 4 != 0:  # section 5.1: the major version (upper 4 bits) must be 0
        raise ValueError(f"unsupported OpusHead version {version}")
    return channels, pre_skip, rate


def parse_opus_tags(packet: bytes) -> tuple[str, list[tuple[str, str]]]:
    if packet[:8] != b"OpusTags":
        raise ValueError("not an OpusTags packet")
    pos = 8
    (n,) = struct.unpack_from("<I", packet, pos)
    vendor = packet[pos + 4:pos + 4 + n].decode("utf-8", "replace")
    pos += 4 + n
    (count,) = struct.unpack_from("<I", packet, pos)
    pos += 4
    comments: list[tuple[str, str]] = []
    for _ in range(count):
        (n,) = struct.unpack_from("<I", packet, pos)
        text = packet[pos + 4:pos + 4 + n].decode("utf-8", "replace")
        pos += 4 + n
        key, _, value = text.partition("=")
        comments.append((key, value))
    return vendor, comments
