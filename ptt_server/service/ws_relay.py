"""A resume that reaches another worker of this server: carried to the worker that has it.

The workers of one server share its port (SO_REUSEPORT), so the kernel, not the phone, picks
the worker each new connection reaches: a phone back from a dead spot found the worker that
kept its session only one time in N, and otherwise started a new session and lost what it had
missed. The session stays where it is, with its numbered outbox and its peer connection (whose
ICE sockets belong to that worker, so media is not affected at all). The worker the phone
reached asks its siblings, each listening on a Unix socket in the data directory, to resume
the session; on that socket a worker only ever resumes (one that does not have the session
refuses, `resume_unknown`, instead of opening a new one), and the sibling checks the phone's
token itself. The worker that asked then carries the frames both ways until either side ends:

* the phone vanishes (no pong, a reset): the owner's connection is aborted, not closed, so the
  owner keeps the session for its grace as for any dead spot;
* the phone closes normally: the owner gets the same close code and ends the session;
* the owner closes (server stopping, another connection took the session over): the phone
  gets the same close code, or, if the owner's connection was lost, an aborted connection
  (it reconnects and resumes at once).

Only workers of one server (one machine, one data directory) relay: a session on another
node is not found, and the reconnection starts a new session there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType, web

from ptt_server.core import protocol as p
from ptt_server.core.config import Config
from ptt_server.service import ws_liveness

log = logging.getLogger("ptt.ws")

# The phone's address, as the worker it reached saw it (for the owner's logs and limits).
RELAY_FOR = "X-PTT-Relay-For"
RESUME_UNKNOWN = "resume_unknown"
CLOSE_RESUME_UNKNOWN = 4404
FIND_TIMEOUT_S = 1.0  # for all siblings together: the phone is waiting to be back on the air
LOST_CODES = (None, 1006)
# The close code a relaying worker gives the owner for a phone that vanished (a private-use
# code, RFC 6455 section 7.4.2): on a Unix socket there is no reset to tell it apart from a
# goodbye, and the owner must keep the session for its grace.
RELAY_LOST = 4000
CLOSE_WAIT_S = 1.0
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux, with its terminating NUL


def socket_paths(data_dir: Path, count: int) -> tuple[Path, ...]:
    """Where each of `count` workers listens for its siblings; () if the path would not fit
    in a Unix socket address (relaying is then off, and resumes work as without it)."""
    paths = tuple(data_dir / "run" / f"worker-{i}.sock" for i in range(count))
    if any(len(str(path).encode()) > MAX_SOCKET_PATH for path in paths):
        log.warning("data directory path too long for worker sockets; resumes are not "
                    "relayed between workers", extra={"fields": {"data_dir": str(data_dir)}})
        return ()
    return paths


def own_socket(config: Config) -> Path | None:
    if 0 <= config.worker_index < len(config.worker_sockets):
        return config.worker_sockets[config.worker_index]
    return None


async def start_site(runner: web.AppRunner, config: Config) -> None:
    """Listen on this worker's Unix socket, if it has one (several workers)."""
    path = own_socket(config)
    if path is None:
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by this worker's predecessor (killed, and started again)
    site = web.UnixSite(runner, str(path))
    await site.start()
    path.chmod(0o600)


def is_internal(request: web.Request) -> bool:
    """Did this request come over a worker's Unix socket (from a sibling)?"""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    return sock is not None and sock.family == socket.AF_UNIX


class Relay:
    """One phone's connection carried to the sibling worker that has its session."""

    def __init__(self, http: aiohttp.ClientSession, owner: aiohttp.ClientWebSocketResponse,
                 welcome: str, path: Path) -> None:
        self.http = http
        self.owner = owner
        self.welcome = welcome  # the owner's first message, for the phone
        self.path = path

    async def run(self, phone: web.WebSocketResponse, watch: ws_liveness.Watch) -> None:
        """Carry frames until one side ends; `watch`: the phone's connection, pinged by this
        worker (service/ws_liveness.py)."""
        await phone.send_str(self.welcome)
        up = asyncio.create_task(self._carry_up(phone, watch))
        down = asyncio.create_task(self._carry_down(phone))
        try:
            done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            if up in done:
                lost = watch.lost or phone.close_code in LOST_CODES
                await self._close_owner(RELAY_LOST if lost else phone.close_code or 1000)
            elif self.owner.close_code in LOST_CODES:
                watch.transport.abort()  # as the owner saw it: gone, not said goodbye
            else:
                await phone.close(code=self.owner.close_code or 1000)
        finally:
            # Cancelled (this worker is stopping): to the owner, the phone is in a dead spot;
            # it reconnects and resumes there, through another worker or directly.
            await self._close_owner(RELAY_LOST)
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            await self.http.close()

    async def _close_owner(self, code: int) -> None:
        if not self.owner.closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_WAIT_S):
                    await self.owner.close(code=code)

    async def _carry_up(self, phone: web.WebSocketResponse, watch: ws_liveness.Watch) -> None:
        while True:
            msg = await ws_liveness.receive(phone, watch)
            if msg.type == WSMsgType.TEXT:
                await self.owner.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await self.owner.send_bytes(msg.data)  # the owner answers it as usual
            else:
                break

    async def _carry_down(self, phone: web.WebSocketResponse) -> None:
        async for msg in self.owner:
            if msg.type != WSMsgType.TEXT:
                break
            await phone.send_str(msg.data)


async def find_owner(config: Config, auth: p.Auth, remote: str) -> Relay | None:
    """The sibling worker that resumes the session `auth` names, connected and welcomed; None
    if no sibling has it (or none answers in time)."""
    if not auth.resume_token or not config.worker_sockets:
        return None
    text = json.dumps({"type": "auth", "token": auth.token,
                       "resume_token": auth.resume_token, "received": auth.received})
    try:
        async with asyncio.timeout(FIND_TIMEOUT_S):
            for i, path in enumerate(config.worker_sockets):
                if i == config.worker_index or not path.exists():
                    continue
                relay = await _try(path, text, remote)
                if relay is not None:
                    return relay
    except TimeoutError:
        log.warning("no sibling worker answered a resume in time")
    return None


async def _try(path: Path, text: str, remote: str) -> Relay | None:
    http = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path)))
    relay: Relay | None = None
    try:
        # No heartbeat of our own: the owner pings this connection and aiohttp answers.
        owner = await http.ws_connect("http://worker/ws", headers={RELAY_FOR: remote},
                                      max_msg_size=0)
        await owner.send_str(text)
        first = await owner.receive()
        if first.type == WSMsgType.TEXT and _resumed(first.data):
            relay = Relay(http, owner, first.data, path)
            return relay
        await owner.close()
        return None
    except (OSError, aiohttp.ClientError):
        return None  # a worker being started again, or gone: its socket is stale
    finally:
        if relay is None:
            await http.close()


def _resumed(text: str) -> bool:
    try:
        first = json.loads(text)
    except ValueError:
        return False
    return (isinstance(first, dict) and first.get("type") == "welcome"
            and first.get("resumed") is True)
