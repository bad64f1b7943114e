"""TLS for the server: a development CA and certificate in the data directory, and the context.

HTTPS is not optional for a browser client: microphone access (getUserMedia) needs a secure
context, and tokens and audio must not cross a network in clear. Without a certificate of its
own the server makes one with certs/make-dev-cert.sh (openssl only), signed by a local CA that
phones can be told to trust once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger("ptt.tls")

# certs/ is at the top of the repository: ptt_server/app/tls.py -> parents[2]. (When this
# module moved into app/, parent.parent silently pointed into the package and every fresh
# HTTPS start failed with "no TLS certificate".)
SCRIPT = Path(__file__).resolve().parents[2] / "certs" / "make-dev-cert.sh"
TLS_DIR = "tls"
SCRIPT_TIMEOUT_S = 120


class TlsError(RuntimeError):
    pass


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    # Two servers starting on one data directory must not both write the certificate.
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def dev_tls_dir(data_dir: Path) -> Path:
    return data_dir / TLS_DIR


def ensure_dev_certificate(
    data_dir: Path, extra_names: Sequence[str] = ()
) -> tuple[Path, Path]:
    """`(server.crt, server.key)` under `<data_dir>/tls/`, made by the script if missing.

    The script runs on every start: it is idempotent, and reissues the certificate (same CA,
    so phones keep trusting it) when it is about to expire or the machine has a new address.
    A certificate you put there yourself (not from that CA) is left alone. If the script or
    openssl is unavailable, an existing certificate is still used.
    """
    tls_dir = dev_tls_dir(data_dir)
    tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = tls_dir / "server.crt", tls_dir / "server.key"
    with _exclusive(tls_dir / ".lock"):
        problem = _run_script(tls_dir, extra_names)
    if not (cert.is_file() and key.is_file()):
        raise TlsError(
            f"no TLS certificate in {tls_dir} ({problem or 'the script made none'}); install "
            "openssl, or pass --tls-cert/--tls-key, or --http behind a TLS proxy"
        )
    if problem:
        log.warning("using the existing certificate", extra={"fields": {"problem": problem}})
    return cert, key


def _run_script(tls_dir: Path, extra_names: Sequence[str]) -> str | None:
    """Runs make-dev-cert.sh; returns why it could not, or None."""
    if not SCRIPT.is_file():
        return f"{SCRIPT} is missing"
    bash = shutil.which("bash")
    if bash is None:
        return "bash is not installed"
    if shutil.which("openssl") is None:
        return "openssl is not installed"
    try:
        proc = subprocess.run(
            [bash, str(SCRIPT), str(tls_dir), *extra_names],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=SCRIPT_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"make-dev-cert.sh failed: {exc}"
    for line in proc.stderr.splitlines():
        if line.strip():
            log.info(line.strip())
    if proc.returncode != 0:
        return f"make-dev-cert.sh exited with {proc.returncode}"
    return None


def ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context: TLS 1.2 or newer (RFC 8996 retires 1.0 and 1.1), the Python
    defaults' modern cipher suites, and the certificate chain in `cert`."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from exc
    return ctx
