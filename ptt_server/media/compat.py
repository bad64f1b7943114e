"""Every access to a private attribute of aiortc, aioice, aiohttp or pylibsrtp, in one place.

Why: the fan-out's fast path (egress.py, in-place SRTP), the uplink tap (uplink.py), ICE address
pinning (ice.py) and signaling's offer-direction read depend on
internals that may change in any release: one module to re-read on an upgrade (with its siblings
compat_*.py: RTP routing, RED per transceiver, RTCP timing, STUN, ICE gathering and its shared
socket), and `check()` verifies them all at
start-up against the versions pinned in pyproject.toml (PINNED). The direct RTP writer runs only
when it passed; otherwise aiortc's public sender API serves.

What is relied on (read in aiortc 1.16.0, aioice 0.13.0, aiohttp 3.14, pylibsrtp 1.0.0) is listed
in `_NEEDED` and in each function. The one non-obvious fact: aiortc's sender keeps its next
sequence number and timestamp origin as *local variables* of its `_run_rtp` coroutine, not as
fields. They can be read from the suspended coroutine's frame but not written back, so once the
direct writer takes the numbering over, the public path's packets are renumbered on their way into
SRTP (`intercept_rtp_out`). Attributes that aiortc looks up per call on an instance (`_send_rtp`,
`_handle_rtp_data`, `_handle_rtp_packet`) are wrapped per instance, so a wrapper affects that one
transport or receiver only.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import aiohttp
import aioice
import aiortc
import pylibsrtp
from aioice.ice import Connection, StunProtocol
from aioice.turn import TurnTransport
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtp import HeaderExtensionsMap
from pylibsrtp import _binding as srtp_binding

from ptt_server.media import compat_red

log = logging.getLogger("ptt.media")

# Exact versions the internals above were read in; pyproject.toml pins the same. aiohttp is
# pinned to its minor series: no private name of it is used, but service/ws_liveness.py writes
# ping frames beside its writer, relying on each of its frames being written in one go.
PINNED = {"aiortc": "1.16.0", "aioice": "0.13.0", "pylibsrtp": "1.0.0"}
PINNED_SERIES = {"aiohttp": "3.14."}

EgressPath = Literal["direct", "public"]
# Rewrites one clear RTP packet on its way into SRTP; None drops it.
RtpRewrite = Callable[[bytes], bytes | None]

_SSRC = struct.Struct("!I")
_RTP_COMPONENT = 1  # RTCP is multiplexed on the RTP component (RFC 5761), so only one


@dataclass(frozen=True)
class Report:
    """What `check()` found: the egress path in use and everything missing, by feature."""
    egress: EgressPath
    reason: str
    versions: dict[str, str]
    mismatched: tuple[str, ...] = ()
    missing: dict[str, tuple[str, ...]] = field(default_factory=dict)
    @property
    def direct(self) -> bool:
        return self.egress == "direct"


_report: Report | None = None


# -- the start-up check ---------------------------------------------------------------------
def installed_versions() -> dict[str, str]:
    return {m.__name__: str(m.__version__) for m in (aiortc, aioice, pylibsrtp, aiohttp)}


def _mismatches(versions: dict[str, str]) -> list[str]:
    out = [f"{name} {versions[name]} (pinned {want})"
           for name, want in PINNED.items() if versions[name] != want]
    out += [f"{name} {versions[name]} (pinned {series}*)"
            for name, series in PINNED_SERIES.items() if not versions[name].startswith(series)]
    return out


# (feature, object, attribute): everything below that `_probe` looks for. "egress" decides
# the direct path; the others have no public fallback and are only reported.
_NEEDED = (
    *(("egress", "sender", "_RTCRtpSender__" + name) for name in (
        "mid", "rtp_header_extensions_map", "rtp_task", "packet_count", "octet_count",
        "rtp_timestamp", "ntp_timestamp")),
    ("egress", "sender", "_ssrc"), ("egress", "RTCRtpSender", "_run_rtp"),
    ("egress", "RTCRtpSender", "_next_encoded_frame"), ("egress", "transceiver", "_codecs"),
    ("egress", "dtls", "_tx_srtp"), ("egress", "dtls", "_send_rtp"),
    ("egress", "ice_transport", "_connection"), ("egress", "connection", "_nominated"),
    ("egress", "Session", "protect"),
    ("uplink", "receiver", "_handle_rtp_packet"),
    ("uplink", "RTCRtpReceiver", "_RTCRtpReceiver__stop_decoder"),
    ("ice", "gatherer", "_connection"),
    *(("ice", "connection", name) for name in (
        "_local_candidates_start", "_local_candidates", "_local_candidates_end",
        "_components", "_transport_policy", "_protocols")),
    ("signaling", "transceiver", "_offerDirection"),
    ("bench", "dtls", "_rx_srtp"), ("bench", "dtls", "_handle_rtp_data"),
    ("batch", "session", "_srtp"), ("batch", "srtp_lib", "srtp_protect"),
    ("batch", "srtp_ffi", "new"),
)


def _probe() -> dict[str, tuple[str, ...]]:
    """Look for every private attribute on real, throwaway objects; missing names by feature."""
    pc = RTCPeerConnection()  # nothing gathered, no socket: only objects to inspect
    transceiver = pc.addTransceiver("audio", direction="sendonly")
    dtls = transceiver.sender.transport
    objects: dict[str, Any] = {
        "sender": transceiver.sender, "receiver": transceiver.receiver,
        "transceiver": transceiver, "dtls": dtls, "ice_transport": dtls.transport,
        "gatherer": dtls.transport.iceGatherer,
        "connection": getattr(dtls.transport.iceGatherer, "_connection", None),
        "Session": pylibsrtp.Session,
        "session": pylibsrtp.Session(), "srtp_lib": srtp_binding.lib, "srtp_ffi": srtp_binding.ffi,
        "RTCRtpSender": RTCRtpSender, "RTCRtpReceiver": RTCRtpReceiver,
    }
    missing: dict[str, list[str]] = {}
    def lack(feature: str, label: str) -> None:
        missing.setdefault(feature, []).append(label)
    for feature, key, name in _NEEDED:
        if not hasattr(objects[key], name):
            lack(feature, f"{key}.{name}")
    # Shapes, not only names: the send loop's locals, coroutine handlers, keyword parameters.
    run_rtp = getattr(RTCRtpSender, "_run_rtp", None)
    for name in ("sequence_number", "timestamp_origin"):
        if name not in getattr(getattr(run_rtp, "__code__", None), "co_varnames", ()):
            lack("egress", f"RTCRtpSender._run_rtp local {name!r}")
    if not inspect.iscoroutinefunction(getattr(dtls, "_send_rtp", None)):
        lack("egress", "dtls._send_rtp (a coroutine function)")
    ext_map = getattr(transceiver.sender, "_RTCRtpSender__rtp_header_extensions_map", None)
    if not isinstance(ext_map, HeaderExtensionsMap):
        lack("egress", "sender.__rtp_header_extensions_map (a HeaderExtensionsMap)")
    for feature, fn, names in (
        ("uplink", getattr(transceiver.receiver, "_handle_rtp_packet", None),
         ("packet", "arrival_time_ms")),
        ("ice", Connection.get_component_candidates, ("component", "addresses")),
    ):
        try:
            params = set(inspect.signature(fn).parameters)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            params = set()
        for name in set(names) - params:
            lack(feature, f"{getattr(fn, '__qualname__', fn)}({name}=)")
    for name in compat_red.probe(transceiver):  # RED per transceiver (compat_red.py)
        lack("red", name)
    return {feature: tuple(dict.fromkeys(names)) for feature, names in missing.items()}


def _check_now() -> Report:
    versions = installed_versions()
    mismatched = tuple(_mismatches(versions))
    try:
        missing = _probe()
    except Exception as exc:  # a constructor changed shape: nothing private can be trusted
        reason = f"could not inspect aiortc objects ({type(exc).__name__}: {exc})"
        return Report("public", reason, versions, mismatched, {"egress": (reason,)})
    if mismatched:
        egress: EgressPath = "public"
        reason = "version mismatch: " + ", ".join(mismatched)
    elif "egress" in missing:
        egress, reason = "public", "missing " + ", ".join(missing["egress"])
    else:
        egress, reason = "direct", "pinned versions and every internal it uses are present"
    return Report(egress, reason, versions, mismatched, missing)


def check() -> Report:
    """Verify the internals on the installed versions (once; the result is kept)."""
    global _report
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        # aiortc's constructors ask for an event loop: lend them a private one rather than
        # leave a new default loop behind for the application.
        loop = asyncio.new_event_loop()
        try:
            _report = loop.run_until_complete(_check_async())
        finally:
            loop.close()
    else:
        _report = _check_now()
    return _report


async def _check_async() -> Report:
    return _check_now()


def report() -> Report:
    """The start-up check's result, running it now if nothing did yet."""
    return _report if _report is not None else check()


