"""The data directory: the README's admin commands on a directory that does not exist yet, then
`serve` on it; `audit` never creates one; a path that is a file is refused by every command."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Any

import pytest

from ptt_server.app.datadir import DataDir, DataDirError
from ptt_server.app.redis_embed import free_port
from ptt_server.core.config import Config
from ptt_server.core.model import Role
from ptt_server.identity.auth import TokenAuthority, load_or_create_signing_key
from ptt_server.identity.directory import Directory, DirectoryError

ROOT = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = Path(sys.executable).parent / "ptt-server"
README_PREFIX = ".venv/bin/ptt-server "


# -- helpers shared with test_make_run.py ------------------------------------------------------
class Output:
    """Everything a child writes to one pipe, read by a thread as it comes: a pipe nobody
    reads fills up, and then the server blocks in its own logging."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._text = ""
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            with self._cond:
                self._text += line.decode(errors="replace")
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return self._text

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while (match := re.search(pattern, self._text)) is None:
                left = deadline - time.monotonic()
                if self._closed or left <= 0:
                    why = "the process closed its output" if self._closed else "timed out"
                    raise AssertionError(f"{why} before {pattern!r}:\n{self._text[-3000:]}")
                self._cond.wait(left)
            return match

    def join(self, timeout: float) -> str:
        self._thread.join(timeout)
        return self.text


def http(url: str, body: dict[str, str] | None = None, *,
         context: ssl.SSLContext | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_healthy(base: str, proc: subprocess.Popen[bytes], output: Output, timeout: float,
                 context: ssl.SSLContext | None = None) -> None:
    """Until /healthz answers 200 (bounded; fails at once if the server exits)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if http(base + "/healthz", context=context)[0] == 200:
                return
        assert proc.poll() is None, f"server exited with {proc.returncode}:\n{output.text}"
        assert time.monotonic() < deadline, f"no /healthz in {timeout}s:\n{output.text[-3000:]}"
        time.sleep(0.1)  # poll interval, bounded by the deadline above


def exit_status(proc: subprocess.Popen[bytes], output: Output, timeout: float) -> int:
    """The exit status, or a failure that shows what the process said if it did not end."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {timeout}s after SIGTERM:\n{output.text[-3000:]}")


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # field 4, after "(comm)"


def descendants(pid: int) -> list[int]:
    parents = {int(p.name): _parent(int(p.name)) for p in Path("/proc").iterdir()
               if p.name.isdigit()}
    found, frontier = [], [pid]
    while frontier:
        children = [c for c, p in parents.items() if p in frontier]
        found += children
        frontier = children
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped


def embedded_redis(server: int) -> tuple[int, int]:
    """The pid and port of the redis-server that the server `server` started."""
    [pid] = [p for p in descendants(server) if "redis-server" in (cmdline(p) or [""])[0]]
    # redis-server shows its address in its process title ("redis-server 127.0.0.1:PORT").
    match = re.search(r"127\.0\.0\.1:(\d+)|--port\0(\d+)", "\0".join(cmdline(pid)))
    assert match, cmdline(pid)
    return pid, int(match.group(1) or match.group(2))


def authority(data: DataDir) -> TokenAuthority:
    defaults = Config(data_dir=data.root)
    return TokenAuthority(load_or_create_signing_key(data.root), issuer=defaults.jwt_issuer,
                          audience=defaults.jwt_audience)


