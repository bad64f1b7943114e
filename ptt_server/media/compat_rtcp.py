"""The RTCP part of the compat layer: aiortc 1.16's sender reports at RFC 3550's interval.

Why: every listener has a downlink sender, and aiortc's sends an RTCP sender report (SR plus
SDES) every 0.5-1.5 s, transmitting or not: objects built, serialised, SRTCP-protected and
sent, per listener, about once a second. RFC 3550 section 6.2 recommends a fixed minimum of
5 s between reports, randomised over 0.5-1.5 times the interval (section 6.3.1) so that
participants do not report in step. Receivers lose nothing that a push-to-talk downlink needs:
the reports only map RTP time to wall-clock time (lip sync, which audio alone does not use)
and carry packet counts for statistics; jitter buffers, loss detection and Opus FEC work on
the RTP packets themselves.

aiortc's sender loop sleeps `0.5 + random.random()` seconds, looking `random` up in its
module at each turn, so replacing that one module attribute with an object whose `random()`
is scaled stretches every sender's interval, and nothing else: the module uses `random` for
nothing more (its sequence numbers and SSRCs come from aiortc.utils). The receivers' reports
(to talkers) keep aiortc's interval. `install()` checks the pinned version and the loop's
source first, and leaves aiortc untouched if either differs.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from typing import Any

import aiortc
from aiortc import rtcrtpsender
from aiortc.rtp import RtcpSrPacket

_PINNED = "1.16.0"
_SLEEP = "asyncio.sleep(0.5 + random.random())"
DEFAULT_INTERVAL_S = 5.0  # RFC 3550 section 6.2, the recommended minimum


class _ScaledRandom:
    """Stands in for the `random` module in aiortc's sender: `0.5 + random()` becomes a
    uniform draw from [0.5, 1.5] x interval."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s

    def random(self) -> float:
        return (0.5 * self.interval_s - 0.5) + self.interval_s * random.random()


def installed_interval() -> float | None:
    """The mean interval in place, None if aiortc's own."""
    current = getattr(rtcrtpsender, "random", None)
    return current.interval_s if isinstance(current, _ScaledRandom) else None


def install(interval_s: float = DEFAULT_INTERVAL_S) -> bool:
    """Sender reports every `interval_s` on average (1.0: aiortc's own). False, and nothing
    changed, if this aiortc is not as read."""
    if not 1.0 <= interval_s <= 60.0:
        raise ValueError("the RTCP interval must be 1-60 s")
    if aiortc.__version__ != _PINNED:
        return False
    try:
        source = inspect.getsource(rtcrtpsender.RTCRtpSender._run_rtcp)
    except (OSError, TypeError):
        return False
    current = getattr(rtcrtpsender, "random", None)
    if _SLEEP not in source or (current is not random
                                and not isinstance(current, _ScaledRandom)):
        return False
    replacement: object = random if interval_s == 1.0 else _ScaledRandom(interval_s)
    setattr(rtcrtpsender, "random", replacement)  # noqa: B010 (a module attribute, on purpose)
    return True


def on_rtcp(receiver: Any, before: Callable[[bool, int | None], None]) -> None:
    """Call `before(is_sender_report, ssrc)` for each RTCP packet aiortc routes to this
    receiver, decrypted and parsed, then let aiortc handle it (tests and benchmarks watching a
    listener's reports). aiortc's DTLS transport looks `_handle_rtcp_packet` up on the
    receiver instance, so the wrapper affects this receiver only."""
    original = receiver._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        before(isinstance(packet, RtcpSrPacket), getattr(packet, "ssrc", None))
        await original(packet)

    receiver._handle_rtcp_packet = handle
