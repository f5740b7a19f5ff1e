"""The exporter against a PostgreSQL that only accepts TLS, with ``sslmode=verify-full``.

A private PostgreSQL 15 (Debian's binaries, run as a non-root OS user, on a free loopback port)
gets a server certificate signed by a CA made here with the ``openssl`` CLI (CN ``localhost``,
SANs ``localhost`` and ``127.0.0.1``); ``pg_hba.conf`` allows TCP connections over TLS only.
With the right CA the exporter connects and serves data; with another CA, or a host name the
certificate does not carry, it must refuse to connect and say why.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from exporter.ops import dataset
from tests.conftest import StartExporter, exporter_command, wait_until_sync
from tests.helpers import free_port, http_get, require_tool, series, unavailable, value
from tests.pg_cluster import run_as, server_user
from tests.pki import issue, make_ca

PG_BIN = Path("/usr/lib/postgresql/15/bin")
QUERIES = ("top_users", "trending_hashtags", "platform_stats")
CERT_VERIFY_RE = re.compile(r"certificate verif", re.IGNORECASE)

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------ certificates (openssl CLI)


def _require_binaries() -> None:
    missing = [b for b in ("initdb", "pg_ctl", "postgres") if not (PG_BIN / b).exists()]
    reason = f"PostgreSQL 15 binaries not found in {PG_BIN} (missing {', '.join(missing)})"
    if missing:
        unavailable(reason)
    require_tool("openssl", hint="needed to make test certificates")


def _can_bind(address: str) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((address, 0))
    except OSError:
        return False
    return True


@dataclass
class TLSServer:
    port: int
    ca: Path  # the CA that signed the server certificate
    wrong_ca: Path  # an unrelated self-signed CA
    extra_address: str | None  # a loopback address the server listens on but the cert lacks

    def dsn(
        self, host: str = "localhost", *, ca: Path | None = None, sslmode: str = "verify-full"
    ) -> str:
        root = ca or self.ca
        return (
            f"postgresql://postgres@{host}:{self.port}/postgres"
            f"?sslmode={sslmode}&sslrootcert={root}"
        )


async def _seed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await dataset.create_schema(conn)
        await conn.execute(
            """
            INSERT INTO tw_users (id, username, follower_count, verified) VALUES
              (1, 'alice', 500, true);
            INSERT INTO tw_tweets (id, user_id, like_count, created_at) VALUES
              (1, 1, 10, now() - interval '1 day');
            INSERT INTO tw_hashtags (id, tag) VALUES (1, 'tls');
            INSERT INTO tw_tweet_hashtags VALUES (1, 1);
            """
        )
        # The test connection itself went over TLS (pg_hba allows nothing else over TCP).
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    _require_binaries()
    user = server_user()
    certs = tmp_path_factory.mktemp("pg-tls-certs")
    ca = make_ca(certs, "ca")
    wrong_ca = make_ca(certs, "wrong-ca").cert
    server_pair = issue(certs, ca, "server", "localhost", 1001, "serverAuth")
    server_cert, server_key = server_pair.cert, server_pair.key

    # pytest's tmp dirs are private to us; the server's user needs a directory of its own.
    root = Path(tempfile.mkdtemp(prefix="tw-pg-tls-"))
    try:
        data, sockets = root / "data", root / "sockets"
        sockets.mkdir()
        for name, source in (("server.crt", server_cert), ("server.key", server_key)):
            shutil.copyfile(source, root / name)
        (root / "server.key").chmod(0o600)
        if user is not None:
            for path in (root, sockets, root / "server.crt", root / "server.key"):
                os.chown(path, user.pw_uid, user.pw_gid)
        run_as(
            user,
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            cwd=root,
        )
        extra = "127.0.0.2" if _can_bind("127.0.0.2") else None
        port = free_port()
        listen = ",".join(a for a in ("127.0.0.1", extra) if a)
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {port}\nlisten_addresses = '{listen}'\n"
                f"unix_socket_directories = '{sockets}'\n"
                f"ssl = on\nssl_cert_file = '{root / 'server.crt'}'\n"
                f"ssl_key_file = '{root / 'server.key'}'\nfsync = off\n"
            )
        # TCP only over TLS: a connection that works proves the encryption.
        (data / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.0/8 trust\n"
        )
        run_as(
            user,
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(root / "server.log"),
                "-w",
                "-t",
                "30",
                "start",
            ],
            cwd=root,
        )
        try:
            server = TLSServer(port=port, ca=ca.cert, wrong_ca=wrong_ca, extra_address=extra)
            asyncio.run(_seed(server.dsn()))
            yield server
        finally:
            run_as(
                user,
                [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                cwd=root,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ tests


def run_check(dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        exporter_command("check", "--query-timeout", "5"),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TW_EXPORTER_DSN": dsn},
        check=False,
    )


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_check_passes_with_verify_full_and_the_right_ca(tls_server: TLSServer, host: str) -> None:
    result = run_check(tls_server.dsn(host))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "check: ok" in result.stdout


def test_run_serves_data_over_verified_tls(
    tls_server: TLSServer, exporter_proc: StartExporter
) -> None:
    proc = exporter_proc("--interval", "1", env={"TW_EXPORTER_DSN": tls_server.dsn()})

    def collected() -> bool:
        text = http_get(proc.url + "/metrics").text
        # Each query runs on its own job: wait until all three have been served.
        return (
            value(text, "tw_up") == 1
            and value(text, "tw_platform_tweets", window="7d") == 1
            and bool(series(text, "tw_hashtag_tweets"))
            and bool(series(text, "tw_user_followers"))
        )

    wait_until_sync(collected)
    text = http_get(proc.url + "/metrics").text
    assert series(text, "tw_hashtag_tweets") == {(("tag", "tls"), ("window", "7d")): 1.0}
    assert proc.stop() == 0


def test_check_fails_clearly_with_the_wrong_ca(tls_server: TLSServer) -> None:
    result = run_check(tls_server.dsn(ca=tls_server.wrong_ca))
    assert result.returncode != 0
    failed = [line for line in result.stdout.splitlines() if "FAILED" in line]
    assert failed, result.stdout
    assert failed[0].startswith("connect: FAILED"), failed
    assert CERT_VERIFY_RE.search(failed[0]), failed[0]
    assert "Traceback" not in result.stderr


def test_run_with_the_wrong_ca_is_down_and_counts_connection_errors(
    tls_server: TLSServer, exporter_proc: StartExporter
) -> None:
    proc = exporter_proc(
        "--interval", "0.5", env={"TW_EXPORTER_DSN": tls_server.dsn(ca=tls_server.wrong_ca)}
    )

    def errors() -> dict[str, float]:
        text = http_get(proc.url + "/metrics").text
        return {
            query: value(text, "tw_exporter_query_errors_total", query=query, reason="connection")
            or 0.0
            for query in QUERIES
        }

    wait_until_sync(lambda: min(errors().values()) >= 1)
    first = errors()
    wait_until_sync(lambda: all(n > first[q] for q, n in errors().items()))
    text = http_get(proc.url + "/metrics").text
    assert value(text, "tw_up") == 0
    assert series(text, "tw_user_followers") == {}
    for query in QUERIES:
        for reason in ("timeout", "sql"):
            assert value(text, "tw_exporter_query_errors_total", query=query, reason=reason) == 0
    assert http_get(proc.url + "/readyz").status == 503
    assert proc.stop() == 0
    assert CERT_VERIFY_RE.search(proc.logs()), proc.logs()


def test_verify_full_rejects_a_host_name_the_certificate_lacks(tls_server: TLSServer) -> None:
    if tls_server.extra_address is None:
        unavailable("cannot bind 127.0.0.2 here")
    mismatch = run_check(tls_server.dsn(tls_server.extra_address))
    assert mismatch.returncode != 0
    assert re.search(
        r"connect: FAILED: .*(mismatch|doesn't match|not valid for)", mismatch.stdout
    ), mismatch.stdout
    # verify-ca checks the chain only, so the same address passes: the failure above was the
    # host name check, the one thing verify-full adds.
    chain_only = run_check(tls_server.dsn(tls_server.extra_address, sslmode="verify-ca"))
    assert chain_only.returncode == 0, chain_only.stdout + chain_only.stderr


def test_server_refuses_plaintext(tls_server: TLSServer) -> None:
    result = run_check(tls_server.dsn(sslmode="disable"))
    assert result.returncode != 0
    assert re.search(r"connect: FAILED: .*no encryption", result.stdout), result.stdout
