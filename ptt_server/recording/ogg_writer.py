"""Writing Ogg Opus incrementally: Opus packets in, complete Ogg pages out (RFC 7845).

The writer frames packets as received and never re-encodes; timing (granule positions) comes
from the caller, which knows each packet's duration from its TOC byte (opus.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ptt_server.recording.ogg_pages import (
    FLAG_BOS,
    FLAG_CONTINUED,
    FLAG_EOS,
    MAX_SEGMENTS,
    build_page,
    packet_segments,
    raw_page,
)
from ptt_server.recording.opus import (
    DEFAULT_FILLER_TOC,
    PRE_SKIP,
    VENDOR,
    opus_head,
    opus_packet_samples,
    opus_tags,
    toc_channels,
)

_MAX_PAGE_BODY = 16 * 1024  # keep pages small: a crash loses at most the unflushed page


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
            self._emit(raw_page(bytes(lacing), chunk, granule, self.serial, self._page_seq,
                                flags))

    def resume_after_headers(self, next_page_sequence: int) -> None:
        """Continue a file whose header pages are already on disk (crash repair)."""
        self._headers_written = True
        self._page_seq = next_page_sequence

    def add_packet(self, packet: bytes, samples: int) -> None:
        if self._closed:
            raise RuntimeError("writer closed")
        if not self._headers_written:
            self.write_headers(toc_channels(packet[0]) if packet else 1)
        seg = packet_segments(packet)
        if self._pending and (
            self._pending_segments + seg > MAX_SEGMENTS
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
        segments = self._pending_segments - packet_segments(old) + packet_segments(packet)
        if segments > MAX_SEGMENTS:
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
        self._pending_segments = sum(packet_segments(p) for p in self._pending)
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
