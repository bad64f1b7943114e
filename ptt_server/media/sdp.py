"""Checks and small rewrites of SDP text (RFC 8866) before it reaches aiortc or a client.

Every description a client sends goes through `sanitize` first, and aiortc only ever sees what
it returns. The rules, and why:

- **Plain lines.** Printable ASCII `x=...` lines of at most MAX_LINE_CHARS, split the way aiortc
  splits them (`str.splitlines`, which also breaks at U+2028, U+0085, ...) and written back with
  CRLF: a line our checks read is exactly a line aiortc reads, so nothing can hide a candidate
  or a fingerprint inside another line.
- **Audio over DTLS-SRTP only**, at most MAX_MEDIA_SECTIONS m-sections (one uplink, one downlink
  per talkgroup). Each m-section costs aiortc a transceiver, codecs and buffers: 250 of them in
  one 28 KB offer cost megabytes.
- **Opus only** (RFC 7587), and RED (RFC 2198) carrying Opus: an explicit allow-list
  (`_allowed_codecs`). Every other codec is removed from the offer before aiortc sees it, so
  nothing else can be negotiated; a section without Opus is refused.
- **A DTLS fingerprint with SHA-256 or stronger** (RFC 8122, RFC 8842 section 5: at session or
  media level). Without one the DTLS handshake authenticates nobody, and the SRTP keys it
  yields would be shared with whoever sat in the middle (RFC 8827 section 6.5).
- **What aiortc needs, checked here** (a=setup, ICE credentials, rtcp-mux, a=mid), so that a
  client gets `bad_sdp` rather than an exception text from deep inside aiortc.
- **Remote ICE candidates restricted** (RFC 8445 makes the server send STUN checks to each
  one): only UDP, a port of 1024 or above, an IP literal (no mDNS name to resolve), and either
  inside the operator's allowed networks or, with none configured, not a special-purpose
  address (loopback, link-local, multicast, unspecified, reserved, documentation ranges).
  Otherwise an offer could point the server's STUN at its own loopback services or at a cloud
  metadata address. At most MAX_CANDIDATES per description.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from ptt_server.core.errors import Code, SignalingError
from ptt_server.core.protocol import MAX_MEDIA_SECTIONS, MAX_SDP_CHARS, MID_RE

MAX_LINE_CHARS = 1024  # a browser's longest line (an fmtp, an ssrc) is ~150 characters
MAX_CANDIDATES = 64  # per description, and trickled per peer connection
MAX_FORMATS = 32  # payload types on one m-line (a browser offers about 15 for video)
PROFILE = "UDP/TLS/RTP/SAVPF"  # DTLS-SRTP, the only profile WebRTC uses (RFC 8827)
# RFC 8122 section 5 hash function names, with their digest length in bytes. SHA-1 and MD5
# are not enough to tie a DTLS certificate to the signaling.
STRONG_FINGERPRINTS = {"sha-256": 32, "sha-384": 48, "sha-512": 64}

SdpKind = Literal["offer", "answer"]

_OPUS_RTPMAP = re.compile(r"^a=rtpmap:(\d+) opus/48000(?:/2)?\s*$", re.IGNORECASE | re.MULTILINE)
_RED_RTPMAP = re.compile(r"^a=rtpmap:(\d+) red/48000/2\s*$", re.IGNORECASE)
_RED_FMTP = re.compile(r"^a=fmtp:(\d+) (\d+(?:/\d+)*)\s*$")
_LINE = re.compile(r"^[a-z]=[\x20-\x7e]*$")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_MLINE = re.compile(r"^m=(\S+) (\d{1,5}) (\S+)((?: \S+)+)$")
_FINGERPRINT = re.compile(r"^a=fingerprint:(\S+) ((?:[0-9A-Fa-f]{2}:)*[0-9A-Fa-f]{2})$")
_CODEC_LINE = re.compile(r"^a=(rtpmap|fmtp|rtcp-fb):(\S+)(?: .*)?$")
# RFC 8839 section 5.4: ice-char is ALPHA / DIGIT / "+" / "/".
_UFRAG = re.compile(r"^a=ice-ufrag:[A-Za-z0-9+/]{4,256}$")
_PWD = re.compile(r"^a=ice-pwd:[A-Za-z0-9+/]{22,256}$")
_CANDIDATE_NUMBER = re.compile(r"^[0-9]{1,10}$")  # ASCII digits only (int() takes others)
_SETUP_OFFER = ("actpass", "active", "passive")
_SETUP_ANSWER = ("active", "passive")  # RFC 5763 section 5: an answer picks a side
# Never a destination for STUN, whatever the operator allows.
_NEVER = (ipaddress.ip_network("255.255.255.255/32"),)
# Special-purpose ranges (RFC 6890 registries) that Python's ipaddress does not flag.
_SPECIAL = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8",  # "this network"
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32",  # documentation
    "198.18.0.0/15",  # benchmarking
))


def _refuse(message: str) -> SignalingError:
    return SignalingError(Code.BAD_SDP, message)


def _check_fingerprints(lines: Sequence[str]) -> bool:
    """True if `lines` hold a well-formed strong fingerprint. A malformed one is refused; one
    with a weaker or unknown hash is left (aiortc verifies only those it knows, all of them)."""
    strong = False
    for line in lines:
        if not line.startswith("a=fingerprint:"):
            continue
        m = _FINGERPRINT.match(line)
        if m is None:
            raise _refuse("malformed DTLS fingerprint")
        size = STRONG_FINGERPRINTS.get(m.group(1).lower())
        if size is not None:
            if len(m.group(2)) != 3 * size - 1:
                raise _refuse("DTLS fingerprint of the wrong length")
            strong = True
    return strong


def _setup(lines: Sequence[str]) -> str | None:
    values = [line[len("a=setup:"):] for line in lines if line.startswith("a=setup:")]
    return values[-1] if values else None


def _has(lines: Sequence[str], pattern: re.Pattern[str], prefix: str) -> bool:
    found = [line for line in lines if line.startswith(prefix)]
    if any(not pattern.match(line) for line in found):
        raise _refuse("malformed ICE credentials")
    return bool(found)


def sanitize(text: str, kind: SdpKind, allowed_networks: Sequence[str]) -> str:
    """The description `text` as aiortc may see it, or SignalingError `bad_sdp`."""
    if len(text) > MAX_SDP_CHARS:
        raise SignalingError(Code.TOO_LARGE, "SDP too large")
    lines = text.splitlines()
    while lines and not lines[-1]:
        lines.pop()
    if not lines or lines[0] != "v=0":
        raise _refuse("SDP must start with 'v=0'")
    for line in lines:
        if len(line) > MAX_LINE_CHARS:
            raise _refuse("SDP line too long")
        if not _LINE.match(line):
            raise _refuse("malformed SDP line")
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    if not starts:
        raise _refuse("SDP has no audio section")
    if len(starts) > MAX_MEDIA_SECTIONS:
        raise _refuse(f"more than {MAX_MEDIA_SECTIONS} media sections")
    if sum(line.startswith("a=candidate:") for line in lines) > MAX_CANDIDATES:
        raise _refuse(f"more than {MAX_CANDIDATES} ICE candidates")
    # Candidates are media-level (RFC 8839 section 5.1): aiortc ignores them elsewhere, and so
    # does what it is given.
    session = [line for line in lines[: starts[0]] if not line.startswith("a=candidate:")]
    session_fingerprint = _check_fingerprints(session)
    session_setup = _setup(session)
    session_ufrag = _has(session, _UFRAG, "a=ice-ufrag:")
    session_pwd = _has(session, _PWD, "a=ice-pwd:")
    out = list(session)
    for begin, end in zip(starts, [*starts[1:], len(lines)], strict=True):
        out.extend(_section(lines[begin:end], kind, allowed_networks, session_fingerprint,
                            session_setup, session_ufrag, session_pwd))
    return "\r\n".join(out) + "\r\n"


def _opus_types(lines: Sequence[str]) -> set[str]:
    """Opus payload types: opus/48000/2 (RFC 7587 section 7) at a dynamic payload type
    (RFC 3551 section 3)."""
    return {
        om.group(1) for line in lines if (om := _OPUS_RTPMAP.match(line))
        if 96 <= int(om.group(1)) <= 127
    }


def opus_payload_types(text: str) -> set[int]:
    """The Opus payload types a description uses, in all its sections: what the peer's
    packets may carry (signaling/peer.py routes them to the uplink by these)."""
    return {int(t) for t in _opus_types(text.split("\r\n"))}


def _allowed_codecs(lines: Sequence[str]) -> set[str]:
    """The allow-list, explicitly: Opus, and RED (RFC 2198) whose redundancy is Opus.

    RED wraps Opus frames (the primary and earlier ones as redundancy), so it is Opus audio
    and is kept in what aiortc sees: `red/48000/2` whose fmtp lists only this section's Opus
    payload types ("111/111", RFC 2198 section 5), numbered 96-127 or, as Chromium does,
    35-63 (with RTCP multiplexed, 64-95 are avoided, RFC 5761 section 4). aiortc 1.16 itself
    would answer without it (its codec table has no RED): signaling/peer.py negotiates it per
    transceiver (media/compat_red.py, `red_sections` below). Everything else is removed.
    """
    opus = _opus_types(lines)
    red = {rm.group(1) for line in lines if (rm := _RED_RTPMAP.match(line))
           if 35 <= int(rm.group(1)) <= 63 or 96 <= int(rm.group(1)) <= 127}
    over_opus: set[str] = set()
    for line in lines:
        if (fm := _RED_FMTP.match(line)) and fm.group(1) in red:
            blocks = fm.group(2).split("/")
            if 1 <= len(blocks) <= 8 and all(b in opus for b in blocks):
                over_opus.add(fm.group(1))
    return opus | over_opus


def _section(
    lines: list[str], kind: SdpKind, allowed: Sequence[str], session_fingerprint: bool,
    session_setup: str | None, session_ufrag: bool, session_pwd: bool,
) -> list[str]:
    m = _MLINE.match(lines[0])
    if m is None:
        raise _refuse("malformed m-line")
    media, port, proto, fmts = m.group(1), int(m.group(2)), m.group(3), m.group(4).split()
    if media != "audio":
        raise _refuse("only audio media sections are accepted")
    if proto != PROFILE or port > 65535:
        raise _refuse(f"media must use {PROFILE}")
    if len(fmts) > MAX_FORMATS or not all(f.isdigit() and int(f) < 128 for f in fmts):
        raise _refuse("malformed payload type list")
    keep = [f for f in fmts if f in _allowed_codecs(lines)]
    if not any(f in _opus_types(lines) for f in keep):
        raise _refuse("SDP offers no Opus codec")
    if not (_check_fingerprints(lines) or session_fingerprint):
        raise _refuse("SDP has no SHA-256 (or stronger) DTLS fingerprint")
    setup = _setup(lines) or session_setup
    if setup not in (_SETUP_OFFER if kind == "offer" else _SETUP_ANSWER):
        raise _refuse("missing or invalid a=setup")
    ufrag = _has(lines, _UFRAG, "a=ice-ufrag:") or session_ufrag
    pwd = _has(lines, _PWD, "a=ice-pwd:") or session_pwd
    if not (ufrag and pwd):
        raise _refuse("missing ICE credentials")
    if "a=rtcp-mux" not in lines:
        raise _refuse("RTCP must be multiplexed (a=rtcp-mux)")
    mids = [line[len("a=mid:"):] for line in lines if line.startswith("a=mid:")]
    if len(mids) != 1 or not MID_RE.match(mids[0]):
        raise _refuse("each media section needs one short a=mid")
    out = [" ".join([f"m={media}", str(port), proto, *keep])]
    for line in lines[1:]:
        if cm := _CODEC_LINE.match(line):
            if cm.group(2) not in keep and not (cm.group(1) == "rtcp-fb" and cm.group(2) == "*"):
                continue  # another codec's line: that codec is gone
        elif line.startswith("a=candidate:") and not candidate_allowed(line, allowed):
            continue
        out.append(line)
    return out


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


@lru_cache(maxsize=64)
def _networks(
    allowed: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in allowed)


def _special(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (
        address.is_unspecified or address.is_loopback or address.is_link_local
        or address.is_multicast or address.is_reserved
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
        or any(address in net for net in _SPECIAL)
    )


def candidate_allowed(candidate_line: str, allowed: Sequence[str]) -> bool:
    """Whether the server may send STUN checks to this ICE candidate (RFC 8445 section 5.1):
    a well-formed UDP candidate with an IP literal and a port of 1024 or above, inside one of
    the `allowed` networks or, when none are given, outside the special-purpose ranges."""
    if len(candidate_line) > MAX_LINE_CHARS or not _PRINTABLE.fullmatch(candidate_line):
        return False
    parts = candidate_line.removeprefix("a=").removeprefix("candidate:").split()
    if len(parts) < 8 or parts[6] != "typ" or parts[2].lower() != "udp":
        return False
    if not all(_CANDIDATE_NUMBER.match(parts[i]) for i in (1, 3, 5)):
        return False
    if not (1 <= int(parts[1]) <= 256 and int(parts[3]) < 2**32):  # RFC 8445 section 5.1.2
        return False
    if not 1024 <= int(parts[5]) <= 65535:
        return False  # no client gathers there; keeps STUN off well-known services
    try:
        address = ipaddress.ip_address(parts[4])  # mDNS names (.local) are refused here
    except ValueError:
        return False
    if address.is_unspecified or address.is_multicast or any(address in n for n in _NEVER):
        return False
    if allowed:
        return any(address in net for net in _networks(tuple(allowed)))
    return not _special(address)


def filter_candidates(text: str, allowed: Sequence[str]) -> str:
    """Remove the SDP's candidate lines the server must not send checks to."""
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
    payload type would orphan the packets of senders already running. Codecs the peer did not
    number (after `sanitize`, everything but Opus) are left out of the re-offer.
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


