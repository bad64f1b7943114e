"""Members catch up on their talkgroups: recent transmissions and one-tap replay.

An officer back from a dead spot (or a shift change) needs what was said on their talkgroups
while they could not hear it. Auditors already have the whole store (service/recording_api.py);
this is the member-facing slice of it, under each talkgroup's replay window (`replay_hours` in
the directory, identity/replay_policy.py; core/access.can_replay decides):

    GET  /api/talkgroups/{id}/recent          the newest transmissions within the window
    POST /api/recordings/{id}/replay-url      a signed URL (identity/media_urls.py) for ...
    GET  /api/recordings/{id}/replay          the Ogg Opus file itself, with range requests

The file is served as recorded (no transcoding) and in ranges, so a player can seek. Every
listing and every replay is written to the access ledger exactly like an auditor's access,
refusals included: a member listening to the past is as accountable as an auditor.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from ptt_server.core import access
from ptt_server.core.protocol import TALKGROUP_RE
from ptt_server.identity.replay_policy import ReplayPolicies
from ptt_server.identity.tokens import AccessClaims
from ptt_server.recording.files import file_sha256
from ptt_server.recording.store import Recording
from ptt_server.service.http_auth import (
    MEDIA_URLS,
    forbidden,
    has_media_signature,
    media_claims,
    require_claims,
)
from ptt_server.service.keys import DIRECTORY, RECORDINGS
from ptt_server.service.recording_api import (
    _access,
    _audio_file,
    _bad,
    _int,
    _recording,
    _storage_errors,
)

MAX_RECENT = 100
_FIELDS = ("id", "talkgroup", "unit", "alias", "role", "emergency", "start_ms", "end_ms",
           "duration_ms", "end_reason")


def _policies(request: web.Request) -> ReplayPolicies:
    return ReplayPolicies(request.app[DIRECTORY])


async def _allowed(request: web.Request, claims: AccessClaims, talkgroup: str,
                   start_ms: int | None) -> float:
    """The talkgroup's window in hours, or 403 (ledgered). `start_ms` None: the listing."""
    def look() -> tuple[Any, float]:
        return request.app[DIRECTORY].get_talkgroup(talkgroup), _policies(request).hours(
            talkgroup)

    tg, hours = await asyncio.to_thread(look)
    age_s = 0.0 if start_ms is None else time.time() - start_ms / 1000
    if not access.can_replay(claims, tg, age_s, hours):
        await _access(request, claims, "replay" if start_ms is not None else "recent",
                      talkgroup=talkgroup, outcome="denied")
        forbidden(request, claims, f"no replay of talkgroup {talkgroup} for {claims.sub}"
                  if start_ms is None else "this recording is outside your replay window")
    return hours


async def get_recent(request: web.Request) -> web.Response:
    claims = await require_claims(request)
    talkgroup = request.match_info["id"]
    if not TALKGROUP_RE.match(talkgroup):
        raise _bad("invalid talkgroup id", "bad_id")
    limit = _int(request, "limit", 30, 1, MAX_RECENT)
    hours = await _allowed(request, claims, talkgroup, None)
    full = claims.role in access.AUDIT_ROLES
    from_ms = None if full else int((time.time() - hours * 3600) * 1000)
    page = await asyncio.to_thread(lambda: request.app[RECORDINGS].search(
        talkgroup=talkgroup, from_ms=from_ms, limit=limit))
    items = [{k: item.get(k) for k in _FIELDS} for item in page.items
             if not item.get("deleted")]
    await _access(request, claims, "recent", talkgroup=talkgroup, from_ms=from_ms,
                  results=len(items))
    return web.json_response({"talkgroup": talkgroup, "replay_hours": hours,
                              "recordings": items}, headers={"Cache-Control": "no-store"})


async def _replayable(request: web.Request, claims: AccessClaims) -> Recording:
    rec = await _recording(request)
    await _allowed(request, claims, str(rec.entry.get("talkgroup", "")), rec.start_ms)
    return rec


async def post_replay_url(request: web.Request) -> web.Response:
    """`{"url", "expires_at"}`: a minute to start playing; the fetch is ledgered, not this."""
    claims = await require_claims(request)
    rec = await _replayable(request, claims)
    url, exp = request.app[MEDIA_URLS].sign(
        f"/api/recordings/{rec.id}/replay", sub=claims.sub, role=claims.role.value,
        jti=claims.jti or "")
    return web.json_response({"url": url, "expires_at": exp})


async def get_replay(request: web.Request) -> web.FileResponse:
    # The signed URL carries who asked; the window is checked again at every range request
    # (a URL issued a second before the window closes opens nothing after it).
    claims = (await media_claims(request) if has_media_signature(request)
              else await require_claims(request))
    rec = await _replayable(request, claims)
    path = await _audio_file(request, rec)
    headers = {"Content-Type": "audio/ogg", "Cache-Control": "no-store",
               "Content-Disposition": f'inline; filename="{rec.id}.opus"',
               "X-Recording-SHA256": rec.sha256 or ""}
    if request.http_range.start in (None, 0):  # the start of a listen, not every chunk
        actual = await asyncio.to_thread(file_sha256, path)
        integrity = "ok" if actual == rec.sha256 else "altered"
        headers["X-Integrity"] = integrity
        await _access(request, claims, "replay", id=rec.id, talkgroup=rec.entry.get("talkgroup"),
                      format="ogg", integrity=integrity)
    return web.FileResponse(path, headers=headers)


def add_routes(app: web.Application) -> None:
    """After recording_api.add_routes (which installs the per-request access check)."""
    app.router.add_get("/api/talkgroups/{id}/recent", _storage_errors(get_recent))
    app.router.add_post("/api/recordings/{id}/replay-url", _storage_errors(post_replay_url))
    app.router.add_get("/api/recordings/{id}/replay", _storage_errors(get_replay))


__all__ = ["add_routes"]
