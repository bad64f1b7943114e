"""`ptt-server`: run the server, and administer users, talkgroups and tokens.

Admin commands work on the data directory directly (SQLite, see directory.py), whether or not
a server is running; a running server sees the changes at once. Admin commands and `serve`
create a missing data directory; `audit` only opens one that exists (see datadir.py).

    ptt-server [--data-dir D] serve [--host H] [--port N] [--http] ...
    ptt-server talkgroup add north --name "North patrol"
    ptt-server user add u12 --role officer --talkgroups north,south --password PW --alias "Unit 12"
    ptt-server token u12 --ttl 3600
    ptt-server audit ...             (see ptt_server.recording.cli)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import ipaddress
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ptt_server.app import command_options, integration_cli, serve_options
from ptt_server.app.datadir import DataDir, DataDirError
from ptt_server.control.redis_client import parse_sentinels
from ptt_server.core.config import Config, ExternalIssuer
from ptt_server.core.model import Role, TalkgroupKind
from ptt_server.identity.auth import AuthError, TokenAuthority
from ptt_server.identity.directory import Directory, DirectoryError
from ptt_server.identity.replay_policy import ReplayPolicies, check_hours

PROG = "ptt-server"
DEFAULT_DATA_DIR = "data"
DATA_DIR_ENV = "PTT_DATA_DIR"
# Global options that take a value: needed to find where the `audit` command starts.
_GLOBAL_VALUE_OPTIONS = ("--data-dir", "--log-format")


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


# -- parser ------------------------------------------------------------------------------------
def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _int_in(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}: {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Push-to-talk server for police and emergency services."
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None,
        help=f"data directory (default: ${DATA_DIR_ENV} or ./{DEFAULT_DATA_DIR})",
    )
    parser.add_argument("--log-format", choices=("json", "text"), default=None)
    # The same options after the subcommand; SUPPRESS so that, when absent there, they do not
    # overwrite a value given before the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS)
    common.add_argument("--log-format", choices=("json", "text"), default=argparse.SUPPRESS)

    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the server")
    serve.add_argument("--host", default="0.0.0.0", help="listen address (default: all)")
    serve.add_argument("--port", type=_int_in(0, 65535), default=8443)
    serve.add_argument("--redis-url", help="Redis to share floors and presence through "
                       "(default: start an embedded redis-server)")
    serve.add_argument("--redis-sentinel", action="append", default=[], metavar="HOST:PORT",
                       help="a Redis Sentinel to find the primary through (repeatable)")
    serve.add_argument("--redis-master", default="ptt", metavar="NAME",
                       help="the primary's name at the sentinels (default: ptt)")
    serve.add_argument("--shutdown-timeout", type=_positive_float, metavar="S",
                       help="SIGTERM to exit at most this long (default 10)")
    serve.add_argument("--resume-grace", type=_positive_float, metavar="S",
                       help="keep a session whose connection dropped this long (default 30)")
    serve.add_argument("--disk-min-free-mb", type=_int_in(0, 10**7), metavar="MB",
                       help="report degraded below this much free space (default 1024)")
    serve.add_argument("--http", action="store_true",
                       help="plain HTTP (loopback tests, or behind a TLS-terminating proxy)")
    serve.add_argument("--tls-cert", type=Path, help="certificate chain (PEM); default: a "
                       "development certificate in DATA_DIR/tls")
    serve.add_argument("--tls-key", type=Path, help="private key (PEM) for --tls-cert")
    serve.add_argument("--ice-address", action="append", default=[], metavar="A",
                       help="address to offer as ICE host candidate (repeatable)")
    serve.add_argument("--ice-allow-network", action="append", default=[], metavar="CIDR",
                       help="accept remote ICE candidates only from these networks "
                       "(repeatable; default: any but loopback, link-local, multicast...)")
    serve.add_argument("--ice-server", action="append", default=[], metavar="URL",
                       help="STUN/TURN server URL (repeatable)")
    serve.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                       help="a web page origin allowed besides the server's own (repeatable)")
    for flag, high, text in (
        ("unauthenticated-per-address", 10**6, "connections not signed in, per address (20)"),
        ("unauthenticated", 10**6, "connections not signed in, in all (256)"),
        ("sessions-per-user", 10**4, "sessions one user may hold at once (4)"),
        ("sessions", 10**7, "sessions per worker (default: from the open-file limit)"),
    ):
        serve.add_argument(f"--max-{flag}", type=_int_in(1, high), metavar="N", help=text)
    serve.add_argument("--message-rate", type=_positive_float, metavar="PER_S",
                       help="messages per second per user (50; bursts of twice that)")
    serve.add_argument("--workers", type=_int_in(1, 1024), default=None,
                       help="worker processes (default: one per CPU)")
    serve.add_argument("--node-id", help="name of this server in logs and Redis")
    serve.add_argument("--tx-limit", type=_positive_float, metavar="S",
                       help="default transmission time limit in seconds")
    serve.add_argument("--queue-timeout", type=_positive_float, metavar="S",
                       help="a queued floor request expires after S seconds (default 30)")
    serve.add_argument("--token-ttl", type=_int_in(60, 7 * 86400), metavar="S",
                       help="lifetime of tokens issued at login, in seconds")
    serve.add_argument("--retention-days", type=_int_in(1, 36500), metavar="N",
                       help="how long recordings are kept")
    serve.add_argument("--external-issuer", metavar="ISS",
                       help="also accept tokens from this issuer (e.g. a single sign-on)")
    serve.add_argument("--external-key", type=Path, metavar="PEMFILE",
                       help="the external issuer's PUBLIC key (PEM)")
    serve.add_argument("--external-audience", metavar="AUD",
                       help="audience the external issuer's tokens carry (default: ours)")
    command_options.add_arguments(serve)  # the console's map, locations, emergency repeats
    serve_options.add_arguments(serve)  # metrics, TURN, media ports
    integration_cli.add_serve_arguments(serve)  # --webhook

    user = commands.add_parser("user", help="manage users").add_subparsers(
        dest="user_command", required=True, metavar="ACTION"
    )
    add = user.add_parser("add", parents=[common], help="add (or --replace) a user")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument("--talkgroups", default="", metavar="TG1,TG2",
                     help="comma-separated talkgroup ids")
    add.add_argument("--password", required=True, metavar="PW",
                     help="the password ('-' reads one line from standard input)")
    add.add_argument("--alias", help="name shown to others (default: the user name)")
    add.add_argument("--priority", type=_int_in(0, 255),
                     help="floor priority 0..255 (default: by role)")
    add.add_argument("--replace", action="store_true", help="overwrite an existing user")
    lst = user.add_parser("list", parents=[common], help="list users")
    lst.add_argument("--json", action="store_true", help="JSON output")
    rm = user.add_parser("remove", parents=[common], help="remove a user")
    rm.add_argument("name")
    pw = user.add_parser("passwd", parents=[common], help="set a user's password")
    pw.add_argument("name")
    pw.add_argument("--password", required=True, metavar="PW",
                    help="the new password ('-' reads one line from standard input)")

    tg = commands.add_parser("talkgroup", help="manage talkgroups").add_subparsers(
        dest="talkgroup_command", required=True, metavar="ACTION"
    )
    tadd = tg.add_parser("add", parents=[common], help="add (or --replace) a talkgroup")
    tadd.add_argument("id")
    tadd.add_argument("--name", help="display name (default: the id)")
    tadd.add_argument("--kind", choices=[k.value for k in TalkgroupKind], default="normal")
    tadd.add_argument("--tx-limit", type=_positive_float, metavar="S",
                      help="transmission time limit in seconds (default: the server's)")
    tadd.add_argument("--replay-hours", type=float, metavar="H",
                      help="how far back members may replay its recordings (default 24)")
    tadd.add_argument("--replace", action="store_true", help="overwrite an existing talkgroup")
    tlst = tg.add_parser("list", parents=[common], help="list talkgroups")
    tlst.add_argument("--json", action="store_true", help="JSON output")
    trm = tg.add_parser("remove", parents=[common], help="remove a talkgroup")
    trm.add_argument("id")
    trm.add_argument("--force", action="store_true",
                     help="also remove it from the users it is assigned to")

    tok = commands.add_parser("token", parents=[common], help="print a signed token for a user")
    tok.add_argument("name")
    tok.add_argument("--ttl", type=_int_in(1, 366 * 86400), metavar="S",
                     help="lifetime in seconds (default: the server's token lifetime)")

    commands.add_parser(
        "audit", add_help=False, help="search, play and export recordings (audit ... --help)"
    )
    return parser


def _split_audit(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """`audit`'s arguments go to its own parser untouched (argparse.REMAINDER alone would
    reject ones that start with '-')."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in _GLOBAL_VALUE_OPTIONS:
            i += 2
        elif token.startswith("-"):
            i += 1
        else:
            return (argv[: i + 1], argv[i + 1 :]) if token == "audit" else (argv, None)
    return argv, None


