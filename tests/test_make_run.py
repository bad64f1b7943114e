"""`make run`, the README's first command, from a fresh copy of the repository.

It runs the Makefile's own `run` target in a copy of the repository (so `--data-dir data` is
relative to a directory that has no data yet), with the existing virtualenv (building one is
minutes of pip) and the copy's code on PYTHONPATH. SERVE_ARGS only moves it to loopback and a
free port: HTTPS, the development certificate and the embedded redis-server are the defaults
`make run` gives an operator.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from ptt_server.app.redis_embed import free_port

from .test_datadir import (
    Output,
    cmdline,
    descendants,
    embedded_redis,
    exit_status,
    gone,
    http,
    wait_healthy,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.prefix)  # the virtualenv running the tests
# Make's own variables: a `make test` running this test must not hand its job server or
# options down to the inner make.
MAKE_ENV_VARS = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")


def fresh_copy(dest: Path) -> Path:
    """The files a clone would have: tracked ones and new ones not ignored, as they are in the
    working tree (so the test checks what is about to be committed), without .venv, data/,
    caches or anything else .gitignore names."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True, timeout=60,
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if not src.is_file():  # deleted in the working tree, not yet committed
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel, follow_symlinks=False)
    assert (dest / "Makefile").is_file() and not (dest / "data").exists()
    return dest


def test_make_run_from_a_fresh_copy(tmp_path: Path) -> None:
    copy = fresh_copy(tmp_path / "repo")
    port = free_port()
    serve_args = f"--host 127.0.0.1 --port {port} --workers 1 --ice-address 127.0.0.1"
    env = {k: v for k, v in os.environ.items() if k not in (*MAKE_ENV_VARS, "PTT_DATA_DIR")}
    env["PYTHONPATH"] = str(copy)  # the copy's code, not the tree the venv was installed from
    bin_dir = VENV / "bin"
    make = subprocess.Popen(
        # -o: the venv's ptt-server counts as up to date, whatever the copy's file times are;
        # so do the browser libraries (npm ci needs the registry, and the tests run with
        # loopback only: the server serves its pages without them).
        ["make", "-C", str(copy), "-o", str(bin_dir / "ptt-server"), "-o",
         "node_modules/.installed", "run", f"VENV={VENV}", f"SERVE_ARGS={serve_args}"],
        cwd=copy, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    assert make.stdout is not None
    output = Output(make.stdout)
    data = copy / "data"
    try:
        password = output.wait_for(r"created with password: (\S+)", timeout=120).group(1)
        servers = [p for p in descendants(make.pid)
                   if any(a.endswith("/ptt-server") for a in cmdline(p)) and "serve" in cmdline(p)]
        assert len(servers) == 1, (servers, output.text)
        [server] = servers
        assert Path(os.readlink(f"/proc/{server}/cwd")) == copy

        context = ssl.create_default_context(cafile=str(data / "tls" / "ca.crt"))
        base = f"https://127.0.0.1:{port}"
        wait_healthy(base, make, output, timeout=60, context=context)
        status, body = http(base + "/api/login", {"username": "admin", "password": password},
                            context=context)
        assert status == 200 and body["token"], body
        # The page the printed URL opens: the web client, from the copy.
        with urllib.request.urlopen(base + "/", timeout=10, context=context) as page:
            assert page.status == 200 and "text/html" in page.headers["Content-Type"]

        # The embedded redis-server: the server's own child, its files under data/redis/.
        redis_pid, redis_port = embedded_redis(server)
        assert (data / "redis" / "redis.log").is_file()
        assert not (data / "redis" / "data").exists()  # a relative --dir/--logfile did this

        # As an operator (or systemd) stops it: the server alone gets SIGTERM. (Signalling make
        # would make make itself die of the signal, hiding the server's exit status.)
        os.kill(server, signal.SIGTERM)
        assert exit_status(make, output, 60) == 0, output.join(10)[-3000:]
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)  # make, the server and its redis-server
            make.wait(timeout=30)
        output.join(10)

    assert gone(server) and gone(redis_pid)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", redis_port), timeout=5).close()
    assert (data / "directory.sqlite3").is_file()
    assert data.stat().st_mode & 0o077 == 0
