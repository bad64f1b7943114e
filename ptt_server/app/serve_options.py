"""`serve` options for running the server as a service: metrics, TURN, the media port range.

Kept apart from cli.py (which calls `add_arguments` and `config_fields`) so each group of
options is read and checked in one place.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from ptt_server.control.redis_client import parse_sentinels
from ptt_server.media.ice import PortRange

METRICS_TOKEN_ENV = "PTT_METRICS_TOKEN"
# RFC 7065 section 3.1: turn:/turns: host [":" port] ["?transport=" udp|tcp].
TURN_URL_RE = re.compile(r"^turns?:(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?"
                         r"(\?transport=(udp|tcp))?$")
# Secrets: the TURN one is an HMAC key (a short one could be guessed offline from one
# credential), the metrics one a bearer token.
MIN_SECRET_LEN = 16
# Private calls (signaling/private_call.py): long enough to say something, short enough that
# a forgotten call does not hold two units off their talkgroups for an hour.
PRIVATE_CALL_LIMIT_S = (30.0, 3600.0)
PRIVATE_CALL_RING_S = (5.0, 120.0)


class OptionError(ValueError):
    """A usage error in these options (cli.py reports it like its own)."""


def add_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--metrics-token", metavar="TOKEN", default=None,
                       help=f"serve /metrics on the main port to this bearer token (default: "
                       f"${METRICS_TOKEN_ENV}; the variable keeps it out of the process list)")
    serve.add_argument("--metrics-token-file", type=Path, metavar="FILE",
                       help="read the metrics token from this file (a container secret, the "
                       "same file Prometheus reads)")
    serve.add_argument("--metrics-listen", metavar="HOST:PORT",
                       help="also serve /metrics on this address (a private network); with "
                       "several workers each takes the next free port from PORT")
    serve.add_argument("--turn-url", action="append", default=[], metavar="URL",
                       help="TURN server handed to clients with per-session credentials, e.g. "
                       "turn:turn.example:3478?transport=udp (repeatable)")
    serve.add_argument("--turn-secret-file", type=Path, metavar="FILE",
                       help="the secret shared with the TURN server (coturn static-auth-secret)")
    serve.add_argument("--turn-ttl", type=int, metavar="S",
                       help="lifetime of TURN credentials in seconds (default 43200)")
    serve.add_argument("--turn-for-server", action="store_true",
                       help="the server's own ICE also relays through the TURN server (only for "
                       "a server that clients cannot reach directly)")
    serve.add_argument("--media-ports", metavar="LOW-HIGH",
                       help="bind every media UDP socket in this port range, e.g. 40000-40999 "
                       "(with the ICE mux: one port per worker and address)")
    serve.add_argument("--ice-mux", choices=("on", "off"), default=None,
                       help="every client's media on one UDP socket per address and worker "
                       "(default on); off: a socket per client")
    serve.add_argument("--private-call-limit", type=float, metavar="S",
                       help="a private call between two units ends after this many seconds "
                       f"({PRIVATE_CALL_LIMIT_S[0]:.0f}-{PRIVATE_CALL_LIMIT_S[1]:.0f}; "
                       "default 300)")
    serve.add_argument("--private-call-ring", type=float, metavar="S",
                       help="an unanswered private call rings this long, then counts as no "
                       f"answer ({PRIVATE_CALL_RING_S[0]:.0f}-{PRIVATE_CALL_RING_S[1]:.0f}; "
                       "default 30)")


def _host_port(text: str, option: str) -> tuple[str, int]:
    try:
        ((host, port),) = parse_sentinels([text])
    except ValueError as exc:
        raise OptionError(f"{option}: {exc}") from None
    return host, port


def _secret(path: Path, option: str) -> str:
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"cannot read {option} {path}: {exc}") from None
    if len(secret) < MIN_SECRET_LEN:
        raise OptionError(f"{option} {path}: at least {MIN_SECRET_LEN} characters")
    return secret


def config_fields(ns: argparse.Namespace) -> dict[str, Any]:
    """The Config fields these options set (OptionError for a usage error)."""
    out: dict[str, Any] = {}
    if ns.metrics_token is not None and ns.metrics_token_file is not None:
        raise OptionError("--metrics-token and --metrics-token-file exclude each other")
    token = ns.metrics_token if ns.metrics_token is not None else os.environ.get(
        METRICS_TOKEN_ENV)
    if ns.metrics_token_file is not None:
        token = _secret(ns.metrics_token_file, "--metrics-token-file")
    if token is not None:
        if len(token) < MIN_SECRET_LEN or token != token.strip():
            raise OptionError(f"the metrics token needs at least {MIN_SECRET_LEN} characters, "
                              "no surrounding spaces")
        out["metrics_token"] = token
    if ns.metrics_listen:
        out["metrics_listen"] = _host_port(ns.metrics_listen, "--metrics-listen")
    if bool(ns.turn_url) != (ns.turn_secret_file is not None):
        raise OptionError("--turn-url and --turn-secret-file go together")
    for url in ns.turn_url:
        if not TURN_URL_RE.match(url):
            raise OptionError(f"--turn-url {url}: not turn:HOST[:PORT][?transport=udp|tcp]")
    if ns.turn_url:
        out["turn_urls"] = tuple(ns.turn_url)
        out["turn_secret"] = _secret(ns.turn_secret_file, "--turn-secret-file")
    if ns.turn_ttl is not None:
        if not 60 <= ns.turn_ttl <= 7 * 86400:
            raise OptionError("--turn-ttl must be in 60..604800")
        out["turn_ttl_s"] = ns.turn_ttl
    if ns.turn_for_server:
        if not ns.turn_url:
            raise OptionError("--turn-for-server needs --turn-url")
        out["turn_for_server"] = True
    for option, field, (low, high) in (
        ("private_call_limit", "private_call_max_s", PRIVATE_CALL_LIMIT_S),
        ("private_call_ring", "private_call_ring_s", PRIVATE_CALL_RING_S),
    ):
        value = getattr(ns, option)
        if value is not None:
            if not low <= value <= high:
                flag = "--" + option.replace("_", "-")
                raise OptionError(f"{flag} must be in {low:.0f}..{high:.0f} seconds")
            out[field] = float(value)
    if ns.media_ports:
        try:
            ports = PortRange.parse(ns.media_ports)
        except ValueError as exc:
            raise OptionError(f"--media-ports: {exc}") from None
        out["media_ports"] = (ports.low, ports.high)
    if ns.ice_mux is not None:
        out["ice_mux"] = ns.ice_mux == "on"
    return out
