"""TURN with time-limited credentials: the server mints them, a real coturn accepts them.

coturn runs on loopback with `use-auth-secret` (the TURN REST API scheme of
draft-uberti-behave-turn-rest); clients fetch credentials from GET /api/ice-servers and then
gather relayed candidates only (RFC 8656; the relay-only policy of RFC 8445's gathering, as a
browser's iceTransportPolicy "relay"), so their media can only reach the server through coturn.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from aioice import stun
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)

from client_cli.client import ClientError, PttClient
from ptt_server.app.redis_embed import free_port
from ptt_server.app.wiring import create_app
from ptt_server.media import compat
from ptt_server.media.ice import TurnRest
from ptt_server.service.keys import NODE

from .audio import encode, make_speech, read_wav
from .conftest import RunningServer, seed_directory, server_config

SECRET = "turn-shared-secret-for-tests-0123"
RELAY_PORTS = 40  # coturn's relay range for the test


@dataclass
class Coturn:
    url: str
    relay: range  # the ports coturn relays on


def _stun_answers(port: int) -> bool:
    request = stun.Message(message_method=stun.Method.BINDING,
                           message_class=stun.Class.REQUEST)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(bytes(request), ("127.0.0.1", port))
        try:
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
    return stun.parse_message(data).transaction_id == request.transaction_id


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    exe = shutil.which("turnserver")
    assert exe is not None, "turnserver missing: the Debian package coturn (make test installs it)"
    port = free_port()
    low = random.randrange(20000, 30000)  # below the kernel's ephemeral range
    log = (tmp_path / "coturn.log").open("wb")
    proc = subprocess.Popen([
        exe, "-n", "--listening-ip=127.0.0.1", f"--listening-port={port}",
        "--relay-ip=127.0.0.1", f"--min-port={low}", f"--max-port={low + RELAY_PORTS - 1}",
        "--use-auth-secret", f"--static-auth-secret={SECRET}", "--realm=ptt.test",
        # Our test peers are on loopback, which coturn refuses as peers by default.
        "--allow-loopback-peers", "--no-cli", "--no-tls", "--no-dtls", "--no-tcp-relay",
        f"--userdb={tmp_path / 'turndb'}", f"--pidfile={tmp_path / 'turn.pid'}",
        "--log-file=stdout", "--simple-log", "--no-software-attribute",
    ], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not _stun_answers(port):
            assert proc.poll() is None, (tmp_path / "coturn.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "coturn did not answer STUN"
        yield Coturn(f"turn:127.0.0.1:{port}?transport=udp", range(low, low + RELAY_PORTS))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
async def turn_server(
    data_dir: Path, redis_url: str, coturn: Coturn
) -> AsyncIterator[RunningServer]:
    seed_directory(data_dir)
    config = server_config(data_dir, redis_url, turn_urls=(coturn.url,), turn_secret=SECRET)
    app = create_app(config)
    ts = TestServer(app, host="127.0.0.1")
    await ts.start_server()
    yield RunningServer(url=str(ts.make_url("")).rstrip("/"), config=config, app=app)
    await ts.close()


async def ice_servers(server: RunningServer, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(
            server.url + "/api/ice-servers", headers=headers) as r:
        return r.status, await r.json()


def kind(candidate: str) -> str:
    """The type of an SDP candidate line (RFC 8839 section 5.1: after "typ")."""
    fields = candidate.split()
    return fields[fields.index("typ") + 1]


def relay_only(servers: list[dict[str, Any]]) -> RTCConfiguration:
    return RTCConfiguration(
        iceServers=[RTCIceServer(urls=s["urls"], username=s["username"],
                                 credential=s["credential"]) for s in servers],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY,
    )


class RelayClient(PttClient):
    """The test client, its peer connection relay-only through the given ICE servers."""

    def __init__(self, *args: Any, rtc: RTCConfiguration, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.rtc = rtc
        self.offered: list[str] = []

    async def start_media(self, *, send: bool = True, timeout: float = 15.0) -> None:
        pc = self.pc = RTCPeerConnection(self.rtc)
        if send:
            pc.addTransceiver(self.source, direction="sendrecv")
        else:
            pc.addTransceiver("audio", direction="recvonly")
        self._tap_new_receivers()
        await pc.setLocalDescription(await pc.createOffer())
        self.offered = [line for line in pc.localDescription.sdp.splitlines()
                        if line.startswith("a=candidate:")]
        since = len(self.events)
        await self.send({"type": "offer", "sdp": pc.localDescription.sdp})
        answer = await self.wait_for(lambda m: m["type"] in ("answer", "error"), timeout,
                                     since=since)
        if answer["type"] == "error":
            raise ClientError(answer)
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        deadline = time.monotonic() + timeout
        while pc.connectionState != "connected":
            if pc.connectionState in ("failed", "closed") or time.monotonic() > deadline:
                raise ConnectionError(f"media connection {pc.connectionState}")
            await asyncio.sleep(0.02)


async def test_credentials_are_minted_per_user_for_live_audio_roles(
    turn_server: RunningServer, coturn: Coturn
) -> None:
    assert (await ice_servers(turn_server, None))[0] == 401
    assert (await ice_servers(turn_server, turn_server.token("aud")))[0] == 403
    before = int(time.time())
    status, body = await ice_servers(turn_server, turn_server.token("u1"))
    assert status == 200
    ttl = turn_server.config.turn_ttl_s
    assert body["ttl"] == ttl and before + ttl <= body["expires_at"] <= int(time.time()) + ttl
    (entry,) = body["iceServers"]
    assert entry["urls"] == [coturn.url]
    assert entry["username"] == f"{body['expires_at']}:u1"
    other = (await ice_servers(turn_server, turn_server.token("u2")))[1]["iceServers"][0]
    assert other["username"].endswith(":u2") and other["credential"] != entry["credential"]


async def test_without_turn_the_list_is_empty(server: RunningServer) -> None:
    assert await ice_servers(server, server.token("u1")) == (
        200, {"iceServers": [], "ttl": None, "expires_at": None})


async def _gathered(rtc: RTCConfiguration) -> list[str]:
    pc = RTCPeerConnection(rtc)
    try:
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return [line for line in pc.localDescription.sdp.splitlines()
                if line.startswith("a=candidate:")]
    finally:
        await pc.close()


async def test_coturn_checks_the_credentials(coturn: Coturn) -> None:
    """What coturn accepts: ours; not another secret's, not an expired one."""
    good = TurnRest((coturn.url,), SECRET.encode(), 600).credential("u1")
    wrong = TurnRest((coturn.url,), b"some-other-secret-0123", 600).credential("u1")
    expired = TurnRest((coturn.url,), SECRET.encode(), 600).credential(
        "u1", now=time.time() - 1200)
    relayed = await _gathered(relay_only([good.as_json()]))
    assert relayed and {kind(c) for c in relayed} == {"relay"}
    assert all(int(c.split()[5]) in coturn.relay for c in relayed)
    for refused in (wrong, expired):
        assert await _gathered(relay_only([refused.as_json()])) == []


