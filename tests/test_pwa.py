"""The installable radio: Chromium finds the page installable, the service worker serves the
shell with the server's static files gone, and a new tab is signed in without a password."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .browser_support import PHONE, chromium, open_page, silence_wav, wait_js
from .conftest import RunningServer

pytestmark = pytest.mark.browser

STATIC = ("/", "/index.html", "/css/", "/js/", "/i18n/", "/img/", "/manifest.webmanifest")



@pytest.mark.timeout(120)
async def test_installable_offline_shell_and_silent_sign_in_in_a_new_tab(
    server: RunningServer, playwright: Any, tmp_path: Path
) -> None:
    wav = silence_wav(tmp_path / "quiet.wav")
    async with chromium(playwright, tmp_path / "profile", wav, locale="en-GB") as ctx:
        page, log = await open_page(ctx, server.url + "/", "u2", viewport=PHONE)
        await page.get_by_label("Username").fill("u2")
        await page.get_by_label("Password").fill("pw-u2")
        await page.get_by_role("button", name="Sign in").click()
        await wait_js(page, "() => window.ptt && window.ptt.state().connected", 20)
        await wait_js(page, """async () => {
            const r = await navigator.serviceWorker.getRegistration('/');
            return !!(r && r.active && r.active.state === 'activated'
                      && navigator.serviceWorker.controller);
        }""", 15)
        cdp = await ctx.new_cdp_session(page)
        result = await cdp.send("Page.getInstallabilityErrors")
        assert result["installabilityErrors"] == []
        # Only the refresh token outlives the tab; the access token never goes to localStorage.
        stored = await page.evaluate("() => Object.assign({}, localStorage)")
        assert "ptt.refresh" in stored and "ptt.token" not in stored

        # A new tab on the same device: signed in without the form.
        tab, _ = await open_page(ctx, server.url + "/", "u2-tab", viewport=PHONE)
        await wait_js(tab, "() => window.ptt && window.ptt.state().connected", 20)
        assert await tab.locator("#signin").is_hidden()
        await tab.close()

        # The server's static files gone: the shell comes from the service worker.
        async def abort(route: Any) -> None:
            await route.abort()

        for prefix in STATIC:
            await ctx.route(f"{server.url}{prefix}" + ("**" if prefix.endswith("/") else ""),
                            abort)
        resp = await page.reload()
        assert resp is not None and resp.from_service_worker
        await page.locator("#talk-button").wait_for(state="attached", timeout=10000)
        await wait_js(page, "() => !!document.querySelector('.ptt-label').textContent", 10)
        assert log.csp_violations() == []
