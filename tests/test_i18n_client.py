"""The radio client (ptt-client.js, shared by the officer page and the console) and the modules
beside it speak from the catalogues: no English sentence left in their code, every key they
name in every catalogue, a text for every error code the server sends; and in a real Chromium
an officer page in Bahasa Indonesia that loses its connection says so in Indonesian, keeps an
emergency pressed meanwhile with an Indonesian note (re-said in English when the language is
switched), refuses a join in Indonesian words rather than the server's English message, and
joins names with "dan"."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from .browser_support import PHONE, chromium, open_page, silence_wav, wait_connected, wait_js
from .conftest import RunningServer
from .tcpcut import CuttableProxy

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "client_web"
CATALOGUES = {p.stem: json.loads(p.read_text()) for p in sorted((WEB / "i18n").glob("*.json"))}
# The radio and the modules it is made of (the pages' own scripts have their own tests).
MODULES = ["ptt-client.js", "signaling.js", "rtc.js", "tones.js", "ptt-button.js", "pwa.js",
           "auth.js", "replay.js"]
SOURCES = {name: (WEB / "js" / name).read_text() for name in MODULES}

STRING = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"|`(?:[^`\\]|\\.)*`""")
WORDS = re.compile(r"[A-Za-z]{2,}[ ,;:]+[A-Za-z]{2,}")  # two words: a phrase, not an identifier
KEY = re.compile(r"""'((?:client|error)\.[a-z0-9_]+)'""")


def code_lines(text: str) -> list[tuple[int, str]]:
    """The script's lines without comments (// to the end of a line outside strings, /* */)."""
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        code = []
        pos = 0
        while pos < len(line):
            m = STRING.match(line, pos)
            if m:
                code.append(m.group(0))
                pos = m.end()
            elif line.startswith("//", pos):
                break
            else:
                code.append(line[pos])
                pos += 1
        out.append((n, "".join(code)))
    return out


def test_no_english_sentences_in_the_radio_modules() -> None:
    found = []
    for name, text in SOURCES.items():
        for n, line in code_lines(text):
            # Diagnostics for developers (the console log, an internal Error) may stay English.
            if re.search(r"\bconsole\.(log|info|warn|error|debug)\(|new Error\(", line):
                continue
            for m in STRING.finditer(line):
                lit = m.group(0)
                if re.search(r"\bclass(Name)?\s*[:=][^,]*$", line[:m.start()]):
                    continue  # CSS class names
                body = re.sub(r"\$\{[^}]*\}", " ", lit[1:-1])
                if WORDS.search(body):
                    found.append(f"{name}:{n}: {lit}")
    assert found == [], "user-facing English outside the catalogues"


def test_notices_and_busy_reasons_are_said_by_key() -> None:
    src = SOURCES["ptt-client.js"]
    # A notice names a catalogue key (or an expression that is one), never words.
    literal_notices = re.findall(r"""_notice\(\s*(['"`][^'"`]*['"`])""", src)
    assert literal_notices, "no notice found: the check is looking at the wrong thing"
    keyed = re.compile(r"""['"`](client|error)\.[a-z0-9_${}]+['"`]""")
    assert [n for n in literal_notices if not keyed.fullmatch(n)] == []
    # Texts that stay on screen are looked up when read (busyState / emergencyNote), not kept.
    assert not re.search(r"\breason:\s*['`\"]", src)
    assert not re.search(r"\btext:\s*['`\"]", src)
    assert "this.micError =" not in src
    # The server's own (English) message reaches the console log only.
    on_error = src[src.index("  _on_error(msg) {"):src.index("  // -- state")]
    shown = [ln for ln in on_error.splitlines() if "msg.message" in ln and "console.warn" not in ln]
    read_for_data = ("exec(msg.message", "_patchError(code, msg.message)")
    assert all(any(r in ln for r in read_for_data) for ln in shown), shown


def test_every_client_key_is_in_every_catalogue() -> None:
    named = set()
    for text in SOURCES.values():
        named |= set(KEY.findall(text))
        named |= {f"client.{k}" for k in re.findall(r"""\bt\(\s*'client\.([a-z0-9_]+)'""", text)}
    assert {"client.offline", "client.channel_busy", "client.cannot_join"} <= named
    for lang, cat in CATALOGUES.items():
        assert named - set(cat) == set(), lang
    id_ = CATALOGUES["id"]
    assert id_["client.offline"] == id_["conn.reconnecting"]  # one wording on one page
    assert id_["client.channel_busy"] == "Kanal sibuk."
    assert "darurat" in id_["client.emergency_waiting"].lower()
    assert "mikrofon" in id_["client.mic_refused"].lower()


