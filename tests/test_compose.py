"""docker/: the compose files, and what they mount, hold together (no Docker here).

Compose files are parsed by `compose-spec` (bindings of a typed parser of the Compose
Specification: unknown keys and wrong value types are errors) rather than validated against a
copy of the spec's JSON schema kept in this repository; what a schema cannot know is checked
here: the server command lines are parsed by the server's own command line, mounted files
exist, secrets and volumes are declared, the second node shares the first one's store, the
Prometheus job reads the token file the nodes read, every metric the dashboard and the alerts
use is one the server exposes, and coturn starts with its configuration file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import PyCompose

from ptt_server.app.cli import build_parser, serve_config
from ptt_server.app.redis_embed import free_port
from ptt_server.media.ice import TurnRest
from ptt_server.service.metrics import METRICS

from .test_turn import _gathered, _stun_answers, kind, relay_only

DOCKER = Path(__file__).resolve().parent.parent / "docker"
FILES = ("compose.yaml", "compose.node2.yaml", "compose.shared-store.yaml")
ENV = {  # what an operator's .env would hold
    "REDIS_PASSWORD": "redis-password-0123", "ICE_ADDRESS": "203.0.113.10",
    "TURN_HOST": "203.0.113.10", "PRIMARY_HOST": "10.0.0.11", "NFS_HOST": "10.0.0.5",
    "PTT_METRICS_LISTEN": "10.0.0.12",
}
VAR = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} (and $$ for a literal $)."""
    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env and env[name] != "":
            return env[name]
        if op == "?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == "-" else ""
    return VAR.sub(one, text.replace("$$", "\0")).replace("\0", "$")


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DOCKER / name).read_text())
    return doc


@pytest.mark.parametrize("name", FILES)
def test_compose_files_follow_the_compose_specification(name: str) -> None:
    compose = PyCompose.from_yaml((DOCKER / name).read_text())
    compose.validate()  # references to networks, volumes, configs, secrets
    doc = load(name)
    services = doc["services"]
    for sname, service in services.items():
        for dep in service.get("depends_on", []):
            assert dep in services, f"{name}: {sname} depends on unknown {dep}"
        for secret in service.get("secrets", []):
            assert secret in doc.get("secrets", {}), f"{name}: secret {secret} undeclared"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {source} is not in docker/"
            else:
                assert source in doc.get("volumes", {}), f"{name}: volume {source} undeclared"
        # UDP port ranges (media, TURN relays) and the addresses ICE announces: host network
        # (the override file changes only the data volume).
        if sname in ("ptt", "coturn") and name != "compose.shared-store.yaml":
            assert service["network_mode"] == "host"


def test_secret_files_are_made_by_the_script() -> None:
    script = (DOCKER / "secrets" / "make-secrets.sh").read_text()
    for name in FILES:
        for secret in load(name).get("secrets", {}).values():
            file = Path(secret["file"])
            assert file.parent == Path("secrets") and file.name in script, file


@pytest.fixture
def secret_files(tmp_path: Path) -> dict[str, str]:
    out = {}
    for name in ("turn_secret", "metrics_token"):
        path = tmp_path / name
        path.write_text("s3cret-" + name + "-0123456789\n")
        out[f"/run/secrets/{name}"] = str(path)
    return out


@pytest.mark.parametrize("name", ["compose.yaml", "compose.node2.yaml"])
def test_the_server_command_lines_are_valid(
    name: str, tmp_path: Path, secret_files: dict[str, str]
) -> None:
    command = load(name)["services"]["ptt"]["command"]
    argv = [interpolate(arg, ENV) for arg in command]
    for i in range(len(argv)):
        for inside, outside in secret_files.items():
            argv[i] = argv[i].replace(inside, outside)
    ns = build_parser().parse_args(["--data-dir", str(tmp_path / "data"), *argv])
    config = serve_config(ns)
    assert config.media_ports == (40000, 40999)
    assert config.turn_urls
    assert all(u.startswith("turn:203.0.113.10:3478") for u in config.turn_urls)
    assert config.turn_secret and config.metrics_token and config.metrics_listen
    assert config.metrics_listen[1] == 9464
    assert config.redis_url and "redis-password-0123@" in config.redis_url
    if name == "compose.node2.yaml":
        # The second node reaches the first machine's Redis, under its own name.
        assert "@10.0.0.11:6379" in config.redis_url and config.node_id == "node2"
    else:
        assert config.node_id == "node1"


