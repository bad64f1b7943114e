"""A listener's packet built in place, and the batch that one fan-out loop fills and flushes.

Why: per listener-packet the work that must be done is one SRTP encryption and one send. Built
the ordinary way it also costs a joined `bytes`, pylibsrtp's copy in and out of its own buffer
and the transport's `sendto` with its address conversion. Here each listener's writer owns a
buffer whose first bytes are its RTP header: a packet is the payload copied behind it, the
sequence number, timestamp and marker patched in, libsrtp's `srtp_protect` run on the buffer in
place (compat.srtp_in_place: the same context, so the same SRTP index, as `protect()`), and the
writer's prebuilt message (sendmmsg.py) queued. `flush()` sends the queue: the router calls it
after its fan-out loop, so one incoming packet's copies leave together; anything queued
elsewhere is flushed at the next turn of the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from typing import Any

import pylibsrtp

from ptt_server.media import compat, sendmmsg

log = logging.getLogger("ptt.media")

BUFFER = 1500  # bytes per writer: one datagram on an Ethernet path, header and SRTP tag included
BATCH = sendmmsg.Batch()
_B1_SEQ_TS = struct.Struct("!BHI")  # marker and payload type, sequence number, timestamp
_scheduled: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on


_wanted = os.environ.get("PTT_EGRESS_BATCH", "1") != "0"  # "0": protect() and sendto()


def set_enabled(on: bool) -> None:
    """Use the batch for writers prepared from now on (the bench compares both ways)."""
    global _wanted
    _wanted = on


def enabled() -> bool:
    """Wanted, and in-place SRTP and sendmmsg are both there (the compat check passed)."""
    return _wanted and sendmmsg.available() and compat.in_place_srtp_enabled()


def queue(message: sendmmsg.Message, on_failure: sendmmsg.Failure) -> None:
    global _scheduled
    # One flush per loop turn is scheduled, whether the router flushes first or not: the
    # common case costs this one comparison per listener.
    if _scheduled is None or _scheduled.is_closed():
        if _scheduled is not None:
            BATCH.clear()  # left by a loop that closed before flushing: its sockets are gone
        loop = asyncio.get_running_loop()
        loop.call_soon(_flush_soon, loop)
        _scheduled = loop
    BATCH.add(message, on_failure)


def _flush_soon(loop: asyncio.AbstractEventLoop) -> None:
    global _scheduled
    if _scheduled is loop:
        _scheduled = None
    flush()


def flush() -> None:
    """Send everything queued (cheap when nothing is)."""
    if len(BATCH):
        try:
            BATCH.flush()
        except Exception:  # a bug here must not stop the fan-out; the packets are lost
            log.exception("batched send failed")


class InPlacePacket:
    """One writer's buffer, length and message; reused for each of its packets."""

    __slots__ = ("_b1", "_buf", "_handle", "_hlen", "_len", "_mem", "_protect", "_room",
                 "_session", "message", "on_failure")

    def __init__(self, session: Any, header: bytes, fd: int, addr: tuple[Any, ...],
                 on_failure: sendmmsg.Failure) -> None:
        """Raises (ValueError, OSError) if the address is not a numeric IPv4/IPv6 one."""
        protect, handle, ffi = compat.srtp_in_place(session)
        self._session = session  # keeps the srtp_t alive as long as this buffer uses it
        self._protect, self._handle = protect, handle
        self._buf = ffi.new("char[]", BUFFER)
        self._mem = ffi.buffer(self._buf)
        self._mem[0:len(header)] = header
        self._len = ffi.new("int *")
        self._hlen = len(header)
        self._room = BUFFER - len(header) - pylibsrtp.SRTP_MAX_TRAILER_LEN
        self._b1 = header[1] & 0x7F  # payload type; the marker bit is set per packet
        self.message = sendmmsg.Message(fd, int(ffi.cast("uintptr_t", self._buf)), addr)
        self.on_failure = on_failure

    def send(self, payload: bytes, marker: bool, seq: int, timestamp: int,
             payload_type: int | None = None) -> bool:
        """Encrypt one packet in place and queue it; False if it does not fit the buffer.
        `payload_type`: another of the listener's negotiated types than the header's (RED,
        RFC 2198), for this packet only. Raises RuntimeError if libsrtp refuses it (as
        `protect()` would raise)."""
        size = len(payload)
        if size > self._room:
            return False
        message = self.message
        if message.queued:
            flush()  # its previous packet is still waiting in the batch: out first
        mem = self._mem
        b1 = self._b1 if payload_type is None else payload_type
        _B1_SEQ_TS.pack_into(mem, 1, (b1 | 0x80) if marker else b1, seq, timestamp)
        end = self._hlen + size
        mem[self._hlen:end] = payload
        length = self._len
        length[0] = end
        status = self._protect(self._handle, self._buf, length)
        if status:
            raise RuntimeError(f"srtp_protect failed with status {status}")
        message.set_length(length[0])
        queue(message, self.on_failure)
        return True

    def datagram(self) -> bytes:
        """A copy of the last packet built, encrypted (for the transport to queue)."""
        return bytes(self._mem[0:self.message.length])
