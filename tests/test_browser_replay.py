"""Missed-call replay on the officer page, in a real Chromium: a transmission made while the
officer was offline is listed as missed, and playing it streams exactly the recorded file."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from client_cli.client import PttClient

from .audio import encode, make_speech, read_wav
from .browser_support import PHONE, chromium, open_page, silence_wav, wait_connected, wait_js
from .conftest import RunningServer

pytestmark = pytest.mark.browser


@pytest.fixture
async def officer(tmp_path: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw, chromium(
        pw, tmp_path / "profile", silence_wav(tmp_path / "quiet.wav")
    ) as ctx:
        yield ctx


@pytest.mark.timeout(150)
async def test_a_transmission_missed_offline_is_marked_and_replays_the_recording(
    server: RunningServer, officer: Any, tmp_path: Path
) -> None:
    page, _log = await open_page(
        officer, f"{server.url}/#token={server.token('u2')}", "u2", viewport=PHONE)
    await wait_connected(page, ["A"])
    talker = PttClient(server.url, server.token("u1"), ice_addresses=("127.0.0.1",))
    try:
        await talker.connect()
        await talker.start_media()
        await talker.join("A")
        # The phone loses its network (a tunnel); the channel goes on without it.
        await officer.set_offline(True)
        await wait_js(page, "() => window.ptt.client.offline", 10)
        pcm = read_wav(make_speech(tmp_path / "s.wav", "unit two this is unit one"))
        grant = await talker.talk("A", encode(pcm))
        tid = grant["transmission_id"]
        await officer.set_offline(False)
        await wait_connected(page, ["A"], 20)
        # Listed, marked missed, with its talker.
        item = page.locator(f'#replay-list li[data-id="{tid}"]')
        await item.wait_for(timeout=20_000)
        assert "is-missed" in (await item.get_attribute("class") or "")
        assert "Unit 1" in await item.inner_text()
        await item.locator("button.replay-play").click()
        src = await wait_js(
            page, "() => { const p = document.querySelector('#replay-player');"
                  " return p.src && p.src.startsWith('http') ? p.src : null; }", 10)
        assert "token" not in src.split("?", 1)[0]  # a signed media URL, not the bearer token
        played = await page.evaluate(
            """async (url) => {
                const r = await fetch(url);
                return Array.from(new Uint8Array(await r.arrayBuffer()));
            }""", src)
        recordings = list((server.config.data_dir / "recordings").rglob(f"*{tid}*.opus"))
        assert len(recordings) == 1, recordings
        assert hashlib.sha256(bytes(played)).hexdigest() == hashlib.sha256(
            recordings[0].read_bytes()).hexdigest()
    finally:
        await asyncio.gather(talker.close(), return_exceptions=True)