def test_the_second_node_shares_the_first_ones_store() -> None:
    """Recordings and the ledger on the same NFS export; the rest of /data per machine (its
    SQLite files use WAL, which needs one host)."""
    node2, shared = load("compose.node2.yaml"), load("compose.shared-store.yaml")
    for volume in ("ptt-recordings", "ptt-ledger"):
        assert node2["volumes"][volume] == shared["volumes"][volume]
        opts = node2["volumes"][volume]["driver_opts"]
        assert opts["type"] == "nfs" and "nfsvers=4" in opts["o"]  # NFSv4 locks: flock
    mounts = {"ptt-data:/data", "ptt-recordings:/data/recordings", "ptt-ledger:/data/ledger"}
    first = load("compose.yaml")["services"]["ptt"]["volumes"] + \
        shared["services"]["ptt"]["volumes"]
    second = [v.split("  ")[0] for v in node2["services"]["ptt"]["volumes"]]
    assert set(first) == mounts and set(second) == mounts
    assert node2["volumes"]["ptt-data"] is None  # local to the second machine


def test_prometheus_scrapes_every_worker_with_the_token() -> None:
    prometheus = load("compose.yaml")["services"]["prometheus"]
    assert "metrics_token" in prometheus["secrets"]
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ptt"]
    assert job["authorization"]["credentials_file"] == "/run/secrets/metrics_token"
    pattern = job["file_sd_configs"][0]["files"][0]
    assert pattern.startswith("/etc/prometheus/targets/")
    assert any(v.endswith(":/etc/prometheus/targets:ro") for v in prometheus["volumes"])
    groups = yaml.safe_load((DOCKER / "prometheus" / "targets" / "ptt.yaml").read_text())
    ports = [int(t.rsplit(":", 1)[1]) for g in groups for t in g["targets"]]
    assert ports == [9464 + i for i in range(len(ports))]  # one per worker (PTT_WORKERS)


@pytest.fixture
async def exposed(data_dir: Path, redis_url: str) -> set[str]:
    """Every sample name the server's registry can produce."""
    from aiohttp.test_utils import TestServer

    from ptt_server.app.wiring import create_app

    from .conftest import seed_directory, server_config

    seed_directory(data_dir)
    app = create_app(server_config(data_dir, redis_url, metrics_token="t" * 20))
    ts = TestServer(app, host="127.0.0.1")
    await ts.start_server()
    try:
        await app[METRICS].refresh_disk()  # what a scrape does first
        names = set()
        for family in app[METRICS].registry.collect():
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                        }.get(family.type, ("",))
            names |= {family.name + s for s in suffixes}
        return names
    finally:
        await ts.close()


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:ptt|process)_[a-z_]+)\b", expr))


async def test_the_dashboard_and_alerts_use_metrics_the_server_exposes(
    exposed: set[str],
) -> None:
    dashboard = json.loads((DOCKER / "grafana" / "ptt-dashboard.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel.get("targets", [])
            for name in _metric_names(target["expr"])}
    alerts = yaml.safe_load((DOCKER / "prometheus" / "alerts.yaml").read_text())
    used_by_alerts = {name for g in alerts["groups"] for rule in g["rules"]
                      for name in _metric_names(rule["expr"])}
    assert len(used) > 15 and used_by_alerts
    assert not (used | used_by_alerts) - exposed, sorted((used | used_by_alerts) - exposed)
    # The dashboard's data source is the one provisioned.
    source = yaml.safe_load(
        (DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert dashboard["templating"]["list"][0]["current"]["value"] == \
        source["datasources"][0]["uid"]


# -- coturn ------------------------------------------------------------------------------------
@pytest.fixture
def coturn_with_our_config(tmp_path: Path) -> Iterator[int]:
    exe = shutil.which("turnserver")
    assert exe is not None, "turnserver missing: the Debian package coturn"
    port = free_port()
    proc = subprocess.Popen([
        exe, "-c", str(DOCKER / "coturn" / "turnserver.conf"),
        # What compose adds at start, and what a loopback test needs.
        "--static-auth-secret=compose-test-secret-0123", "--allowed-peer-ip=127.0.0.1",
        "--listening-ip=127.0.0.1", f"--listening-port={port}", "--relay-ip=127.0.0.1",
        "--allow-loopback-peers", f"--userdb={tmp_path / 'turndb'}",
        f"--pidfile={tmp_path / 'turn.pid'}",
    ], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _stun_answers(port):
            assert proc.poll() is None, "coturn exited with docker/coturn/turnserver.conf"
            assert time.monotonic() < deadline, "coturn did not answer"
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_coturn_runs_with_our_configuration(coturn_with_our_config: int) -> None:
    conf = (DOCKER / "coturn" / "turnserver.conf").read_text().splitlines()
    assert "use-auth-secret" in conf and "lt-cred-mech" not in conf
    # Relays nowhere but where it is told (the nodes' media addresses): no open relay.
    assert "denied-peer-ip=0.0.0.0-255.255.255.255" in conf
    # And it takes the server's credentials: a relay-only peer gets relayed candidates.
    url = f"turn:127.0.0.1:{coturn_with_our_config}?transport=udp"
    cred = TurnRest((url,), b"compose-test-secret-0123", 600).credential("u1")
    relayed = await _gathered(relay_only([cred.as_json()]))
    assert relayed and {kind(c) for c in relayed} == {"relay"}
