"""Crash repair: make the Ogg Opus file a killed writer left behind valid again.

Every page the writer flushed holds complete packets only (ogg_writer.py), so the file can be
cut after any complete page; repair keeps all of them and puts the EOS flag on the last one.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ptt_server.recording.ogg_pages import (
    FLAG_BOS,
    FLAG_EOS,
    OggPage,
    iter_pages,
    ogg_crc,
    page_packets,
)
from ptt_server.recording.ogg_writer import OggOpusWriter
from ptt_server.recording.opus import PRE_SKIP, is_plc_filler, parse_opus_head


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


def repair_ogg_opus(path: Path, serial: int, comments: Sequence[tuple[str, str]]) -> RepairResult:
    """Make a file left by a killed writer a valid Ogg Opus stream, keeping every complete
    page: cut after the last complete page whose CRC is right, then set EOS on it in place
    (RFC 7845 section 3: the last page carries EOS; RFC 3533: the CRC covers the flags, so it
    is recomputed). If no audio page survived, the headers (rebuilt from `serial`/`comments`
    when torn) are followed by one PLC packet, so the file is still a valid, empty stream."""
    data = path.read_bytes()
    good = _intact_pages(data)
    header_pages, pre_skip = _headers(good)
    if len(good) <= header_pages or header_pages == 0:
        return _rebuild(path, data, good[:header_pages], pre_skip, serial, comments)
    return _close_at(path, data, good, header_pages, pre_skip)


def _intact_pages(data: bytes) -> list[OggPage]:
    """The leading run of pages that form one well-formed stream, ending on a packet end."""
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
    return good


def _headers(good: list[OggPage]) -> tuple[int, int]:
    """(pages holding OpusHead and OpusTags, pre-skip); 0 pages if they are not intact."""
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
            pre_skip = parse_opus_head(next(page_packets(good[0])))[1]
        except (ValueError, StopIteration):
            header_pages = 0
    return header_pages, pre_skip


def _rebuild(
    path: Path, data: bytes, headers: list[OggPage], pre_skip: int, serial: int,
    comments: Sequence[tuple[str, str]],
) -> RepairResult:
    """No audio page survived: keep the header pages (or write new ones if there are none)
    and close the stream with one PLC packet."""
    out = bytearray()
    kept = 0
    if headers:
        last_header = headers[-1]
        kept = last_header.offset + last_header.size
        out += data[:kept]
        writer = OggOpusWriter(
            sink=out.extend, serial=headers[0].serial, comments=comments, pre_skip=pre_skip
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


def _close_at(
    path: Path, data: bytes, good: list[OggPage], header_pages: int, pre_skip: int
) -> RepairResult:
    """Cut after the last intact page and set EOS on it (its CRC recomputed)."""
    last = good[-1]
    end = last.offset + last.size
    audio_packets = 0
    audio_bytes = 0
    for page in good[header_pages:]:
        for pkt in page_packets(page):
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