def direct_path_enabled() -> bool:
    return report().direct


def in_place_srtp_enabled() -> bool:  # the direct path may encrypt in buffers of its own
    return report().direct and "batch" not in report().missing


def egress_path() -> EgressPath:
    """"direct" or "public" (for health reports)."""
    return report().egress


def log_egress_path() -> Report:
    """Run the check and log its result once: call at application start-up."""
    rep = check()
    v = rep.versions
    log.info(
        "media egress path: %s (aiortc %s, aioice %s, pylibsrtp %s, aiohttp %s)",
        rep.egress, v["aiortc"], v["aioice"], v["pylibsrtp"], v["aiohttp"],
    )
    if not rep.direct:
        log.warning("direct RTP writer off, listeners use aiortc's sender: %s", rep.reason)
    for feature, names in rep.missing.items():
        if feature != "egress":
            log.warning("%s: aiortc/aioice/aiohttp internals missing: %s",
                        feature, ", ".join(names))
    return rep


# -- RTCRtpSender / RTCRtpTransceiver ---------------------------------------------------------
def sender_ssrc(sender: Any) -> int:
    return int(sender._ssrc)


def sender_mid(sender: Any) -> str | None:
    """The mid the sender writes in its RTP header extension; None until `send()` ran."""
    return cast("str | None", sender._RTCRtpSender__mid)


