"""The real process behind ``--web-config-file``: TLS and basic auth on /metrics."""

from __future__ import annotations

import subprocess
from pathlib import Path

import bcrypt

from tests.conftest import StartExporter, exporter_command, wait_until_sync
from tests.helpers import https_get
from tests.pki import PKI


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
