"""Per-talker policing: how much a floor holder may send, decided packet by packet.

The floor gate decides *who* may talk; this decides *how much*. Without it a holder that sends
5,000 packets/s had every one fanned out to every listener (and the media bus, and the
recorder), which cost other talkgroups on the same event loop their latency. Each transmission
gets its own `Policer`: two token buckets, one on packets and one on payload bytes, refilled by
the packets' arrival clock. A packet that finds either bucket empty is dropped; a talker whose
packets keep being dropped for `cut_off_after_s` is cut off (the node revokes its floor with
reason `policed`), because a real encoder never does that and the excess still costs us the
decryption.

Pure: no I/O and no clock of its own (the caller passes the arrival time), so every rule is
testable with plain numbers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.Enum):
    PASS = "pass"  # forward it
    DROP = "drop"  # over the limit: not forwarded, not recorded
    CUT_OFF = "cut_off"  # returned once, when the abuse has lasted too long; DROP after that


@dataclass(frozen=True, slots=True)
class Limits:
    # Opus sends one packet per frame. Our SDP allows frames down to 10 ms (`minptime=10`,
    # media/sdp.py; RFC 7587 section 7), so a genuine client sends at most 100 packets/s:
    # twice the 50/s of the usual 20 ms frames.
    packets_per_s: float = 100.0
    # Opus tops out at 510 kbit/s (RFC 6716 section 2.1.1; RFC 7587 section 7.1 caps
    # maxaveragebitrate there): one 1,275-byte frame (the largest, RFC 6716 section 3.2.1)
    # every 20 ms. Counted on the Opus payload, so no genuine encoder setting is ever policed.
    bytes_per_s: float = 510_000 / 8
    # Bucket depth, in seconds of the rates above: a network that held a second of audio back
    # and then delivers it at once (jitter, a radio link resuming) loses nothing.
    burst_s: float = 1.0
    # Drops sustained this long mean a broken or hostile sender, not jitter: cut it off.
    cut_off_after_s: float = 2.0
    # A pause in drops this long ends an episode: a talker a hair over the rate (a fast sound
    # card clock) loses an odd packet, and is never cut off for it.
    calm_s: float = 0.5


DEFAULT_LIMITS = Limits()


class Policer:
    """The buckets of one transmission. Both start full: a talker who had audio queued at
    the grant (push-to-talk pressed before the floor was granted) is not clipped."""

    __slots__ = (
        "_abuse_since",
        "_byte_tokens",
        "_last_drop",
        "_packet_tokens",
        "_updated",
        "cut_off_at",
        "dropped",
        "dropped_bytes",
        "limits",
        "passed",
    )

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._packet_tokens = limits.packets_per_s * limits.burst_s
        self._byte_tokens = limits.bytes_per_s * limits.burst_s
        self._updated: float | None = None
        self._abuse_since: float | None = None
        self._last_drop = 0.0
        self.cut_off_at: float | None = None
        self.passed = 0
        self.dropped = 0
        self.dropped_bytes = 0

    def check(self, size: int, now: float) -> Verdict:
        """The verdict on one packet of `size` payload bytes that arrived at `now` (seconds,
        any clock, as long as it is the same one for every packet)."""
        if self.cut_off_at is not None:
            return self._drop(size)
        self._refill(now)
        if self._packet_tokens >= 1.0 and self._byte_tokens >= size:
            self._packet_tokens -= 1.0
            self._byte_tokens -= size
            self.passed += 1
            return Verdict.PASS
        if self._abuse_since is None or now - self._last_drop > self.limits.calm_s:
            self._abuse_since = now
        self._last_drop = now
        if now - self._abuse_since >= self.limits.cut_off_after_s:
            self.cut_off_at = now
            self._drop(size)
            return Verdict.CUT_OFF
        return self._drop(size)

    def _refill(self, now: float) -> None:
        if self._updated is None:
            self._updated = now
            return
        # A clock that steps back refills nothing (and never drains); one that jumps ahead
        # can only fill the buckets, never beyond their depth.
        elapsed = max(0.0, now - self._updated)
        self._updated = max(self._updated, now)
        limits = self.limits
        self._packet_tokens = min(limits.packets_per_s * limits.burst_s,
                                  self._packet_tokens + elapsed * limits.packets_per_s)
        self._byte_tokens = min(limits.bytes_per_s * limits.burst_s,
                                self._byte_tokens + elapsed * limits.bytes_per_s)

    def _drop(self, size: int) -> Verdict:
        self.dropped += 1
        self.dropped_bytes += size
        return Verdict.DROP
