"""/metrics: who may read it, and that its numbers are what happened.

A real server (in-process, real Redis), real aiortc clients on loopback: a transmission with
two listeners, a denial, a pre-emption and a bad message, then the scrape is parsed with
prometheus-client's own parser and checked against what the clients saw.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from client_cli.client import PttClient
from ptt_server.app.redis_embed import free_port
from ptt_server.app.wiring import create_app
from ptt_server.core.model import Role
from ptt_server.identity.directory import Directory
from ptt_server.service.metrics import METRICS

from .audio import encode, make_speech, read_wav
from .conftest import RunningServer, seed_directory, server_config
from .polling import until

TOKEN = "scrape-me-0123456789"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _serve(data_dir: Path, redis_url: str, **kw: Any) -> AsyncIterator[RunningServer]:
    seed_directory(data_dir)
    config = server_config(data_dir, redis_url, **kw)
    app = create_app(config)
    ts = TestServer(app, host="127.0.0.1")
    await ts.start_server()
    yield RunningServer(url=str(ts.make_url("")).rstrip("/"), config=config, app=app)
    await ts.close()


@pytest.fixture
async def metered(data_dir: Path, redis_url: str) -> AsyncIterator[RunningServer]:
    async for server in _serve(data_dir, redis_url, metrics_token=TOKEN,
                               metrics_listen=("127.0.0.1", 0)):
        yield server


@pytest.fixture(scope="module")
def packets(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    path = make_speech(tmp_path_factory.mktemp("m") / "s.wav", "unit one, metrics check")
    return encode(read_wav(path))


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    found = [v for (n, ls), v in samples.items()
             if n == name and set(labels.items()) <= set(ls)]
    assert found, f"no series {name}{labels}"
    return sum(found)


async def scrape(url: str, token: str | None = TOKEN) -> tuple[int, str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics", headers=headers) as r:
        return r.status, await r.text(), r.headers


async def samples_of(server: RunningServer) -> Samples:
    status, text, _ = await scrape(server.url)
    assert status == 200, text
    return parse(text)


async def test_the_main_port_serves_metrics_to_the_token_only(metered: RunningServer) -> None:
    status, _, headers = await scrape(metered.url, token=None)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert (await scrape(metered.url, token="wrong-token"))[0] == 401
    status, text, headers = await scrape(metered.url)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    samples = parse(text)
    node = metered.config.node_id
    assert value(samples, "ptt_sessions", node=node) == 0
    assert value(samples, "ptt_media_egress_path", node=node, path="direct") == 1
    assert value(samples, "ptt_media_egress_path", path="public") == 0
    assert value(samples, "ptt_recording_disk_free_bytes") > 0
    assert value(samples, "process_resident_memory_bytes") > 0
    # The separate listener: the same registry, and the token (configured) required there too.
    port = metered.app[METRICS].listen_port  # type: ignore[index]
    side = f"http://127.0.0.1:{port}"
    assert (await scrape(side, token=None))[0] == 401
    status, text, _ = await scrape(side)
    assert status == 200 and "ptt_sessions{" in text


async def test_without_a_token_metrics_are_only_on_their_own_address(
    data_dir: Path, redis_url: str
) -> None:
    async for server in _serve(data_dir, redis_url, metrics_listen=("127.0.0.1", 0)):
        assert (await scrape(server.url))[0] == 404
        port = server.app[METRICS].listen_port  # type: ignore[index]
        status, text, _ = await scrape(f"http://127.0.0.1:{port}", token=None)
        assert status == 200 and "ptt_redis_up" in text


async def test_not_configured_means_not_served(server: RunningServer) -> None:
    assert (await scrape(server.url))[0] == 404


async def test_counts_follow_a_transmission_a_denial_and_a_preemption(
    metered: RunningServer, packets: list[bytes]
) -> None:
    Directory(metered.config.data_dir / "directory.sqlite3").add_user(
        "chief", Role.OFFICER, ["A"], "pw", alias="Chief", priority=200)
    clients: list[PttClient] = []

    async def client(name: str, media: bool = True) -> PttClient:
        c = PttClient(metered.url, metered.token(name), ice_addresses=("127.0.0.1",))
        clients.append(c)
        await c.connect()
        if media:
            await c.start_media()
        await c.join("A")
        if media:
            await c.wait_for(lambda m: m["type"] == "downlink" and m["talkgroup"] == "A")
        return c

    try:
        talker, l1, l2 = await client("u1"), await client("u2"), await client("u3")
        chief = await client("chief", media=False)
        before = await samples_of(metered)
        node = metered.config.node_id
        assert value(before, "ptt_sessions", node=node) == 4
        assert value(before, "ptt_listeners", talkgroup="A") == 3  # chief has no media
        grant = await talker.talk("A", packets)
        tid = grant["transmission_id"]
        await l1.wait_for(lambda m: m["type"] == "floor_idle" and m["transmission_id"] == tid)
        heard = [len(c.transmissions[tid].packets) for c in (l1, l2)]
        # Another talker is denied while someone holds the floor; then the chief pre-empts.
        assert (await l1.request_floor("A"))["type"] == "floor_granted"
        denied = await l2.request_floor("A")
        assert denied["type"] == "floor_denied" and denied["reason"] == "floor_taken"
        assert (await chief.request_floor("A"))["type"] == "floor_granted"
        await l1.wait_for(lambda m: m["type"] == "floor_revoked")
        await talker.send({"type": "floor_release", "talkgroup": "B"})  # not joined there
        await talker.wait_for(lambda m: m["type"] == "error" and m["code"] == "not_joined")

        async def recorded() -> bool:
            s = await samples_of(metered)
            return value(s, "ptt_ledger_appends_total", type="transmission") >= 2
        await until(recorded)
        s = await samples_of(metered)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    sent = len(packets)
    uplink = value(s, "ptt_uplink_packets_total")
    assert sent - 2 <= uplink <= sent + 2
    # Every uplink packet was timed, and nearly all (a loaded machine may deschedule the
    # process in the middle of one) took under 0.1 s through the node: the histogram counts
    # real work. Timing targets are the benchmarks' (bench/), not this test's.
    assert value(s, "ptt_fanout_seconds_count") == uplink
    assert value(s, "ptt_fanout_seconds_bucket", le="0.1") >= 0.9 * uplink
    assert value(s, "ptt_packets_forwarded_total") >= min(heard)
    assert value(s, "ptt_listener_packets_total") >= sum(heard)
    assert value(s, "ptt_packets_dropped_total", reason="no_floor") == 0
    # Floor outcomes, counted once each though every output is seen twice on this node.
    assert value(s, "ptt_floor_events_total", event="granted", reason="request") == 3
    assert value(s, "ptt_floor_events_total", event="denied", reason="floor_taken") == 1
    assert value(s, "ptt_floor_events_total", event="revoked", reason="preempted") == 1
    assert value(s, "ptt_floor_access_seconds_count", outcome="granted") == 3
    assert value(s, "ptt_floor_access_seconds_count", outcome="denied") == 1
    assert value(s, "ptt_floor_access_seconds_bucket", outcome="granted", le="+Inf") == 3
    assert value(s, "ptt_ws_messages_total", type="floor_request") == 4
    assert value(s, "ptt_ws_messages_total", type="join") == 4
    assert value(s, "ptt_ws_errors_total", code="not_joined") == 1
    # Recording: both transmissions' files, by their ledger entries' sizes.
    assert value(s, "ptt_recording_bytes_total") > sum(len(p) for p in packets[:10])
    assert value(s, "ptt_recording_failures_total") == 0
    assert value(s, "ptt_health_problem", alert="recording_failing") == 0
    # Counters kept on routers and listeners that went away stay where they were.
    async def all_gone() -> bool:
        after = await samples_of(metered)
        return value(after, "ptt_sessions") == 0 and not any(
            n == "ptt_listeners" for n, _ in after)
    await until(all_gone)
    after = await samples_of(metered)
    for name in ("ptt_packets_forwarded_total", "ptt_listener_packets_total"):
        assert value(after, name) == value(s, name)


async def test_redis_round_trip_and_errors_are_measured(
    metered: RunningServer,
) -> None:
    async def probed() -> bool:
        s = await samples_of(metered)
        return value(s, "ptt_redis_rtt_seconds_count") >= 2 and value(s, "ptt_redis_up") == 1
    await until(probed)
    s = await samples_of(metered)
    assert value(s, "ptt_redis_rtt_seconds_bucket", le="0.1") >= 2  # loopback Redis


def _serve_args(tmp_path: Path, *args: str) -> Any:
    from ptt_server.app.cli import build_parser, serve_config

    return serve_config(build_parser().parse_args(["--data-dir", str(tmp_path), "serve",
                                                   *args]))


def test_metrics_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ptt_server.app.serve_options import OptionError

    monkeypatch.delenv("PTT_METRICS_TOKEN", raising=False)
    config = _serve_args(tmp_path, "--metrics-listen", "[::1]:9464")
    assert config.metrics_listen == ("::1", 9464) and config.metrics_token is None
    monkeypatch.setenv("PTT_METRICS_TOKEN", TOKEN)  # kept out of the process list
    assert _serve_args(tmp_path).metrics_token == TOKEN
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file-0123456789\n")
    config = _serve_args(tmp_path, "--metrics-token-file", str(token_file))
    assert config.metrics_token == "from-a-file-0123456789"
    assert "from-a-file" not in repr(config)  # secrets stay out of logs and tracebacks
    for bad in (["--metrics-token", "short"], ["--metrics-listen", "nohost"],
                ["--metrics-token", TOKEN, "--metrics-token-file", str(token_file)]):
        with pytest.raises(OptionError):
            _serve_args(tmp_path, *bad)


def _start_workers(data_dir: Path, redis_url: str, port: int, metrics_port: int,
                   token_file: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ptt_server.app.cli", "--data-dir", str(data_dir),
             "--log-format", "json", "serve", "--http", "--host", "127.0.0.1",
             "--port", str(port), "--redis-url", redis_url, "--workers", "2", "--node-id", "n",
             "--metrics-listen", f"127.0.0.1:{metrics_port}",
             "--metrics-token-file", str(token_file)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out,
        )


def _metrics_ports(log: Path) -> dict[str, int]:
    """Each worker's metrics port, from its "metrics listening" record. Not assumed to be
    port and port + 1: a worker takes the next free port, and port + 1 may be the local end of
    another worker's outgoing connection (the kernel gives connect() odd ports)."""
    ports = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # the start-up banner is plain text
        if isinstance(entry, dict) and entry.get("msg") == "metrics listening":
            ports[str(entry.get("node"))] = int(entry["port"])
    return ports


async def test_each_worker_is_a_target_of_its_own(
    data_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    seed_directory(data_dir)
    token_file = tmp_path / "metrics_token"
    token_file.write_text(TOKEN + "\n")
    metrics_port = free_port()
    log = tmp_path / "server.log"
    proc = _start_workers(data_dir, redis_url, free_port(), metrics_port, token_file, log)
    try:
        def both_listening() -> bool:
            assert proc.poll() is None, "the server exited: " + log.read_text(errors="replace")
            return len(_metrics_ports(log)) == 2
        await until(both_listening, timeout=60)
        ports = _metrics_ports(log)
        assert set(ports) == {"n-w0", "n-w1"}
        assert metrics_port in ports.values()  # the first to bind has the configured port
        for node, port in ports.items():
            status, text, _ = await scrape(f"http://127.0.0.1:{port}")
            assert status == 200
            # one worker on each port, each its own series
            assert {dict(ls)["node"] for (n, ls) in parse(text) if n == "ptt_sessions"} == {node}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