def ptt_server(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PTT_DATA_DIR"}
    return subprocess.run([str(CONSOLE_SCRIPT), *argv], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env=env, stdin=subprocess.DEVNULL)


def readme_admin_commands() -> list[list[str]]:
    """The `ptt-server` lines of the README's Quick start, as argument lists."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [shlex.split(line[len(README_PREFIX):]) for line in section.splitlines()
            if line.startswith(README_PREFIX)]


# -- the README's commands on a directory that does not exist, then serve ----------------------
@pytest.mark.slow
def test_readme_admin_commands_then_serve_on_a_new_nested_directory(tmp_path: Path) -> None:
    # The layout only (DataDir(...) checks nothing): no part of this path exists yet.
    data = DataDir(tmp_path / "srv" / "ptt" / "data")
    commands = readme_admin_commands()
    assert [c[:2] if c[0] != "token" else c[:1] for c in commands] == [
        ["talkgroup", "add"], ["user", "add"], ["token"]], commands
    outputs = []
    for argv in commands:
        proc = ptt_server("--data-dir", str(data.root), *argv)
        assert proc.returncode == 0, (argv, proc.stderr)
        outputs.append(proc.stdout)
    assert data.root.is_dir() and data.directory_db.is_file()
    # Private: it holds the signing key, password hashes and (later) recordings.
    assert stat.S_IMODE(data.root.stat().st_mode) & 0o077 == 0
    user_name = commands[1][2]
    password = commands[1][commands[1].index("--password") + 1]
    claims = authority(data).verify(outputs[2].strip())
    assert claims.sub == user_name and claims.talkgroups == (commands[0][2],)

    port = free_port()
    proc_serve = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "--data-dir", str(data.root), "serve", "--http",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--ice-address", "127.0.0.1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    assert proc_serve.stderr is not None
    output = Output(proc_serve.stderr)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc_serve, output, timeout=60)
        status, body = http(base + "/api/login", {"username": user_name, "password": password})
        assert status == 200, body
        assert authority(data).verify(str(body["token"])).sub == user_name
        # Its embedded redis-server keeps its files in the same directory.
        redis_pid, redis_port = embedded_redis(proc_serve.pid)
        assert (data.redis_dir / "redis.log").is_file()
        proc_serve.send_signal(signal.SIGTERM)
        assert exit_status(proc_serve, output, 60) == 0, output.join(10)[-3000:]
    finally:
        if proc_serve.poll() is None:
            proc_serve.kill()
            proc_serve.wait(timeout=30)
        output.join(10)
    assert gone(redis_pid)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", redis_port), timeout=5).close()


# -- audit never creates a data directory ------------------------------------------------------
def test_audit_on_a_missing_directory_fails_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "typo" / "data"
    for argv in (["--data-dir", str(missing), "audit", "verify"],
                 ["audit", "search", "--data-dir", str(missing)],
                 ["audit", "--data-dir", str(missing), "purge", "--days", "1"]):
        proc = ptt_server(*argv)
        assert proc.returncode == 2, argv
        assert proc.stdout == ""
        [line] = proc.stderr.strip().splitlines()
        assert str(missing) in line and "--data-dir" in line, line
        assert not (tmp_path / "typo").exists()


def test_audit_on_a_directory_that_is_not_a_data_directory(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = ptt_server("--data-dir", str(empty), "audit", "verify")
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert str(empty) in line and "not a ptt-server data directory" in line
    assert list(empty.iterdir()) == []
    # The default (./data) is checked alike: run from a directory without one.
    proc = ptt_server("audit", "verify", cwd=empty)
    assert proc.returncode == 2 and str(empty / "data") in proc.stderr
    assert list(empty.iterdir()) == []


def test_audit_on_a_data_directory_an_admin_command_made(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert ptt_server("--data-dir", str(data), "talkgroup", "add", "A").returncode == 0
    proc = ptt_server("--data-dir", str(data), "audit", "verify")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK: 0 entries")
    # --help needs no data directory at all.
    proc = ptt_server("--data-dir", str(tmp_path / "nope"), "audit", "--help")
    assert proc.returncode == 0 and "verify" in proc.stdout
    assert not (tmp_path / "nope").exists()


# -- a path that is a file ---------------------------------------------------------------------
def test_a_file_as_data_directory_is_refused_by_every_command(tmp_path: Path) -> None:
    path = tmp_path / "ptt"
    path.write_bytes(b"not a directory")
    for argv in (["talkgroup", "add", "A"], ["user", "list"], ["token", "u1"],
                 ["serve", "--http", "--host", "127.0.0.1", "--port", str(free_port())],
                 ["audit", "verify"]):
        proc = ptt_server("--data-dir", str(path), *argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        [line] = proc.stderr.strip().splitlines()
        assert f"{path} exists and is not a directory" in line, line
    assert path.read_bytes() == b"not a directory"


def test_a_file_among_the_parents(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    target = tmp_path / "f" / "data"
    with pytest.raises(DataDirError, match=re.escape(f"cannot create data directory {target}")):
        DataDir.create(target)


# -- DataDir itself ----------------------------------------------------------------------------
def test_layout_keeps_the_existing_file_names(tmp_path: Path) -> None:
    data = DataDir.create(tmp_path / "d")
    rel = {name: getattr(data, name).relative_to(data.root).as_posix() for name in (
        "directory_db", "signing_key", "tls_dir", "dev_ca_cert", "redis_dir", "recordings_dir",
        "ledger", "index")}
    # Data directories made before DataDir existed have exactly these: never rename one.
    assert rel == {
        "directory_db": "directory.sqlite3", "signing_key": "jwt-signing.key",
        "tls_dir": "tls", "dev_ca_cert": "tls/ca.crt", "redis_dir": "redis",
        "recordings_dir": "recordings", "ledger": "ledger/ledger.jsonl",
        "index": "index.sqlite3",
    }


def test_a_data_directory_made_the_old_way_still_works(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    key = load_or_create_signing_key(old)
    Directory(old / "directory.sqlite3").add_user("u1", Role.ADMIN, [], "pw")
    data = DataDir.existing(old)
    assert data.signing_key.read_bytes() == key
    proc = ptt_server("--data-dir", str(old), "token", "u1")
    assert proc.returncode == 0, proc.stderr
    assert authority(data).verify(proc.stdout.strip()).sub == "u1"


def test_relative_paths_resolve_against_the_current_directory_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = DataDir.create("a/../data")
    assert data.root == tmp_path.resolve() / "data" and data.root.is_dir()
    monkeypatch.chdir("/")
    assert data.directory_db == tmp_path.resolve() / "data" / "directory.sqlite3"
    with pytest.raises(DataDirError, match=re.escape(f"no data directory at {Path('/x-nope')}")):
        DataDir.existing("/x-nope")


def test_existing_mode_is_left_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o750)
    shared.chmod(0o750)
    DataDir.create(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o750


# -- Directory(...) never guesses "database file" for a directory ------------------------------
@pytest.mark.parametrize("rel", ["srv-ptt", "missing/directory.sqlite3"])
def test_directory_refuses_paths_meant_as_directories(tmp_path: Path, rel: str) -> None:
    with pytest.raises(DirectoryError) as exc:
        Directory(tmp_path / rel)
    assert exc.value.code == "invalid_path" and str(tmp_path / rel) in exc.value.message
    assert list(tmp_path.iterdir()) == []


def test_directory_accepts_its_file_or_a_data_directory(tmp_path: Path) -> None:
    Directory(tmp_path / "directory.sqlite3").add_talkgroup("A")
    assert Directory(tmp_path).get_talkgroup("A") is not None
    assert Directory(tmp_path).path == tmp_path / "directory.sqlite3"
