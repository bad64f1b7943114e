"""The supervisor console (/console.html) and the auditor page (/audit.html) in Bahasa Indonesia
and English, like the officer page (tests/test_i18n.py): every key they use is in every
catalogue, nothing user-facing is written in their markup without a key, and in a real
Chromium each page renders in Indonesian (locale id-ID), switches to English and stays so,
with the server's error codes said in words in the page's language and no raw key on screen."""

from __future__ import annotations

import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from .browser_support import chromium, open_page, silence_wav, wait_js
from .conftest import RunningServer

WEB = Path(__file__).resolve().parents[1] / "client_web"
CATALOGUES = {p.stem: json.loads(p.read_text()) for p in sorted((WEB / "i18n").glob("*.json"))}
PAGES = ("console.html", "audit.html")
# The scripts of the two pages (messaging.js is shared with the officer page; its console
# side is checked here too).
SCRIPTS = ("console.js", "command-centre.js", "command-text.js", "unit-map.js", "messaging.js",
           "audit.js")

T_CALL = re.compile(r"""\bt\(\s*'([a-z_]+\.[a-z0-9_.]+)'""")
KEY_LITERAL = re.compile(r"""'((?:console|audit|error|conn|signin|officer|talker|ptt|members|"""
                         r"""emergency|patch|replay|msg|app|info)\.[a-z0-9_]+)'""")
# (two parts only: a storage key such as 'ptt.console.tx' is not a catalogue key)

# Text a user reads, in markup: these attributes, and text nodes.
TEXT_ATTRS = ("aria-label", "placeholder", "title", "alt", "aria-valuetext")
# A raw key on screen: a catalogue prefix, a dot, a lower-case word (never in real text).
PREFIXES = sorted({k.split(".", 1)[0] for k in CATALOGUES["en"]})
RAW_KEY = re.compile(r"\b(?:" + "|".join(PREFIXES) + r")\.[a-z][a-z0-9_]*\b")


def page_keys(html: str) -> set[str]:
    keys = set(re.findall(r'data-i18n="([^"]+)"', html))
    for spec in re.findall(r'data-i18n-attr="([^"]+)"', html):
        keys |= {pair.split(":", 1)[1].strip() for pair in spec.split(";") if ":" in pair}
    return keys


def script_keys(js: str) -> set[str]:
    return set(T_CALL.findall(js)) | set(KEY_LITERAL.findall(js))


