"""Rotated credentials (issue 23, point 2): a real exporter process reading its DSN from a
Kubernetes-style Secret volume follows the password through three rotations, each caught by a
different trigger, without a restart.

The Secret volume's layout is Kubernetes': ``dsn`` -> ``..data/dsn``, ``..data`` ->
``..2026_<n>``, a directory holding the file; a rotation writes a new directory and swaps the
``..data`` symlink atomically. The private server authenticates the exporter's role with
scram-sha-256 (the shared test server trusts everyone on 127.0.0.1, so a wrong password would
go unnoticed there).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import asyncpg
import pytest

from exporter.collectors import QUERY_NAMES
from exporter.ops.embedded import EmbeddedPostgres
from tests.conftest import ExporterProcess, StartExporter, wait_until
from tests.helpers import ahttp_get, value
from tests.rig import fill

LAST_SUCCESS = "tw_exporter_query_last_success_timestamp_seconds"
RELOADS = "tw_exporter_dsn_reloads_total"
FAILURES = "tw_exporter_dsn_reload_failures_total"
# The bound: collection resumes within this long after a rotation.
RESUME_BOUND = 30.0
# Same length, so an in-place rewrite with the old mtime leaves the file's stat unchanged.
PASSWORDS = ("Pw-1st-a#b/c?d", "Pw-2nd-a#b/c?d", "Pw-3rd-a#b/c?d", "Pw-4th-a#b/c?d")


def socket_dir(server: EmbeddedPostgres) -> str:
    return server.dsn.rpartition("host=")[2]


def role_dsn(server: EmbeddedPostgres, password: str) -> str:
    # Unencoded '#', '/' and '?' in the password, as operators write them.
    return f"postgresql://tw_rotated:{password}@/postgres?host={socket_dir(server)}\n"


async def prepare(server: EmbeddedPostgres) -> None:
    """The tables, a role that must give its password, and pg_hba rules that ask for it."""
    await fill(server.dsn)
    conn = await asyncpg.connect(server.dsn)
    try:
        await conn.execute(
            f"CREATE ROLE tw_rotated LOGIN PASSWORD '{PASSWORDS[0]}';"
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO tw_rotated"
        )
        hba = Path(server.pgdata) / "pg_hba.conf"
        rules = hba.read_text()
        hba.write_text(
            "local all tw_rotated scram-sha-256\n"
            "host all tw_rotated 127.0.0.1/32 scram-sha-256\n" + rules
        )
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


async def rotate_password(server: EmbeddedPostgres, password: str) -> None:
    """ALTER ROLE, then end the exporter's sessions (a connection recycle, sooner)."""
    conn = await asyncpg.connect(server.dsn)
    try:
        await conn.execute(f"ALTER ROLE tw_rotated PASSWORD '{password}'")
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'tw_rotated'"
        )
    finally:
        await conn.close()


def swap_secret(volume: Path, generation: int, content: str) -> None:
    """What the kubelet does: a new timestamped directory, then an atomic symlink swap."""
    target = volume / f"..2026_{generation:02d}"
    target.mkdir()
    (target / "dsn").write_text(content)
    (volume / "..data_tmp").symlink_to(target.name)
    os.replace(volume / "..data_tmp", volume / "..data")


def rewrite_unnoticed(volume: Path, content: str) -> None:
    """Rewrite the current file in place, same size and mtime: its stat does not change, so
    only SIGHUP or a rejected password makes the exporter read it again."""
    path = volume / "dsn"
    before = path.stat()
    with path.open("r+") as file:
        file.write(content)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size


async def scrape(process: ExporterProcess) -> str:
    return (await ahttp_get(process.url + "/metrics")).text


async def resumed_since(process: ExporterProcess, since: float) -> bool:
    text = await scrape(process)
    return all((value(text, LAST_SUCCESS, query=q) or 0) > since for q in QUERY_NAMES)


async def failing(process: ExporterProcess) -> bool:
    return value(await scrape(process), "tw_up") == 0


