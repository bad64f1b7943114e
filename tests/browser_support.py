"""Helpers for driving the web clients in a real headless Chromium (Playwright, async API).

Used by tests/test_browser.py and by client_web/tools/screenshots.py. The Debian `chromium`
is launched directly (never `playwright install`); every browser gets a fresh profile and a
fake microphone playing a WAV file. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RATE = 48000

# Playwright's own --disable-features list must be repeated: only the last flag counts.
BASE_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--metrics-recording-only",
    "--allow-loopback-in-peer-connection",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    # Keep timers and media running in pages that are not in front (several pages per browser).
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]


def chromium_path() -> str | None:
    """The system Chromium (PTT_CHROMIUM overrides), or None when there is none."""
    explicit = os.environ.get("PTT_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def chromium_flags(fake_audio: Path) -> list[str]:
    return [*BASE_FLAGS, f"--use-file-for-fake-audio-capture={fake_audio.resolve()}"]


def silence_wav(path: Path, seconds: float = 2.0) -> Path:
    """A silent mono 48 kHz 16-bit WAV (the fake microphone of listeners)."""
    frames = int(RATE * seconds)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(b"\x00\x00" * frames)
    return path


def tone_wav(path: Path, freq: float, seconds: float = 10.0, amplitude: float = 0.3) -> Path:
    """A mono 48 kHz sine WAV: a fake microphone whose audio a listener can tell apart from
    another's by frequency (AudioEngine.outputSpectrum)."""
    import numpy as np

    t = np.arange(int(RATE * seconds)) / RATE
    pcm = (amplitude * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return path


async def output_db(page: Any, freqs: list[float]) -> list[float]:
    """What reaches a radio page's speaker at each frequency (dB; very low when silent)."""
    values = await page.evaluate("(f) => window.ptt.outputSpectrum(f)", freqs)
    return [float(v) if v is not None else -1000.0 for v in values]


@dataclass
class PageLog:
    """Console errors, uncaught exceptions and CSP violations seen on a page."""

    name: str
    errors: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        def on_console(msg: Any) -> None:
            text = f"[{msg.type}] {msg.text}"
            self.messages.append(text)
            if msg.type == "error":
                self.errors.append(text)

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"[pageerror] {exc}"))

    def csp_violations(self) -> list[str]:
        return [m for m in self.errors if "Content Security Policy" in m]

    def serious(self) -> list[str]:
        """Errors that are not expected noise (a missing favicon, refused media on purpose)."""
        ignore = ("favicon", "net::ERR_ABORTED")
        return [e for e in self.errors if not any(i in e for i in ignore)]


@contextlib.asynccontextmanager
async def chromium(
    playwright: Any, profile_dir: Path, fake_audio: Path, *, viewport: dict[str, int] | None = None,
    **kw: Any,
) -> AsyncIterator[Any]:
    """A persistent Chromium context with a fresh profile and `fake_audio` as microphone."""
    executable = chromium_path()
    if executable is None:
        raise RuntimeError("no chromium executable found")
    profile_dir.mkdir(parents=True, exist_ok=True)
    context = await playwright.chromium.launch_persistent_context(
        str(profile_dir), executable_path=executable, headless=True,
        args=chromium_flags(fake_audio), ignore_default_args=["--mute-audio"],
        viewport=viewport or {"width": 1280, "height": 860},
        permissions=["microphone"], **kw,
    )
    try:
        yield context
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(context.close(), 15)


async def open_page(
    context: Any, url: str, name: str, *, viewport: dict[str, int] | None = None
) -> tuple[Any, PageLog]:
    page = await context.new_page()
    if viewport:
        await page.set_viewport_size(viewport)
    log = PageLog(name)
    log.attach(page)
    await page.goto(url, wait_until="domcontentloaded")
    return page, log


async def ptt_state(page: Any) -> dict[str, Any]:
    """window.ptt.state() of a radio page (officer or console)."""
    return dict(await page.evaluate("() => window.ptt ? window.ptt.state() : null") or {})


async def wait_js(page: Any, expression: str, timeout_s: float = 15.0, arg: Any = None) -> Any:
    """Wait until the JS `expression` (a function of `arg`) is truthy; returns its value."""
    handle = await page.wait_for_function(expression, arg=arg, timeout=timeout_s * 1000,
                                          polling=100)
    return await handle.json_value()


