"""Catalogues (client_web/i18n/*.json) against the pages: every key in every language, no key
left unused, every key the markup and scripts ask for defined; and the officer page in a
real Chromium in Bahasa Indonesia (locale id-ID) and switched to English."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from .browser_support import PHONE, chromium, open_page, silence_wav, wait_js
from .conftest import RunningServer

WEB = Path(__file__).resolve().parents[1] / "client_web"
CATALOGUES = {p.stem: json.loads(p.read_text()) for p in sorted((WEB / "i18n").glob("*.json"))}
HTML = {p.name: p.read_text() for p in sorted(WEB.glob("*.html"))}
JS = {p.name: p.read_text() for p in sorted((WEB / "js").glob("*.js"))}

T_CALL = re.compile(r"""\bt\(\s*'([a-z_]+\.[a-z0-9_.]+)'""")
DATA_I18N = re.compile(r'data-i18n="([^"]+)"')
DATA_ATTR = re.compile(r'data-i18n-attr="([^"]+)"')
LITERAL = re.compile(r"""'([a-z_]+\.[a-z0-9_]+)'""")


def test_every_language_has_every_key() -> None:
    assert set(CATALOGUES) >= {"en", "id"}
    keys = set(CATALOGUES["en"])
    for lang, cat in CATALOGUES.items():
        assert set(cat) == keys, (lang, set(cat) ^ keys)
        assert all(isinstance(v, str) and v.strip() for v in cat.values()), lang
        # Placeholders survive translation: {key} in English is {key} in every language.
        for key, text in cat.items():
            assert set(re.findall(r"\{\w+\}", text)) == set(
                re.findall(r"\{\w+\}", CATALOGUES["en"][key])), (lang, key)


def test_markup_and_scripts_use_only_defined_keys_and_every_key_is_used() -> None:
    keys = set(CATALOGUES["en"])
    asked: set[str] = set()
    for text in HTML.values():
        asked |= set(DATA_I18N.findall(text))
        for spec in DATA_ATTR.findall(text):
            asked |= {pair.split(":", 1)[1].strip() for pair in spec.split(";")}
    for text in JS.values():
        asked |= set(T_CALL.findall(text))
    assert asked - keys == set(), "keys asked for but missing from the catalogues"
    # Used: asked for, or named as a key literal in a script (tables such as CONN_TEXT), or
    # an error code's text (looked up by the server's stable code: error.<code>).
    used = asked | {k for text in JS.values() for k in LITERAL.findall(text)}
    unused = {k for k in keys - used if not k.startswith("error.")}
    assert unused == set()
    assert "Tekan untuk bicara" in CATALOGUES["id"]["officer.hint"]
    assert CATALOGUES["id"]["emergency.button"] == "Darurat"
    assert CATALOGUES["id"]["conn.reconnecting"] == "Tidak ada koneksi \u2013 menyambung ulang"



@pytest.mark.browser
@pytest.mark.timeout(90)
async def test_officer_page_in_bahasa_indonesia_and_switched_to_english(
    server: RunningServer, playwright: Any, tmp_path: Path
) -> None:
    wav = silence_wav(tmp_path / "quiet.wav")
    async with chromium(playwright, tmp_path / "profile", wav, locale="id-ID") as ctx:
        page, log = await open_page(ctx, server.url + "/", "officer-id", viewport=PHONE)
        await page.get_by_label("Nama pengguna").wait_for(timeout=10000)
        assert await page.evaluate("() => document.documentElement.lang") == "id"
        assert await page.get_by_role("button", name="Masuk").is_visible()
        # A wrong password: a human sentence in Indonesian, and the cursor back in the field.
        await page.get_by_label("Nama pengguna").fill("u2")
        await page.get_by_label("Kata sandi").fill("salah")
        await page.get_by_role("button", name="Masuk").click()
        await page.get_by_role("alert").filter(
            has_text="Nama pengguna atau kata sandi salah").wait_for(timeout=5000)
        assert await page.evaluate("() => document.activeElement.id") == "password"
        await page.get_by_label("Kata sandi").fill("pw-u2")
        await page.get_by_role("button", name="Masuk").click()
        await wait_js(page, "() => window.ptt && window.ptt.state().connected", 20)
        await page.get_by_role("button", name=re.compile("Bicara")).wait_for(timeout=5000)
        await wait_js(page, "() => document.querySelector('#talker-label').textContent"
                            " === 'Kanal kosong'", 10)
        # Switch to English: markup and script-written texts follow, and the choice stays.
        await page.get_by_label("Bahasa").select_option("en")
        await wait_js(page, "() => document.querySelector('#talker-label').textContent"
                            " === 'Channel clear'", 5)
        assert await page.get_by_role("button", name="Sign out").is_visible()
        await page.reload()
        await page.get_by_role("button", name="Sign out").wait_for(timeout=10000)
        assert await page.evaluate("() => document.documentElement.lang") == "en"
        assert log.csp_violations() == []
