"""The web clients in a real headless Chromium against the real server (Playwright, async).

Two browser processes at most: one whose fake microphone plays speech (the talker) and one
whose microphone is silent (every other page, each in its own tab with its own sign-in).
Audio is judged by the WebAudio level meters the pages expose on window.ptt.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from .audio import make_speech
from .browser_support import (
    PHONE,
    SILENCE,
    SPEECH,
    chromium,
    open_page,
    ptt_state,
    silence_wav,
    wait_connected,
    wait_js,
)
from .conftest import RunningServer

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_speech(
        tmp_path_factory.mktemp("browser-audio") / "speech.wav",
        "Unit one to control. Suspect vehicle heading north on main street. Requesting backup.",
        lead_silence_s=2.0,
    )


@pytest.fixture(scope="module")
def silent_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return silence_wav(tmp_path_factory.mktemp("browser-silence") / "silence.wav", 2.0)



@pytest.fixture
async def talker_browser(playwright: Any, tmp_path: Path, speech_wav: Path) -> AsyncIterator[Any]:
    async with chromium(playwright, tmp_path / "profile-talker", speech_wav) as ctx:
        yield ctx


@pytest.fixture
async def quiet_browser(playwright: Any, tmp_path: Path, silent_wav: Path) -> AsyncIterator[Any]:
    async with chromium(playwright, tmp_path / "profile-quiet", silent_wav) as ctx:
        yield ctx


def invite(server: RunningServer, path: str, user: str) -> str:
    return f"{server.url}{path}#token={server.token(user)}"


async def hold(page: Any, button: Any) -> None:
    box = await button.bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    await page.mouse.down()


async def canvas_ink(page: Any, selector: str) -> int:
    """How many pixels of a canvas differ from its background colour."""
    return int(await page.evaluate(
        """(sel) => {
            const c = document.querySelector(sel);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const [r0, g0, b0] = [d[0], d[1], d[2]];
            let n = 0;
            for (let i = 0; i < d.length; i += 4) {
                const diff = Math.abs(d[i] - r0) + Math.abs(d[i + 1] - g0)
                    + Math.abs(d[i + 2] - b0);
                if (diff > 60) n++;
            }
            return n;
        }""",
        selector,
    ))


@pytest.mark.timeout(150)
async def test_talk_is_heard_busy_is_shown_and_the_recording_plays(
    server: RunningServer, talker_browser: Any, quiet_browser: Any
) -> None:
    u1, log1 = await open_page(talker_browser, invite(server, "/", "u1"), "u1", viewport=PHONE)
    u2, log2 = await open_page(quiet_browser, invite(server, "/", "u2"), "u2", viewport=PHONE)
    u3, log3 = await open_page(quiet_browser, invite(server, "/", "u3"), "u3", viewport=PHONE)
    sup, logs = await open_page(
        quiet_browser, invite(server, "/console.html?monitor=A,B", "sup"), "sup")
    await asyncio.gather(
        wait_connected(u1, ["A"]), wait_connected(u2, ["A"]), wait_connected(u3, ["A"]),
        wait_connected(sup, ["CMD", "A", "B"]),
    )
    # Before anyone talks: the channel is silent everywhere.
    await asyncio.sleep(0.5)
    for page in (u2, sup):
        assert (await ptt_state(page))["maxLevel"]["A"] < SILENCE

    talk = u1.get_by_role("button", name=re.compile("Talk"))
    await hold(u1, talk)
    await wait_js(u1, "() => window.ptt.state().granted", 10)
    # Listeners show who is talking (aria-live status) and hear speech on A.
    await wait_js(u2, "() => window.ptt.state().talker === 'Unit 1'", 10)
    await wait_js(sup, "() => window.ptt.state().talkers.A === 'Unit 1'", 10)
    assert await u2.locator("#talker-name").inner_text() == "Unit 1"
    assert await u2.get_by_role("status").filter(has_text="Unit 1").count() >= 1
    assert "Unit 1" in await sup.locator('.panel[data-tg="A"] .panel-talker').inner_text()

    # A third officer pressing now gets the busy state (queued behind Unit 1).
    talk3 = u3.get_by_role("button", name=re.compile("Talk"))
    await hold(u3, talk3)
    await wait_js(u3, "() => window.ptt.state().busy", 10)
    s3 = await ptt_state(u3)
    assert not s3["granted"] and s3["talker"] == "Unit 1"
    assert "busy" in (await u3.locator("#tx-info").inner_text()).lower()
    await u3.mouse.up()
    await wait_js(u3, "() => window.ptt.state().phase === 'idle'", 5)

    await wait_js(u2, f"() => window.ptt.state().maxLevel.A > {SPEECH}", 12)
    await wait_js(sup, f"() => window.ptt.state().maxLevel.A > {SPEECH}", 12)
    await asyncio.sleep(2.5)  # a few seconds of speech for the recording
    await u1.mouse.up()
    await wait_js(u2, "() => window.ptt.state().talker === null", 10)
    s_sup = await ptt_state(sup)
    assert s_sup["maxLevel"]["B"] < SILENCE  # nothing leaked onto the other monitored group
    assert not (await ptt_state(u1))["granted"]
    # The console logged the transmission.
    await wait_js(sup, """() => document.querySelector('.panel[data-tg="A"] .log')
                            .textContent.includes('Unit 1')""", 5)

    # The auditor finds the transmission, plays it, and its waveform is drawn.
    aud, loga = await open_page(quiet_browser, invite(server, "/audit.html", "aud"), "aud")
    found = False
    for _ in range(20):
        await aud.get_by_role("button", name="Search").click()
        await aud.wait_for_function(
            "() => !document.querySelector('#results-status').textContent.startsWith('Search')")
        state = await aud.evaluate("() => window.audit.state()")
        if any(r["unit"] == "u1" and r["talkgroup"] == "A" for r in state["results"]):
            found = True
            break
        await asyncio.sleep(0.5)
    assert found, "the transmission was not found by the auditor"
    row = aud.locator("#results-body tr").filter(has_text="Unit 1").first
    await row.get_by_role("button", name=re.compile("^Play")).click()
    await wait_js(aud, "() => window.audit.state().waveformDrawn", 10)
    await wait_js(aud, "() => window.audit.state().currentTime > 0.3", 10)
    assert await canvas_ink(aud, "#waveform") > 500
    # Seek by clicking the waveform.
    box = await aud.locator("#waveform").bounding_box()
    assert box is not None
    await aud.mouse.click(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
    state = await aud.evaluate("() => window.audit.state()")
    assert state["currentTime"] >= 0.5 * state["duration"] - 0.5

    for log in (log1, log2, log3, logs, loga):
        assert log.csp_violations() == [], log.name
        assert log.serious() == [], (log.name, log.serious())


@pytest.mark.timeout(90)
async def test_sign_in_with_password_and_phone_layout(
    server: RunningServer, quiet_browser: Any
) -> None:
    page, log = await open_page(quiet_browser, server.url + "/", "u2", viewport={
        "width": 360, "height": 740})
    await page.get_by_label("Username").fill("u2")
    await page.get_by_label("Password").fill("wrong")
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("alert").filter(has_text="Wrong").wait_for(timeout=5000)
    await page.get_by_label("Password").fill("pw-u2")
    await page.get_by_role("button", name="Sign in").click()
    await wait_connected(page, ["A"])
    talk = page.get_by_role("button", name=re.compile("Talk"))
    assert await talk.is_enabled()
    # Nothing overflows sideways at 360 px; the talk button is big enough for a thumb.
    assert await page.evaluate("() => document.documentElement.scrollWidth") <= 360
    box = await talk.bounding_box()
    assert box is not None and box["width"] >= 200
    # Space key is push-to-talk as well.
    await page.keyboard.down("Space")
    await wait_js(page, "() => window.ptt.state().granted", 10)
    await page.keyboard.up("Space")
    await wait_js(page, "() => !window.ptt.state().granted", 5)
    # Sign out returns to the form and forgets the token.
    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_label("Username").wait_for(timeout=5000)
    assert await page.evaluate("() => sessionStorage.getItem('ptt.token')") is None
    assert log.csp_violations() == []


@pytest.mark.timeout(120)
async def test_reconnects_after_a_network_drop(
    server: RunningServer, talker_browser: Any, quiet_browser: Any
) -> None:
    u1, _ = await open_page(talker_browser, invite(server, "/", "u1"), "u1", viewport=PHONE)
    u2, _ = await open_page(quiet_browser, invite(server, "/", "u2"), "u2", viewport=PHONE)
    await asyncio.gather(wait_connected(u1, ["A"]), wait_connected(u2, ["A"]))
    # Cut the listener's network: it notices, says so, and comes back by itself.
    await quiet_browser.set_offline(True)
    await wait_js(u2, "() => window.ptt.state().connection === 'reconnecting'", 15)
    assert "Reconnecting" in await u2.locator("#conn").inner_text()
    await quiet_browser.set_offline(False)
    await wait_connected(u2, ["A"], 30)
    # ...and hears the next transmission on a fresh peer connection.
    await u2.evaluate("() => window.ptt.resetLevels()")
    await hold(u1, u1.get_by_role("button", name=re.compile("Talk")))
    await wait_js(u1, "() => window.ptt.state().granted", 10)
    await wait_js(u2, f"() => window.ptt.state().maxLevel.A > {SPEECH}", 15)
    await u1.mouse.up()


@pytest.mark.timeout(120)
async def test_supervisor_forces_release_and_sees_emergencies(
    server: RunningServer, talker_browser: Any, quiet_browser: Any
) -> None:
    u1, _ = await open_page(talker_browser, invite(server, "/", "u1"), "u1", viewport=PHONE)
    u2, _ = await open_page(quiet_browser, invite(server, "/", "u2"), "u2", viewport=PHONE)
    sup, log = await open_page(
        quiet_browser, invite(server, "/console.html?monitor=A", "sup"), "sup")
    await asyncio.gather(wait_connected(u1, ["A"]), wait_connected(u2, ["A"]),
                         wait_connected(sup, ["CMD", "A"]))
    # A stuck talker: the supervisor forces the floor free.
    await hold(u1, u1.get_by_role("button", name=re.compile("Talk")))
    await wait_js(sup, "() => window.ptt.state().talkers.A === 'Unit 1'", 10)
    await sup.get_by_role("button", name="Force release Alpha").click()
    await wait_js(u1, "() => !window.ptt.state().granted", 10)
    await wait_js(sup, "() => window.ptt.state().talkers.A === null", 10)
    await u1.mouse.up()
    # An emergency: two taps send it; the console shows it; the officer cancels it.
    emergency = u2.get_by_role("button", name=re.compile("Emergency", re.I))
    await emergency.click()
    await u2.get_by_role("button", name=re.compile("Tap again", re.I)).click()
    await sup.locator(".alert-card").filter(has_text="Unit 2").wait_for(timeout=10000)
    assert "EMERGENCY" in await sup.locator("#alerts").inner_text()
    await wait_js(u1, "() => window.ptt.state().emergencies.includes('A')", 10)
    assert await u1.locator("#emergency-banner").is_visible()
    # The emergency call holds the floor with an open microphone...
    await wait_js(u2, "() => window.ptt.state().granted", 10)
    await wait_js(u1, "() => window.ptt.state().talker === 'Unit 2'", 10)
    # ...after the supervisor clears it: the alert goes everywhere, and the microphone stays
    # open (the officer is told, not cut off) until the officer ends it with Talk.
    await sup.get_by_role("button", name="Clear emergency").click()
    await sup.locator(".alert-card").wait_for(state="detached", timeout=10000)
    await wait_js(
        u2, "() => window.ptt.state().granted && !window.ptt.state().emergencies.length", 10)
    await u2.locator("#emergency-status").filter(has_text="still open").wait_for(timeout=5000)
    await hold(u2, u2.get_by_role("button", name=re.compile("Talk")))
    await u2.mouse.up()
    await wait_js(u2, "() => !window.ptt.state().granted", 10)
    await wait_js(u1, "() => !window.ptt.state().emergencies.length", 10)
    assert await u1.locator("#emergency-banner").is_hidden()
    # The officer can also cancel an emergency of their own.
    await emergency.click()
    await u2.get_by_role("button", name=re.compile("Tap again", re.I)).click()
    await sup.locator(".alert-card").filter(has_text="Unit 2").wait_for(timeout=10000)
    await u2.get_by_role("button", name=re.compile("Cancel emergency", re.I)).click()
    await sup.locator(".alert-card").wait_for(state="detached", timeout=10000)
    await wait_js(u2, "() => !window.ptt.state().granted", 10)
    assert log.csp_violations() == []


async def python_radio(server: RunningServer, user: str, talkgroup: str) -> Any:
    from client_cli.client import PttClient

    c = PttClient(server.url, server.token(user), ice_addresses=("127.0.0.1",))
    await c.connect()
    await c.start_media(send=True)
    await c.join(talkgroup)
    await c.wait_for(lambda m: m["type"] == "downlink" and m["talkgroup"] == talkgroup)
    return c


@pytest.mark.timeout(120)
async def test_audit_timeline_export_verify_and_access_log(
    server: RunningServer, quiet_browser: Any, speech_wav: Path, tmp_path: Path
) -> None:
    import zipfile

    from .audio import encode, read_wav

    packets = encode(read_wav(speech_wav))[100:160]  # 1.2 s of speech
    u1 = await python_radio(server, "u1", "A")
    u4 = await python_radio(server, "u4", "B")
    try:
        for radio, tg in ((u1, "A"), (u4, "B"), (u1, "A")):
            assert (await radio.talk(tg, packets))["type"] == "floor_granted"
    finally:
        await asyncio.gather(u1.close(), u4.close())

    page, log = await open_page(quiet_browser, invite(server, "/audit.html", "root"), "root")
    await page.locator("#access-card").wait_for(state="visible", timeout=10000)
    await page.get_by_label("Talkgroup", exact=True).fill("A")
    for _ in range(20):  # the recorder finishes files in the background
        await page.get_by_role("button", name="Search").click()
        await asyncio.sleep(0.5)
        if len((await page.evaluate("() => window.audit.state()"))["results"]) == 2:
            break
    state = await page.evaluate("() => window.audit.state()")
    assert [r["unit"] for r in state["results"]] == ["u1", "u1"]

    # The channel's timeline plays its transmissions one after the other, oldest first.
    await page.get_by_role("button", name="Play channel timeline").click()
    await page.locator("#timeline-status").filter(has_text="1 of 2").wait_for(timeout=10000)
    await page.locator("#timeline-status").filter(has_text="finished").wait_for(timeout=15000)

    # Export the selection as a zip with both recordings and the ledger excerpt.
    await page.get_by_label("Select all shown").check()
    async with page.expect_download(timeout=15000) as info:
        await page.get_by_role("button", name=re.compile("Export selected")).click()
    download = await info.value
    path = tmp_path / "export.zip"
    await download.save_as(path)
    names = zipfile.ZipFile(path).namelist()
    assert sum(n.endswith(".opus") for n in names) == 2
    assert any(n.endswith("ledger-excerpt.jsonl") for n in names)

    # Filter by unit across talkgroups.
    await page.get_by_label("Talkgroup", exact=True).fill("")
    await page.get_by_label("Unit", exact=True).fill("u4")
    await page.get_by_role("button", name="Search").click()
    await wait_js(page, """() => window.audit.state().results.length === 1
                             && window.audit.state().results[0].talkgroup === 'B'""", 10)

    # The ledger verifies, and the access log (admins) shows what was done.
    await page.get_by_role("button", name="Verify now").click()
    await page.locator(".verify-ok").wait_for(timeout=15000)
    await wait_js(page, """() => {
        const t = document.querySelector('#access-body').textContent;
        return t.includes('export') && t.includes('timeline') && t.includes('verify');
    }""", 10)
    assert log.csp_violations() == [] and log.serious() == []

    # An auditor sees no access log.
    aud, _ = await open_page(quiet_browser, invite(server, "/audit.html", "aud"), "aud")
    await wait_js(aud, "() => typeof (window.audit || {}).state === 'function'"
                  " && window.audit.state().results.length === 3", 10)
    assert await aud.locator("#access-card").is_hidden()