# -- RED (RFC 2198) ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RedOffer:
    """RED over Opus in one audio section of a peer's description (after `sanitize`)."""

    payload_type: int
    fmtp: str  # the block list, "111/111": the primary's encoding then the redundancy's
    opus_types: frozenset[int]  # the section's Opus payload types, which the blocks name
    first: bool  # listed before Opus: the peer prefers to send RED (RFC 3264 section 5.1)


def _sections(text: str) -> list[str]:
    return re.split(r"\r\n(?=m=)", text)


def red_sections(text: str) -> dict[str, RedOffer]:
    """mid -> the RED that section offers (or answers) over its Opus, for each section with
    one that the allow-list kept (the first on its m-line if several)."""
    out: dict[str, RedOffer] = {}
    for section in _sections(text):
        lines = section.split("\r\n")
        if not lines[0].startswith("m=audio "):
            continue
        fmts = lines[0].split(" ")[3:]
        opus = _opus_types(lines)
        red = _allowed_codecs(lines) - opus
        mids = [line[len("a=mid:"):] for line in lines if line.startswith("a=mid:")]
        chosen = next((f for f in fmts if f in red), None)
        if chosen is None or len(mids) != 1:
            continue
        fmtp = next(fm.group(2) for line in lines
                    if (fm := _RED_FMTP.match(line)) and fm.group(1) == chosen)
        first_opus = min((fmts.index(f) for f in fmts if f in opus), default=len(fmts))
        out[mids[0]] = RedOffer(int(chosen), fmtp, frozenset(int(t) for t in opus),
                                fmts.index(chosen) < first_opus)
    return out


