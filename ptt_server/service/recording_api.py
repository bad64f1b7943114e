"""Auditor HTTP API: search, play, download, export and verify recordings.

Auditors and admins only (the access log: admins only); any other role gets 403, logged by
http_auth.forbidden and ledgered. Who is asking is decided per request from the directory, not
from the token's snapshot (http_auth.require_claims): a deleted or demoted auditor loses access
at their next request. Every read of recordings (search, metadata, play, download, waveform,
timeline, export, verify) is appended to the ledger as an "access" entry: who (token subject
and role), what, when (the entry's ts) and from where (peer address, user agent).

Bearer tokens come in the Authorization header only. An <audio> element cannot send one: it
plays a signed media URL instead (POST /api/recordings/{id}/media-url; see
identity/media_urls.py), valid a minute, bound to the user and to their access token. Paths
are logged without query strings all the same.

Blocking work (SQLite, hashing, decoding, zipping) runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

from aiohttp import web

from ptt_server.core.model import Role
from ptt_server.core.protocol import TALKGROUP_RE
from ptt_server.identity.tokens import AccessClaims
from ptt_server.recording import audio as audio_mod
from ptt_server.recording import export as export_mod
from ptt_server.recording import layout
from ptt_server.recording.files import file_sha256
from ptt_server.recording.ledger import parse_iso
from ptt_server.recording.retention import retention_loop
from ptt_server.recording.store import MAX_LIMIT, Recording, RecordingStore
from ptt_server.service import audit_search, http_auth
from ptt_server.service.http_auth import (
    MEDIA_URLS,
    forbidden,
    has_media_signature,
    json_error,
    json_object,
    media_claims,
    require_claims,
)
from ptt_server.service.keys import CONFIG, DIRECTORY, RECORDINGS

log = logging.getLogger("ptt.recording")

AUDIT_ROLES = frozenset({Role.AUDITOR, Role.ADMIN})
ADMIN_ONLY = frozenset({Role.ADMIN})
MAX_WAVEFORM_POINTS = 10_000
DEFAULT_TIMELINE_MS = 24 * 3600 * 1000
MAX_TIMELINE_MS = 31 * 24 * 3600 * 1000
MAX_QUERY_TEXT = 128


def _bad(message: str, code: str = "bad_request") -> web.HTTPException:
    return json_error(web.HTTPBadRequest, code, message)


async def _authorize(request: web.Request, action: str,
                     roles: Collection[Role] = AUDIT_ROLES, *,
                     media: bool = False) -> AccessClaims:
    # 401 without a valid token; `media`: a signed media URL will do instead (audio players).
    if media and has_media_signature(request):
        claims = await media_claims(request)
    else:
        claims = await require_claims(request)
    if claims.role not in roles:
        await _access(request, claims, action, outcome="denied")
        forbidden(request, claims, f"role {claims.role.value} may not {action} recordings"
                  if action != "access_log" else "only admins may read the access log")
    return claims


async def _access(request: web.Request, claims: AccessClaims, action: str,
                  **details: Any) -> None:
    """Ledger who did what from where. If the ledger cannot be written, the request fails:
    an access that cannot be audited must not happen."""
    fields = {
        "action": action, "by": claims.sub, "role": claims.role.value,
        "remote": request.remote, "user_agent": request.headers.get("User-Agent", "")[:200],
        "method": request.method, "path": request.path, **details,
    }
    fields.setdefault("outcome", "ok")
    try:
        await asyncio.to_thread(request.app[RECORDINGS].record_access, fields)
    except OSError as exc:
        log.error("cannot ledger %s by %s: %s", action, claims.sub, exc)
        raise json_error(web.HTTPServiceUnavailable, "unavailable",
                         "the audit ledger cannot be written") from None


def _store(request: web.Request) -> RecordingStore:
    return request.app[RECORDINGS]


def _time_ms(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    if text is None or text == "":
        return None
    try:
        if text.lstrip("-").isdigit():
            return int(text)
        return int(parse_iso(text) * 1000)
    except ValueError:
        raise _bad(f"'{name}' must be an ISO 8601 time or epoch milliseconds") from None


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise _bad(f"'{name}' must be an integer") from None
    if not low <= value <= high:
        raise _bad(f"'{name}' must be between {low} and {high}")
    return value


def _text(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if len(value) > MAX_QUERY_TEXT:
        raise _bad(f"'{name}' is too long")
    return value


def _links(item: dict[str, Any]) -> dict[str, Any]:
    rid = item["id"]
    base = f"/api/recordings/{rid}"
    item["links"] = {"self": base, "audio": f"{base}/audio", "wav": f"{base}/wav",
                     "waveform": f"{base}/waveform"}
    return item


async def _recording(request: web.Request) -> Recording:
    rid = request.match_info["id"]
    if not layout.valid_id(rid):
        raise _bad("invalid recording id", "bad_id")
    rec = await asyncio.to_thread(_store(request).get, rid)
    if rec is None:
        raise json_error(web.HTTPNotFound, "not_found", f"no recording {rid}")
    return rec


async def _audio_file(request: web.Request, rec: Recording) -> Any:
    path = await asyncio.to_thread(_store(request).audio_path, rec)
    if path is None:
        if rec.deleted_seq is not None:
            raise json_error(web.HTTPGone, "deleted",
                             f"the audio was deleted by retention (ledger seq {rec.deleted_seq})")
        raise json_error(web.HTTPNotFound, "no_audio", "no audio file for this recording")
    return path


# --- handlers --------------------------------------------------------------------------------
async def list_recordings(request: web.Request) -> web.Response:
    claims = await _authorize(request, "search")
    f = audit_search.filter_of(request.query)  # ids, or pieces of names and aliases
    limit = _int(request, "limit", 50, 1, MAX_LIMIT)
    cursor = _text(request, "cursor")
    try:
        page = await asyncio.to_thread(audit_search.search, _store(request),
                                       request.app[DIRECTORY], f, limit=limit, cursor=cursor)
    except ValueError:
        raise _bad("invalid cursor", "bad_cursor") from None
    await _access(request, claims, "search",
                  query={**f.query(), "limit": limit, "page": cursor is not None},
                  results=len(page.items))
    return web.json_response({"recordings": [_links(i) for i in page.items],
                              "next_cursor": page.next_cursor})


async def get_recording(request: web.Request) -> web.Response:
    claims = await _authorize(request, "view")
    rec = await _recording(request)
    await _access(request, claims, "metadata", id=rec.id)
    return web.json_response(_links(rec.public()))


async def get_audio(request: web.Request) -> web.FileResponse:
    claims = await _authorize(request, "play", media=True)
    rec = await _recording(request)
    path = await _audio_file(request, rec)
    download = request.query.get("download") in ("1", "true")
    rng = request.http_range
    headers = {
        "Content-Type": "audio/ogg",
        "Content-Disposition": f'{"attachment" if download else "inline"}; '
                               f'filename="{rec.id}.opus"',
        "Cache-Control": "no-store",
        "X-Recording-SHA256": rec.sha256 or "",
    }
    # A player fetches a file in many ranges: ledger the start of a listen, not every chunk.
    if rng.start in (None, 0):
        actual = await asyncio.to_thread(file_sha256, path)
        integrity = "ok" if actual == rec.sha256 else "altered"
        if integrity != "ok":
            log.error("recording %s served but its sha256 does not match the ledger", rec.id)
        headers["X-Integrity"] = integrity
        await _access(request, claims, "download" if download else "play", id=rec.id,
                      format="ogg", integrity=integrity)
    return web.FileResponse(path, headers=headers)


async def get_wav(request: web.Request) -> web.Response:
    claims = await _authorize(request, "play", media=True)
    rec = await _recording(request)
    path = await _audio_file(request, rec)
    body = await asyncio.to_thread(lambda: audio_mod.wav_bytes(audio_mod.decode_file(path)))
    await _access(request, claims, "play", id=rec.id, format="wav")
    return web.Response(body=body, content_type="audio/wav", headers={
        "Content-Disposition": f'inline; filename="{rec.id}.wav"', "Cache-Control": "no-store"})


async def post_media_url(request: web.Request) -> web.Response:
    """A signed URL an <audio> element can play: `{"kind": "audio"|"wav", "download": bool}`
    gives `{"url", "expires_at"}`. The fetch itself is ledgered, not this."""
    claims = await _authorize(request, "play")
    body = await json_object(request, empty_ok=True)
    kind, download = body.get("kind", "audio"), body.get("download", False)
    if kind not in ("audio", "wav") or not isinstance(download, bool):
        raise _bad("'kind' must be 'audio' or 'wav', 'download' a boolean")
    rec = await _recording(request)
    url, exp = request.app[MEDIA_URLS].sign(
        f"/api/recordings/{rec.id}/{kind}", sub=claims.sub, role=claims.role.value,
        jti=claims.jti or "", extra={"download": "1"} if download and kind == "audio" else None)
    return web.json_response({"url": url, "expires_at": exp})


async def get_waveform(request: web.Request) -> web.Response:
    claims = await _authorize(request, "play")
    points = _int(request, "points", 500, 1, MAX_WAVEFORM_POINTS)
    rec = await _recording(request)
    path = await _audio_file(request, rec)

    def compute() -> tuple[int, list[float], list[float]]:
        pcm = audio_mod.decode_file(path)
        lows, highs = audio_mod.peaks(pcm, points)
        return len(pcm), lows, highs

    samples, lows, highs = await asyncio.to_thread(compute)
    await _access(request, claims, "waveform", id=rec.id)
    return web.json_response({
        "id": rec.id, "sample_rate": 48000, "samples": samples,
        "duration_ms": samples * 1000 // 48000, "points": len(lows), "min": lows, "max": highs,
    }, headers={"Cache-Control": "no-store"})


async def get_timeline(request: web.Request) -> web.Response:
    claims = await _authorize(request, "search")
    talkgroup = request.match_info["id"]
    if not TALKGROUP_RE.match(talkgroup):
        raise _bad("invalid talkgroup id", "bad_id")
    to_ms = _time_ms(request, "to") or int(time.time() * 1000)
    from_ms = _time_ms(request, "from")
    if from_ms is None:
        from_ms = to_ms - DEFAULT_TIMELINE_MS
    if not 0 < to_ms - from_ms <= MAX_TIMELINE_MS:
        raise _bad("'from' must be before 'to', at most 31 days apart")
    tl = await asyncio.to_thread(_store(request).timeline, talkgroup, from_ms, to_ms)
    await _access(request, claims, "timeline", talkgroup=talkgroup, from_ms=from_ms,
                  to_ms=to_ms, results=tl["transmissions"])
    for item in tl["items"]:
        if item["type"] == "transmission":
            _links(item)
    return web.json_response(tl)


async def post_export(request: web.Request) -> web.StreamResponse:
    claims = await _authorize(request, "export")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        raise _bad("the body must be JSON") from None
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    ids = body.get("ids")
    store = _store(request)
    if isinstance(body.get("filter"), dict):  # the auditor's table: exactly what it shows
        f = audit_search.filter_of(body["filter"])
        recs = await asyncio.to_thread(audit_search.everything, store, request.app[DIRECTORY],
                                       f)
        query: dict[str, Any] = {"filter": f.query()}
    elif ids is not None:
        if (not isinstance(ids, list) or not ids or len(ids) > export_mod.MAX_EXPORT
                or not all(isinstance(i, str) and layout.valid_id(i) for i in ids)):
            raise _bad(f"'ids' must be 1-{export_mod.MAX_EXPORT} valid recording ids")
        recs, unknown = await asyncio.to_thread(export_mod.select, store, ids=ids)
        if unknown:
            raise json_error(web.HTTPNotFound, "not_found",
                             f"no recording(s): {', '.join(unknown)}")
        query = {"ids": ids}
    else:
        tg = body.get("talkgroup")
        if not isinstance(tg, str) or not TALKGROUP_RE.match(tg):
            raise _bad("give 'ids', or 'talkgroup', 'from' and 'to'")
        bounds: list[int] = []
        for name in ("from", "to"):
            value = body.get(name)
            try:
                if isinstance(value, int) and not isinstance(value, bool):
                    bounds.append(value)
                elif isinstance(value, str):
                    bounds.append(int(parse_iso(value) * 1000))
                else:
                    raise ValueError(name)
            except ValueError:
                raise _bad(f"'{name}' must be an ISO 8601 time or epoch milliseconds") from None
        if bounds[0] >= bounds[1]:
            raise _bad("'from' must be before 'to'")
        recs, _ = await asyncio.to_thread(export_mod.select, store, talkgroup=tg,
                                          from_ms=bounds[0], to_ms=bounds[1])
        query = {"talkgroup": tg, "from_ms": bounds[0], "to_ms": bounds[1]}
    if not recs:
        raise json_error(web.HTTPNotFound, "not_found", "no recordings to export")
    if len(recs) > export_mod.MAX_EXPORT:
        raise _bad(f"more than {export_mod.MAX_EXPORT} recordings: narrow the time window")
    node = request.app[CONFIG].node_id
    blob, info = await asyncio.to_thread(
        export_mod.build, store, recs, requested_by=f"{claims.sub} ({claims.role.value})",
        node=node,
    )
    try:
        await _access(request, claims, "export", query=query, export_id=info.export_id,
                      ids=info.ids, manifest_sha256=info.manifest_sha256, bytes=info.size)
        response = web.StreamResponse(headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="{info.filename}"',
            "Content-Length": str(info.size),
            "Cache-Control": "no-store",
            "X-Export-Id": info.export_id,
            "X-Manifest-SHA256": info.manifest_sha256,
        })
        await response.prepare(request)
        while chunk := await asyncio.to_thread(blob.read, 1 << 20):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        blob.close()


async def get_verify(request: web.Request) -> web.Response:
    claims = await _authorize(request, "verify")
    result = await asyncio.to_thread(_store(request).verify)
    await _access(request, claims, "verify", ok=result.ok, problems=len(result.problems))
    return web.json_response(result.as_dict(), headers={"Cache-Control": "no-store"})


async def get_access_log(request: web.Request) -> web.Response:
    claims = await _authorize(request, "access_log", ADMIN_ONLY)
    limit = _int(request, "limit", 100, 1, MAX_LIMIT)
    cursor = _text(request, "cursor")
    try:
        page = await asyncio.to_thread(_store(request).access_log, limit, cursor)
    except ValueError:
        raise _bad("invalid cursor", "bad_cursor") from None
    await _access(request, claims, "access_log", results=len(page.items))
    return web.json_response({"entries": page.items, "next_cursor": page.next_cursor},
                             headers={"Cache-Control": "no-store"})


# --- wiring ----------------------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _storage_errors(handler: Handler) -> Handler:
    """The store's disk or index failing is a 503 with our JSON error, not a bare 500."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (OSError, sqlite3.Error) as exc:
            log.error("recordings store unavailable (%s %s): %s", request.method, request.path,
                      exc)
            raise json_error(web.HTTPServiceUnavailable, "unavailable",
                             "the recordings store is unavailable") from None

    return wrapped


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    """Hourly retention in every server process (a file lock lets one run at a time)."""
    task: asyncio.Task[None] | None = None
    store = app.get(RECORDINGS)
    config = app.get(CONFIG)
    if store is not None and config is not None and config.retention_days > 0:
        task = asyncio.create_task(retention_loop(
            store, config.retention_days, actor=f"retention@{config.node_id}"))
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def add_routes(app: web.Application) -> None:
    """Register the auditor API and the hourly retention job (needs app[RECORDINGS] and
    app[CONFIG] by the time the app starts; retention_days <= 0 disables the job), and the
    per-request access check (http_auth.install)."""
    http_auth.install(app)
    get = app.router.add_get
    get("/api/recordings", _storage_errors(list_recordings))
    get("/api/recordings/{id}", _storage_errors(get_recording))
    get("/api/recordings/{id}/audio", _storage_errors(get_audio))
    get("/api/recordings/{id}/wav", _storage_errors(get_wav))
    get("/api/recordings/{id}/waveform", _storage_errors(get_waveform))
    app.router.add_post("/api/recordings/{id}/media-url", _storage_errors(post_media_url))
    get("/api/talkgroups/{id}/timeline", _storage_errors(get_timeline))
    app.router.add_post("/api/exports", _storage_errors(post_export))
    get("/api/audit/verify", _storage_errors(get_verify))
    get("/api/audit/access", _storage_errors(get_access_log))
    audit_search.add_routes(app, _storage_errors, _authorize, _access)  # /api/messages
    app.cleanup_ctx.append(_retention_ctx)


__all__ = ["add_routes"]
