"""Ogg Opus (RFC 7845) writing, reading and crash repair, without decoding a single packet.

The recorder stores the exact Opus packets the SFU forwarded; these modules only frame them:

* ogg_pages.py  - Ogg pages (RFC 3533): CRC, lacing, building and walking pages.
* opus.py       - packet durations from the TOC byte (RFC 6716 section 3.1), PLC filler
                  packets for gaps (RFC 7845 section 4.1), OpusHead/OpusTags (section 5).
* ogg_writer.py - the incremental writer: packets in, complete pages out.
* ogg_reader.py - strict reading of a finished file.
* ogg_repair.py - making a file a killed writer left behind valid again.

This module gathers their public names in one namespace for callers that want the whole
format (`from ptt_server.recording import ogg`).
"""

from __future__ import annotations

from ptt_server.recording.ogg_pages import (
    FLAG_BOS,
    FLAG_CONTINUED,
    FLAG_EOS,
    OggPage,
    build_page,
    iter_pages,
    ogg_crc,
)
from ptt_server.recording.ogg_reader import OggError, OggOpusFile, read_ogg_opus, read_ogg_opus_file
from ptt_server.recording.ogg_repair import RepairResult, repair_ogg_opus
from ptt_server.recording.ogg_writer import OggOpusWriter
from ptt_server.recording.opus import (
    DEFAULT_FILLER_TOC,
    MAX_PACKET_SAMPLES,
    PRE_SKIP,
    SAMPLE_RATE,
    VENDOR,
    is_plc_filler,
    opus_head,
    opus_packet_samples,
    opus_tags,
    parse_opus_head,
    parse_opus_tags,
    plc_packets,
    toc_channels,
    toc_frame_samples,
)

__all__ = [
    "DEFAULT_FILLER_TOC", "FLAG_BOS", "FLAG_CONTINUED", "FLAG_EOS", "MAX_PACKET_SAMPLES",
    "PRE_SKIP", "SAMPLE_RATE", "VENDOR", "OggError", "OggOpusFile", "OggOpusWriter", "OggPage",
    "RepairResult", "build_page", "is_plc_filler", "iter_pages", "ogg_crc", "opus_head",
    "opus_packet_samples", "opus_tags", "parse_opus_head", "parse_opus_tags", "plc_packets",
    "read_ogg_opus", "read_ogg_opus_file", "repair_ogg_opus", "toc_channels",
    "toc_frame_samples",
]
