"""Checks and small rewrites of SDP text before it reaches aiortc or a client."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ptt_server.core.errors import Code, SignalingError

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


_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([^/\s]+)/(\d+)(?:/(\d+))?\s*$", re.IGNORECASE)
_EXTMAP = re.compile(r"^a=extmap:(\d+)(/\w+)? (\S+)(.*)$")
_PT_LINE = re.compile(r"^a=(fmtp|rtcp-fb):(\d+)( .*)?$")


def _codec_key(name: str, rate: str, channels: str | None) -> str:
    return f"{name.lower()}/{rate}/{channels or '1'}"


@dataclass(frozen=True)
class Numbering:
    """Payload types and header-extension ids a peer chose in its first offer."""

    payload_types: dict[str, int]
    extensions: dict[str, int]


def numbering_of(text: str) -> Numbering:
    pts: dict[str, int] = {}
    exts: dict[str, int] = {}
    for line in text.split("\r\n"):
        if m := _RTPMAP.match(line):
            pts.setdefault(_codec_key(m.group(2), m.group(3), m.group(4)), int(m.group(1)))
        elif m := _EXTMAP.match(line):
            exts.setdefault(m.group(3), int(m.group(1)))
    return Numbering(pts, exts)


def renumber(text: str, numbering: Numbering) -> str:
    """Rewrite our own re-offer to keep the numbering already negotiated.

    aiortc renumbers every m-section of a new offer from its defaults (Opus 96, mid = 1), but
    within one BUNDLE group and one session the ids must not move (RFC 8843 section 9.2,
    RFC 8285 section 6): Chromium refuses "RTP extension ID reassignment", and a moved
    payload type would orphan the packets of senders already running.
    """
    out: list[str] = []
    mapping: dict[int, int] = {}
    for section in re.split(r"\r\n(?=m=)", text):
        lines = section.split("\r\n")
        if not lines[0].startswith("m=audio "):
            out.append(section)
            continue
        mapping = {}
        for line in lines:
            if m := _RTPMAP.match(line):
                key = _codec_key(m.group(2), m.group(3), m.group(4))
                if key in numbering.payload_types:
                    mapping[int(m.group(1))] = numbering.payload_types[key]
        rewritten: list[str] = []
        for line in lines:
            if line.startswith("m=audio "):
                head, fmts = line.split(" ")[:3], line.split(" ")[3:]
                kept = [str(mapping[int(f)]) for f in fmts if f.isdigit() and int(f) in mapping]
                line = " ".join(head + kept)
            elif m := _RTPMAP.match(line):
                pt = int(m.group(1))
                if pt not in mapping:
                    continue
                line = line.replace(f"a=rtpmap:{pt} ", f"a=rtpmap:{mapping[pt]} ", 1)
            elif m := _PT_LINE.match(line):
                pt = int(m.group(2))
                if pt not in mapping:
                    continue
                line = f"a={m.group(1)}:{mapping[pt]}{m.group(3) or ''}"
            elif m := _EXTMAP.match(line):
                ident = numbering.extensions.get(m.group(3))
                if ident is None:
                    continue
                line = f"a=extmap:{ident}{m.group(2) or ''} {m.group(3)}{m.group(4)}"
            rewritten.append(line)
        out.append("\r\n".join(rewritten))
    return "\r\n".join(out)
