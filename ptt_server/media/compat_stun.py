"""The STUN part of the compat layer: aioice 0.13's address packing, with the parse cached,
and its XOR and MESSAGE-INTEGRITY helpers in one C call each.

Why: every connected listener exchanges ICE consent checks with the server (RFC 7675: one
binding request each way every few seconds), and each response carries the requester's address
(XOR-MAPPED-ADDRESS). aioice packs it through `ipaddress.ip_address(host)`, a string parse in
Python, per response: in a profile of an idle server with 300 listeners it was 16 % of the
event loop's samples. The same few addresses come back again and again, so the parse is
cached; the bytes on the wire are exactly aioice's own.

Two more helpers run for every check answered, and are rewritten here with the same results:
`xor_data` (the address XOR, RFC 8489 section 14.2) built its output one byte at a time in a
Python loop; `message_integrity` (HMAC-SHA1, RFC 8489 section 14.5) made an HMAC object per
call where `hmac.digest` is one call into OpenSSL.

aioice's functions look these names up in their module at each call, so replacing the module
attributes changes every use. `install()` checks the shape first (pinned version,
signatures) and leaves aioice untouched if it differs.
"""

from __future__ import annotations

import inspect
import struct
from collections.abc import Callable

import aioice
from aioice import stun

from ptt_server.media import stun_check

_PINNED = "0.13.0"
_originals: dict[str, Callable[..., bytes]] = {}  # every function replaced, by name
_SIGNATURES = {"pack_address": ["value", "xor"], "xor_data": ["data", "transaction_id"],
               "message_integrity": ["data", "key"]}


def pack_address(value: tuple[str, int], xor: Callable[[bytes], bytes] = lambda x: x) -> bytes:
    packed = stun_check.packed_ip(value[0])
    protocol = stun.IPV4_PROTOCOL if len(packed) == 4 else stun.IPV6_PROTOCOL
    return struct.pack("!BB", 0, protocol) + xor(struct.pack("!H", value[1]) + packed)


def xor_data(data: bytes, transaction_id: bytes) -> bytes:
    """aioice's address XOR (RFC 8489 section 14.2), with the same results and errors."""
    return stun_check.xor_port_address(data, transaction_id)


def message_integrity(data: bytes, key: bytes) -> bytes:
    """HMAC-SHA1 over `data` with the header's length covering MESSAGE-INTEGRITY."""
    return stun_check.integrity(data, key)


_REPLACEMENTS: dict[str, Callable[..., bytes]] = {
    "pack_address": pack_address, "xor_data": xor_data, "message_integrity": message_integrity}


def install() -> bool:
    """Put the replacements in place (once). False if this aioice is not as read."""
    if _originals:
        return True
    if aioice.__version__ != _PINNED or not hasattr(stun, "pack_xor_address"):
        return False
    for name, want in _SIGNATURES.items():
        current = getattr(stun, name, None)
        try:
            params = list(inspect.signature(current).parameters)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        if params != want:
            return False
    for name, replacement in _REPLACEMENTS.items():
        _originals[name] = getattr(stun, name)
        setattr(stun, name, replacement)
    return True