async def wait_connected(page: Any, talkgroups: list[str], timeout_s: float = 20.0) -> None:
    """Signaling and media up, and the given talkgroups joined with their downlink playing."""
    await wait_js(
        page,
        """(tgs) => {
            if (!window.ptt || typeof window.ptt.state !== "function") return false;
            const s = window.ptt.state();
            return s.connected && tgs.every((t) => s.joined.includes(t))
                && tgs.every((t) => window.ptt.client.engine.channels.has(t));
        }""",
        timeout_s, talkgroups,
    )


async def scan_with_priority(page: Any, talkgroup: str, scanned: str) -> None:
    """On an officer page: talk on `talkgroup`, scan on, `scanned` listened to as the
    priority talkgroup (by the page's own controls), and both joined and playing."""
    await page.evaluate("(tg) => window.ptt.selectTalkgroup(tg)", talkgroup)
    await page.locator('label[for="scan-on"]').click()
    await page.locator(f'label[for="scan-{scanned}-listen"]').click()
    await page.locator(f'label[for="scan-{scanned}-priority"]').click()
    await wait_connected(page, [talkgroup, scanned])


# Levels read from a page's WebAudio analyser (RMS, 0..1).
SILENCE = 0.003  # a silent downlink stays far below this
SPEECH = 0.02  # ...and speech peaks far above
PHONE = {"width": 390, "height": 844}


# --- a real server in a subprocess (it can be stopped and started again on the same port) ---
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402


@dataclass
class ServerProcess:
    """`ptt-server serve` as a child process, plain HTTP on 127.0.0.1, serving the web pages
    itself. A test stops it as an operator would (SIGTERM: server_stopping, close 1001) and
    starts it again on the same port and data directory. Its output goes to a file (a pipe
    nobody reads would block a talkative server)."""

    data_dir: Path
    redis_url: str
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ptt_server.app.cli", "--data-dir", str(self.data_dir),
                 "--log-format", "text", "serve", "--http", "--host", "127.0.0.1",
                 "--port", str(self.port), "--redis-url", self.redis_url, "--workers", "1",
                 "--node-id", f"node-{self.starts}", "--ice-address", "127.0.0.1",
                 "--ice-allow-network", "127.0.0.0/8"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def wait_healthy(self, timeout_s: float = 30.0) -> float:
        """Poll /healthz until it answers 200; returns time.monotonic() of that answer."""
        import aiohttp

        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    raise RuntimeError(f"server exited:\n{self.log_tail()}")
                try:
                    async with http.get(self.url + "/healthz") as r:
                        if r.status == 200:
                            return time.monotonic()
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.url} not healthy:\n{self.log_tail()}")

    async def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM and wait for the exit (SIGKILL if it does not come); the exit code."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc is not None else None
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout_s)
        except TimeoutError:
            proc.kill()
            await asyncio.to_thread(proc.wait)
            return None

    def token(self, name: str, ttl_s: int = 900) -> str:
        """A token the server accepts (its signing key is in the data directory)."""
        from ptt_server.identity.auth import TokenAuthority, load_or_create_signing_key
        from ptt_server.identity.directory import Directory

        user = Directory(self.data_dir / "directory.sqlite3").get_user(name)
        assert user is not None, name
        auth = TokenAuthority(load_or_create_signing_key(self.data_dir), issuer="ptt-server",
                              audience="ptt")
        return str(auth.issue(user, ttl_s))


# Records every text the page's connection status (#link-status) shows, with Date.now(): the
# offline state may be on screen for only a tenth of a second when the page is quick.
WATCH_LINK_STATUS = """() => {
    const el = document.querySelector('#link-status');
    window.__linkLog = [{ t: Date.now(), text: el.textContent }];
    new MutationObserver(() => window.__linkLog.push({ t: Date.now(), text: el.textContent }))
        .observe(el, { childList: true, characterData: true, subtree: true });
}"""


async def link_log(page: Any) -> list[dict[str, Any]]:
    """What WATCH_LINK_STATUS recorded: [{t (ms since the epoch), text}]."""
    return list(await page.evaluate("() => window.__linkLog || []"))