# -- commands ----------------------------------------------------------------------------------
def _data_dir(ns: argparse.Namespace) -> Path:
    """The data directory as given (not yet checked: see DataDir.create / DataDir.existing)."""
    given = ns.data_dir or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(given)


def _password(value: str) -> str:
    if value != "-":
        return value
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def serve_config(ns: argparse.Namespace) -> Config:
    """The Config a `serve` command line describes (checked, not yet started)."""
    extra: dict[str, Any] = {}
    if ns.node_id:
        extra["node_id"] = ns.node_id
    if ns.tx_limit is not None:
        extra["floor_max_duration_s"] = ns.tx_limit
    if ns.queue_timeout is not None:
        extra["floor_queue_timeout_s"] = ns.queue_timeout
    if ns.token_ttl is not None:
        extra["token_ttl_s"] = ns.token_ttl
    if ns.retention_days is not None:
        extra["retention_days"] = ns.retention_days
    if ns.log_format is not None:
        extra["log_format"] = ns.log_format
    if ns.shutdown_timeout is not None:
        extra["shutdown_timeout_s"] = ns.shutdown_timeout
    if ns.resume_grace is not None:
        extra["resume_grace_s"] = ns.resume_grace
    if ns.disk_min_free_mb is not None:
        extra["disk_min_free_mb"] = ns.disk_min_free_mb
    if ns.redis_sentinel:
        if ns.redis_url:
            raise CliError("--redis-url and --redis-sentinel exclude each other")
        try:
            parse_sentinels(ns.redis_sentinel)
        except ValueError as exc:
            raise CliError(f"--redis-sentinel: {exc}") from None
        extra["redis_sentinels"] = tuple(ns.redis_sentinel)
        extra["redis_master"] = ns.redis_master
    if (ns.tls_cert is None) != (ns.tls_key is None):
        raise CliError("--tls-cert and --tls-key go together")
    if ns.tls_cert is not None:
        if ns.http:
            raise CliError("--http and --tls-cert exclude each other")
        for path in (ns.tls_cert, ns.tls_key):
            if not path.is_file():
                raise CliError(f"no such file: {path}")
    for network in ns.ice_allow_network:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise CliError(f"--ice-allow-network {network}: not a network") from None
    if ns.allow_origin:
        from ptt_server.service.ws_limits import is_origin  # lazily, as for serve below
        if bad := [origin for origin in ns.allow_origin if not is_origin(origin)]:
            raise CliError(f"--allow-origin {bad[0]}: not an origin (scheme://host[:port])")
        extra["ws_allowed_origins"] = tuple(ns.allow_origin)
    for limit in ("max_unauthenticated_per_address", "max_unauthenticated",
                  "max_sessions_per_user", "max_sessions"):  # flag and Config field alike
        if getattr(ns, limit) is not None:
            extra[limit] = getattr(ns, limit)
    if ns.message_rate is not None:
        extra.update(message_rate_per_s=ns.message_rate, message_burst=2 * ns.message_rate)
    if (ns.external_issuer is None) != (ns.external_key is None):
        raise CliError("--external-issuer and --external-key go together")
    extra.update(command_options.config_fields(ns))  # OptionError: a ValueError, exit 2
    extra.update(serve_options.config_fields(ns))  # OptionError: a usage error (a ValueError)
    extra.update(integration_cli.config_fields(ns))
    config = Config(
        data_dir=_data_dir(ns), host=ns.host, port=ns.port, http=ns.http,
        redis_url=ns.redis_url, tls_cert=ns.tls_cert, tls_key=ns.tls_key,
        ice_addresses=tuple(ns.ice_address), ice_servers=tuple(ns.ice_server),
        ice_remote_networks=tuple(ns.ice_allow_network), **extra,
    )
    if ns.external_issuer is not None:
        try:
            pem = ns.external_key.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read --external-key {ns.external_key}: {exc}") from None
        external = ExternalIssuer(
            issuer=ns.external_issuer, public_key_pem=pem, audience=ns.external_audience
        )
        # Check the key now (a public key, of a type the pinned algorithms fit) rather than
        # have every worker fail at start-up.
        try:
            TokenAuthority(bytes(32), issuer=config.jwt_issuer, audience=config.jwt_audience,
                           external=external)
        except ValueError as exc:
            raise CliError(f"--external-key {ns.external_key}: {exc}") from None
        config = dataclasses.replace(config, external_issuer=external)
    return config


