"""The command centre's other systems, and the services behind messages: alerts and "who is
where" for integrations (incidents are service/incident_api.py), the status list for the
pages, and the two background jobs: message delivery (signaling/relay.py) and signed webhooks
(service/webhooks.py).

    POST /api/alerts                   text to talkgroups, units, or the command centre
    POST /api/incidents/{id}/alert     text to one incident's talkgroup
    GET  /api/alerts/{id}              who it was delivered to, who read it
    GET  /api/units?talkgroup=         units: where they are online, last status and location
    GET  /api/statuses                 the deployment's canned statuses (any signed-in user)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ptt_server.control import unit_state
from ptt_server.core import messaging as msg
from ptt_server.core.protocol import TALKGROUP_RE
from ptt_server.identity.statuses import catalogue
from ptt_server.service import incident_api
from ptt_server.service.http_auth import json_error, json_object, require_claims
from ptt_server.service.incident_api import (
    RADIO_ROLES,
    bad,
    integration_claims,
    redis_errors,
    text_of,
)
from ptt_server.service.keys import CONFIG, DIRECTORY, NODE, REDIS, REDIS_PUBSUB
from ptt_server.service.webhooks import Webhooks, load_config_file
from ptt_server.signaling import messaging
from ptt_server.signaling.relay import Relay

MAX_TARGETS = 64


async def _send(request: web.Request, claims: Any, text: str, *, talkgroup: str | None,
                to: str | None) -> str:
    node = request.app[NODE]
    out = msg.TextMessage(
        message_id=uuid.uuid4().hex, talkgroup=talkgroup, to=to, unit=claims.sub,
        alias=claims.alias, role=claims.role.value, text=text, urgent=True, ts=time.time())
    try:
        await messaging.publish(node, out, sender_session=None,
                                fields={"action": "alert", "text": text})
    except messaging.NotRecorded:
        raise json_error(web.HTTPServiceUnavailable, "unavailable",
                         "the audit ledger cannot be written; nothing was sent") from None
    return out.message_id


async def alert(request: web.Request) -> web.Response:
    """All-call style: the same alert to each talkgroup and unit named; none named: to every
    supervisor and dispatcher online."""
    claims = await integration_claims(request)
    body = await json_object(request)
    text = text_of(body, "text")
    directory = request.app[DIRECTORY]
    talkgroups, units = body.get("talkgroups", []), body.get("units", [])
    if (not isinstance(talkgroups, list) or not isinstance(units, list)
            or len(talkgroups) + len(units) > MAX_TARGETS):
        raise bad(f"'talkgroups' and 'units' are lists, {MAX_TARGETS} names at most")
    for tg in talkgroups:
        if not isinstance(tg, str) or not TALKGROUP_RE.match(tg) or (
                directory.get_talkgroup(tg) is None):
            raise json_error(web.HTTPBadRequest, "unknown_talkgroup", "no such talkgroup")
    users = incident_api.units_of({"units": units}, directory)
    sent = []
    for tg in dict.fromkeys(talkgroups):
        sent.append({"message_id": await _send(request, claims, text, talkgroup=tg, to=None),
                     "talkgroup": tg, "to": None})
    for user in users:
        sent.append({"message_id": await _send(request, claims, text, talkgroup=None,
                                               to=user.name), "talkgroup": None, "to": user.name})
    if not talkgroups and not units:
        sent.append({"message_id": await _send(request, claims, text, talkgroup=None, to=None),
                     "talkgroup": None, "to": None})
    return web.json_response({"messages": sent}, status=201)


async def incident_alert(request: web.Request) -> web.Response:
    claims = await integration_claims(request)
    tg = incident_api.incident_of(request)
    text = text_of(await json_object(request), "text")
    message_id = await _send(request, claims, text, talkgroup=tg.id, to=None)
    return web.json_response({"messages": [{"message_id": message_id, "talkgroup": tg.id,
                                            "to": None}]}, status=201)


async def receipts(request: web.Request) -> web.Response:
    await integration_claims(request)
    message_id = request.match_info["id"]
    if not msg.MESSAGE_ID_RE.match(message_id):
        raise bad("invalid message id", "bad_id")
    redis, k = request.app[REDIS], messaging.key(message_id)
    if not await redis.exists(k):
        raise json_error(web.HTTPNotFound, "not_found", "no such message (or too old)")
    delivered = sorted(messaging.decoded(u) for u in await redis.smembers(f"{k}:to"))
    read = sorted(messaging.decoded(u) for u in await redis.smembers(f"{k}:read"))
    return web.json_response({"message_id": message_id, "delivered": delivered, "read": read})


async def units(request: web.Request) -> web.Response:
    """Who is where: every radio user (or those of `?talkgroup=`), the talkgroups they are
    joined to now (on any node), their last status and last location."""
    await integration_claims(request)
    directory, node = request.app[DIRECTORY], request.app[NODE]
    only = request.query.get("talkgroup")
    if only is not None and directory.get_talkgroup(only) is None:
        raise json_error(web.HTTPNotFound, "not_found", "no such talkgroup")
    users = [u for u in directory.list_users() if u.role in RADIO_ROLES
             and (only is None or only in u.talkgroups)]
    now, where = time.time(), dict[str, list[dict[str, str]]]()
    for tg in await node.presence.talkgroups():
        for member in await node.presence.members(tg, now):
            where.setdefault(member.unit, []).append({"talkgroup": tg, "mode": member.mode,
                                                      "node": member.node})
    state = await unit_state.of_units(node.redis, [u.name for u in users])
    return web.json_response({"units": [{
        "unit": u.name, "alias": u.alias, "role": u.role.value,
        "talkgroups": list(u.talkgroups), "online": where.get(u.name, []),
        "status": state[u.name][0], "location": state[u.name][1],
    } for u in users]})


async def statuses(request: web.Request) -> web.Response:
    await require_claims(request)
    items = catalogue(request.app[CONFIG].data_dir).all()
    return web.json_response({"statuses": [s.as_dict() for s in items]})


async def _background(app: web.Application) -> AsyncIterator[None]:
    """Message delivery and webhooks, once the node runs (after its cleanup context)."""
    config = app[CONFIG]
    hooks = [*config.webhooks, *load_config_file(config.data_dir)]
    relay = Relay(app[NODE], app[REDIS_PUBSUB])
    tasks = [
        asyncio.create_task(relay.run(), name="message-relay"),
        asyncio.create_task(Webhooks(config.data_dir, hooks, app[REDIS],
                                     retry_s=config.webhook_retry_s).run(), name="webhooks"),
    ]
    yield
    relay.stop()
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait(tasks, timeout=2.0)


def add_routes(app: web.Application) -> None:
    """Needs the node's cleanup context registered before (app/wiring.py)."""
    incident_api.add_routes(app)
    for method, path, handler in (
        ("POST", "/api/alerts", alert), ("GET", "/api/alerts/{id}", receipts),
        ("POST", "/api/incidents/{id}/alert", incident_alert), ("GET", "/api/units", units),
        ("GET", "/api/statuses", statuses),
    ):
        app.router.add_route(method, path, redis_errors(handler))
    app.cleanup_ctx.append(_background)
