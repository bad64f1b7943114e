"""The OpenAPI 3.1 description (ptt_server/service/openapi.json) is valid, and describes every
route the app registers and nothing else.

When this fails after adding a route: describe it in openapi.json (a path, its operation, its
responses); after removing one: remove its description.
"""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
from aiohttp import web
from openapi_spec_validator import validate

from ptt_server.app.wiring import create_app
from ptt_server.service.openapi import document

from .conftest import RunningServer, server_config

METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
# What the description covers: the API, the signaling socket, the operational endpoints.
# Everything else the app serves is the web client's files (pages, scripts, styles, the
# manifest, the service worker), which are not an API.
DESCRIBED = re.compile(r"^/(api/.*|ws|healthz|readyz|metrics)$")


def registered(app: web.Application) -> set[tuple[str, str]]:
    """(path template, method) of every route but static files; HEAD beside GET is aiohttp's
    own (add_get adds it), not an operation of ours."""
    routes = set()
    for route in app.router.routes():
        resource = route.resource
        if isinstance(resource, web.StaticResource) or resource is None:
            continue
        path = resource.canonical
        if not DESCRIBED.match(path):
            # A file of the web client: fetched, never sent to.
            assert route.method in ("GET", "HEAD"), f"{route.method} {path} outside /api/"
            continue
        routes.add((path, route.method.lower()))
    return {(p, m) for p, m in routes if not (m == "head" and (p, "get") in routes)}


def described() -> set[tuple[str, str]]:
    return {(path, method) for path, item in document()["paths"].items()
            for method in item if method in METHODS}


def every_optional_route_app(tmp_path: Path) -> web.Application:
    # Everything that registers routes only when configured is configured.
    config = server_config(tmp_path / "data", "redis://127.0.0.1:1/0",
                           metrics_token="t" * 20, turn_urls=("turn:127.0.0.1:3478",),
                           turn_secret="s" * 20)
    return create_app(config)


def test_the_description_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    validate(doc)  # raises with the offending part named


def test_every_route_is_described_and_nothing_else(tmp_path: Path) -> None:
    routes = registered(every_optional_route_app(tmp_path))
    paths = described()
    assert not routes - paths, f"routes without a description: {sorted(routes - paths)}"
    assert not paths - routes, f"described but not routes: {sorted(paths - routes)}"


def test_each_operation_answers_and_names_its_parameters() -> None:
    for path, item in document()["paths"].items():
        names = set(re.findall(r"\{(\w+)\}", path))
        for method, op in item.items():
            if method not in METHODS:
                continue
            assert any(code.startswith(("1", "2")) for code in op["responses"]), (path, method)
            declared = {p.get("name") for p in op.get("parameters", [])
                        if p.get("in") == "path"}
            declared |= {document()["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
                         ["name"] for p in op.get("parameters", []) if "$ref" in p}
            assert names <= declared, (path, method, names - declared)


async def test_the_server_serves_it(server: RunningServer) -> None:
    async with aiohttp.ClientSession() as http, http.get(
            server.url + "/api/openapi.json") as r:
        assert r.status == 200 and r.content_type == "application/json"
        assert await r.json() == document()
