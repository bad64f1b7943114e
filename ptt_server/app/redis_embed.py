"""An embedded redis-server child process, for a single machine with no Redis configured.

The server (and the test fixtures) start one with its data in a directory of ours, persistence
on (append-only file), bound to loopback only, and stop it when they stop.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path


class EmbeddedRedisError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    def __init__(self, data_dir: Path, port: int | None = None, *, persist: bool = True) -> None:
        # Absolute: redis-server changes into --dir before it opens --logfile, so a relative
        # log path would be looked up inside the data directory a second time.
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.persist = persist
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise EmbeddedRedisError(
                "redis-server not found: install the Debian package 'redis-server' "
                "or pass --redis-url to use an existing Redis"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            exe,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "60 1" if self.persist else "",
            "--appendonly", "yes" if self.persist else "no",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with {self._proc.returncode}; see "
                    f"{self.data_dir / 'redis.log'}"
                )
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError(f"redis-server did not answer on port {self.port}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop and wait for it: SIGTERM (redis-server saves its data), SIGKILL after
        `timeout_s`."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
