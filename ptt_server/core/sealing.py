"""Sealed messages between server nodes: a MAC that a process reaching Redis cannot forge.

Redis pub/sub carries audio and alerts between nodes, and Redis trusts whoever connects. A
shared secret in the data directory (as the JWT key is) lets a node tell its peers' messages
from a local process's forgery: each frame carries the time it was sealed and an HMAC-SHA256
(RFC 2104), truncated to 128 bits (RFC 2104 section 5 allows it), over the channel, that time
and the body. Binding the channel stops a sealed packet being replayed onto another talkgroup;
the time bounds replays to a short window (nodes keep their clocks with NTP).
"""

from __future__ import annotations

import hmac
import struct
import time
from collections.abc import Callable

MAC_LEN = 16
KEY_LEN = 32
MAX_AGE_S = 10.0
_TIME = struct.Struct("!Q")  # milliseconds since the epoch


class Sealer:
    def __init__(self, key: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(key) < KEY_LEN:
            raise ValueError(f"a sealing key needs at least {KEY_LEN} bytes")
        # Keyed once: each MAC copies the keyed state (the pads already hashed) and feeds it
        # the frame. Not hmac.digest(): its one-shot OpenSSL call gives up the GIL for every
        # frame, however short, and with the recorder's writer thread busy (a burst of grants
        # opens and fsyncs hundreds of files) taking the GIL back made each seal cost tens of
        # microseconds of the event loop instead of one or two.
        self._keyed = hmac.new(key, digestmod="sha256")
        self._clock = clock
        self.rejected = 0  # frames that failed the check (forged, damaged, stale)

    def _mac(self, channel: str, stamped: bytes) -> bytes:
        # Once per packet or floor event published between nodes, and once per one received.
        mac = self._keyed.copy()
        mac.update(channel.encode() + b"\0" + stamped)
        return mac.digest()[:MAC_LEN]

    def seal(self, channel: str, body: bytes) -> bytes:
        stamped = _TIME.pack(int(self._clock() * 1000)) + body
        return stamped + self._mac(channel, stamped)

    def open(self, channel: str, frame: bytes) -> bytes | None:
        """The body, or None if the frame is not one of ours, or too old (or too new)."""
        if len(frame) < _TIME.size + MAC_LEN:
            self.rejected += 1
            return None
        stamped, mac = frame[:-MAC_LEN], frame[-MAC_LEN:]
        if not hmac.compare_digest(mac, self._mac(channel, stamped)):
            self.rejected += 1
            return None
        (sent_ms,) = _TIME.unpack_from(stamped)
        if abs(self._clock() - sent_ms / 1000) > MAX_AGE_S:
            self.rejected += 1
            return None
        return stamped[_TIME.size:]