def red_first(text: str, offered: dict[str, RedOffer]) -> str:
    """Our answer with RED first on the m-line of each section whose offer put it first.

    aiortc keeps Opus first in what it negotiated (its sender and our writer label packets
    with the first codec; media/compat_red.py), but the order in the answer is the
    preference the offerer sends by (RFC 3264 section 6.1): a browser that put RED first
    (`setCodecPreferences`) sends RED only if the answer does too."""
    out = []
    for section in _sections(text):
        lines = section.split("\r\n")
        mids = [line[len("a=mid:"):] for line in lines if line.startswith("a=mid:")]
        red = offered.get(mids[0]) if len(mids) == 1 else None
        if lines[0].startswith("m=audio ") and red is not None and red.first:
            head, fmts = lines[0].split(" ")[:3], lines[0].split(" ")[3:]
            pt = str(red.payload_type)
            if pt in fmts:
                lines[0] = " ".join([*head, pt, *(f for f in fmts if f != pt)])
        out.append("\r\n".join(lines))
    return "\r\n".join(out)


def offer_red(text: str, payload_type: int, opus_type: int) -> str:
    """Our own (re-)offer with RED over Opus (`opus_type/opus_type`, one redundant block) in
    each audio section that has that Opus, after it: aiortc's offers hold only its own table.
    The numbers are the peer's own from its first offer (`renumber`)."""
    out = []
    pt, opus = str(payload_type), str(opus_type)
    for section in _sections(text):
        lines = section.split("\r\n")
        fmts = lines[0].split(" ")[3:]
        if not lines[0].startswith("m=audio ") or opus not in fmts or pt in fmts:
            out.append(section)
            continue
        lines[0] = f"{lines[0]} {pt}"
        at = next((i + 1 for i, line in enumerate(lines)
                   if line.startswith(f"a=rtpmap:{opus} ")), len(lines))
        lines[at:at] = [f"a=rtpmap:{pt} red/48000/2", f"a=fmtp:{pt} {opus}/{opus}"]
        out.append("\r\n".join(lines))
    return "\r\n".join(out)
