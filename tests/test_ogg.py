"""Ogg Opus writer/reader/repair against the real tools: ffprobe, opusdec, opusinfo."""

from __future__ import annotations

import json
import os
import random
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from ptt_server.recording import ogg

from .audio import encode, make_speech, read_wav


@pytest.fixture(scope="module")
def speech_packets(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    wav = make_speech(tmp_path_factory.mktemp("ogg") / "s.wav", "Unit four, respond code two")
    return encode(read_wav(wav))


def crc_reference(data: bytes) -> int:
    """RFC 3533 CRC, bit by bit: polynomial 0x04C11DB7, MSB first, init 0, no final XOR."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def write_file(path: Path, packets: list[bytes], flush_every: int = 25) -> ogg.OggOpusWriter:
    with open(path, "wb") as f:
        w = ogg.OggOpusWriter(sink=f.write, serial=0x1234,
                              comments=[("TALKGROUP", "patrol-1"), ("ALIAS", "Ünit 7")])
        for i, p in enumerate(packets):
            w.add_packet(p, ogg.opus_packet_samples(p))
            if i % flush_every == flush_every - 1:
                w.flush()
        w.close()
    return w


def ffprobe(path: Path) -> dict[str, object]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        check=True, capture_output=True, text=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def opusdec(path: Path, out: Path) -> np.ndarray:
    proc = subprocess.run(["opusdec", "--quiet", str(path), str(out)], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    with wave.open(str(out), "rb") as w:
        assert w.getframerate() == 48000
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


def test_crc_matches_rfc3533_definition() -> None:
    rnd = random.Random(1)
    for n in (0, 1, 2, 27, 255, 4096):
        data = bytes(rnd.getrandbits(8) for _ in range(n))
        assert ogg.ogg_crc(data) == crc_reference(data)


@pytest.mark.parametrize(
    ("packet", "samples"),
    [
        (bytes([(1 << 3) | 0]) + b"x" * 20, 960),  # SILK NB 20 ms, code 0
        (bytes([(3 << 3) | 0]), 2880),  # SILK NB 60 ms
        (bytes([(12 << 3) | 1]) + b"xx", 960),  # hybrid 10 ms, code 1: two frames
        (bytes([(15 << 3) | 2]) + b"\x01xx", 1920),  # hybrid 20 ms, code 2: two frames
        (bytes([(16 << 3) | 3, 6]), 720),  # CELT 2.5 ms x 6, code 3
        (bytes([(31 << 3) | 3, 0x80 | 3, 0]) + b"x" * 3, 2880),  # CELT 20 ms x 3, VBR flag
        (bytes([(31 << 3) | 4]), 960),  # stereo bit does not change the duration
    ],
)
def test_toc_durations(packet: bytes, samples: int) -> None:
    assert ogg.opus_packet_samples(packet) == samples


@pytest.mark.parametrize(
    "packet",
    [b"", bytes([(31 << 3) | 3]), bytes([(31 << 3) | 3, 0]), bytes([(3 << 3) | 3, 3])],
)
def test_invalid_packets_rejected(packet: bytes) -> None:
    with pytest.raises(ValueError):
        ogg.opus_packet_samples(packet)  # empty, no count byte, M=0, 180 ms > 120 ms


def test_plc_packets_follow_previous_configuration() -> None:
    silk_wb_20 = (9 << 3)
    fill = ogg.plc_packets(silk_wb_20, 960 * 3)
    assert fill == [bytes([silk_wb_20])] * 3  # same mode/bandwidth/size (RFC 7845 4.1)
    # 50 ms after a 20 ms SILK packet: 2 x 20 ms, then 10 ms of the same mode
    fill = ogg.plc_packets(silk_wb_20, 2400)
    assert [ogg.opus_packet_samples(p) for p in fill] == [960, 960, 480]
    assert all(p[0] >> 3 in (8, 9) for p in fill)
    # 22.5 ms: SILK has no 2.5 ms frames, CELT at the nearest bandwidth does
    fill = ogg.plc_packets(silk_wb_20, 1080)
    assert [ogg.opus_packet_samples(p) for p in fill] == [960, 120]
    assert fill[1][0] >> 3 == 20  # CELT WB 2.5 ms
    assert ogg.plc_packets(silk_wb_20 | 4, 960) == [bytes([silk_wb_20 | 4])]  # keeps stereo
    assert ogg.plc_packets(None, 100) == []  # < 2.5 ms cannot come from loss
    assert all(len(p) == 1 for p in ogg.plc_packets(None, 48000))


def test_written_file_passes_ffprobe_opusdec_and_reads_back(
    tmp_path: Path, speech_packets: list[bytes]
) -> None:
    path = tmp_path / "t.opus"
    w = write_file(path, speech_packets)
    total = sum(ogg.opus_packet_samples(p) for p in speech_packets)
    assert w.granule == total

    probe = ffprobe(path)
    streams = probe["streams"]
    assert isinstance(streams, list) and len(streams) == 1
    stream = streams[0]
    assert stream["codec_name"] == "opus" and stream["channels"] == 1
    assert stream["sample_rate"] == "48000"
    fmt = probe["format"]
    assert isinstance(fmt, dict) and fmt["format_name"] == "ogg"
    assert abs(float(fmt["duration"]) - total / 48000) < 0.03

    pcm = opusdec(path, tmp_path / "t.wav")
    # opusdec honours pre-skip (RFC 7845 5.1) and the final granule: exact length
    assert len(pcm) == total - ogg.PRE_SKIP
    assert np.abs(pcm.astype(np.int32)).max() > 1000  # speech, not silence

    info = ogg.read_ogg_opus(path.read_bytes())
    assert info.packets == speech_packets  # byte for byte, never re-encoded
    assert info.channels == 1 and info.pre_skip == 312 and info.input_rate == 48000
    assert info.final_granule == total and info.eos
    assert info.duration_samples == total - 312
    assert info.tags["TALKGROUP"] == "patrol-1" and info.tags["ALIAS"] == "Ünit 7"
    assert info.vendor == ogg.VENDOR


def test_page_structure(tmp_path: Path, speech_packets: list[bytes]) -> None:
    path = tmp_path / "t.opus"
    write_file(path, speech_packets, flush_every=10)
    pages = list(ogg.iter_pages(path.read_bytes()))
    assert all(p.crc_ok for p in pages)
    assert [p.sequence for p in pages] == list(range(len(pages)))
    assert pages[0].flags == ogg.FLAG_BOS and pages[0].granule == 0
    assert pages[1].flags == 0 and pages[1].granule == 0  # OpusTags page: granule 0
    assert all(p.flags == 0 for p in pages[2:-1])
    assert pages[-1].flags == ogg.FLAG_EOS
    assert len(pages[0].lacing) == 1  # OpusHead alone on the first page (RFC 7845 3)
    # Each audio page's granule = samples up to the end of its last packet
    running = 0
    it = iter(speech_packets)
    for page in pages[2:]:
        for lace in page.lacing:
            if lace < 255:
                running += ogg.opus_packet_samples(next(it))
        assert page.granule == running


def test_stereo_toc_sets_channel_count(tmp_path: Path) -> None:
    path = tmp_path / "s.opus"
    stereo = [bytes([(31 << 3) | 4]) + bytes(40)] * 5
    write_file(path, stereo)
    assert ogg.read_ogg_opus(path.read_bytes()).channels == 2


def test_huge_tags_span_pages(tmp_path: Path, speech_packets: list[bytes]) -> None:
    path = tmp_path / "t.opus"
    with open(path, "wb") as f:
        w = ogg.OggOpusWriter(sink=f.write, serial=7, comments=[("NOTE", "n" * 150_000)])
        for p in speech_packets[:50]:
            w.add_packet(p, ogg.opus_packet_samples(p))
        w.close()
    info = ogg.read_ogg_opus(path.read_bytes())
    assert info.tags["NOTE"] == "n" * 150_000 and info.packets == speech_packets[:50]
    assert len(opusdec(path, tmp_path / "t.wav")) == 50 * 960 - 312


def test_gap_fillers_keep_time(tmp_path: Path, speech_packets: list[bytes]) -> None:
    """One second of PLC packets in the middle lengthens the decoded audio by one second."""
    path = tmp_path / "g.opus"
    half = len(speech_packets) // 2
    with open(path, "wb") as f:
        w = ogg.OggOpusWriter(sink=f.write, serial=9, comments=[])
        for i, p in enumerate(speech_packets):
            if i == half:
                for filler in ogg.plc_packets(speech_packets[i - 1][0], 48000):
                    w.add_packet(filler, ogg.opus_packet_samples(filler))
            w.add_packet(p, ogg.opus_packet_samples(p))
        w.close()
    pcm = opusdec(path, tmp_path / "g.wav")
    assert len(pcm) == len(speech_packets) * 960 + 48000 - 312
    gap = pcm[half * 960 + 4800: half * 960 + 48000 - 4800].astype(np.int32)
    assert np.abs(gap).max() < 2000  # concealment fades out: quiet, not a replay of speech


def test_empty_stream_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "e.opus"
    write_file(path, [])
    info = ogg.read_ogg_opus(path.read_bytes())
    assert info.eos and info.packets == [bytes([ogg.DEFAULT_FILLER_TOC])]
    opusdec(path, tmp_path / "e.wav")


def test_reader_rejects_damage(tmp_path: Path, speech_packets: list[bytes]) -> None:
    path = tmp_path / "t.opus"
    write_file(path, speech_packets)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    with pytest.raises(ogg.OggError, match="CRC"):
        ogg.read_ogg_opus(bytes(data))
    with pytest.raises(ogg.OggError):
        ogg.read_ogg_opus(path.read_bytes()[:-10])


@pytest.mark.parametrize("cut", [0, 10, 27, 60, 120, 900, 2000, 4000, -1])
def test_repair_truncated_file(tmp_path: Path, speech_packets: list[bytes], cut: int) -> None:
    """A file cut anywhere (as by SIGKILL mid-write, before EOS) is repaired to a valid
    stream holding every complete page."""
    full = tmp_path / "full.opus"
    write_file(full, speech_packets, flush_every=5)
    data = full.read_bytes()
    pages = list(ogg.iter_pages(data))
    cut_at = len(data) - 1 if cut == -1 else min(cut, len(data) - 1)
    path = tmp_path / "cut.opus"
    path.write_bytes(data[:cut_at])
    comments = [("TALKGROUP", "patrol-1")]
    result = ogg.repair_ogg_opus(path, 0x1234, comments)
    info = ogg.read_ogg_opus(path.read_bytes())
    assert info.eos
    complete = [p for p in pages if p.offset + p.size <= cut_at]
    if len(complete) > 2:
        kept = sum(sum(1 for lace in p.lacing if lace < 255) for p in complete[2:])
        assert info.packets == speech_packets[:kept]
        assert result.audio_packets == kept and not result.rebuilt
        assert info.final_granule == complete[-1].granule
    else:
        assert result.rebuilt and result.audio_packets == 0
    opusdec(path, tmp_path / "cut.wav")
    # repairing again changes nothing
    before = path.read_bytes()
    again = ogg.repair_ogg_opus(path, 0x1234, comments)
    assert path.read_bytes() == before and not again.eos_added


def test_repair_keeps_a_complete_file(tmp_path: Path, speech_packets: list[bytes]) -> None:
    path = tmp_path / "t.opus"
    write_file(path, speech_packets)
    before = path.read_bytes()
    result = ogg.repair_ogg_opus(path, 0x1234, [])
    assert path.read_bytes() == before
    assert result.truncated_bytes == 0 and not result.eos_added
    assert result.audio_packets == len(speech_packets)


def test_repair_stops_at_corrupt_page(tmp_path: Path, speech_packets: list[bytes]) -> None:
    path = tmp_path / "t.opus"
    write_file(path, speech_packets, flush_every=10)
    data = bytearray(path.read_bytes())
    pages = list(ogg.iter_pages(bytes(data)))
    victim = pages[5]
    data[victim.offset + victim.size - 1] ^= 0xFF  # torn write inside page 5
    path.write_bytes(bytes(data))
    ogg.repair_ogg_opus(path, 0x1234, [])
    info = ogg.read_ogg_opus(path.read_bytes())
    assert info.pages == 5 and info.eos
    assert os.path.getsize(path) == victim.offset
