"""The real process behind ``--web-config-file``: TLS and basic auth on /metrics."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import bcrypt

from tests.conftest import StartExporter, exporter_command, wait_until_sync
from tests.helpers import https_get, poll_sync
from tests.pki import PKI, Pair


def test_tls_and_basic_auth(
    seeded_db: str, exporter_proc: StartExporter, pki: PKI, tmp_path: Path
) -> None:
    hashed = bcrypt.hashpw(b"scrape-pw", bcrypt.gensalt(rounds=4)).decode()
    config = tmp_path / "web.yml"
    config.write_text(
        f"tls_server_config:\n  cert_file: {pki.server.cert}\n  key_file: {pki.server.key}\n"
        f"basic_auth_users:\n  prometheus: {hashed}\n"
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
    )
    proc = exporter_proc(
        "--dsn",
        seeded_db,
        "--interval",
        "1",
        "--listen",
        "localhost:0",
        "--web-config-file",
        str(config),
    )
    assert proc.url.startswith("https://")
    url = proc.url.replace("127.0.0.1", "localhost")
    ca = pki.ca.cert
    assert https_get(url + "/metrics", ca).status == 401
    assert https_get(url + "/metrics", ca, ("prometheus", "wrong")).status == 401
    assert https_get(url + "/metrics", ca, ("nobody", "scrape-pw")).status == 401
    assert https_get(url + "/healthz", ca).status == 200
    wait_until_sync(lambda: https_get(url + "/readyz", ca).status == 200)
    ok = https_get(url + "/metrics", ca, ("prometheus", "scrape-pw"))
    assert ok.status == 200
    assert b"tw_up 1.0" in ok.body
    assert ok.headers["X-Frame-Options"] == "deny"
    assert proc.stop() == 0
    assert "scrape-pw" not in proc.logs()


def test_bad_web_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "web.yml"
    config.write_text("tls_server_config:\n  cert_fil: x.crt\n")
    result = subprocess.run(
        exporter_command("run", "--dsn", "postgresql://h/db", "--web-config-file", str(config)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tw-exporter: error: --web-config-file:")
    assert "cert_fil" in lines[0]


def scrape_with_cert(url: str, ca: Path, cert: Pair | None) -> tuple[bytes, str]:
    """GET /metrics on a new TLS connection presenting ``cert``: the status line and the
    serial number of the certificate the server presented. Raises ssl.SSLError or
    ConnectionError when the server refuses the client."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    address = urlsplit(url)
    assert address.port is not None
    with (
        socket.create_connection(("127.0.0.1", address.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        peer = tls.getpeercert()
        assert peer is not None
        tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    if not chunks:
        raise ConnectionError("the server closed the connection without answering")
    return b"".join(chunks).split(b"\r\n", 1)[0], str(peer["serialNumber"])


def test_client_certificates_and_rotation(
    seeded_db: str, exporter_proc: StartExporter, pki: PKI, tmp_path: Path
) -> None:
    """RequireAndVerifyClientCert on the running exporter: no certificate and a certificate
    from another CA are refused, the client CA's certificate is served; server certificate
    files replaced on disk are presented to new connections without a restart."""
    for name, src in {
        "server.crt": pki.server.cert,
        "server.key": pki.server.key,
        "ca.crt": pki.ca.cert,
    }.items():
        shutil.copyfile(src, tmp_path / name)
    config = tmp_path / "web.yml"
    config.write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
    )
    proc = exporter_proc(
        "--dsn", seeded_db, "--interval", "1", "--listen", "localhost:0",
        "--web-config-file", str(config),
    )  # fmt: skip
    ca = pki.ca.cert
    for refused in (None, pki.rogue_client):
        try:
            answer = scrape_with_cert(proc.url, ca, refused)
        except (ssl.SSLError, ConnectionError):
            continue
        raise AssertionError(f"client certificate {refused} was served: {answer!r}")
    status, serial = scrape_with_cert(proc.url, ca, pki.client)
    assert status == b"HTTP/1.1 200 OK"
    assert serial == f"{1001:04X}"

    for name, src in (("server.key", pki.rotated.key), ("server.crt", pki.rotated.cert)):
        staged = tmp_path / f"{name}.new"
        shutil.copyfile(src, staged)
        os.replace(staged, tmp_path / name)  # atomic, as a Kubernetes secret update
    poll_sync(
        lambda: scrape_with_cert(proc.url, ca, pki.client)[1] == f"{2002:04X}",
        "the rotated certificate served to a new connection",
        timeout=15,
    )
    assert proc.stop() == 0