def header_extensions_map(sender: Any) -> HeaderExtensionsMap:
    return cast(HeaderExtensionsMap, sender._RTCRtpSender__rtp_header_extensions_map)


def negotiated_codecs(transceiver: Any) -> list[Any]:
    return list(transceiver._codecs)


def offer_direction(transceiver: Any) -> str | None:
    """The remote offer's direction as seen from our side ("sendrecv", "sendonly", ...)."""
    return cast("str | None", transceiver._offerDirection)


def sender_rtp_state(sender: Any) -> tuple[int, int] | None:
    """(next sequence number, timestamp origin) of the sender's own send loop, or None unless
    `_run_rtp` is parked between packets waiting for the track: before its first step the
    locals do not exist, once ended there is nothing to continue, and inside a send the
    sequence number in use has not been incremented yet."""
    task = sender._RTCRtpSender__rtp_task
    if task is None or task.done():
        return None
    coro = task.get_coro()
    frame = getattr(coro, "cr_frame", None)
    awaiting = getattr(coro, "cr_await", None)
    code = getattr(awaiting, "cr_code", None)
    if frame is None or code is None or code.co_name != "_next_encoded_frame":
        return None
    local = frame.f_locals
    seq, origin = local.get("sequence_number"), local.get("timestamp_origin")
    if not isinstance(seq, int) or not isinstance(origin, int):
        return None
    return seq, origin


def record_sent(sender: Any, octets: int, rtp_timestamp: int, ntp_timestamp: int) -> None:
    """Count a packet the sender did not send itself, so its RTCP sender reports (RFC 3550
    section 6.4.1: packet and octet counts, NTP/RTP timestamp pair) stay truthful."""
    sender._RTCRtpSender__packet_count += 1
    sender._RTCRtpSender__octet_count += octets
    sender._RTCRtpSender__rtp_timestamp = rtp_timestamp
    sender._RTCRtpSender__ntp_timestamp = ntp_timestamp


def sender_counters(sender: Any) -> tuple[int, int]:
    """(packets, octets) the sender's reports will announce."""
    return int(sender._RTCRtpSender__packet_count), int(sender._RTCRtpSender__octet_count)


# -- RTCDtlsTransport / aioice ----------------------------------------------------------------
def dtls_tx_srtp(dtls: Any) -> Any:
    """The outbound pylibsrtp session (None before the handshake)."""
    return dtls._tx_srtp


def dtls_rx_srtp(dtls: Any) -> Any:
    return dtls._rx_srtp


# -- pylibsrtp --------------------------------------------------------------------------------
def srtp_in_place(session: Any) -> tuple[Callable[[Any, Any, Any], int], Any, Any]:
    """(protect, handle, ffi): libsrtp's `srtp_protect(handle, buf, int *len)` (0: success),
    the session's `srtp_t` (the context `session.protect()` uses) and pylibsrtp's cffi FFI."""
    return srtp_binding.lib.srtp_protect, session._srtp[0], srtp_binding.ffi


