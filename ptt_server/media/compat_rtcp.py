"""The RTCP part of the compat layer: aiortc 1.16's RTCP reports at RFC 3550's interval.

Why: every listener has a downlink sender, and aiortc's sends an RTCP sender report (SR plus
SDES) every 0.5-1.5 s, transmitting or not: objects built, serialised, SRTCP-protected and
sent, per listener, about once a second. RFC 3550 section 6.2 recommends a fixed minimum of
5 s between reports, randomised over 0.5-1.5 times the interval (section 6.3.1) so that
participants do not report in step. Receivers lose nothing that a push-to-talk downlink needs:
the reports only map RTP time to wall-clock time (lip sync, which audio alone does not use)
and carry packet counts for statistics; jitter buffers, loss detection and Opus FEC work on
the RTP packets themselves.

The receivers' reports go the same way: a client that has talked once gets a receiver report
from the server every second for as long as it stays connected (aiortc's receiver reports on
every stream it has seen), and a browser's own audio receiver reports every 5 s.

aiortc's sender and receiver loops each sleep `0.5 + random.random()` seconds, looking
`random` up in their module at each turn, so replacing that one module attribute with an
object whose `random()` is scaled stretches every report interval, and nothing else: neither
module uses `random` for anything more (sequence numbers and SSRCs come from aiortc.utils).
`install()` checks the pinned version and both loops' source first, and leaves aiortc
untouched if anything differs.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from typing import Any

import aiortc
from aiortc import rtcrtpreceiver, rtcrtpsender
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


_LOOPS: tuple[tuple[Any, Any], ...] = (
    (rtcrtpsender, rtcrtpsender.RTCRtpSender._run_rtcp),
    (rtcrtpreceiver, rtcrtpreceiver.RTCRtpReceiver._run_rtcp),
)


def _as_read(module: Any, loop: Any) -> bool:
    try:
        source = inspect.getsource(loop)
    except (OSError, TypeError):
        return False
    current = getattr(module, "random", None)
    return _SLEEP in source and (current is random or isinstance(current, _ScaledRandom))


def install(interval_s: float = DEFAULT_INTERVAL_S) -> bool:
    """Sender and receiver reports every `interval_s` on average (1.0: aiortc's own). False,
    and nothing changed, if this aiortc is not as read."""
    if not 1.0 <= interval_s <= 60.0:
        raise ValueError("the RTCP interval must be 1-60 s")
    if aiortc.__version__ != _PINNED or not all(_as_read(m, f) for m, f in _LOOPS):
        return False
    replacement: object = random if interval_s == 1.0 else _ScaledRandom(interval_s)
    for module, _loop in _LOOPS:
        setattr(module, "random", replacement)  # noqa: B010 (a module attribute, on purpose)
    return True


def on_rtcp(receiver: Any, before: Callable[[bool, int | None], None]) -> None:
    """Call `before(is_sender_report, ssrc)` for each RTCP packet aiortc routes to this
    receiver (or sender), decrypted and parsed, then let aiortc handle it (tests and
    benchmarks watching the reports). aiortc's DTLS transport looks `_handle_rtcp_packet` up
    on the instance, so the wrapper affects this receiver or sender only."""
    original = receiver._handle_rtcp_packet

    async def handle(packet: Any) -> None:
        before(isinstance(packet, RtcpSrPacket), getattr(packet, "ssrc", None))
        await original(packet)

    receiver._handle_rtcp_packet = handle
