"""Reading an Ogg Opus file back (RFC 7845 over RFC 3533), strictly: any damage is an error.

Used by the verifier, the exporter and the tests; crash repair (ogg_repair.py) is the lenient
counterpart that keeps what it can.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from ptt_server.recording.ogg_pages import (
    FLAG_BOS,
    FLAG_CONTINUED,
    FLAG_EOS,
    OggPage,
    iter_pages,
)
from ptt_server.recording.opus import parse_opus_head, parse_opus_tags


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


def _check_page(page: OggPage, serial: int | None, expected_seq: int, eos: bool) -> None:
    """RFC 3533 stream structure: a right CRC, one logical stream that starts with BOS, no
    gap in the page sequence and nothing after EOS."""
    if not page.crc_ok:
        raise OggError(f"page {page.sequence} at byte {page.offset}: CRC mismatch")
    if serial is None:
        if not page.flags & FLAG_BOS:
            raise OggError("first page lacks the BOS flag")
    elif page.serial != serial:
        raise OggError("more than one logical stream")
    if page.sequence != expected_seq:
        raise OggError(f"page sequence {page.sequence}, expected {expected_seq}")
    if eos:
        raise OggError("page after EOS")


def read_ogg_opus(data: bytes) -> OggOpusFile:
    """Parse a single-stream Ogg Opus file written by this package (or any RFC 7845 file
    with one logical stream). Raises OggError on a damaged file."""
    packets: list[bytes] = []
    granules: list[int] = []
    partial = bytearray()
    npages = 0
    serial: int | None = None
    eos = False
    final_granule = 0
    end = 0
    for page in iter_pages(data):
        _check_page(page, serial, npages, eos)
        serial = page.serial
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
