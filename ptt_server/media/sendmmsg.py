"""Batched UDP sends: `sendmmsg(2)` on libc through ctypes, one call per run of one socket.

Why: the fan-out sends one datagram per listener for each incoming packet. Through the event
loop's datagram transport each costs a Python call, an address conversion and a `bytes` object
per datagram; here every listener's packet is already encrypted in place in a buffer of its
own (egress.py), with its destination prebuilt as a sockaddr, so a send is one libc call over
prebuilt structures. Consecutive messages for the same socket go out in one `sendmmsg` call
(several listeners on one socket, as an ICE port shared by many connections would give); with
aioice's socket per connection each call carries one message.

Writing to the socket's file descriptor directly bypasses the transport's own write queue, so
a message is only batched when that queue is empty (egress.py checks), and a message the kernel
refuses for now (EAGAIN: its send buffer is full) is handed to the transport, which queues it
and sends it when the socket is writable: the order on one socket is kept either way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

# On an error the message's owner is told the errno.
Failure = Callable[[int], None]
_RETRY_LATER = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_Iovec)), ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


_MMSG_SIZE = ctypes.sizeof(_Mmsghdr)


def _load() -> Any:
    if not sys.platform.startswith("linux"):
        return None  # sendmmsg is Linux (and recent BSDs); elsewhere the transport sends
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.sendmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_sendmmsg = _load()


def available() -> bool:
    return _sendmmsg is not None


def sockaddr(addr: tuple[Any, ...]) -> ctypes.Array[ctypes.c_char]:
    """A struct sockaddr_in / sockaddr_in6 for (host, port[, flowinfo, scope_id]), numeric
    hosts only (ICE candidates are addresses). Raises OSError/ValueError otherwise."""
    host, port = addr[0], int(addr[1])
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
    except OSError:
        packed = socket.inet_pton(socket.AF_INET6, host)
        flow = int(addr[2]) if len(addr) > 2 else 0
        scope = int(addr[3]) if len(addr) > 3 else 0
        # sa_family is in host order, the port and flow label in network order (RFC 3493).
        raw = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, flow) + packed
        raw += struct.pack("=I", scope)
    else:
        raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + packed + bytes(8)
    return ctypes.create_string_buffer(raw, len(raw))


class Message:
    """One destination's prebuilt message: its buffer, length and address; reused per send."""

    __slots__ = ("_iov", "_name", "fd", "length", "msg", "pointer", "queued")

    def __init__(self, fd: int, buffer_address: int, addr: tuple[Any, ...]) -> None:
        self.fd = fd
        self.length = 0
        self.queued = False  # in a batch not flushed yet: its buffer must not be rewritten
        self._name = sockaddr(addr)
        self._iov = _Iovec(buffer_address, 0)
        self.msg = _Mmsghdr()
        self.msg.hdr.name = ctypes.addressof(self._name)
        self.msg.hdr.namelen = len(self._name)
        self.msg.hdr.iov = ctypes.pointer(self._iov)
        self.msg.hdr.iovlen = 1
        self.pointer = ctypes.addressof(self.msg)

    def set_length(self, length: int) -> None:
        self._iov.len = self.length = length


class Batch:
    """Messages queued for one flush, in order; `flush` sends them, grouped by socket."""

    def __init__(self, capacity: int = 1024) -> None:
        self._items: list[tuple[Message, Failure]] = []
        self._capacity = capacity
        self._array = (_Mmsghdr * capacity)()
        self._base = ctypes.addressof(self._array)
        self.calls = 0  # sendmmsg calls made
        self.sent = 0  # messages the kernel took

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        for message, _ in self._items:
            message.queued = False
        self._items = []

    def add(self, message: Message, on_failure: Failure) -> None:
        message.queued = True
        self._items.append((message, on_failure))
        if len(self._items) >= self._capacity:
            self.flush()

    def flush(self) -> None:
        items, self._items = self._items, []
        for message, _ in items:
            message.queued = False  # (its buffer is read by the kernel in the calls below)
        i, count = 0, len(items)
        while i < count:
            fd = items[i][0].fd
            j = i + 1
            while j < count and items[j][0].fd == fd:
                j += 1
            if j - i == 1:
                self._send(fd, items[i][0].pointer, items, i, 1)
            else:
                for k in range(i, j):  # contiguous mmsghdr array for one call
                    ctypes.memmove(self._base + (k - i) * _MMSG_SIZE, items[k][0].pointer,
                                   _MMSG_SIZE)
                self._send(fd, self._base, items, i, j - i)
            i = j

    def _send(self, fd: int, base: int, items: list[tuple[Message, Failure]], first: int,
              count: int) -> None:
        done = 0
        while done < count:
            self.calls += 1
            n = _sendmmsg(fd, base + done * _MMSG_SIZE, count - done, 0)
            if n > 0:
                done += n
                self.sent += n
                continue
            err = ctypes.get_errno() if n < 0 else errno.EIO
            if err == errno.EINTR:
                continue
            # The first unsent message failed; its owner decides (retry through the
            # transport, or drop); the kernel is asked again for the rest.
            items[first + done][1](err)
            done += 1


def retry_later(err: int) -> bool:
    """True if the error only means "not now" (the socket's send buffer is full)."""
    return err in _RETRY_LATER
