"""The command centre over HTTP: what the console's map needs, and the officer page's
location policy; and the map library's files.

    GET /api/command-map       supervisors, dispatchers, admins: tile server (or none), the
                               last position of every unit seen within the hour, and the
                               emergencies under way with who acknowledged them
    GET /api/location-policy   anyone with live audio: how often to share a position
    /vendor/leaflet/...        Leaflet's dist/ files, installed by `make` (npm ci from the
                               pinned package-lock.json), served by this server: never a CDN,
                               a closed police network reaches none

After `welcome` the console hears `unit_location`, `emergency` and `emergency_acknowledged`
as they happen; this endpoint is what happened before it connected (or while it was away).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from aiohttp import web

from ptt_server.control.emergencies import EmergencyState, EmergencyStore
from ptt_server.control.locations import LocationStore
from ptt_server.core.model import Role
from ptt_server.service.http_auth import require_claims
from ptt_server.service.keys import CONFIG, REDIS

OVERSIGHT_ROLES = frozenset({Role.SUPERVISOR, Role.DISPATCHER, Role.ADMIN})
LIVE_ROLES = frozenset({Role.OFFICER, Role.SUPERVISOR, Role.DISPATCHER, Role.ADMIN})
VENDOR_PATH = "/vendor/leaflet"


def _emergency(state: EmergencyState) -> dict[str, Any]:
    ack = state.ack
    return {
        "talkgroup": state.talkgroup, "unit": state.unit, "alias": state.alias,
        "location": state.location, "ts": state.ts,
        "acknowledged": None if ack is None else {"by": ack.by, "alias": ack.alias,
                                                  "ts": ack.ts},
    }


async def command_map(request: web.Request) -> web.Response:
    await require_claims(request, OVERSIGHT_ROLES)
    config, redis = request.app[CONFIG], request.app[REDIS]
    now = time.time()
    units = await LocationStore(redis).latest(now)
    emergencies = await EmergencyStore(redis).all()
    return web.json_response({
        "tiles": config.map_tiles, "attribution": config.map_attribution,
        "location_interval_s": config.location_interval_s,
        "emergency_repeat_s": config.emergency_repeat_s,
        "now": now, "units": units,
        "emergencies": [_emergency(e) for e in sorted(emergencies, key=lambda e: e.ts)],
    })


async def location_policy(request: web.Request) -> web.Response:
    await require_claims(request, LIVE_ROLES)
    return web.json_response({"interval_s": request.app[CONFIG].location_interval_s})


def add_routes(app: web.Application, repository: Path) -> None:
    """`repository` holds node_modules/ (beside client_web/). Without the library installed
    the console still runs, its map replaced by a note (client_web/js/unit-map.js)."""
    app.router.add_get("/api/command-map", command_map)
    app.router.add_get("/api/location-policy", location_policy)
    leaflet = repository / "node_modules" / "leaflet" / "dist"
    if leaflet.is_dir():
        app.router.add_static(VENDOR_PATH, leaflet, show_index=False, follow_symlinks=False)
