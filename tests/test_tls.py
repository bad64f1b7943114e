"""The development CA and certificate (certs/make-dev-cert.sh via ptt_server.tls) for real."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import socket
import ssl
import stat
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ptt_server.app.tls import SCRIPT, TlsError, ensure_dev_certificate, ssl_context

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def san(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        {str(n) for n in ext.get_values_for_type(x509.DNSName)},
        {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)},
    )


def machine_addresses() -> set[str]:
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return set()
    return {str(ipaddress.ip_address(a)) for a in out.stdout.split()}


def test_certificate_contents(data_dir: Path) -> None:
    cert_path, key_path = ensure_dev_certificate(data_dir)
    tls = data_dir / "tls"
    assert (cert_path, key_path) == (tls / "server.crt", tls / "server.key")
    for private in ("server.key", "ca.key"):
        assert stat.S_IMODE((tls / private).stat().st_mode) == 0o600
    ca, cert = load(tls / "ca.crt"), load(cert_path)

    dns, ips = san(cert)
    assert {"127.0.0.1", "::1"} <= ips
    assert machine_addresses() <= ips  # every LAN address, so phones can connect by any
    assert "localhost" in dns and socket.gethostname().lower() in dns

    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku

    now = dt.datetime.now(dt.UTC)
    assert 360 <= (cert.not_valid_after_utc - now).days <= 366
    assert 3640 <= (ca.not_valid_after_utc - now).days <= 3651


def test_idempotent(data_dir: Path) -> None:
    ensure_dev_certificate(data_dir)
    tls = data_dir / "tls"
    before = {p.name: p.read_bytes() for p in tls.iterdir() if p.suffix in (".crt", ".key")}
    assert set(before) == {"ca.crt", "ca.key", "server.crt", "server.key"}
    ensure_dev_certificate(data_dir)
    subprocess.run(["bash", str(SCRIPT), str(tls)], check=True, capture_output=True)
    after = {p.name: p.read_bytes() for p in tls.iterdir() if p.suffix in (".crt", ".key")}
    assert after == before
    assert not [p for p in tls.iterdir() if p.name.startswith(".make-dev-cert")]


def test_new_address_reissues_with_same_ca(data_dir: Path) -> None:
    ensure_dev_certificate(data_dir)
    tls = data_dir / "tls"
    ca_before, key_before = (tls / "ca.crt").read_bytes(), (tls / "server.key").read_bytes()
    ensure_dev_certificate(data_dir, extra_names=["10.250.0.7", "ptt.station.example"])
    dns, ips = san(load(tls / "server.crt"))
    assert "10.250.0.7" in ips and "ptt.station.example" in dns and "127.0.0.1" in ips
    assert (tls / "ca.crt").read_bytes() == ca_before  # installed CAs keep working
    assert (tls / "server.key").read_bytes() == key_before


def test_foreign_certificate_left_alone(data_dir: Path) -> None:
    tls = data_dir / "tls"
    tls.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ptt.example")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    (tls / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tls / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    before = (tls / "server.crt").read_bytes()
    ensure_dev_certificate(data_dir)
    assert (tls / "server.crt").read_bytes() == before
    assert not (tls / "ca.crt").exists()


def test_context_is_tls12_or_newer(data_dir: Path) -> None:
    ctx = ssl_context(*ensure_dev_certificate(data_dir))
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_bad_certificate_files(tmp_path: Path) -> None:
    (tmp_path / "c").write_text("nope")
    with pytest.raises(TlsError):
        ssl_context(tmp_path / "c", tmp_path / "c")


async def test_https_reachable_with_the_ca(data_dir: Path) -> None:
    cert, key = ensure_dev_certificate(data_dir)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context(cert, key))
    await site.start()
    port = runner.addresses[0][1]
    try:
        trusting = ssl.create_default_context(cafile=str(data_dir / "tls" / "ca.crt"))
        async with aiohttp.ClientSession() as session:
            for host in ("127.0.0.1", "localhost"):
                async with session.get(f"https://{host}:{port}/", ssl=trusting) as resp:
                    assert resp.status == 200 and await resp.text() == "ok"
            # Without the CA the certificate is (rightly) not trusted.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(
                    f"https://127.0.0.1:{port}/", ssl=ssl.create_default_context()
                )
    finally:
        await runner.cleanup()