async def test_audio_through_turn_arrives_byte_for_byte(
    turn_server: RunningServer, coturn: Coturn, tmp_path: Path
) -> None:
    packets = encode(read_wav(make_speech(tmp_path / "s.wav", "relayed through turn")))
    clients: list[RelayClient] = []
    try:
        for name in ("u1", "u2"):
            servers = (await ice_servers(turn_server, turn_server.token(name)))[1]
            c = RelayClient(turn_server.url, turn_server.token(name),
                            rtc=relay_only(servers["iceServers"]))
            clients.append(c)
            await c.connect()
            await c.start_media(send=name == "u1")
            await c.join("A")
            await c.wait_for(lambda m: m["type"] == "downlink" and m["talkgroup"] == "A")
        talker, listener = clients
        for c in clients:  # the clients offered relayed candidates only
            assert c.offered and {kind(line) for line in c.offered} == {"relay"}
        # The server sees each client at a port of coturn's relay range: through TURN.
        node = turn_server.app[NODE]  # type: ignore[index]
        for c in clients:
            pc = node.endpoints[c.welcome["session"]].peer.pc
            pair = compat.nominated_pair(pc.getTransceivers()[0].sender.transport)
            assert pair is not None and pair.remote_addr[1] in coturn.relay
        grant = await talker.talk("A", packets)
        assert grant["type"] == "floor_granted"
        tid = grant["transmission_id"]
        await listener.wait_for(lambda m: m["type"] == "floor_idle"
                                and m["transmission_id"] == tid)
        heard = [r.payload for r in listener.transmissions[tid].packets]
        assert len(heard) >= len(packets) - 2
        assert heard == packets[: len(heard)]  # forwarded, never transcoded
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def test_the_servers_own_ice_can_relay_through_turn(
    data_dir: Path, redis_url: str, coturn: Coturn
) -> None:
    """--turn-for-server: the server's answer offers a relayed candidate of its own too."""
    seed_directory(data_dir)
    config = server_config(data_dir, redis_url, turn_urls=(coturn.url,), turn_secret=SECRET,
                           turn_for_server=True)
    app = create_app(config)
    ts = TestServer(app, host="127.0.0.1")
    await ts.start_server()
    server = RunningServer(url=str(ts.make_url("")).rstrip("/"), config=config, app=app)
    client = PttClient(server.url, server.token("u1"), ice_addresses=("127.0.0.1",))
    try:
        await client.connect()
        await client.start_media()
        answer = next(m for m in client.events if m["type"] == "answer")
        candidates = [line for line in answer["sdp"].splitlines()
                      if line.startswith("a=candidate:")]
        relayed = [c for c in candidates if kind(c) == "relay"]
        assert relayed and all(int(c.split()[5]) in coturn.relay for c in relayed)
        assert "host" in {kind(c) for c in candidates}
    finally:
        await client.close()
        await ts.close()


def test_turn_options(tmp_path: Path) -> None:
    from ptt_server.app.cli import build_parser, serve_config
    from ptt_server.app.serve_options import OptionError

    def config(*args: str) -> Any:
        return serve_config(build_parser().parse_args(["--data-dir", str(tmp_path), "serve",
                                                       *args]))

    secret = tmp_path / "turn_secret"
    secret.write_text(SECRET + "\n")
    got = config("--turn-url", "turn:turn.example:3478?transport=udp",
                 "--turn-url", "turns:[2001:db8::1]:443?transport=tcp",
                 "--turn-secret-file", str(secret), "--turn-ttl", "3600")
    assert got.turn_secret == SECRET and got.turn_ttl_s == 3600 and len(got.turn_urls) == 2
    assert SECRET not in repr(got)
    short = tmp_path / "short"
    short.write_text("guessable")
    for bad in (["--turn-url", "turn:x:3478"],  # no secret
                ["--turn-secret-file", str(secret)],  # no URL
                ["--turn-url", "http://x", "--turn-secret-file", str(secret)],
                ["--turn-url", "turn:x", "--turn-secret-file", str(short)],
                ["--turn-url", "turn:x", "--turn-secret-file", str(tmp_path / "missing")],
                ["--turn-for-server"]):
        with pytest.raises(OptionError):
            config(*bad)
