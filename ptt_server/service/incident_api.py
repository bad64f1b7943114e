"""The incident API: what an emergency line (110/112), CCTV or a dispatch system does with the
radio. A call comes in, the system opens an incident talkgroup for the units it sends, adds
and removes units as the incident grows, and closes it when it is over. See
docs/integration.md for a worked example.

Callers use a service token of a user with the `integration` role (`ptt-server token NAME`;
admins may use it too: core/access.py `can_integrate`). Every change is a grant of access, so
it is written to the ledger (`incident` entries) before it is made; if the ledger cannot be
written, nothing is done (503).

An incident is a talkgroup of kind `incident` (its id is the incident's id) in the directory,
in each unit's talkgroup list, so the units' own access rules apply to it. Units online are
told at once (`talkgroup_added`: the phone shows it and can join it); units taken off it, or
everyone when it closes, leave it (`talkgroup_removed`). Recordings and messages of a closed
incident stay in the ledger under its id, and its name with them (the `create` entry).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from ptt_server.control import unit_state
from ptt_server.core import access
from ptt_server.core import messaging as msg
from ptt_server.core.errors import SignalingError
from ptt_server.core.model import Role, TalkgroupInfo, TalkgroupKind, User
from ptt_server.identity.directory import DirectoryError
from ptt_server.identity.tokens import AccessClaims
from ptt_server.node.node import Node
from ptt_server.service.http_auth import forbidden, json_error, json_object, require_claims
from ptt_server.service.keys import DIRECTORY, NODE
from ptt_server.signaling import messaging

log = logging.getLogger("ptt.integration")

MAX_UNITS = 200
MAX_NAME = 128
RADIO_ROLES = access.OVERSIGHT_ROLES | {Role.OFFICER}


def bad(message: str, code: str = "bad_request") -> web.HTTPException:
    return json_error(web.HTTPBadRequest, code, message)


async def integration_claims(request: web.Request) -> AccessClaims:
    claims = await require_claims(request)
    if not access.can_integrate(claims):
        forbidden(request, claims, "only integrations and admins may use the incident API")
    return claims


async def ledger(request: web.Request, kind: str, fields: dict[str, Any]) -> None:
    """Ledger first; a change that cannot be ledgered is not made."""
    node = request.app[NODE]
    if node.recorder is None:
        return
    try:
        await asyncio.to_thread(node.recorder.ledger.append, kind,
                                {"node_id": node.id, **fields})
    except Exception as exc:
        log.error("%s not done: the ledger cannot be written (%s)", kind, exc)
        raise json_error(web.HTTPServiceUnavailable, "unavailable",
                         "the audit ledger cannot be written; nothing was changed") from None


def units_of(body: dict[str, Any], directory: Any) -> list[User]:
    """The body's `units`: existing radio users (officers and the command centre)."""
    names = body.get("units", [])
    if (not isinstance(names, list) or len(names) > MAX_UNITS
            or not all(isinstance(n, str) and msg.UNIT_RE.match(n) for n in names)):
        raise bad(f"'units' must be a list of at most {MAX_UNITS} unit names")
    users, unknown = [], []
    for name in dict.fromkeys(names):
        user = directory.get_user(name)
        if user is None or user.role not in RADIO_ROLES:
            unknown.append(name)
        else:
            users.append(user)
    if unknown:
        raise json_error(web.HTTPBadRequest, "unknown_unit",
                         f"not radio users: {', '.join(unknown[:20])}")
    return users


def text_of(body: dict[str, Any], name: str, limit: int = msg.MAX_TEXT) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise bad(f"'{name}' must be a string")
    try:
        cleaned = msg.clean_text(value)
    except SignalingError as exc:
        raise bad(f"'{name}': {exc.message}") from None
    if len(cleaned) > limit:
        raise bad(f"'{name}' is longer than {limit} characters")
    return cleaned


def incident_of(request: web.Request) -> TalkgroupInfo:
    tg = request.app[DIRECTORY].get_talkgroup(request.match_info["id"])
    if tg is None or tg.kind is not TalkgroupKind.INCIDENT:
        raise json_error(web.HTTPNotFound, "not_found", "no such incident")
    return tg


async def view(node: Node, tg: TalkgroupInfo) -> dict[str, Any]:
    """The incident and who is where: each assigned unit, online in it or not, its last
    status and location (control/unit_state.py)."""
    assigned = node.directory.users_of(tg.id)
    present = {m.unit: m for m in await node.presence.members(tg.id, time.time())}
    state = await unit_state.of_units(node.redis, assigned)
    units = []
    for name in assigned:
        user = node.directory.get_user(name)
        status, location = state.get(name, (None, None))
        units.append({"unit": name, "alias": user.alias if user else name,
                      "joined": name in present, "status": status, "location": location})
    return {"id": tg.id, "talkgroup": tg.id, "name": tg.name, "kind": tg.kind.value,
            "units": units}