def _serve(ns: argparse.Namespace) -> int:
    config = serve_config(ns)
    # After the options are checked (a usage error creates nothing), before anything starts:
    # a data directory that is a file is one line and exit 2, not a traceback from a worker.
    data = DataDir.create(config.data_dir)
    config = dataclasses.replace(config, data_dir=data.root)
    from ptt_server.app.serve import run  # lazily: admin commands need none of the media stack

    return int(run(config, workers=ns.workers))


def _user(ns: argparse.Namespace, directory: Directory) -> int:
    action = ns.user_command
    if action == "add":
        groups = [g.strip() for g in ns.talkgroups.split(",") if g.strip()]
        user = directory.add_user(
            ns.name, Role(ns.role), groups, _password(ns.password), alias=ns.alias,
            priority=ns.priority, replace=ns.replace,
        )
        print(f"user {user.name} {'saved' if ns.replace else 'added'}: {user.role.value}, "
              f"priority {user.priority}, talkgroups {','.join(user.talkgroups) or '-'}")
    elif action == "list":
        users = directory.list_users()
        if ns.json:
            print(json.dumps([
                {**asdict(u), "role": u.role.value, "talkgroups": list(u.talkgroups)}
                for u in users
            ], indent=2))
        else:
            _table(
                ("NAME", "ROLE", "PRIORITY", "ALIAS", "TALKGROUPS"),
                [(u.name, u.role.value, str(u.priority), u.alias,
                  ",".join(u.talkgroups) or "-") for u in users],
            )
    elif action == "remove":
        directory.remove_user(ns.name)
        print(f"user {ns.name} removed")
    elif action == "passwd":
        directory.set_password(ns.name, _password(ns.password))
        print(f"password of {ns.name} changed")
    return 0


