"""RED (RFC 2198) payloads, the pure part: parse, split, check, and the media bus's flag.

The end-to-end behaviour (negotiation, forwarding, recording) is tests/test_red_e2e.py.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from ptt_server.core import red
from ptt_server.core.red import Block, MalformedRed
from ptt_server.core.sealing import Sealer
from ptt_server.node.mediabus import MEDIA_HEADER, MediaBus

OPUS = 111
PRIMARY = b"\xf8" + bytes(range(40))
OLDER = b"\xf8\x01\x02\x03"
OLDEST = b"\xf8\x09"


def test_a_payload_with_redundancy_splits_into_its_blocks() -> None:
    # Built by hand from RFC 2198 section 3: F=1, PT 111, offset 960, length 4; then F=0, 111.
    header = bytes([0x80 | OPUS]) + ((960 << 10) | len(OLDER)).to_bytes(3, "big")
    payload = header + bytes([OPUS]) + OLDER + PRIMARY
    assert red.build(PRIMARY, OPUS, (Block(OPUS, 960, OLDER),)) == payload
    parsed = red.parse(payload, {OPUS})
    assert parsed.primary == PRIMARY and parsed.primary_type == OPUS
    assert parsed.redundant == (Block(OPUS, 960, OLDER),)
    assert parsed.payload == payload


def test_a_payload_without_redundancy_is_a_one_byte_header_and_the_primary() -> None:
    # What Chromium sends first (no earlier frame yet).
    parsed = red.parse(bytes([OPUS]) + PRIMARY, {OPUS})
    assert parsed.primary == PRIMARY and parsed.redundant == ()


def test_blocks_keep_their_wire_order_oldest_first() -> None:
    blocks = (Block(OPUS, 1920, OLDEST), Block(OPUS, 960, OLDER))
    parsed = red.parse(red.build(PRIMARY, OPUS, blocks), {OPUS})
    assert parsed.redundant == blocks and parsed.primary == PRIMARY


def test_an_empty_redundant_block_is_kept_and_parsed() -> None:
    parsed = red.parse(red.build(PRIMARY, OPUS, (Block(OPUS, 960, b""),)), {OPUS})
    assert parsed.redundant == (Block(OPUS, 960, b""),) and parsed.primary == PRIMARY


@pytest.mark.parametrize(("payload", "reason"), [
    (b"", "truncated header"),
    (bytes([0x80 | OPUS, 0x00, 0x0F]), "truncated header"),  # a 4-byte header cut short
    (bytes([0x80 | OPUS]) + ((960 << 10) | 4).to_bytes(3, "big"), "truncated header"),
    # block length 100 with 5 bytes of data after the headers
    (bytes([0x80 | OPUS]) + ((960 << 10) | 100).to_bytes(3, "big") + bytes([OPUS]) + OLDER
     + b"\xf8", "block length past the end"),
    # the redundancy exactly fills the payload: no primary left
    (red.build(b"", OPUS, (Block(OPUS, 960, OLDER),)), "empty primary"),
    (bytes([OPUS]), "empty primary"),
    (red.build(PRIMARY, 0), "block is not Opus"),  # PCMU as the primary
    (red.build(PRIMARY, OPUS, (Block(9, 960, OLDER),)), "block is not Opus"),  # G.722
])
def test_malformed_payloads_are_refused_with_the_rule_they_broke(
    payload: bytes, reason: str
) -> None:
    with pytest.raises(MalformedRed) as exc:
        red.parse(payload, {OPUS})
    assert exc.value.reason == reason


def test_too_many_blocks_are_refused() -> None:
    ok = tuple(Block(OPUS, 960 * (i + 1), OLDER) for i in range(red.MAX_BLOCKS - 1))
    assert len(red.parse(red.build(PRIMARY, OPUS, ok), {OPUS}).redundant) == red.MAX_BLOCKS - 1
    # One more header than allowed, written by hand (build refuses it too).
    many = b"".join(bytes([0x80 | OPUS]) + ((960 << 10) | 0).to_bytes(3, "big")
                    for _ in range(red.MAX_BLOCKS)) + bytes([OPUS]) + PRIMARY
    with pytest.raises(MalformedRed, match="too many blocks"):
        red.parse(many, {OPUS})
    with pytest.raises(ValueError):
        red.build(PRIMARY, OPUS, (*ok, Block(OPUS, 99, OLDER)))


def test_block_types_are_checked_only_when_the_senders_opus_types_are_given() -> None:
    payload = red.build(PRIMARY, 96, (Block(96, 960, OLDER),))
    with pytest.raises(MalformedRed):
        red.parse(payload, {OPUS})
    assert red.parse(payload, None).primary == PRIMARY  # from another node: checked there


def test_block_types_are_renumbered_for_a_listener_and_nothing_else_changes() -> None:
    blocks = (Block(OPUS, 1920, OLDEST), Block(OPUS, 960, OLDER))
    parsed = red.parse(red.build(PRIMARY, OPUS, blocks), {OPUS})
    assert red.with_block_type(parsed, OPUS) is parsed.payload  # same numbering: as is
    theirs = red.with_block_type(parsed, 96)
    assert theirs == red.build(PRIMARY, 96, tuple(Block(96, b.ts_offset, b.data)
                                                  for b in blocks))
    assert len(theirs) == len(parsed.payload)


# -- the media bus: version 2 carries the RED flag, version 1 is still read ---------------------
def _two_back(seq: int = 100, ts: int = 48_000) -> red.RedPayload:
    """Packet `seq` at `ts` carrying the two frames before it (20 ms apart), oldest first."""
    return red.parse(red.build(PRIMARY, OPUS, (Block(OPUS, 1920, OLDEST),
                                                Block(OPUS, 960, OLDER))))


def test_lost_packets_are_recovered_from_the_redundancy_that_covers_them() -> None:
    payload = _two_back()
    # One lost (99): the last block is it, at the timestamp its offset gives.
    assert red.recover(payload, 100, 48_000, 1, 48_000 - 1920) == ((99, 47_040, OLDER),)
    # Two lost (98, 99): both blocks, oldest first.
    assert red.recover(payload, 100, 48_000, 2, 48_000 - 2880) == (
        (98, 46_080, OLDEST), (99, 47_040, OLDER))
    # Three lost: the redundancy reaches back two; 97 stays lost.
    assert red.recover(payload, 100, 48_000, 3, 48_000 - 3840) == (
        (98, 46_080, OLDEST), (99, 47_040, OLDER))
    # Nothing lost, or no redundancy: nothing.
    assert red.recover(payload, 100, 48_000, 0, 47_040) == ()
    alone = red.parse(red.build(PRIMARY, OPUS))
    assert red.recover(alone, 100, 48_000, 1, 46_080) == ()


def test_recovery_wraps_sequence_numbers_and_timestamps() -> None:
    payload = red.parse(red.build(PRIMARY, OPUS, (Block(OPUS, 960, OLDER),)))
    assert red.recover(payload, 0, 500, 1, (500 - 1920) % (1 << 32)) == (
        (0xFFFF, (500 - 960) % (1 << 32), OLDER),)


def test_redundancy_that_disagrees_with_the_timeline_recovers_nothing() -> None:
    # A block at or before the packet that arrived before the gap: it is not the lost one.
    payload = _two_back()
    assert red.recover(payload, 100, 48_000, 1, 48_000 - 960) == ()
    # Blocks whose timestamps go backwards (not oldest first): not trusted at all.
    swapped = red.parse(red.build(PRIMARY, OPUS, (Block(OPUS, 960, OLDER),
                                                  Block(OPUS, 1920, OLDEST))))
    assert red.recover(swapped, 100, 48_000, 2, 48_000 - 2880) == ()
    # A zero offset (the primary's own time) is not an earlier frame.
    same = red.parse(red.build(PRIMARY, OPUS, (Block(OPUS, 0, OLDER),)))
    assert red.recover(same, 100, 48_000, 1, 46_080) == ()
    # An empty block is no frame: the others are still taken.
    empty = red.parse(red.build(PRIMARY, OPUS, (Block(OPUS, 1920, b""),
                                                Block(OPUS, 960, OLDER))))
    assert red.recover(empty, 100, 48_000, 2, 48_000 - 2880) == ((99, 47_040, OLDER),)


async def test_the_bus_flags_red_and_still_reads_version_1() -> None:
    sealer = Sealer(bytes(range(32)))
    redis = aioredis.Redis()  # never connected: publish only queues, decode only opens
    try:
        sender = MediaBus(redis, "n1", "ptt", sealer)
        receiver = MediaBus(redis, "n2", "ptt", sealer)
        payload = red.build(PRIMARY, OPUS, (Block(OPUS, 960, OLDER),))
        sender.publish("A", "s1", "t1", payload, 1234, 7, red=True)
        sender.publish("A", "s1", "t1", PRIMARY, 2194, 8)
        frames = [sender._queue.get_nowait() for _ in range(2)]
        got = [receiver.decode(channel, data) for channel, data in frames]
        assert got[0] is not None and got[1] is not None
        assert (got[0].payload, got[0].red, got[0].seq) == (payload, True, 7)
        assert (got[1].payload, got[1].red, got[1].seq) == (PRIMARY, False, 8)
        # Plain Opus still goes out as version 1, which a node of the previous release reads.
        assert sealer.open(frames[1][0], frames[1][1])[0] == 1  # type: ignore[index]
        assert sealer.open(frames[0][0], frames[0][1])[0] == 2  # type: ignore[index]
        # An unknown version, or version 2 with a flag nobody defined, is refused.
        channel = frames[0][0]
        ident = b"s1/t1"
        for head in (MEDIA_HEADER.pack(3, 2, len(ident), 1, 1),
                     MEDIA_HEADER.pack(2, 2, len(ident), 1, 1) + b"\x02"):
            frame = sealer.seal(channel, head + b"n1" + ident + PRIMARY)
            assert receiver.decode(channel, frame) is None
    finally:
        await redis.aclose()