def new_id() -> str:
    day = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    return f"INC-{day}-{secrets.token_hex(3)}"


async def create(request: web.Request) -> web.Response:
    claims = await integration_claims(request)
    body = await json_object(request)
    name = text_of(body, "name", MAX_NAME)
    directory, node = request.app[DIRECTORY], request.app[NODE]
    users = units_of(body, directory)
    ref = body.get("ref")  # the caller's own reference (the emergency line's call id)
    if ref is not None and (not isinstance(ref, str) or not msg.REF_RE.match(ref)):
        raise bad("'ref' must be 1-64 of A-Z a-z 0-9 _ . : -")
    tg_id = new_id()
    units = [u.name for u in users]
    await ledger(request, "incident", {"action": "create", "talkgroup": tg_id, "name": name,
                                       "units": units, "by": claims.sub, "ref": ref})
    try:
        directory.add_talkgroup(tg_id, name, TalkgroupKind.INCIDENT)
        directory.assign(tg_id, units)
    except DirectoryError as exc:  # a unit removed between the check and now
        directory.remove_talkgroup(tg_id, force=True)
        raise json_error(web.HTTPConflict, exc.code, exc.message) from None
    log.info("incident opened", extra={"fields": {"talkgroup": tg_id, "by": claims.sub,
                                                   "units": len(units)}})
    await messaging.talkgroup_added(node, tg_id, name, TalkgroupKind.INCIDENT.value, units,
                                    claims.sub)
    tg = directory.get_talkgroup(tg_id)
    assert tg is not None
    return web.json_response(await view(node, tg), status=201)


async def get(request: web.Request) -> web.Response:
    await integration_claims(request)
    return web.json_response(await view(request.app[NODE], incident_of(request)))


async def list_all(request: web.Request) -> web.Response:
    await integration_claims(request)
    tgs = [t for t in request.app[DIRECTORY].list_talkgroups()
           if t.kind is TalkgroupKind.INCIDENT]
    return web.json_response({"incidents": [
        {"id": t.id, "talkgroup": t.id, "name": t.name} for t in tgs]})


async def add_units(request: web.Request) -> web.Response:
    claims = await integration_claims(request)
    tg = incident_of(request)
    directory, node = request.app[DIRECTORY], request.app[NODE]
    units = [u.name for u in units_of(await json_object(request), directory)]
    await ledger(request, "incident", {"action": "add_units", "talkgroup": tg.id,
                                       "units": units, "by": claims.sub})
    added = directory.assign(tg.id, units)
    await messaging.talkgroup_added(node, tg.id, tg.name, tg.kind.value, added, claims.sub)
    return web.json_response(await view(node, tg))


async def remove_unit(request: web.Request) -> web.Response:
    claims = await integration_claims(request)
    tg = incident_of(request)
    unit = request.match_info["unit"]
    directory, node = request.app[DIRECTORY], request.app[NODE]
    if unit not in directory.users_of(tg.id):
        raise json_error(web.HTTPNotFound, "not_found", "that unit is not in the incident")
    await ledger(request, "incident", {"action": "remove_unit", "talkgroup": tg.id,
                                       "units": [unit], "by": claims.sub})
    directory.unassign(tg.id, [unit])
    await messaging.talkgroup_removed(node, tg.id, [unit], "unassigned", claims.sub)
    return web.json_response(await view(node, tg))


async def close(request: web.Request) -> web.Response:
    claims = await integration_claims(request)
    tg = incident_of(request)
    directory, node = request.app[DIRECTORY], request.app[NODE]
    units = directory.users_of(tg.id)
    await ledger(request, "incident", {"action": "close", "talkgroup": tg.id, "name": tg.name,
                                       "units": units, "by": claims.sub})
    directory.remove_talkgroup(tg.id, force=True)
    await messaging.talkgroup_removed(node, tg.id, units, "closed", claims.sub, closed=True)
    log.info("incident closed", extra={"fields": {"talkgroup": tg.id, "by": claims.sub}})
    return web.json_response({"id": tg.id, "closed": True})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def redis_errors(handler: Handler) -> Handler:
    """Redis unreachable: a 503 with our JSON error (the change may be retried)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except RedisError:
            raise json_error(web.HTTPServiceUnavailable, "unavailable",
                             "temporarily unavailable") from None

    return wrapped


def add_routes(app: web.Application) -> None:
    for method, path, handler in (
        ("POST", "/api/incidents", create), ("GET", "/api/incidents", list_all),
        ("GET", "/api/incidents/{id}", get), ("DELETE", "/api/incidents/{id}", close),
        ("POST", "/api/incidents/{id}/units", add_units),
        ("DELETE", "/api/incidents/{id}/units/{unit}", remove_unit),
    ):
        app.router.add_route(method, path, redis_errors(handler))