def nominated_pair(dtls: Any) -> Any:
    """The ICE pair aioice nominated for RTP, or None while not connected."""
    return dtls.transport._connection._nominated.get(_RTP_COMPONENT)


def nominated_udp(dtls: Any) -> tuple[Any, tuple[str, int]] | None:
    """(datagram transport, remote address) of the nominated pair when it is a plain UDP
    socket of ours (host, server- or peer-reflexive candidate); None for a TURN relay (its
    transport sends asynchronously through the TURN server, RFC 8656) or when not connected."""
    pair = nominated_pair(dtls)
    protocol = None if pair is None else pair.protocol
    if not isinstance(protocol, StunProtocol) or pair.local_candidate.type == "relay":
        return None
    transport = protocol.transport
    if transport is None or isinstance(transport, TurnTransport):
        return None
    return transport, pair.remote_addr


def _rewriters(dtls: Any) -> dict[int, RtpRewrite] | None:
    return cast("dict[int, RtpRewrite] | None", getattr(dtls._send_rtp, "ptt_rewriters", None))


def rtp_rewriter(dtls: Any, ssrc: int) -> RtpRewrite | None:
    """The rewrite registered for `ssrc` on this transport, if any."""
    return (_rewriters(dtls) or {}).get(ssrc)


def intercept_rtp_out(dtls: Any, ssrc: int, rewrite: RtpRewrite) -> None:
    """Pass every clear RTP packet aiortc sends with `ssrc` on this transport through
    `rewrite` before SRTP protects it (its result is sent; None drops the packet). aiortc's
    senders call `transport._send_rtp(bytes)` looked up on the instance, so the wrapper affects
    this transport only; RTCP and other SSRCs pass untouched. The table of rewrites hangs off
    the wrapper itself, so it lives and dies with the transport."""
    rewriters = _rewriters(dtls)
    if rewriters is None:
        table: dict[int, RtpRewrite] = {}
        original: Callable[[bytes], Awaitable[None]] = dtls._send_rtp

        async def send_rtp(data: bytes) -> None:
            # RTCP packet types 192-223 occupy the second byte where RTP has marker and
            # payload type (RFC 5761 section 4); RTP's SSRC is at bytes 8-11 (RFC 3550 5.1).
            if len(data) >= 12 and not 191 < data[1] < 224:
                fn = table.get(_SSRC.unpack_from(data, 8)[0])
                if fn is not None:
                    out = fn(data)
                    if out is None:
                        return
                    data = out
            await original(data)

        send_rtp.ptt_rewriters = table  # type: ignore[attr-defined]
        dtls._send_rtp = send_rtp
        rewriters = table
    rewriters[ssrc] = rewrite


def wrap_rtp_data_handler(dtls: Any, before: Callable[[bytes, int], None]) -> None:
    """Call `before(datagram, arrival_time_ms)` ahead of the transport's handling of each SRTP
    or SRTCP datagram (benchmarks: the arrival time of the first packet)."""
    callbacks: list[Callable[[bytes, int], None]] | None
    callbacks = getattr(dtls._handle_rtp_data, "ptt_callbacks", None)
    if callbacks is None:
        table: list[Callable[[bytes, int], None]] = []
        original = dtls._handle_rtp_data

        async def handle(data: bytes, arrival_time_ms: int) -> None:
            for fn in table:
                fn(data, arrival_time_ms)
            await original(data, arrival_time_ms=arrival_time_ms)

        handle.ptt_callbacks = table  # type: ignore[attr-defined]
        dtls._handle_rtp_data = handle
        callbacks = table
    callbacks.append(before)


# -- RTCRtpReceiver ---------------------------------------------------------------------------
def wrap_rtp_handler(receiver: Any, before: Callable[[Any, int], None]) -> None:
    """Call `before(packet, arrival_time_ms)` with each decrypted RTP packet routed to this
    receiver, then let aiortc handle it as usual (statistics, receiver reports, jitter buffer)."""
    original = receiver._handle_rtp_packet
    async def handle(packet: Any, arrival_time_ms: int) -> None:
        before(packet, arrival_time_ms)
        await original(packet, arrival_time_ms=arrival_time_ms)

    receiver._handle_rtp_packet = handle


def stop_decoder(receiver: Any) -> bool:
    """Stop the receiver's decoder thread (nothing will read decoded audio). False if absent."""
    stop = getattr(receiver, "_RTCRtpReceiver__stop_decoder", None)
    if stop is not None:
        stop()
    return stop is not None



