"""The command line's side of integrations: `serve --webhook URL SECRET_FILE`, and tokens.

`ptt-server token NAME` mints an ordinary access token (12 h at most) for a person, and a
service token (a year by default, SERVICE_MAX_LIFETIME_S at most) for a user of the
`integration` role: the emergency line's gateway runs unattended and would otherwise need a
person to sign it in twice a day. Deleting the user revokes it at once (every request checks
the directory), as for any token.

A webhook secret comes from a file, never from the command line: arguments are visible to
every user of the machine (ps, /proc).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ptt_server.app.datadir import DataDir
from ptt_server.core.config import Config
from ptt_server.core.model import Role, User
from ptt_server.identity.auth import load_or_create_signing_key
from ptt_server.identity.directory import Directory
from ptt_server.identity.tokens import SERVICE_MAX_LIFETIME_S, TokenAuthority

SERVICE_TOKEN_DEFAULT_S = 365 * 86400
MAX_SECRET_BYTES = 4096


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--webhook", action="append", nargs=2, default=[], metavar=("URL", "SECRET_FILE"),
        help="POST signed emergency, ack, clear and recording-failed events to URL, signed "
             "with the secret in SECRET_FILE (repeatable; see docs/integration.md)")


def config_fields(ns: argparse.Namespace) -> dict[str, Any]:
    """Config fields from the webhook options. Raises ValueError (a usage error)."""
    from ptt_server.service.webhooks import check  # lazily: admin commands need no aiohttp

    hooks = []
    for url, secret_file in getattr(ns, "webhook", None) or []:
        path = Path(secret_file)
        try:
            data = path.read_bytes()[:MAX_SECRET_BYTES + 1]
        except OSError as exc:
            raise ValueError(f"--webhook {url}: cannot read {path}: {exc.strerror}") from None
        if len(data) > MAX_SECRET_BYTES:
            raise ValueError(f"--webhook {url}: {path} is not a secret (too long)")
        try:
            hooks.append(check(url, data.decode("utf-8")))
        except UnicodeDecodeError:
            raise ValueError(f"--webhook {url}: {path} is not text") from None
    return {"webhooks": tuple(hooks)} if hooks else {}


def mint(tokens: TokenAuthority, user: User, ttl_s: int | None, defaults: Config) -> str:
    """The token `ptt-server token` prints."""
    if user.role is Role.INTEGRATION:
        ttl = min(ttl_s or SERVICE_TOKEN_DEFAULT_S, SERVICE_MAX_LIFETIME_S)
        return tokens.issue(user, ttl, service=True)
    return tokens.issue(user, ttl_s or defaults.token_ttl_s)


def token_command(ns: argparse.Namespace, data: DataDir) -> int:
    """`ptt-server token NAME [--ttl S]`: print a signed token for a user of the directory."""
    directory = Directory(data.directory_db)
    try:
        user = directory.get_user(ns.name)
    finally:
        directory.close()
    if user is None:
        raise ValueError(f"no user {ns.name}")
    defaults = Config(data_dir=data.root)
    tokens = TokenAuthority(load_or_create_signing_key(data.root), issuer=defaults.jwt_issuer,
                            audience=defaults.jwt_audience)
    print(mint(tokens, user, ns.ttl, defaults))
    return 0
