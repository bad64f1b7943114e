"""The Janus baseline: a Janus gateway (Debian package `janus`) with only its VideoRoom plugin
and HTTP transport, bound to 127.0.0.1, configured in a temporary directory; and a client of
its HTTP API for the load generator (one Janus session per generator process, one handle per
peer, events by long poll).

Janus gathers ICE candidates on the interfaces it is told to: here only `lo`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from .env import HOST, free_port, taskset, wait_http

ROOM = 1234
LIB_DIRS = [Path("/usr/lib/x86_64-linux-gnu/janus"), Path("/usr/lib/aarch64-linux-gnu/janus"),
            Path("/usr/lib/janus")]


def janus_binary() -> str | None:
    return shutil.which("janus")


def ensure_installed() -> str | None:
    """Install the Debian package if missing (root only). None if ready, else the reason."""
    if janus_binary():
        return None
    if shutil.which("apt-get") is None:
        return "janus is not installed and apt-get is not available"
    import os

    if os.geteuid() != 0:
        return "janus is not installed (apt-get install janus needs root)"
    for args in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "janus"]):
        r = subprocess.run(args, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if r.returncode != 0:
            return f"`{' '.join(args)}` failed: {r.stderr.strip()[-300:]}"
    return None if janus_binary() else "janus still missing after apt-get install"


def _lib_dir() -> Path | None:
    for d in LIB_DIRS:
        if (d / "plugins" / "libjanus_videoroom.so").exists():
            return d
    return None


class JanusServer:
    def __init__(self, root: Path, event_loops: int = 0, cpus: set[int] | None = None) -> None:
        # event_loops = 0: Janus's default, one event loop thread per handle (per listener);
        # N > 0: N shared loops, handles assigned round robin, its best mode for many
        # subscribers of one publisher (far fewer threads and wake-ups).
        self.root = root / (f"janus-el{event_loops}" if event_loops else "janus")
        self.cpus = cpus
        self.port = free_port()
        self.event_loops = event_loops
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "janus.log"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/janus"

    def _configure(self) -> None:
        lib = _lib_dir()
        if lib is None:
            raise RuntimeError("Janus plugins not found")
        conf = self.root / "conf"
        for sub, names in (("plugins", ["libjanus_videoroom.so"]),
                           ("transports", ["libjanus_http.so"]), ("events", []), ("loggers", [])):
            d = self.root / sub
            d.mkdir(parents=True, exist_ok=True)
            for name in names:
                (d / name).symlink_to(lib / sub / name)
        conf.mkdir(parents=True, exist_ok=True)
        loops = f"\tevent_loops = {self.event_loops}\n" if self.event_loops else ""
        (conf / "janus.jcfg").write_text(
            "general: {\n"
            f'\tconfigs_folder = "{conf}"\n'
            f'\tplugins_folder = "{self.root / "plugins"}"\n'
            f'\ttransports_folder = "{self.root / "transports"}"\n'
            f'\tevents_folder = "{self.root / "events"}"\n'
            f'\tloggers_folder = "{self.root / "loggers"}"\n'
            "\tdebug_level = 3\n"
            "\tsession_timeout = 0\n"
            '\tserver_name = "ptt-bench"\n'
            f"{loops}"
            "}\n"
            "certificates: {\n}\n"
            "media: {\n\tno_media_timer = 60\n}\n"
            "nat: {\n"
            "\tnice_debug = false\n"
            '\tice_enforce_list = "pttj0"\n'
            "\tignore_mdns = true\n"
            "}\n"
            "plugins: {\n}\ntransports: {\n}\nloggers: {\n}\nevents: {\n}\n"
        )
        (conf / "janus.transport.http.jcfg").write_text(
            "general: {\n"
            '\tjson = "compact"\n'
            '\tbase_path = "/janus"\n'
            "\thttp = true\n"
            f"\tport = {self.port}\n"
            f'\tip = "{HOST}"\n'
            "\thttps = false\n"
            "}\n"
            "admin: {\n\tadmin_http = false\n\tadmin_https = false\n}\n"
            "cors: {\n}\n"
        )
        (conf / "janus.plugin.videoroom.jcfg").write_text(
            "general: {\n}\n"
            f"room-{ROOM}: {{\n"
            '\tdescription = "ptt bench (audio only)"\n'
            "\tpublishers = 1\n"
            '\taudiocodec = "opus"\n'
            "\trecord = false\n"
            "}\n"
        )

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._configure()
        exe = janus_binary()
        assert exe is not None
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [*taskset(self.cpus), exe, "--configs-folder", str(self.root / "conf"),
                 "--config", str(self.root / "conf" / "janus.jcfg"),
                 "--disable-colors", "--ice-enforce-list", "pttj0"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        wait_http(self.url + "/info", self.proc, self.log_path)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return int(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class JanusError(Exception):
    pass


class JanusClient:
    """One Janus session; requests by transaction, plugin events routed by handle."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url.rstrip("/")
        self.http = http
        self.session: int | None = None
        self._tx = itertools.count(1)
        self._events: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._poller: asyncio.Task[None] | None = None

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {**body, "transaction": f"t{next(self._tx)}"}
        async with self.http.post(self.url + path, json=body) as r:
            reply: dict[str, Any] = await r.json(content_type=None)
        if reply.get("janus") == "error":
            raise JanusError(str(reply.get("error")))
        return reply

    async def start(self) -> None:
        reply = await self._post("", {"janus": "create"})
        self.session = int(reply["data"]["id"])
        self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            try:
                async with self.http.get(f"{self.url}/{self.session}?maxev=50") as r:
                    events = await r.json(content_type=None)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.2)
                continue
            if isinstance(events, dict):
                events = [events]
            for ev in events:
                sender = ev.get("sender")
                if sender is not None and ev.get("janus") == "event":
                    self._queue(int(sender)).put_nowait(ev)

    def _queue(self, handle: int) -> asyncio.Queue[dict[str, Any]]:
        q = self._events.get(handle)
        if q is None:
            q = self._events[handle] = asyncio.Queue()
        return q

    async def attach(self) -> int:
        reply = await self._post(f"/{self.session}",
                                 {"janus": "attach", "plugin": "janus.plugin.videoroom"})
        handle = int(reply["data"]["id"])
        self._queue(handle)
        return handle

    async def _message(self, handle: int, body: dict[str, Any],
                       jsep: dict[str, Any] | None = None, timeout: float = 20.0,
                       ) -> dict[str, Any]:
        msg: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            msg["jsep"] = jsep
        reply = await self._post(f"/{self.session}/{handle}", msg)
        if reply.get("janus") == "success":  # synchronous plugin answer
            return reply
        ev = await asyncio.wait_for(self._queue(handle).get(), timeout)
        data = ev.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{data.get('error_code')}: {data.get('error')}")
        return ev

    async def publish(self, handle: int, room: int, offer_sdp: str) -> tuple[int, str]:
        """Join as the room's publisher and publish audio; (feed id, answer SDP)."""
        ev = await self._message(handle, {"request": "join", "room": room,
                                          "ptype": "publisher", "display": "talker"})
        feed = int(ev["plugindata"]["data"]["id"])
        ev = await self._message(handle, {"request": "publish", "audio": True, "video": False},
                                 jsep={"type": "offer", "sdp": offer_sdp})
        return feed, str(ev["jsep"]["sdp"])

    async def subscribe(self, handle: int, room: int, feed: int) -> str:
        """Join as a subscriber of `feed`; Janus's offer SDP."""
        ev = await self._message(handle, {"request": "join", "room": room,
                                          "ptype": "subscriber", "streams": [{"feed": feed}]})
        return str(ev["jsep"]["sdp"])

    async def start_subscriber(self, handle: int, room: int, answer_sdp: str) -> None:
        await self._message(handle, {"request": "start", "room": room},
                            jsep={"type": "answer", "sdp": answer_sdp})

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(BaseException):
                await self._poller
        if self.session is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._post(f"/{self.session}", {"janus": "destroy"}), 5)
