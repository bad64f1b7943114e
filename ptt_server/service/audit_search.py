"""The auditor's search as people ask it: "Unit 7", "Alpha", "plat B 1234" and a time.

One filter, read from a query string (the table's search) or from an export's body (the same
filter, so the export holds what the table shows):

* `talkgroup`: a talkgroup's id (then that one only), or a piece of its name: names from the
  directory (current talkgroups) and from the ledger (incidents, also once closed);
* `unit`: a unit's id (then that one only), or a piece of its alias ("unit 7" finds Unit 7
  and Unit 70);
* `from`, `to`: the start time (ISO 8601 or epoch ms), [from, to);
* `q` (messages only): a piece of the text of a status, text or alert message.

`GET /api/messages` lists the messages (newest first, each with who read it), ledgered as an
`access` entry like every other search (recording_api.py passes its check and its ledgering
in, so this module and that one do not import each other).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ptt_server.core.protocol import TALKGROUP_RE
from ptt_server.identity.directory import Directory
from ptt_server.recording.ledger import parse_iso
from ptt_server.recording.search import fold
from ptt_server.recording.store import MAX_LIMIT, Recording, RecordingStore
from ptt_server.service.http_auth import json_error
from ptt_server.service.keys import DIRECTORY, RECORDINGS

MAX_TEXT = 128
MAX_MATCHES = 1000  # recordings one filter may export (recording/export.py MAX_EXPORT)


@dataclass(frozen=True)
class Filter:
    talkgroup: str | None = None
    unit: str | None = None
    from_ms: int | None = None
    to_ms: int | None = None
    q: str | None = None

    def query(self) -> dict[str, Any]:
        """What the access entry records."""
        return {k: v for k, v in (("talkgroup", self.talkgroup), ("unit", self.unit),
                                  ("from_ms", self.from_ms), ("to_ms", self.to_ms),
                                  ("q", self.q)) if v is not None}


def _bad(message: str) -> web.HTTPException:
    return json_error(web.HTTPBadRequest, "bad_request", message)


def _time(value: object, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            return int(value) if value.lstrip("-").isdigit() else int(parse_iso(value) * 1000)
    except ValueError:
        pass
    raise _bad(f"'{name}' must be an ISO 8601 time or epoch milliseconds")


def _piece(value: object, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
        raise _bad(f"'{name}' must be text of at most {MAX_TEXT} characters")
    return value.strip() or None


def filter_of(values: Mapping[str, Any]) -> Filter:
    """From a query string or an export body. Raises HTTP 400 for what is not a filter."""
    return Filter(
        talkgroup=_piece(values.get("talkgroup"), "talkgroup"),
        unit=_piece(values.get("unit"), "unit"), from_ms=_time(values.get("from"), "from"),
        to_ms=_time(values.get("to"), "to"), q=_piece(values.get("q"), "q"),
    )


def talkgroups_of(f: Filter, directory: Directory, store: RecordingStore) -> list[str] | None:
    """The talkgroup ids the filter's `talkgroup` may mean (None: any talkgroup)."""
    if f.talkgroup is None:
        return None
    # An id as typed is kept even when the directory no longer has it (its recordings stay).
    found = {f.talkgroup} if TALKGROUP_RE.match(f.talkgroup) else set()
    talkgroups = directory.list_talkgroups()
    if any(t.id == f.talkgroup for t in talkgroups):
        return sorted(found)  # "A" means talkgroup A, not every name with an "a" in it
    piece = fold(f.talkgroup)
    found |= {t.id for t in talkgroups if piece in fold(t.name)}
    found |= set(store.talkgroups_named(f.talkgroup))
    return sorted(found)


def exact_unit(f: Filter, directory: Directory) -> bool:
    """The filter's `unit` is a unit's id: that unit only, not aliases containing it."""
    return f.unit is not None and directory.get_user(f.unit) is not None


def search(store: RecordingStore, directory: Directory, f: Filter, *, limit: int,
           cursor: str | None) -> Any:
    """The recordings the filter finds, one page (blocking: run in a thread)."""
    exact = exact_unit(f, directory)
    return store.search(talkgroups=talkgroups_of(f, directory, store),
                        unit=f.unit if exact else None, who=None if exact else f.unit,
                        from_ms=f.from_ms, to_ms=f.to_ms, limit=limit, cursor=cursor)


def everything(store: RecordingStore, directory: Directory, f: Filter) -> list[Recording]:
    """Every recording the filter finds, newest first, at most MAX_MATCHES + 1 (blocking)."""
    found: list[Recording] = []
    cursor = None
    while len(found) <= MAX_MATCHES:
        page = search(store, directory, f, limit=MAX_LIMIT, cursor=cursor)
        for item in page.items:
            rec = store.get(item["id"])
            if rec is not None:
                found.append(rec)
        cursor = page.next_cursor
        if cursor is None:
            break
    return found


# --- GET /api/messages -------------------------------------------------------------------------
Authorize = Callable[[web.Request, str], Awaitable[Any]]
Access = Callable[..., Awaitable[None]]
Wrap = Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]],
                Callable[[web.Request], Awaitable[web.StreamResponse]]]


def add_routes(app: web.Application, wrap: Wrap, authorize: Authorize, access: Access) -> None:
    async def messages(request: web.Request) -> web.Response:
        claims = await authorize(request, "search")
        f = filter_of(request.query)
        try:
            limit = int(request.query.get("limit") or 50)
        except ValueError:
            raise _bad("'limit' must be an integer") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise _bad(f"'limit' must be between 1 and {MAX_LIMIT}")
        cursor = _piece(request.query.get("cursor"), "cursor")
        store, directory = request.app[RECORDINGS], request.app[DIRECTORY]

        def run() -> Any:
            return store.messages(q=f.q, talkgroups=talkgroups_of(f, directory, store),
                                  who=f.unit, exact=exact_unit(f, directory),
                                  from_ms=f.from_ms, to_ms=f.to_ms, limit=limit,
                                  cursor=cursor)

        try:
            page = await asyncio.to_thread(run)
        except ValueError:
            raise json_error(web.HTTPBadRequest, "bad_cursor", "invalid cursor") from None
        await access(request, claims, "messages", query=f.query(), results=len(page.items))
        return web.json_response({"messages": page.items, "next_cursor": page.next_cursor})

    app.router.add_get("/api/messages", wrap(messages))
