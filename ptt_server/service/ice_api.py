"""GET /api/ice-servers: TURN servers with credentials minted for the caller, now.

A phone on a network that lets no UDP through to the server (a guest Wi-Fi, a hotel, a
carrier-grade NAT that times mappings out) can still reach a TURN server on a known port and
have its media relayed (RFC 8656). Credentials are time-limited and derived from a secret the
TURN server shares (draft-uberti-behave-turn-rest; media/ice.py `TurnRest`): nothing is
stored, each caller gets its own username, and a leaked credential expires by itself.

Only people who use live audio get them: an auditor never does, and a TURN credential is a
licence to relay arbitrary traffic through our TURN server.
"""

from __future__ import annotations

import time

from aiohttp import web

from ptt_server.core.config import Config
from ptt_server.core.model import Role
from ptt_server.media.ice import TurnRest
from ptt_server.service.http_auth import require_claims
from ptt_server.service.keys import CONFIG

TURN: web.AppKey[TurnRest | None] = web.AppKey("turn_rest")
LIVE_AUDIO_ROLES = frozenset({Role.OFFICER, Role.SUPERVISOR, Role.DISPATCHER, Role.ADMIN})


def turn_rest(config: Config) -> TurnRest | None:
    """The credential minter the config describes, or None without TURN."""
    if not config.turn_urls:
        return None
    if not config.turn_secret:
        raise ValueError("TURN URLs given without a shared secret (--turn-secret-file)")
    return TurnRest(config.turn_urls, config.turn_secret.encode(), config.turn_ttl_s)


async def ice_servers(request: web.Request) -> web.Response:
    claims = await require_claims(request, LIVE_AUDIO_ROLES)
    turn = request.app[TURN]
    if turn is None:
        # No TURN here: an empty list, so a page can use the answer as it is.
        return web.json_response({"iceServers": [], "ttl": None, "expires_at": None})
    now = time.time()
    cred = turn.credential(claims.sub, now)
    return web.json_response({
        "iceServers": [cred.as_json()],
        "ttl": turn.ttl_s,
        "expires_at": cred.expires_at,
    })


def add_routes(app: web.Application) -> None:
    app[TURN] = turn_rest(app[CONFIG])
    app.router.add_get("/api/ice-servers", ice_servers)
