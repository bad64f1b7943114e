"""An embedded redis-server child process, for a single machine with no Redis configured.

The server (and the test fixtures) start one with its data in a directory of ours, persistence
on (append-only file), bound to loopback only, and stop it when they stop.
"""

from __future__ import annotations

import contextlib
import os
import secrets
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


PASSWORD_FILE = "password"
SOCKET_FILE = "redis.sock"


class EmbeddedRedis:
    """`secure` (what `serve` uses): a password generated once per data directory (mode
    0600) is required on every connection, and the server itself connects through a Unix
    socket in the 0700 Redis directory. Any local process could otherwise publish a forged
    emergency or rewrite a floor; the loopback port stays, password-protected, for tools."""

    def __init__(
        self, data_dir: Path, port: int | None = None, *, persist: bool = True,
        secure: bool = False,
    ) -> None:
        # Absolute: redis-server changes into --dir before it opens --logfile, so a relative
        # log path would be looked up inside the data directory a second time.
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.persist = persist
        self.secure = secure
        self.password: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.data_dir / SOCKET_FILE

    @property
    def url(self) -> str:
        if self.password is not None:
            return f"unix://:{self.password}@{self.socket_path}?db=0"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def public_url(self) -> str:
        """The URL without its password, for logs."""
        if self.password is not None:
            return f"unix://{self.socket_path}?db=0 (password in {PASSWORD_FILE})"
        return self.url

    def _load_password(self) -> str:
        path = self.data_dir / PASSWORD_FILE
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return path.read_text().strip()

    def start(self, timeout_s: float = 10.0) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise EmbeddedRedisError(
                "redis-server not found: install the Debian package 'redis-server' "
                "or pass --redis-url to use an existing Redis"
            )
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        auth: list[str] = []
        if self.secure:
            os.chmod(self.data_dir, 0o700)
            self.password = self._load_password()
            auth = ["--requirepass", self.password, "--unixsocket", str(self.socket_path),
                    "--unixsocketperm", "700"]
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
            *auth,
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
                hello = b"PING\r\n"
                if self.password is not None:
                    hello = f"AUTH {self.password}\r\n".encode() + hello
                conn.sendall(hello)
                if b"+PONG" in conn.recv(64):
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