async def test_the_password_follows_the_secret(
    restartable_pg: EmbeddedPostgres, exporter_proc: StartExporter, tmp_path: Path
) -> None:
    server = restartable_pg
    await prepare(server)
    volume = tmp_path / "secret"
    volume.mkdir()
    swap_secret(volume, 1, role_dsn(server, PASSWORDS[0]))
    (volume / "dsn").symlink_to("..data/dsn")
    process = exporter_proc(
        "--dsn-file", str(volume / "dsn"), "--interval", "1", "--query-timeout", "1"
    )
    await wait_until(lambda: resumed_since(process, 0), timeout=15)
    took = []

    # 1. The Secret is rotated: ALTER ROLE, sessions end, the kubelet swaps ..data.
    await rotate_password(server, PASSWORDS[1])
    await wait_until(lambda: failing(process), timeout=10)
    swap_secret(volume, 2, role_dsn(server, PASSWORDS[1]))
    rotated = time.time()
    await wait_until(lambda: resumed_since(process, rotated), timeout=RESUME_BOUND)
    took.append(time.time() - rotated)
    assert value(await scrape(process), RELOADS) == 1

    # 2. The file changes unnoticeably, then the server rejects the old password: re-read.
    rewrite_unnoticed(volume, role_dsn(server, PASSWORDS[2]))
    rotated = time.time()
    await rotate_password(server, PASSWORDS[2])
    await wait_until(lambda: resumed_since(process, rotated), timeout=RESUME_BOUND)
    took.append(time.time() - rotated)
    assert value(await scrape(process), RELOADS) == 2

    # 3. SIGHUP reads the file, even when nothing about it looks changed.
    rewrite_unnoticed(volume, role_dsn(server, PASSWORDS[3]))
    process.proc.send_signal(signal.SIGHUP)

    async def reloaded() -> bool:
        return value(await scrape(process), RELOADS) == 3

    await wait_until(reloaded, timeout=10)
    rotated = time.time()
    await rotate_password(server, PASSWORDS[3])
    await wait_until(lambda: resumed_since(process, rotated), timeout=RESUME_BOUND)
    took.append(time.time() - rotated)

    # A broken file: counted, and the DSN in use stays.
    swap_secret(volume, 3, role_dsn(server, PASSWORDS[3]) * 2)

    async def failure_counted() -> bool:
        return value(await scrape(process), FAILURES) == 1

    await wait_until(failure_counted, timeout=10)
    since = time.time()
    await wait_until(lambda: resumed_since(process, since), timeout=10)

    # The watch alone (no rejection, no signal) follows a symlink swap.
    swap_secret(volume, 4, role_dsn(server, PASSWORDS[3]).replace("postgresql:", "postgres:"))

    async def swap_followed() -> bool:
        return value(await scrape(process), RELOADS) == 4

    await wait_until(swap_followed, timeout=10)
    print("collection resumed after each rotation in " + ", ".join(f"{t:.2f}s" for t in took))
    assert process.proc.poll() is None
    logs = process.logs()
    assert "again (the file changed)" in logs, logs
    assert "again (reload requested)" in logs, logs
    assert "again (the server rejected the password)" in logs, logs
    for password in PASSWORDS:
        for fragment in [password, *password.replace("#", "/").replace("?", "/").split("/")]:
            if len(fragment) >= 3:
                assert fragment not in logs, (fragment, logs)


def test_the_lock_follows_its_own_file_or_the_queries_file(tmp_path: Path) -> None:
    """Which file each DSN follows: the lock uses --ha-dsn-file, else the queries' file."""
    from exporter.app import dsn_sources
    from exporter.config import settings as cfg
    from exporter.config.dsn import DsnFile

    queries, lock = tmp_path / "dsn", tmp_path / "ha-dsn"
    queries.write_text("postgresql://tw:a#b@db/app\n")
    lock.write_text("postgresql://tw:c/d@primary/app\n")
    parser = cfg.OneLineArgumentParser()
    cfg.add_options(parser, cfg.RUN_OPTIONS)

    def settings(*argv: str) -> cfg.Settings:
        return cfg.settings_from(parser.parse_args(["--ha", *argv]), environ={})

    shared = settings("--dsn-file", str(queries))
    query_source, ha_source = dsn_sources(shared)
    assert isinstance(query_source, DsnFile) and ha_source is query_source
    own = settings("--dsn-file", str(queries), "--ha-dsn-file", str(lock))
    assert own.ha_dsn == "postgresql://tw:c/d@primary/app"
    query_source, ha_source = dsn_sources(own)
    assert isinstance(ha_source, DsnFile) and ha_source.path == lock
    assert ha_source.current() == own.ha_dsn
    fixed = settings("--dsn-file", str(queries), "--ha-dsn", "postgresql://tw@primary/app")
    assert not isinstance(dsn_sources(fixed)[1], DsnFile)
    with pytest.raises(cfg.SettingsError, match="mutually exclusive"):
        settings(
            "--dsn-file", str(queries), "--ha-dsn", "postgresql://x@y/z", "--ha-dsn-file", str(lock)
        )
