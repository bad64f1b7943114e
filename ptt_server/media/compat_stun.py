"""The STUN part of the compat layer: aioice 0.13's address packing, with the parse cached.

Why: every connected listener exchanges ICE consent checks with the server (RFC 7675: one
binding request each way every few seconds), and each response carries the requester's address
(XOR-MAPPED-ADDRESS). aioice packs it through `ipaddress.ip_address(host)`, a string parse in
Python, per response: in a profile of an idle server with 300 listeners it was 16 % of the
event loop's samples. The same few addresses come back again and again, so the parse is
cached; the bytes on the wire are exactly aioice's own.

aioice's `pack_xor_address` looks `pack_address` up in its module at each call, so replacing
that one module attribute changes every XOR-address attribute aioice writes. `install()` checks
the shape first (pinned version, signature) and leaves aioice untouched if it differs.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import struct
from collections.abc import Callable

import aioice
from aioice import stun

_PINNED = "0.13.0"
_original: Callable[..., bytes] | None = None


@functools.lru_cache(maxsize=4096)
def _packed(host: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(host)
    protocol = stun.IPV4_PROTOCOL if ip.version == 4 else stun.IPV6_PROTOCOL
    return protocol, ip.packed


def pack_address(value: tuple[str, int], xor: Callable[[bytes], bytes] = lambda x: x) -> bytes:
    protocol, packed = _packed(value[0])
    return struct.pack("!BB", 0, protocol) + xor(struct.pack("!H", value[1]) + packed)


def install() -> bool:
    """Put the cached packing in place (once). False if this aioice is not as read."""
    global _original
    if _original is not None:
        return True
    current = getattr(stun, "pack_address", None)
    if aioice.__version__ != _PINNED or current is None or not hasattr(stun, "pack_xor_address"):
        return False
    try:
        params = list(inspect.signature(current).parameters)
    except (TypeError, ValueError):
        return False
    if params != ["value", "xor"]:
        return False
    _original = current
    stun.pack_address = pack_address
    return True