def server_error_codes() -> set[str]:
    """Every code the server can put in an `error` message: the protocol's table of stable
    codes, the signaling codes, the floor's and the patches' error classes, and the module
    constants the sessions raise with."""
    from ptt_server.control import floor_store
    from ptt_server.core import floor_types
    from ptt_server.core.errors import Code
    from ptt_server.media import ice
    from ptt_server.service import ws_limits
    from ptt_server.signaling import messaging, supervision

    doc = (ROOT / "docs" / "protocol.md").read_text()
    table = doc[doc.index("## Errors"):doc.index("## Limits")]
    codes = {c for row in table.splitlines() if row.startswith("| `")
             for c in re.findall(r"`([a-z_]+)`", row.split("|")[1])}
    codes |= {c.value for c in Code}
    for module in (floor_types, floor_store):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, floor_types.FloorError):
                codes.add(cls.code)
    codes |= {ice.MEDIA_PORTS_EXHAUSTED, supervision.NOT_EMERGENCY, messaging.UNKNOWN_UNIT,
              messaging.UNKNOWN_STATUS, messaging.UNKNOWN_MESSAGE, ws_limits.TOO_MANY_SESSIONS,
              ws_limits.SERVER_FULL, ws_limits.TOO_MANY_CONNECTIONS, ws_limits.ORIGIN_FORBIDDEN}
    return codes


def test_every_server_error_code_has_words() -> None:
    codes = server_error_codes()
    assert {"not_joined", "patch_busy", "media_ports_exhausted", "token_malformed"} <= codes
    for lang, cat in CATALOGUES.items():
        missing = {c for c in codes if f"error.{c}" not in cat}
        assert missing == set(), lang
    assert CATALOGUES["id"]["error.unknown_talkgroup"] == "Kanal itu tidak ada."



@pytest.mark.browser
@pytest.mark.timeout(90)
async def test_officer_radio_says_offline_emergency_and_refusals_in_bahasa_indonesia(
    server: RunningServer, playwright: Any, tmp_path: Path
) -> None:
    target = urlsplit(server.url)
    proxy = await CuttableProxy(target.hostname or "127.0.0.1", target.port or 80).start()
    wav = silence_wav(tmp_path / "quiet.wav")
    try:
        await officer_in_bahasa_indonesia(server, proxy, playwright, tmp_path, wav)
    finally:
        await proxy.close()


async def officer_in_bahasa_indonesia(
    server: RunningServer, proxy: CuttableProxy, playwright: Any, tmp_path: Path, wav: Path
) -> None:
    id_, en = CATALOGUES["id"], CATALOGUES["en"]
    async with chromium(playwright, tmp_path / "profile", wav, locale="id-ID") as ctx:
        page, log = await open_page(ctx, f"{proxy.url}/#token={server.token('u1')}", "u1-id",
                                    viewport=PHONE)
        await wait_connected(page, ["A"])
        assert await page.evaluate("() => document.documentElement.lang") == "id"

        # Lists are joined the Indonesian way.
        names = await page.evaluate("""async () => {
            const m = await import('/js/ptt-client.js');
            return [m.listNames(['Alpha', 'Bravo']), m.listNames(['Alpha', 'Bravo', 'Command'])];
        }""")
        assert names == ["Alpha dan Bravo", "Alpha, Bravo, dan Command"]

        # A refused join: Indonesian words for the code, not the server's English message.
        await page.evaluate("() => window.ptt.client.join('ZZ')")
        refused = id_["client.cannot_join"].format(tg="ZZ", reason=id_["error.unknown_talkgroup"])
        toast = page.locator("#toasts .toast").filter(has_text=refused)
        await toast.wait_for(timeout=10000)
        assert "no talkgroup" not in (await page.locator("#toasts").inner_text())

        # The connection is lost: the status under the display says so in Indonesian.
        proxy.cut_link()
        await wait_js(page, "(text) => document.querySelector('#link-status').textContent === text",
                      10, id_["client.offline"])
        # An emergency pressed meanwhile is kept, and the officer is told so.
        await page.get_by_role("button", name=re.compile(f"^{id_['emergency.button']}")).click()
        await page.get_by_role("button", name=id_["emergency.arm"]).click()
        note = page.locator("#emergency-status")
        waiting_id = id_["client.emergency_waiting_at"].split("{at}")[0]
        await note.filter(has_text=waiting_id).wait_for(timeout=5000)
        # Switched to English, the note on screen follows (it is looked up when shown).
        await page.get_by_label(id_["app.language"]).select_option("en")
        await note.filter(has_text=en["client.emergency_waiting_at"].split("{at}")[0]).wait_for(
            timeout=5000)
        await wait_js(page, "(text) => document.querySelector('#link-status').textContent === text",
                      5, en["client.offline"])
        await page.get_by_label(en["app.language"]).select_option("id")
        await note.filter(has_text=waiting_id).wait_for(timeout=5000)

        # Back: the emergency goes, and the note says when it was pressed, in Indonesian.
        proxy.restore()
        sent_id = id_["client.emergency_sent_at"].split("{at}")[0]
        await note.filter(has_text=sent_id).wait_for(timeout=15000)
        await wait_js(page, "() => document.querySelector('#link-status').textContent === ''", 10)
        toasts = await page.locator("#toasts").inner_text()
        english = [en[k].split("{")[0] for k in ("client.offline", "client.emergency_waiting",
                                                  "client.cannot_join")]
        assert not any(e in toasts for e in english), toasts
        assert log.csp_violations() == []