class Untranslated(HTMLParser):
    """Text nodes and text attributes of the markup that no data-i18n covers."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
                      "source", "track", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, bool]] = []  # (tag, its text comes from a key)
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        keyed_attrs = {pair.split(":", 1)[0].strip()
                       for pair in (a.get("data-i18n-attr") or "").split(";") if ":" in pair}
        for name in TEXT_ATTRS:
            value = a.get(name)
            if value and re.search("[A-Za-z]{2}", value) and name not in keyed_attrs:
                self.found.append(f"<{tag} {name}={value!r}>")
        if tag not in self.VOID:
            self.stack.append((tag, "data-i18n" in a))

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        text = data.strip()
        if not text or not re.search("[A-Za-z]{2}", text):
            return  # numbers (the page sizes), "0:00 / 0:00", symbols
        if self.stack and self.stack[-1][0] in ("script", "style"):
            return
        if not (self.stack and self.stack[-1][1]):
            self.found.append(text)


def test_console_and_audit_keys_are_in_every_catalogue() -> None:
    assert set(CATALOGUES) >= {"en", "id"}
    asked: set[str] = set()
    for name in PAGES:
        asked |= page_keys((WEB / name).read_text())
    for name in SCRIPTS:
        asked |= script_keys((WEB / "js" / name).read_text())
    assert {k for k in asked if k.startswith("console.")}, "the console uses no console.* key"
    assert {k for k in asked if k.startswith("audit.")}, "the audit page uses no audit.* key"
    for lang, cat in CATALOGUES.items():
        assert asked - set(cat) == set(), f"keys missing from {lang}.json"
    # Every console.* / audit.* key is in every language, translated, with its placeholders.
    ours = {k for cat in CATALOGUES.values() for k in cat if k.startswith(("console.", "audit."))}
    for lang, cat in CATALOGUES.items():
        assert ours - set(cat) == set(), f"keys missing from {lang}.json"
        for key in ours:
            assert isinstance(cat[key], str) and cat[key].strip(), (lang, key)
            assert set(re.findall(r"\{\w+\}", cat[key])) == set(
                re.findall(r"\{\w+\}", CATALOGUES["en"][key])), (lang, key)
    # ...and each is used by one of the pages (no dead keys).
    assert ours - asked == set()
    # Indonesian as the police read it.
    idn = CATALOGUES["id"]
    assert idn["console.signin_title"] == "Konsol Pusat Komando"
    assert idn["console.talkgroups"] == "Kanal"
    assert idn["emergency.button"] == "Darurat"
    assert idn["audit.recording"] == "Rekaman"
    # Words an English sentence of ours would leave behind in the Indonesian catalogue.
    english = re.compile(r"\b(the|and|is|are|of|on|with|not|you|your|talking|busy)\b")
    leftovers = {k: v for k, v in idn.items() if k.startswith(("console.", "audit."))
                 and english.search(re.sub(r"\{\w+\}", "", v))}
    assert leftovers == {}


@pytest.mark.parametrize("name", PAGES)
def test_markup_has_no_text_without_a_key(name: str) -> None:
    html = (WEB / name).read_text()
    parser = Untranslated()
    parser.feed(html)
    assert parser.found == []
    # The page offers the same language switch as the radio page.
    assert re.search(
        r'<select[^>]*data-language[^>]*data-i18n-attr="aria-label:app.language"', html)


def test_scripts_write_no_english_of_their_own() -> None:
    """What console.js and audit.js put on screen comes from t(): no English sentence or
    label is left in them as a string (comments aside)."""
    sentence = re.compile(r"""(['`])([A-Z][a-z]+(?: [a-z]+)+[^'`]*)\1""")
    for name in ("console.js", "audit.js", "command-centre.js", "unit-map.js"):
        js = (WEB / "js" / name).read_text()
        code = "\n".join(line for line in js.splitlines()
                         if not line.strip().startswith(("//", "*", "/*")))
        assert [m.group(2) for m in sentence.finditer(code)] == [], name
    text = (WEB / "js" / "command-text.js").read_text()
    start, end = text.index("export const CONSOLE_TEXT"), text.index("export const OFFICER_TEXT")
    console_part = text[start:end]
    assert not re.search(r"""['`][A-Z][a-z]+ [a-z]""", console_part)


# --- in a real browser ------------------------------------------------------------------------

async def visible_text(page: Any) -> str:
    """What is on screen, with the accessible names and placeholders that a reader hears."""
    return str(await page.evaluate("""() => {
        const attrs = [];
        for (const el of document.querySelectorAll('[aria-label], [placeholder], [title]')) {
            for (const a of ['aria-label', 'placeholder', 'title']) {
                if (el.hasAttribute(a)) attrs.push(el.getAttribute(a));
            }
        }
        return document.body.innerText + '\\n' + attrs.join('\\n') + '\\n' + document.title;
    }"""))


# Every toast a page shows, kept (a toast is gone after a few seconds).
TOAST_WATCH = """
window.toastsSeen = [];
new MutationObserver((records) => {
  for (const r of records) for (const n of r.addedNodes) {
    if (n.nodeType === 1 && n.classList.contains('toast')) window.toastsSeen.push(n.textContent);
    if (n.nodeType === 1 && n.id === 'toasts') {
      for (const c of n.children) window.toastsSeen.push(c.textContent);
    }
  }
}).observe(document, { childList: true, subtree: true });
"""


async def assert_no_raw_key(page: Any) -> None:
    text = await visible_text(page)
    assert RAW_KEY.findall(text) == [], text


@pytest.mark.browser
@pytest.mark.timeout(120)
async def test_console_in_bahasa_indonesia_then_english(
    server: RunningServer, playwright: Any, tmp_path: Path
) -> None:
    wav = silence_wav(tmp_path / "quiet.wav")
    async with chromium(playwright, tmp_path / "profile", wav, locale="id-ID") as ctx:
        await ctx.add_init_script(TOAST_WATCH)
        page, log = await open_page(ctx, server.url + "/console.html", "sup-id")
        await page.get_by_label("Nama pengguna").wait_for(timeout=10000)
        assert await page.evaluate("() => document.documentElement.lang") == "id"
        assert await page.title() == "Konsol PTT"
        await page.get_by_role("heading", name="Konsol Pusat Komando").wait_for(timeout=5000)
        # An officer is refused in words, by the page's own key.
        await page.get_by_label("Nama pengguna").fill("u1")
        await page.get_by_label("Kata sandi").fill("pw-u1")
        await page.get_by_role("button", name="Masuk").click()
        await page.get_by_role("alert").filter(
            has_text="Konsol ini untuk perwira pengawas dan petugas pengendali").wait_for(
                timeout=5000)
        await page.get_by_label("Nama pengguna").fill("sup")
        await page.get_by_label("Kata sandi").fill("pw-sup")
        await page.get_by_role("button", name="Masuk").click()
        await wait_js(page, "() => window.ptt && window.ptt.state().connected", 20)
        await wait_js(page, "() => window.ptt.state().joined.includes('CMD')", 15)

        await page.get_by_role("heading", name="Kanal").first.wait_for(timeout=5000)
        for text in ("Gabungan", "Kehadiran", "Gabungkan kanal", "Panggilan umum",
                     "Bicara di", "Unit"):
            await page.get_by_text(text, exact=True).first.wait_for(timeout=5000)
        panel = page.locator('.panel[data-tg="CMD"]')
        await panel.get_by_role("button", name="Hentikan paksa Command").wait_for(timeout=5000)
        await panel.get_by_role("button", name="Bisukan Command").wait_for(timeout=5000)
        await panel.get_by_text("Transmisi terakhir", exact=True).wait_for(timeout=5000)
        assert await page.locator("#who-role").inner_text() == "PENGAWAS"  # upper-cased by CSS
        await panel.locator(".what").filter(has_text="Kanal kosong").wait_for(timeout=5000)
        await page.locator("#ptt-hint").filter(has_text="Tekan untuk bicara").wait_for(timeout=5000)
        assert await page.get_by_role("button", name="Bicara", exact=True).count() >= 1
        # The server's code for the unknown talkgroup, in Indonesian words (not its English).
        # Listening to a talkgroup that does not exist: the server refuses with its code.
        await page.evaluate("() => window.ptt.listen('NOPE', true)")
        said = await wait_js(page, """() => (window.toastsSeen || []).find(
            (t) => t.startsWith('Tidak dapat bergabung ke NOPE'))""", 10)
        assert "Kanal itu tidak ada" in said  # error.unknown_talkgroup, by its code
        assert not any("no talkgroup" in t for t in await page.evaluate("() => window.toastsSeen"))
        await assert_no_raw_key(page)

        # Switch to English: markup and what the script wrote follow, and the choice stays.
        await page.get_by_label("Bahasa").select_option("en")
        await panel.get_by_role("button", name="Force release Command").wait_for(timeout=5000)
        await panel.locator(".what").filter(has_text="Idle").wait_for(timeout=5000)
        await page.get_by_role("heading", name="Talkgroups").first.wait_for(timeout=5000)
        await page.locator("#ptt-hint").filter(
            has_text="Hold the button or the Space key to talk.").wait_for(timeout=5000)
        assert await page.evaluate("() => document.documentElement.lang") == "en"
        assert await page.title() == "PTT Console"
        assert await page.get_by_label("All-call", exact=True).count() == 1
        await assert_no_raw_key(page)
        await page.reload()
        await wait_js(page, "() => window.ptt && window.ptt.state().connected", 20)
        await page.get_by_role("button", name="Sign out").wait_for(timeout=10000)
        await page.locator('.panel[data-tg="CMD"]').get_by_role(
            "button", name="Force release Command").wait_for(timeout=10000)
        assert await page.evaluate("() => document.documentElement.lang") == "en"
        assert log.csp_violations() == []
        assert [e for e in log.serious() if "pageerror" in e] == []


@pytest.fixture
async def recordings(server: RunningServer) -> float:
    from .test_audit_search import record

    t0 = time.time() - 600
    await record(server.config.data_dir, t0)
    return t0


STATE = "() => typeof (window.audit || {}).state === 'function' && window.audit.state()"


@pytest.mark.browser
@pytest.mark.timeout(120)
async def test_audit_page_in_bahasa_indonesia_then_english(
    server: RunningServer, recordings: float, playwright: Any, tmp_path: Path
) -> None:
    wav = silence_wav(tmp_path / "quiet.wav")
    async with chromium(playwright, tmp_path / "profile", wav, locale="id-ID") as ctx:
        page, log = await open_page(ctx, server.url + "/audit.html", "aud-id")
        await page.get_by_label("Nama pengguna").wait_for(timeout=10000)
        assert await page.evaluate("() => document.documentElement.lang") == "id"
        await page.get_by_role("heading", name="Rekaman dan audit").wait_for(timeout=5000)
        await page.get_by_label("Nama pengguna").fill("u1")
        await page.get_by_label("Kata sandi").fill("pw-u1")
        await page.get_by_role("button", name="Masuk").click()
        await page.get_by_role("alert").filter(
            has_text="Halaman ini untuk auditor dan administrator.").wait_for(timeout=5000)
        await page.get_by_label("Nama pengguna").fill("aud")
        await page.get_by_label("Kata sandi").fill("pw-aud")
        await page.get_by_role("button", name="Masuk").click()
        await wait_js(page, f"() => ({STATE})() && ({STATE})().results.length >= 6", 15)

        for name in ("Cari transmisi", "Pemutaran", "Keutuhan catatan audit"):
            await page.get_by_role("heading", name=name).wait_for(timeout=5000)
        await page.get_by_label("Kanal", exact=True).wait_for(timeout=5000)
        assert await page.get_by_label("Kanal", exact=True).get_attribute(
            "placeholder") == "ID atau nama apa saja"
        await page.get_by_role("button", name="Cari", exact=True).wait_for(timeout=5000)
        await page.get_by_role("button", name="Periksa sekarang").wait_for(timeout=5000)
        row = page.locator('#results-body tr[data-id="tx-patch-0001-b"]')
        assert "2 salinan" in (await row.inner_text()).lower()
        assert await row.locator(".c-end").inner_text() == "dilepas"
        await row.get_by_role("button", name=re.compile("^Putar Unit 3")).wait_for(timeout=5000)
        await page.get_by_role("columnheader", name="Durasi").wait_for(timeout=5000)
        # Played: the player's labels in Indonesian.
        await page.locator('#results-body tr[data-id="tx-alpha-0001"]').get_by_role(
            "button", name=re.compile("^Putar")).click()
        await page.locator("#player-meta").filter(has_text="Rekaman").wait_for(timeout=5000)
        assert "Kanal" in await page.locator("#player-meta").text_content()
        # The ledger's verification, in words.
        await page.get_by_role("button", name="Periksa sekarang").click()
        await page.locator("#verify-result").filter(has_text="Utuh").wait_for(timeout=15000)

        # A refused search: the server's code (bad_request) in Indonesian words.
        await page.evaluate("""() => {
            const o = document.createElement('option');
            o.value = o.textContent = '100000';
            document.querySelector('#f-limit').append(o);
        }""")
        await page.get_by_label("Per halaman").select_option("100000")
        await page.get_by_role("button", name="Cari", exact=True).click()
        await page.locator(".toast").filter(
            has_text="Pencarian: periksa isian pencarian").wait_for(timeout=10000)
        await page.locator("#results-status").filter(has_text="Pencarian gagal.").wait_for(
            timeout=5000)
        await assert_no_raw_key(page)

        # English: the table, the player and the status line are written again.
        await page.get_by_label("Bahasa").select_option("en")
        await page.get_by_role("heading", name="Search transmissions").wait_for(timeout=5000)
        await page.locator("#results-status").filter(has_text="The search failed.").wait_for(
            timeout=5000)
        assert "2 copies" in (await row.inner_text()).lower()
        assert await row.locator(".c-end").inner_text() == "released"
        assert "Talkgroup" in await page.locator("#player-meta").text_content()
        await page.locator("#verify-result").filter(has_text="Intact").wait_for(timeout=5000)
        await page.get_by_role("button", name="Export these results (zip)").wait_for(timeout=5000)
        assert await page.evaluate("() => document.documentElement.lang") == "en"
        await assert_no_raw_key(page)
        await page.reload()
        await page.get_by_role("button", name="Sign out").wait_for(timeout=10000)
        await page.get_by_role("button", name="Search", exact=True).wait_for(timeout=5000)
        assert log.csp_violations() == []
        assert [e for e in log.serious() if "pageerror" in e] == []
