"""Ogg Opus (RFC 7845) writing, reading and crash repair, without decoding a single packet.

The recorder stores the exact Opus packets the SFU forwarded. This module only frames them:
Ogg pages (RFC 3533), the OpusHead/OpusTags headers (RFC 7845 section 5), granule positions
from each packet's TOC byte (RFC 6716 section 3.1), and PLC filler packets for gaps in time
(RFC 7845 section 4.1).
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_RATE = 48000  # RFC 7845 section 4: granule positions always count 48 kHz samples
# RFC 7845 section 5.1: pre-skip is what the decoder discards at the start. libopus encoders
# (every browser's WebRTC stack) have 6.5 ms of look-ahead = 312 samples at 48 kHz, and
# opusenc writes exactly this value, so the decoded audio lines up with what was spoken.
PRE_SKIP = 312
VENDOR = "ptt-server recorder"
MAX_PACKET_SAMPLES = 5760  # RFC 6716 section 3.2.5: no packet lasts more than 120 ms

# RFC 3533 section 6: header_type flags.
FLAG_CONTINUED = 0x01
FLAG_BOS = 0x02
FLAG_EOS = 0x04

_PAGE_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seq, crc, n
_MAX_SEGMENTS = 255  # RFC 3533 section 6: the segment count is one byte
_MAX_PAGE_BODY = 16 * 1024  # keep pages small: a crash loses at most the unflushed page


# --- CRC (RFC 3533 section 6) ---------------------------------------------------------------
# Ogg uses CRC-32 with polynomial 0x04C11DB7, MSB first, initial value 0 and no final XOR.
# zlib implements the same polynomial LSB first (reflected) with 0xFFFFFFFF pre/post
# conditioning. Feeding zlib bit-reversed bytes and reversing the 32-bit result gives the
# MSB-first CRC; passing 0xFFFFFFFF as the start value cancels zlib's conditioning. This keeps
# the checksum in C: the pure-Python table version is ~100 times slower.
_BITREV8 = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _rev32(v: int) -> int:
    return int(f"{v:032b}"[::-1], 2)


def ogg_crc(data: bytes | bytearray | memoryview) -> int:
    reflected = zlib.crc32(bytes(data).translate(_BITREV8), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return _rev32(reflected)


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


# --- pages (RFC 3533 section 6) --------------------------------------------------------------
def build_page(
    packets: Sequence[bytes], granule: int, serial: int, sequence: int, flags: int
) -> bytes:
    """One page of complete packets. Lacing: each packet is split into 255-byte segments and a
    final segment < 255 bytes (0 if the length is a multiple of 255), so a reader knows
    where each packet ends without any length prefix."""
    lacing = bytearray()
    for p in packets:
        n, rem = divmod(len(p), 255)
        lacing += b"\xff" * n + bytes([rem])
    if len(lacing) > _MAX_SEGMENTS:
        raise ValueError("too many segments for one page")
    header = _PAGE_HEADER.pack(b"OggS", 0, flags, granule, serial, sequence, 0, len(lacing))
    page = bytearray(header) + lacing + b"".join(packets)
    struct.pack_into("<I", page, 22, ogg_crc(page))  # CRC is computed with its field zeroed
    return bytes(page)


def _segments(packet: bytes) -> int:
    return len(packet) // 255 + 1


@dataclass
class OggPage:
    offset: int
    flags: int
    granule: int
    serial: int
    sequence: int
    lacing: bytes
    body: bytes
    crc_ok: bool

    @property
    def size(self) -> int:
        return 27 + len(self.lacing) + len(self.body)

    @property
    def ends_packet(self) -> bool:
        """The last packet on this page ends here (not continued on the next page)."""
        return not self.lacing or self.lacing[-1] < 255


def iter_pages(data: bytes | memoryview) -> Iterator[OggPage]:
    """Pages from the start of `data`; stops at the first truncated or malformed page.

    A bad CRC is reported on the page (crc_ok False) rather than stopping, so the caller
    decides: repair stops there, a reader refuses the file.
    """
    view = memoryview(data)
    pos = 0
    while pos + 27 <= len(view):
        capture, version, flags, granule, serial, seq, crc, nseg = _PAGE_HEADER.unpack_from(
            view, pos
        )
        if capture != b"OggS" or version != 0 or pos + 27 + nseg > len(view):
            return
        lacing = bytes(view[pos + 27:pos + 27 + nseg])
        body_len = sum(lacing)
        end = pos + 27 + nseg + body_len
        if end > len(view):
            return
        raw = bytearray(view[pos:end])
        raw[22:26] = b"\0\0\0\0"
        yield OggPage(
            offset=pos, flags=flags, granule=granule, serial=serial, sequence=seq,
            lacing=lacing, body=bytes(view[pos + 27 + nseg:end]), crc_ok=ogg_crc(raw) == crc,
        )
        pos = end


@dataclass
class OggOpusFile:
    channels: int
    pre_skip: int
    input_rate: int
    vendor: str
    comments: list[tuple[str, str]]
    packets: list[bytes]  # audio packets only, in order
    page_granules: list[int]  # granule position of each audio page
    final_granule: int
    eos: bool
    pages: int

    @property
    def duration_samples(self) -> int:
        """Playable length: RFC 7845 section 4, granule of the last page minus pre-skip."""
        return max(0, self.final_granule - self.pre_skip)

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.comments)


class OggError(ValueError):
    pass


def read_ogg_opus(data: bytes) -> OggOpusFile:
    """Parse a single-stream Ogg Opus file written by this module (or any RFC 7845 file
    with one logical stream). Raises OggError on a damaged file."""
    packets: list[bytes] = []
    granules: list[int] = []
    partial = bytearray()
    npages = 0
    serial: int | None = None
    expected_seq = 0
    eos = False
    final_granule = 0
    end = 0
    for page in iter_pages(data):
        if not page.crc_ok:
            raise OggError(f"page {page.sequence} at byte {page.offset}: CRC mismatch")
        if serial is None:
            if not page.flags & FLAG_BOS:
                raise OggError("first page lacks the BOS flag")
            serial = page.serial
        elif page.serial != serial:
            raise OggError("more than one logical stream")
        if page.sequence != expected_seq:
            raise OggError(f"page sequence {page.sequence}, expected {expected_seq}")
        if eos:
            raise OggError("page after EOS")
        expected_seq += 1
        npages += 1
        if bool(page.flags & FLAG_CONTINUED) != bool(partial):
            raise OggError(f"page {page.sequence}: continuation flag does not match")
        headers_done = len(packets) >= 2
        pos = 0
        for lace in page.lacing:
            partial += page.body[pos:pos + lace]
            pos += lace
            if lace < 255:
                packets.append(bytes(partial))
                partial.clear()
        if headers_done:
            granules.append(page.granule)
        if page.granule != -1:
            final_granule = page.granule
        eos = bool(page.flags & FLAG_EOS)
        end = page.offset + page.size
    if end != len(data):
        raise OggError(f"{len(data) - end} bytes of garbage or a truncated page at the end")
    if len(packets) < 2:
        raise OggError("missing OpusHead/OpusTags")
    try:
        channels, pre_skip, rate = parse_opus_head(packets[0])
        vendor, comments = parse_opus_tags(packets[1])
    except (ValueError, struct.error) as exc:
        raise OggError(str(exc)) from exc
    return OggOpusFile(
        channels=channels, pre_skip=pre_skip, input_rate=rate, vendor=vendor,
        comments=comments, packets=packets[2:], page_granules=granules,
        final_granule=final_granule, eos=eos, pages=npages,
    )


def read_ogg_opus_file(path: Path) -> OggOpusFile:
    return read_ogg_opus(path.read_bytes())


# --- incremental writer ------------------------------------------------------------------------
@dataclass
class OggOpusWriter:
    """Frames Opus packets into Ogg pages and hands the bytes to `sink` as pages complete.

    The writer never re-encodes: `add_packet` takes the payload as received. Pages only hold
    complete packets, so every flushed page boundary is a point where the file can be cut and
    still be valid (crash repair relies on this).
    """

    sink: Callable[[bytes], object]
    serial: int
    comments: Sequence[tuple[str, str]]
    vendor: str = VENDOR
    pre_skip: int = PRE_SKIP
    granule: int = 0  # samples of every packet handed to add_packet so far
    packets_added: int = 0  # audio packets handed to add_packet so far
    bytes_written: int = 0
    audio_pages: int = 0
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256)
    _page_seq: int = 0
    _headers_written: bool = False
    _closed: bool = False
    _pending: list[bytes] = field(default_factory=list)
    _pending_granules: list[int] = field(default_factory=list)
    _pending_segments: int = 0
    _pending_bytes: int = 0

    @property
    def headers_written(self) -> bool:
        return self._headers_written

    def _emit(self, page: bytes) -> None:
        self.sink(page)
        self.sha256.update(page)
        self.bytes_written += len(page)
        self._page_seq += 1

    def write_headers(self, channels: int) -> None:
        """RFC 7845 section 3: OpusHead alone on the first page (BOS), OpusTags completing
        the second page, both with granule position 0; audio starts on the third page."""
        if self._headers_written:
            return
        self._headers_written = True
        self._emit(build_page([opus_head(channels, self.pre_skip)], 0, self.serial, 0, FLAG_BOS))
        tags = opus_tags(self.vendor, self.comments)
        # OpusTags may exceed one page (255 segments); split it with continuation flags.
        chunks = [tags[i:i + 255 * 254] for i in range(0, len(tags), 255 * 254)] or [b""]
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            lacing = bytearray()
            n, rem = divmod(len(chunk), 255)
            lacing += b"\xff" * n
            if last:
                lacing.append(rem)
            flags = FLAG_CONTINUED if i else 0
            # RFC 3533: a page on which no packet ends has granule position -1.
            granule = 0 if last else -1
            header = _PAGE_HEADER.pack(
                b"OggS", 0, flags, granule, self.serial, self._page_seq, 0, len(lacing)
            )
            page = bytearray(header) + lacing + chunk
            struct.pack_into("<I", page, 22, ogg_crc(page))
            self._emit(bytes(page))

    def resume_after_headers(self, next_page_sequence: int) -> None:
        """Continue a file whose header pages are already on disk (crash repair)."""
        self._headers_written = True
        self._page_seq = next_page_sequence

    def add_packet(self, packet: bytes, samples: int) -> None:
        if self._closed:
            raise RuntimeError("writer closed")
        if not self._headers_written:
            self.write_headers(toc_channels(packet[0]) if packet else 1)
        seg = _segments(packet)
        if self._pending and (
            self._pending_segments + seg > _MAX_SEGMENTS
            or self._pending_bytes + len(packet) > _MAX_PAGE_BODY
        ):
            self._write_page(len(self._pending), 0)
        self.granule += samples
        self.packets_added += 1
        self._pending.append(packet)
        self._pending_granules.append(self.granule)
        self._pending_segments += seg
        self._pending_bytes += len(packet)

    @property
    def pending_packets(self) -> int:
        return len(self._pending)

    def replace_pending(self, number: int, packet: bytes) -> bool:
        """Put `packet` in place of the not yet written packet number `number` (counting from
        0 over all add_packet calls), which must last as long: this lets a late packet take
        the place of the PLC filler that stood in for it. False if already written."""
        idx = number - (self.packets_added - len(self._pending))
        if not 0 <= idx < len(self._pending):
            return False
        old = self._pending[idx]
        segments = self._pending_segments - _segments(old) + _segments(packet)
        if segments > _MAX_SEGMENTS:
            return False
        self._pending[idx] = packet
        self._pending_segments = segments
        self._pending_bytes += len(packet) - len(old)
        return True

    def _write_page(self, count: int, flags: int) -> None:
        packets = self._pending[:count]
        # RFC 7845 section 4: a page's granule position is the sample count at the end of
        # the last packet completed on it (pre-skip included; players subtract it).
        granule = self._pending_granules[count - 1]
        self._emit(build_page(packets, granule, self.serial, self._page_seq, flags))
        self.audio_pages += 1
        del self._pending[:count]
        del self._pending_granules[:count]
        self._pending_segments = sum(_segments(p) for p in self._pending)
        self._pending_bytes = sum(len(p) for p in self._pending)

    def flush(self, keep_last: bool = True) -> None:
        """Write buffered packets as a page. With keep_last, one packet stays buffered so the
        final page, which must carry the EOS flag (RFC 7845 section 3), always has a packet
        to end on without rewriting an already flushed page."""
        count = len(self._pending) - (1 if keep_last else 0)
        if count > 0:
            self._write_page(count, 0)

    def close(self) -> None:
        """Write the last page with EOS. A stream without any audio gets one 20 ms PLC
        packet so that it still has an audio page to carry EOS and a granule position."""
        if self._closed:
            return
        if not self._headers_written:
            self.write_headers(1)
        if not self._pending:
            filler = bytes([DEFAULT_FILLER_TOC])
            self.add_packet(filler, opus_packet_samples(filler))
        self._write_page(len(self._pending), FLAG_EOS)
        self._closed = True


# --- crash repair --------------------------------------------------------------------------
@dataclass
class RepairResult:
    truncated_bytes: int
    eos_added: bool
    rebuilt: bool  # no audio page survived: headers kept or rebuilt, one PLC packet added
    final_granule: int
    pre_skip: int
    audio_packets: int  # real (non-filler) packets kept
    audio_bytes: int
    file_size: int

    @property
    def duration_samples(self) -> int:
        return max(0, self.final_granule - self.pre_skip)


def _page_packets(page: OggPage) -> Iterator[bytes]:
    pos = 0
    size = 0
    for lace in page.lacing:
        size += lace
        if lace < 255:
            yield page.body[pos:pos + size]
            pos += size
            size = 0


def repair_ogg_opus(path: Path, serial: int, comments: Sequence[tuple[str, str]]) -> RepairResult:
    """Make a file left by a killed writer a valid Ogg Opus stream, keeping every complete
    page: cut after the last complete page whose CRC is right, then set EOS on it in place
    (RFC 7845 section 3: the last page carries EOS; RFC 3533: the CRC covers the flags, so it
    is recomputed). If no audio page survived, the headers (rebuilt from `serial`/`comments`
    when torn) are followed by one PLC packet, so the file is still a valid, empty stream."""
    data = path.read_bytes()
    good: list[OggPage] = []
    for page in iter_pages(data):
        if not page.crc_ok or (good and page.serial != good[0].serial):
            break
        if not good and not page.flags & FLAG_BOS:
            break
        if good and page.sequence != good[-1].sequence + 1:
            break
        good.append(page)
    # A page that ends inside a packet cannot be the last one (our writer never makes them).
    while good and not good[-1].ends_packet:
        good.pop()
    header_pages = 0
    pre_skip = PRE_SKIP
    seen = 0
    for i, page in enumerate(good):
        seen += sum(1 for lace in page.lacing if lace < 255)
        if seen >= 2:
            header_pages = i + 1
            break
    if header_pages:
        try:
            pre_skip = parse_opus_head(next(_page_packets(good[0])))[1]
        except (ValueError, StopIteration):
            header_pages = 0

    if len(good) <= header_pages or header_pages == 0:
        out = bytearray()
        kept = 0
        if header_pages:
            last_header = good[header_pages - 1]
            kept = last_header.offset + last_header.size
            out += data[:kept]
            writer = OggOpusWriter(
                sink=out.extend, serial=good[0].serial, comments=comments, pre_skip=pre_skip
            )
            writer.resume_after_headers(last_header.sequence + 1)
        else:
            writer = OggOpusWriter(sink=out.extend, serial=serial, comments=comments)
        writer.close()
        with open(path, "r+b") as f:
            f.truncate(kept)
            f.seek(kept)
            f.write(out[kept:])
            f.flush()
            os.fsync(f.fileno())
        return RepairResult(
            truncated_bytes=len(data) - kept, eos_added=True, rebuilt=True,
            final_granule=writer.granule, pre_skip=pre_skip, audio_packets=0, audio_bytes=0,
            file_size=len(out),
        )

    last = good[-1]
    end = last.offset + last.size
    audio_packets = 0
    audio_bytes = 0
    for page in good[header_pages:]:
        for pkt in _page_packets(page):
            if not is_plc_filler(pkt):
                audio_packets += 1
                audio_bytes += len(pkt)
    eos_added = not last.flags & FLAG_EOS
    if eos_added or end != len(data):
        page_bytes = bytearray(data[last.offset:end])
        page_bytes[5] |= FLAG_EOS
        page_bytes[22:26] = b"\0\0\0\0"
        struct.pack_into("<I", page_bytes, 22, ogg_crc(page_bytes))
        with open(path, "r+b") as f:
            f.truncate(end)
            f.seek(last.offset)
            f.write(page_bytes)
            f.flush()
            os.fsync(f.fileno())
    return RepairResult(
        truncated_bytes=len(data) - end, eos_added=eos_added, rebuilt=False,
        final_granule=last.granule, pre_skip=pre_skip, audio_packets=audio_packets,
        audio_bytes=audio_bytes, file_size=end,
    )
