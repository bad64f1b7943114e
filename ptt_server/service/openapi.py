"""GET /api/openapi.json: the OpenAPI 3.1 description of every HTTP endpoint.

The description is a file beside this module (openapi.json), kept by hand with the routes;
tests/test_openapi.py checks it against the OpenAPI schema and against the routes the app
registers, both ways, so a new route without a description (or a described route that went
away) fails the build.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from aiohttp import web


@functools.cache
def document_bytes() -> bytes:
    return resources.files("ptt_server.service").joinpath("openapi.json").read_bytes()


def document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(document_bytes())
    return doc


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=document_bytes(), content_type="application/json")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/openapi.json", openapi_json)
