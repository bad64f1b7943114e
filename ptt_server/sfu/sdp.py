"""Checks and small rewrites of SDP text before it reaches aiortc or a client."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from ..errors import Code, SignalingError

_OPUS_RTPMAP = re.compile(r"^a=rtpmap:(\d+) opus/48000(?:/2)?\s*$", re.IGNORECASE | re.MULTILINE)


def validate(text: str) -> None:
    """Reject what is plainly not an SDP before aiortc parses it (its errors are obscure)."""
    if not text.startswith("v=0"):
        raise SignalingError(Code.BAD_SDP, "SDP must start with 'v=0'")
    if "\nm=audio " not in text:
        raise SignalingError(Code.BAD_SDP, "SDP has no audio section")
    if not _OPUS_RTPMAP.search(text):
        raise SignalingError(Code.BAD_SDP, "SDP offers no Opus codec")


def prefer_fec(text: str) -> str:
    """Ask talkers for Opus in-band FEC (RFC 7587 section 6.1: useinbandfec is a receiver
    preference). aiortc writes no Opus fmtp, so browsers would send no FEC at all."""
    out: list[str] = []
    lines = text.split("\r\n")
    opus_pts = {m.group(1) for m in _OPUS_RTPMAP.finditer(text)}
    has_fmtp = {pt for pt in opus_pts for line in lines if line.startswith(f"a=fmtp:{pt} ")}
    for line in lines:
        m = re.match(r"^a=fmtp:(\d+) (.*)$", line)
        if m and m.group(1) in opus_pts and "useinbandfec" not in m.group(2):
            line = f"{line};useinbandfec=1"
        out.append(line)
        m = _OPUS_RTPMAP.match(line)
        if m and m.group(1) not in has_fmtp:
            out.append(f"a=fmtp:{m.group(1)} minptime=10;useinbandfec=1")
    return "\r\n".join(out)


def _networks(allowed: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in allowed]


def candidate_allowed(candidate_line: str, allowed: Sequence[str]) -> bool:
    """True if an ICE candidate's address lies in one of the allowed networks. mDNS names
    (.local) and anything unparsable are refused when a filter is set."""
    if not allowed:
        return True
    parts = candidate_line.removeprefix("a=").split()
    if len(parts) < 6:
        return False
    try:
        address = ipaddress.ip_address(parts[4])
    except ValueError:
        return False
    return any(address in net for net in _networks(allowed))


def filter_candidates(text: str, allowed: Sequence[str]) -> str:
    """Remove the SDP's candidate lines whose address is outside the allowed networks."""
    if not allowed:
        return text
    return "\r\n".join(
        line for line in text.split("\r\n")
        if not line.startswith("a=candidate:") or candidate_allowed(line, allowed)
    )
