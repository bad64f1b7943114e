"""Ogg pages (RFC 3533): the CRC, building a page from packets, and reading pages back.

Knows nothing about Opus: a page is a header, a lacing table and a body of packets.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

# RFC 3533 section 6: header_type flags.
FLAG_CONTINUED = 0x01
FLAG_BOS = 0x02
FLAG_EOS = 0x04

PAGE_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seq, crc, n
MAX_SEGMENTS = 255  # RFC 3533 section 6: the segment count is one byte


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


# --- pages (RFC 3533 section 6) --------------------------------------------------------------
def raw_page(lacing: bytes, body: bytes, granule: int, serial: int, sequence: int,
             flags: int) -> bytes:
    """A page with the given lacing table and body, its CRC filled in."""
    header = PAGE_HEADER.pack(b"OggS", 0, flags, granule, serial, sequence, 0, len(lacing))
    page = bytearray(header) + lacing + body
    struct.pack_into("<I", page, 22, ogg_crc(page))  # CRC is computed with its field zeroed
    return bytes(page)


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
    if len(lacing) > MAX_SEGMENTS:
        raise ValueError("too many segments for one page")
    return raw_page(bytes(lacing), b"".join(packets), granule, serial, sequence, flags)


def packet_segments(packet: bytes) -> int:
    """Lacing values a complete packet takes."""
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
        capture, version, flags, granule, serial, seq, crc, nseg = PAGE_HEADER.unpack_from(
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


def page_packets(page: OggPage) -> Iterator[bytes]:
    """The packets that end on this page (a packet continued from the previous page is
    returned only in part: our writer never continues audio packets across pages)."""
    pos = 0
    size = 0
    for lace in page.lacing:
        size += lace
        if lace < 255:
            yield page.body[pos:pos + size]
            pos += size
            size = 0
