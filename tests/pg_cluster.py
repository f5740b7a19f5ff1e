"""Running PostgreSQL's own binaries (initdb, pg_ctl, pg_basebackup) for a private cluster: as
ourselves, or, when the tests run as root (which PostgreSQL refuses), as an OS user that may.
Shared by the TLS, replica, hung-host and rotated-credential tests; ``replication_pair`` makes a
primary and a streaming standby (the standby keeps ``hot_standby_feedback = off`` with a short
``max_standby_streaming_delay``, so recovery conflicts happen at once)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.conftest import wait_until
from tests.helpers import free_port, unavailable

OS_USERS = ("postgres", "embedded_postgres")  # PostgreSQL refuses to run as root
STANDBY_DELAY_MS = 100


def server_user() -> pwd.struct_passwd | None:
    """The OS user to run PostgreSQL as: None means "as ourselves" (we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in OS_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    unavailable(f"running as root and none of the OS users {OS_USERS} exists to run PostgreSQL")


def run_as(user: pwd.struct_passwd | None, argv: Sequence[str], cwd: Path) -> None:
    command = list(argv) if user is None else ["runuser", "-u", user.pw_name, "--", *argv]
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed:\n{result.stdout}\n{result.stderr}")


def pg_bindir() -> Path:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        unavailable("pg_config is not installed (Debian package postgresql-15)")
    path = Path(
        subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
    )
    missing = [b for b in ("initdb", "pg_ctl", "pg_basebackup") if not (path / b).exists()]
    if missing:
        unavailable(f"PostgreSQL binaries missing in {path}: {', '.join(missing)}")
    return path


@dataclass(frozen=True)
class Pair:
    primary_port: int
    standby_port: int
    bindir: Path
    user: pwd.struct_passwd | None
    root: Path

    def stop_standby(self) -> None:
        run_as(
            self.user,
            [str(self.bindir / "pg_ctl"), "-D", str(self.root / "standby"), "-m", "fast",
             "-w", "stop"],
            self.root,
        )  # fmt: skip

    def start_standby(self) -> None:
        start_server(self.bindir, self.user, self.root / "standby", self.root)

    def promote_standby(self) -> None:
        run_as(
            self.user, [str(self.bindir / "pg_ctl"), "-D", str(self.root / "standby"), "-w",
                        "promote"], self.root,
        )  # fmt: skip

    def postmaster(self, which: str) -> int:
        return int((self.root / which / "postmaster.pid").read_text().split()[0])

    @property
    def primary(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.primary_port}/postgres"

    @property
    def standby(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.standby_port}/postgres"


def start_server(bindir: Path, user: pwd.struct_passwd | None, data: Path, root: Path) -> None:
    log = root / f"{data.name}.log"
    run_as(user, [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "start"], root)


@contextlib.contextmanager
def replication_pair(primary_conf: str = "", hba: str = "", auth: str = "trust") -> Iterator[Pair]:
    """A private primary and a streaming standby made from it; both stopped on exit (the
    caller thaws whatever it froze first). ``primary_conf`` and ``hba`` are appended to the
    primary's postgresql.conf and pg_hba.conf (the standby copies both); ``auth`` is initdb's
    default for local and host connections."""
    bindir = pg_bindir()
    user = server_user()
    root = Path(tempfile.mkdtemp(prefix="tw-pg-replica-"))
    started: list[Path] = []
    try:
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        primary, standby = root / "primary", root / "standby"
        ports = Pair(free_port(), free_port(), bindir, user, root)
        run_as(
            user,
            [str(bindir / "initdb"), "-D", str(primary), "-U", "postgres", f"--auth={auth}",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            root,
        )  # fmt: skip
        with (primary / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {ports.primary_port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{root}'\nfsync = off\n{primary_conf}\n"
            )
        with (primary / "pg_hba.conf").open("r+") as hba_file:
            rules = hba_file.read()
            hba_file.seek(0)
            # The test's own rules first: pg_hba.conf is read top down.
            hba_file.write(f"{hba}\nhost replication all 127.0.0.1/32 trust\n{rules}")
        start_server(bindir, user, primary, root)
        started.append(primary)
        run_as(
            user,
            [str(bindir / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(ports.primary_port),
             "-U", "postgres", "-D", str(standby), "-R", "-X", "stream", "--no-sync"],
            root,
        )  # fmt: skip
        with (standby / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nport = {ports.standby_port}\nhot_standby = on\n"
                "hot_standby_feedback = off\n"
                f"max_standby_streaming_delay = {STANDBY_DELAY_MS}ms\n"
            )
        start_server(bindir, user, standby, root)
        started.append(standby)
        yield ports
    finally:
        for data in reversed(started):
            with contextlib.suppress(AssertionError):  # already stopped by the test
                run_as(
                    user,
                    [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                    root,
                )
        shutil.rmtree(root, ignore_errors=True)


async def replayed(pair: Pair) -> None:
    """Wait until the standby has replayed everything the primary has written so far."""
    primary = await asyncpg.connect(pair.primary)
    try:
        lsn = await primary.fetchval("SELECT pg_current_wal_lsn()")
    finally:
        await primary.close()
    standby = await asyncpg.connect(pair.standby)
    try:

        async def caught_up() -> bool:
            return bool(
                await standby.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn)
            )

        await wait_until(caught_up, timeout=15)
    finally:
        await standby.close()