def _talkgroup(ns: argparse.Namespace, directory: Directory) -> int:
    action = ns.talkgroup_command
    if action == "add":
        if ns.replay_hours is not None:
            check_hours(ns.replay_hours)  # before anything is written
        info = directory.add_talkgroup(
            ns.id, ns.name, TalkgroupKind(ns.kind), ns.tx_limit, replace=ns.replace
        )
        if ns.replay_hours is not None:
            ReplayPolicies(directory).set_hours(info.id, ns.replay_hours)
        print(f"talkgroup {info.id} {'saved' if ns.replace else 'added'}: {info.kind.value}, "
              f"{info.name!r}")
    elif action == "list":
        talkgroups = directory.list_talkgroups()
        if ns.json:
            print(json.dumps([{**asdict(t), "kind": t.kind.value} for t in talkgroups],
                             indent=2))
        else:
            _table(
                ("ID", "KIND", "TX-LIMIT", "NAME"),
                [(t.id, t.kind.value,
                  "-" if t.max_duration_s is None else f"{t.max_duration_s:g}s", t.name)
                 for t in talkgroups],
            )
    elif action == "remove":
        directory.remove_talkgroup(ns.id, force=ns.force)
        print(f"talkgroup {ns.id} removed")
    return 0


def _audit(data_dir: Path, argv: list[str]) -> int:
    # Imported lazily and by name: the recording package is optional for admin commands.
    try:
        module = importlib.import_module("ptt_server.recording.cli")
    except ImportError as exc:
        raise CliError(f"audit is unavailable: {exc}") from None
    try:
        args = module.parse_args(argv)
    except SystemExit as exc:  # its argparse (--help, usage errors): a status, not a crash
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    # `audit verify --data-dir D` names the directory after the subcommand. Only an existing
    # data directory: audit commands read evidence, and must not report on an empty store
    # they created at a mistyped path.
    data = DataDir.existing(getattr(args, "data_dir", data_dir))
    return int(module.run(data.root, args))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# -- entry point -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    head, audit_args = _split_audit(argv)
    parser = build_parser()
    try:
        ns = parser.parse_args(head)
    except SystemExit as exc:  # --help, or a usage error argparse already reported
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if ns.command == "serve":
            return _serve(ns)
        if ns.command == "audit":
            return _audit(_data_dir(ns), audit_args or [])
        data = DataDir.create(_data_dir(ns))
        if ns.command == "token":
            return integration_cli.token_command(ns, data)  # service tokens too
        directory = Directory(data.directory_db)
        try:
            if ns.command == "user":
                return _user(ns, directory)
            return _talkgroup(ns, directory)
        finally:
            directory.close()
    except (CliError, DataDirError, DirectoryError, AuthError, ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
