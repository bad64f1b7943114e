"""RED (RFC 2198) payloads: parsed, checked and split, never re-encoded.

A RED payload is a list of block headers then the blocks' data, in the same order (RFC 2198
section 3):

    redundant block header (4 bytes): F=1 | block PT (7) | timestamp offset (14) | length (10)
    primary block header   (1 byte):  F=0 | block PT (7)
    data of each redundant block (oldest first), then the primary's data, to the end

The primary is the packet's own audio; a redundant block is an earlier packet's audio sent
again, `timestamp offset` samples before this packet's RTP timestamp. The SFU forwards RED as
it came to listeners that negotiated it, and the primary alone (plain Opus) to the others and
to the recorder, which may take a lost packet back from the next packet's redundancy.

Everything that arrives from a client is checked here before it goes anywhere: headers that
run out, block lengths past the end, a block naming a payload type that is not the sender's
Opus, more blocks than MAX_BLOCKS, an empty primary. Such a payload is refused as a whole
(`MalformedRed`): forwarding part of it would hand listeners' decoders bytes the talker never
meant as one frame. Standard library only (core/ layer).
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

# Blocks in one payload, the primary included. Our SDP allow-list accepts RED whose fmtp lists
# at most 8 encodings (media/sdp.py); Chromium sends 2 (one redundant block). More is either a
# broken sender or one inflating what every listener must receive.
MAX_BLOCKS = 8
_HEADER = 4  # bytes of a redundant block's header
_MAX_TS_OFFSET = (1 << 14) - 1
_MAX_LENGTH = (1 << 10) - 1


class MalformedRed(ValueError):
    """The payload is not RED this server forwards; `reason` says which rule it broke."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Block:
    """A redundant block: an earlier frame, `ts_offset` samples before the packet's own."""

    payload_type: int
    ts_offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class RedPayload:
    payload: bytes  # the whole RED payload, as received
    primary: bytes  # the last block: this packet's own Opus frame
    primary_type: int
    redundant: tuple[Block, ...]  # oldest first, as on the wire

    @property
    def block_types(self) -> frozenset[int]:
        return frozenset({self.primary_type, *(b.payload_type for b in self.redundant)})


def parse(payload: bytes, opus_types: Container[int] | None = None) -> RedPayload:
    """Check and split one RED payload. `opus_types`: the payload types the sender uses for
    Opus, which every block must name (None: not checked; a payload another of our nodes
    already checked). Raises MalformedRed."""
    pos = 0
    size = len(payload)
    headers: list[tuple[int, int, int]] = []  # (block PT, timestamp offset, length)
    while True:
        if pos >= size:
            raise MalformedRed("truncated header")
        first = payload[pos]
        if not first & 0x80:  # F=0: the primary's 1-byte header, the last one
            primary_type = first & 0x7F
            pos += 1
            break
        if len(headers) + 2 > MAX_BLOCKS:  # this redundant block and the primary
            raise MalformedRed("too many blocks")
        if pos + _HEADER > size:
            raise MalformedRed("truncated header")
        word = int.from_bytes(payload[pos + 1:pos + 4], "big")
        headers.append((first & 0x7F, word >> 10, word & _MAX_LENGTH))
        pos += _HEADER
    if opus_types is not None:
        for pt in (primary_type, *(h[0] for h in headers)):
            if pt not in opus_types:
                raise MalformedRed("block is not Opus")
    blocks: list[Block] = []
    for pt, offset, length in headers:
        if pos + length > size:
            raise MalformedRed("block length past the end")
        blocks.append(Block(pt, offset, payload[pos:pos + length]))
        pos += length
    if pos >= size:
        raise MalformedRed("empty primary")
    return RedPayload(payload, payload[pos:], primary_type, tuple(blocks))


def build(primary: bytes, primary_type: int, redundant: tuple[Block, ...] = ()) -> bytes:
    """A RED payload from Opus frames (tests, benchmarks and the test client send RED)."""
    if len(redundant) + 1 > MAX_BLOCKS:
        raise ValueError("too many blocks")
    out = bytearray()
    for b in redundant:
        if not (0 <= b.ts_offset <= _MAX_TS_OFFSET and len(b.data) <= _MAX_LENGTH):
            raise ValueError("block does not fit a RED header")
        out.append(0x80 | (b.payload_type & 0x7F))
        out += ((b.ts_offset << 10) | len(b.data)).to_bytes(3, "big")
    out.append(primary_type & 0x7F)
    for b in redundant:
        out += b.data
    out += primary
    return bytes(out)


def with_block_type(red: RedPayload, payload_type: int) -> bytes:
    """The payload with every block header naming `payload_type`: a listener whose Opus
    payload type differs from the talker's reads the blocks under its own number (RFC 2198
    section 5: the block PTs are those of the receiver's session). Only the 7-bit fields of
    the headers change; the audio bytes are the talker's."""
    if red.block_types == {payload_type}:
        return red.payload
    out = bytearray(red.payload)
    pos = 0
    for _ in red.redundant:
        out[pos] = 0x80 | payload_type
        pos += _HEADER
    out[pos] = payload_type
    return bytes(out)


SEQ_MOD = 1 << 16
TS_MOD = 1 << 32


def recover(
    red: RedPayload, seq: int, timestamp: int, missing: int, before_ts: int,
) -> tuple[tuple[int, int, bytes], ...]:
    """Of the `missing` packets just before this one (sequence numbers seq - missing ..
    seq - 1, lost: the packet before them, stamped `before_ts`, arrived), those this packet's
    redundancy carries: (sequence number, RTP timestamp, Opus frame), oldest first.

    RFC 2198 gives a redundant block a timestamp offset but no sequence number. A RED encoder
    sends the frames just before the primary, newest last (Chromium's sends the one before),
    so the last block is seq - 1, the one before it seq - 2, and so on. That is trusted only
    while the blocks' timestamps agree with it: strictly increasing, after `before_ts` and
    before the packet's own. Otherwise nothing is recovered, rather than audio put in the
    wrong place. Blocks older than the gap (packets that arrived) are checked for order but
    not taken. An empty block (a sender with nothing to repeat) recovers nothing."""
    blocks = red.redundant
    if missing <= 0 or not blocks:
        return ()
    span = (timestamp - before_ts) % TS_MOD
    out: list[tuple[int, int, bytes]] = []
    previous: int | None = None  # samples after before_ts of the block before (may be < 0)
    for back, block in zip(range(len(blocks), 0, -1), blocks, strict=True):
        at = span - block.ts_offset  # samples after before_ts
        if at >= span or (previous is not None and at <= previous):
            return ()
        previous = at
        if back <= missing:
            if at <= 0:
                return ()  # a block for a lost packet, at or before one that arrived
            if block.data:
                out.append(((seq - back) % SEQ_MOD, (before_ts + at) % TS_MOD, block.data))
    return tuple(out)
