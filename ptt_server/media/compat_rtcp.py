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

A sender that has sent nothing since its last report is not a sender in RFC 3550's sense
(section 6.4: the SR is for those that sent RTP since the report before): its report would
repeat the same counts and timestamps. Such a sender's next report comes at three times the
interval (7.5-22.5 s at the default), so an idle listener costs a third of the reports, and
the longest gap stays under the five intervals after which a receiver may time a source out
(section 6.3.5). The first report after a transmission still comes at the normal interval
and carries its final counts; while talking, reports come at the normal interval.

aiortc's sender and receiver loops each sleep `0.5 + random.random()` seconds, looking
`random` up in their module at each turn, so replacing that one module attribute with an
object whose `random()` is scaled stretches every report interval, and nothing else: neither
module uses `random` for anything more (sequence numbers and SSRCs come from aiortc.utils).
The sender whose loop is asking is the `self` of the calling frame (`_run_rtcp`).
`install()` checks the pinned version and both loops' source first, and leaves aiortc
untouched if anything differs.
"""

from __future__ import annotations

import inspect
import random
import sys
import weakref
from collections.abc import Callable
from typing import Any

import aiortc
from aiortc import rtcrtpreceiver, rtcrtpsender
from aiortc.rtp import RtcpSrPacket

_PINNED = "1.16.0"
_SLEEP = "asyncio.sleep(0.5 + random.random())"
DEFAULT_INTERVAL_S = 5.0  # RFC 3550 section 6.2, the recommended minimum
IDLE_FACTOR = 3.0  # x the interval, for a sender that sent nothing since its last report


class _ScaledRandom:
    """Stands in for the `random` module in aiortc's sender: `0.5 + random()` becomes a
    uniform draw from [0.5, 1.5] x interval, or x IDLE_FACTOR that for an idle sender."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        # Each sender's packet count at its previous draw (weak: a closed sender goes).
        self._counted: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def random(self) -> float:
        mean = self.interval_s
        caller = sys._getframe(1).f_locals.get("self")
        if isinstance(caller, rtcrtpsender.RTCRtpSender):
            count = caller._RTCRtpSender__packet_count  # type: ignore[attr-defined]
            if self._counted.get(caller) == count:
                mean *= IDLE_FACTOR
            self._counted[caller] = count
        return (0.5 * mean - 0.5) + mean * random.random()


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
    # The sender's loop reports its own packet count, which the idle test reads.
    counted = module is not rtcrtpsender or "packet_count=self.__packet_count" in source
    return (_SLEEP in source and counted
            and (current is random or isinstance(current, _ScaledRandom)))


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
