"""The pages' member lists kept up by presence deltas, in a real headless Chromium against the
real server: the officer page (#members) and the supervisor console (#presence) follow radios
(client_cli, aiortc-free) joining, talking and leaving, and an officer page that misses a
delta asks for the whole list and shows the right one again."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from client_cli.client import PttClient
from ptt_server.core import messages as m
from ptt_server.service.keys import NODE

from .browser_support import chromium, open_page, silence_wav, wait_connected, wait_js
from .conftest import RunningServer

pytestmark = pytest.mark.browser

# The page's list of a talkgroup, as plain data, in the page's own order.
PAGE_LIST = """(tg) => (window.ptt.client.groups.get(tg) || { members: [] }).members.map(
    (x) => ({ unit: x.unit, alias: x.alias, role: x.role, mode: x.mode, state: x.state,
              session: x.session }))"""


async def truth(server: RunningServer, talkgroup: str = "A") -> list[dict[str, Any]]:
    views = await server.app[NODE].member_views(talkgroup)  # type: ignore[index]
    return list(json.loads(m.encode(m.Presence(talkgroup=talkgroup, revision=0,
                                                members=views)))["members"])


async def shows(page: Any, server: RunningServer) -> list[dict[str, Any]]:
    """Wait until the page's list of A is the server's; returns it."""
    expected = await truth(server)
    await wait_js(page, f"(want) => JSON.stringify(({PAGE_LIST})('A')) === JSON.stringify(want)",
                  15, expected)
    return expected


@pytest.mark.timeout(150)
async def test_pages_follow_deltas_and_recover_from_a_gap(
    server: RunningServer, playwright: Any, tmp_path: Path
) -> None:
    radios: list[PttClient] = []

    async def radio(user: str) -> PttClient:
        c = PttClient(server.url, server.token(user))
        radios.append(c)
        await c.connect()
        await c.join("A")
        return c

    silent = silence_wav(tmp_path / "silence.wav", 2.0)
    try:
        async with chromium(playwright, tmp_path / "profile", silent) as ctx:
            officer, _ = await open_page(ctx, f"{server.url}/#token={server.token('u1')}", "u1")
            console, _ = await open_page(
                ctx, f"{server.url}/console.html?monitor=A#token={server.token('sup')}", "sup")
            await asyncio.gather(wait_connected(officer, ["A"]),
                                 wait_connected(console, ["CMD", "A"]))
            u2 = await radio("u2")
            u3 = await radio("u3")
            for page in (officer, console):
                listed = await shows(page, server)
            assert {x["unit"] for x in listed} == {"u1", "u2", "u3", "sup"}
            # What the officer sees: a row per member, with the alias.
            rows = officer.locator("#members li")
            await wait_js(officer, "(n) => document.querySelectorAll('#members li').length"
                                   " === n", 10, len(listed))
            assert "Unit 3" in " ".join(await rows.all_inner_texts())
            # The console: a row per unit (sup is in CMD too).
            await wait_js(console, "(n) => document.querySelectorAll('#presence li').length"
                                   " === n", 10, 4)

            # Talking is a change of one member.
            assert (await u2.request_floor("A"))["type"] == "floor_granted"
            for page in (officer, console):
                listed = await shows(page, server)
            assert [x["unit"] for x in listed if x["state"] == "talking"] == ["u2"]
            talking = officer.locator("#members li.is-talking").filter(has_text="Unit 2")
            await talking.wait_for(timeout=10000)
            await u2.release_floor("A")
            await u3.leave("A")
            for page in (officer, console):
                listed = await shows(page, server)
            assert {x["unit"] for x in listed} == {"u1", "u2", "sup"}
            await wait_js(console, "(n) => document.querySelectorAll('#presence li').length"
                                   " === n", 10, 3)

            # A delta that does not continue the page's list (one was lost): it is not
            # applied, the page asks for the whole list and shows the right one again.
            before = await officer.evaluate(
                "() => window.ptt.client.groups.get('A').presenceRevision")
            await officer.evaluate("""(rev) => window.ptt.client._onMessage({
                type: 'presence_delta', talkgroup: 'A', revision: rev + 2, removed: [],
                changed: [{ unit: 'ghost', alias: 'Ghost', role: 'officer', mode: 'member',
                            state: 'idle', session: 'ghost' }] })""", before)
            assert "ghost" not in json.dumps(await officer.evaluate(PAGE_LIST, "A"))
            await wait_js(officer, "(rev) => window.ptt.client.groups.get('A').presenceAsked"
                                   " === false && window.ptt.client.groups.get('A')"
                                   ".presenceRevision >= rev", 10, before)
            await shows(officer, server)
            # And deltas apply from the new revision on.
            await radio("u3")
            listed = await shows(officer, server)
            assert {x["unit"] for x in listed} == {"u1", "u2", "u3", "sup"}
    finally:
        for c in radios:
            with contextlib.suppress(Exception):
                await c.close()
