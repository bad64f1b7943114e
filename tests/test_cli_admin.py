"""`ptt-server` admin commands, in-process and through the installed console script; the
`serve` command line; and the log formats it selects."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ptt_server.app.cli import build_parser, main, serve_config
from ptt_server.app.redis_embed import free_port
from ptt_server.core.config import Config
from ptt_server.core.model import Role, TalkgroupInfo, TalkgroupKind, User
from ptt_server.identity.auth import TokenAuthority, load_or_create_signing_key
from ptt_server.identity.directory import Directory

CONSOLE_SCRIPT = Path(sys.executable).parent / "ptt-server"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def authority(data_dir: Path) -> TokenAuthority:
    defaults = Config(data_dir=data_dir)
    return TokenAuthority(
        load_or_create_signing_key(data_dir), issuer=defaults.jwt_issuer,
        audience=defaults.jwt_audience,
    )


@pytest.fixture
def seeded(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    d = str(data_dir)
    assert run(capsys, "--data-dir", d, "talkgroup", "add", "north", "--name", "North")[0] == 0
    assert run(capsys, "--data-dir", d, "talkgroup", "add", "south")[0] == 0
    assert run(capsys, "--data-dir", d, "talkgroup", "add", "cmd", "--kind", "command",
               "--tx-limit", "30")[0] == 0
    return data_dir


# -- talkgroups --------------------------------------------------------------------------------
def test_talkgroup_add_list_remove(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(seeded)
    assert Directory(seeded).list_talkgroups() == [
        TalkgroupInfo("cmd", "cmd", TalkgroupKind.COMMAND, 30.0),
        TalkgroupInfo("north", "North", TalkgroupKind.NORMAL, None),
        TalkgroupInfo("south", "south", TalkgroupKind.NORMAL, None),
    ]
    code, out, _ = run(capsys, "--data-dir", d, "talkgroup", "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "KIND", "TX-LIMIT", "NAME"]
    assert lines[1].split() == ["cmd", "command", "30s", "cmd"]
    code, out, _ = run(capsys, "--data-dir", d, "talkgroup", "list", "--json")
    assert [t["id"] for t in json.loads(out)] == ["cmd", "north", "south"]
    assert json.loads(out)[0] == {
        "id": "cmd", "name": "cmd", "kind": "command", "max_duration_s": 30.0,
    }
    assert run(capsys, "--data-dir", d, "talkgroup", "remove", "south")[0] == 0
    assert Directory(seeded).get_talkgroup("south") is None


def test_talkgroup_errors(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(seeded)
    code, out, err = run(capsys, "--data-dir", d, "talkgroup", "add", "north")
    assert code == 2 and out == "" and "north" in err and "exists" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "--data-dir", d, "talkgroup", "add", "bad id")
    assert code == 2 and "bad id" in err
    code, _, err = run(capsys, "--data-dir", d, "talkgroup", "remove", "nope")
    assert code == 2 and "nope" in err
    code, _, err = run(capsys, "--data-dir", d, "talkgroup", "add", "x", "--tx-limit", "-3")
    assert code == 2
    code, _, err = run(capsys, "--data-dir", d, "talkgroup", "add", "x", "--kind", "secret")
    assert code == 2


def test_talkgroup_replace_and_force(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(seeded)
    assert run(capsys, "--data-dir", d, "talkgroup", "add", "north", "--name", "N2",
               "--replace")[0] == 0
    info = Directory(seeded).get_talkgroup("north")
    assert info is not None and info.name == "N2"
    run(capsys, "--data-dir", d, "user", "add", "u1", "--role", "officer", "--talkgroups",
        "north", "--password", "pw")
    code, _, err = run(capsys, "--data-dir", d, "talkgroup", "remove", "north")
    assert code == 2 and "u1" in err
    assert run(capsys, "--data-dir", d, "talkgroup", "remove", "north", "--force")[0] == 0


# -- users -------------------------------------------------------------------------------------
def test_user_add_list_passwd_remove(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(seeded)
    code, _, _ = run(capsys, "--data-dir", d, "user", "add", "u12", "--role", "officer",
                     "--talkgroups", "north,south", "--password", "pw-1", "--alias", "Unit 12")
    assert code == 0
    directory = Directory(seeded)
    assert directory.get_user("u12") == User(
        "u12", Role.OFFICER, ("north", "south"), "Unit 12", 100
    )
    assert directory.verify_password("u12", "pw-1") is not None
    run(capsys, "--data-dir", d, "user", "add", "sgt", "--role", "supervisor",
        "--talkgroups", "cmd", "--password", "pw", "--priority", "200")
    code, out, _ = run(capsys, "--data-dir", d, "user", "list")
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["NAME", "ROLE", "PRIORITY", "ALIAS", "TALKGROUPS"]
    assert rows[1] == ["sgt", "supervisor", "200", "sgt", "cmd"]
    assert rows[2] == ["u12", "officer", "100", "Unit", "12", "north,south"]
    code, out, _ = run(capsys, "--data-dir", d, "user", "list", "--json")
    assert json.loads(out)[1] == {
        "name": "u12", "role": "officer", "talkgroups": ["north", "south"],
        "alias": "Unit 12", "priority": 100,
    }
    assert run(capsys, "--data-dir", d, "user", "passwd", "u12", "--password", "pw-2")[0] == 0
    assert directory.verify_password("u12", "pw-1") is None
    assert directory.verify_password("u12", "pw-2") is not None
    assert run(capsys, "--data-dir", d, "user", "remove", "u12")[0] == 0
    assert directory.get_user("u12") is None


def test_user_unknown_talkgroup_named(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--data-dir", str(seeded), "user", "add", "u1", "--role",
                         "officer", "--talkgroups", "north,east", "--password", "pw")
    assert code == 2 and out == ""
    assert err.startswith("ptt-server: error:") and "east" in err
    assert len(err.strip().splitlines()) == 1
    assert Directory(seeded).get_user("u1") is None


def test_user_errors(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(seeded)
    base = ["--data-dir", d, "user", "add", "u1", "--talkgroups", "north", "--password", "pw"]
    assert run(capsys, *base, "--role", "chief")[0] == 2
    assert run(capsys, *base, "--role", "officer", "--priority", "300")[0] == 2
    assert run(capsys, *base, "--role", "officer")[0] == 0
    code, _, err = run(capsys, *base, "--role", "officer")
    assert code == 2 and "exists" in err
    assert run(capsys, *base, "--role", "dispatcher", "--replace")[0] == 0
    user = Directory(seeded).get_user("u1")
    assert user is not None and user.role is Role.DISPATCHER
    assert run(capsys, "--data-dir", d, "user", "remove", "ghost")[0] == 2
    assert run(capsys, "--data-dir", d, "user", "passwd", "ghost", "--password", "x")[0] == 2
    assert run(capsys, "--data-dir", d, "user", "add", "u2", "--role", "officer")[0] == 2


def test_password_from_stdin(
    seeded: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin\n"))
    assert run(capsys, "--data-dir", str(seeded), "user", "add", "u1", "--role", "auditor",
               "--password", "-")[0] == 0
    assert Directory(seeded).verify_password("u1", "from stdin") is not None


def test_data_dir_after_subcommand_and_from_env(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(capsys, "talkgroup", "add", "a", "--data-dir", str(data_dir))[0] == 0
    assert Directory(data_dir).get_talkgroup("a") is not None
    # After the subcommand wins over before it.
    other = data_dir / "other"
    assert run(capsys, "--data-dir", str(data_dir), "talkgroup", "add", "b",
               "--data-dir", str(other))[0] == 0
    assert Directory(other).get_talkgroup("b") is not None
    assert Directory(data_dir).get_talkgroup("b") is None
    monkeypatch.setenv("PTT_DATA_DIR", str(data_dir / "env"))
    assert run(capsys, "talkgroup", "add", "c")[0] == 0
    assert Directory(data_dir / "env").get_talkgroup("c") is not None
    monkeypatch.delenv("PTT_DATA_DIR")
    monkeypatch.chdir(data_dir)
    assert run(capsys, "talkgroup", "add", "d")[0] == 0
    assert Directory(data_dir / "data").get_talkgroup("d") is not None


# -- tokens ------------------------------------------------------------------------------------
def test_token(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(seeded)
    run(capsys, "--data-dir", d, "user", "add", "u12", "--role", "officer", "--talkgroups",
        "north", "--password", "pw", "--alias", "Unit 12")
    before = time.time()
    code, out, _ = run(capsys, "--data-dir", d, "token", "u12", "--ttl", "600")
    assert code == 0 and out.endswith("\n") and out.count("\n") == 1
    claims = authority(seeded).verify(out.strip())
    assert claims.sub == "u12" and claims.role is Role.OFFICER
    assert claims.talkgroups == ("north",) and claims.alias == "Unit 12"
    assert int(before) + 600 <= claims.exp <= time.time() + 600
    code, out, _ = run(capsys, "--data-dir", d, "token", "u12")
    claims = authority(seeded).verify(out.strip())
    assert claims.exp >= int(before) + Config(data_dir=seeded).token_ttl_s
    code, out, err = run(capsys, "--data-dir", d, "token", "ghost")
    assert code == 2 and out == "" and "ghost" in err


# -- through the installed console script ------------------------------------------------------
def ptt_server(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *argv], capture_output=True, text=True, input=stdin, timeout=60,
    )


def test_console_script(data_dir: Path) -> None:
    d = str(data_dir)
    assert ptt_server("--data-dir", d, "talkgroup", "add", "north").returncode == 0
    assert ptt_server("talkgroup", "add", "cmd", "--kind", "command", "--data-dir", d,
                      "--name", "Command").returncode == 0
    proc = ptt_server("--data-dir", d, "user", "add", "sup", "--role", "supervisor",
                      "--talkgroups", "north", "--password", "-", "--alias", "Sgt Stone",
                      stdin="s3cret\n")
    assert proc.returncode == 0, proc.stderr
    proc = ptt_server("--data-dir", d, "user", "add", "u1", "--role", "officer",
                      "--talkgroups", "east", "--password", "pw")
    assert proc.returncode == 2 and "east" in proc.stderr and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = ptt_server("--data-dir", d, "token", "sup", "--ttl", "120")
    assert proc.returncode == 0, proc.stderr
    claims = authority(data_dir).verify(proc.stdout.strip())
    assert claims.sub == "sup" and claims.role is Role.SUPERVISOR and claims.priority == 150
    assert Directory(data_dir).verify_password("sup", "s3cret") is not None
    proc = ptt_server("--help")
    assert proc.returncode == 0 and "serve" in proc.stdout and "audit" in proc.stdout
    proc = ptt_server("bogus")
    assert proc.returncode == 2


# -- the serve command line --------------------------------------------------------------------
def serve_ns(*argv: str) -> Config:
    return serve_config(build_parser().parse_args(list(argv)))


def test_serve_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PTT_DATA_DIR", raising=False)
    config = serve_ns("serve")
    assert config.data_dir == Path("data") and config.port == 8443 and not config.http
    assert config.host == "0.0.0.0" and config.redis_url is None
    assert config.ice_addresses == () and config.ice_servers == ()
    assert config.external_issuer is None


def test_serve_options(tmp_path: Path) -> None:
    config = serve_ns(
        "--log-format", "text", "serve", "--host", "127.0.0.1", "--port", "9000",
        "--data-dir", str(tmp_path), "--redis-url", "redis://127.0.0.1:7000/0", "--http",
        "--ice-address", "127.0.0.1", "--ice-address", "10.0.0.2",
        "--ice-server", "stun:stun.example:3478", "--workers", "2", "--node-id", "n1",
        "--tx-limit", "45", "--token-ttl", "3600",
    )
    assert config.data_dir == tmp_path and config.host == "127.0.0.1" and config.port == 9000
    assert config.http and config.redis_url == "redis://127.0.0.1:7000/0"
    assert config.ice_addresses == ("127.0.0.1", "10.0.0.2")
    assert config.ice_servers == ("stun:stun.example:3478",)
    assert config.node_id == "n1" and config.floor_max_duration_s == 45.0
    assert config.token_ttl_s == 3600 and config.log_format == "text"
    assert build_parser().parse_args(["serve", "--workers", "2"]).workers == 2


def test_private_call_options(tmp_path: Path) -> None:
    from ptt_server.app.serve_options import OptionError

    config = serve_ns("serve", "--data-dir", str(tmp_path), "--private-call-limit", "120",
                      "--private-call-ring", "20")
    assert (config.private_call_max_s, config.private_call_ring_s) == (120.0, 20.0)
    defaults = serve_ns("serve", "--data-dir", str(tmp_path))
    assert (defaults.private_call_max_s, defaults.private_call_ring_s) == (300.0, 30.0)
    for args in (("--private-call-limit", "5"), ("--private-call-ring", "600")):
        with pytest.raises(OptionError, match=args[0]):
            serve_ns("serve", "--data-dir", str(tmp_path), *args)


def test_serve_external_issuer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "sso.pem"
    pem.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    config = serve_ns("serve", "--external-issuer", "https://sso.example",
                      "--external-key", str(pem))
    assert config.external_issuer is not None
    assert config.external_issuer.issuer == "https://sso.example"
    assert "PUBLIC KEY" in config.external_issuer.public_key_pem
    # Errors are one line and exit 2, before anything starts.
    private = tmp_path / "private.pem"
    private.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    for argv in (
        ["serve", "--external-issuer", "https://sso.example"],
        ["serve", "--external-issuer", "x", "--external-key", str(tmp_path / "missing.pem")],
        ["serve", "--external-issuer", "x", "--external-key", str(private)],
        ["serve", "--tls-cert", str(pem)],
        ["serve", "--port", "70000"],
        ["serve", "--workers", "0"],
    ):
        code, _, err = run(capsys, "--data-dir", str(tmp_path), *argv)
        assert code == 2, argv
        assert err.strip(), argv


def _get(url: str, body: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_serve_end_to_end(data_dir: Path, redis_url: str) -> None:
    """Admin commands, then `ptt-server serve`, then a login with what they created."""
    d = str(data_dir)
    assert ptt_server("--data-dir", d, "talkgroup", "add", "north").returncode == 0
    assert ptt_server("--data-dir", d, "user", "add", "u1", "--role", "officer",
                      "--talkgroups", "north", "--password", "pw-u1").returncode == 0
    port = free_port()
    proc = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "--data-dir", d, "--log-format", "json", "serve", "--http",
         "--host", "127.0.0.1", "--port", str(port), "--redis-url", redis_url,
         "--workers", "1", "--ice-address", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                if _get(base + "/healthz")[0] == 200:
                    break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.1)
        status, body = _get(base + "/api/login", {"username": "u1", "password": "pw-u1"})
        assert status == 200
        claims = authority(data_dir).verify(str(body["token"]))
        assert claims.sub == "u1" and claims.talkgroups == ("north",)
        status, body = _get(base + "/api/login", {"username": "u1", "password": "nope"})
        assert status == 401 and body["error"] == {
            "code": "login_failed", "message": "wrong user name or password"}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            assert proc.stderr is not None
            stderr = proc.stderr.read()
    # JSON lines on stderr (plus the human-readable start-up banner).
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert records and all({"ts", "level", "logger", "msg"} <= set(r) for r in records)


def test_audit_passes_arguments_through(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Arguments starting with '-' reach the audit parser untouched.
    assert main(["--data-dir", str(data_dir), "audit", "--help"]) == 0
    assert "verify" in capsys.readouterr().out
    # audit needs a data directory something already used (see test_datadir.py).
    assert main(["--data-dir", str(data_dir), "talkgroup", "add", "a"]) == 0
    capsys.readouterr()
    assert main(["--data-dir", str(data_dir), "audit", "verify"]) == 0
    assert "0 recordings" in capsys.readouterr().out
