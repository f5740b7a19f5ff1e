"""A real PgBouncer (Debian's ``/usr/sbin/pgbouncer``) in front of a test's PostgreSQL.

PgBouncer refuses to run as root, so under root it runs as another OS user: ``postgres`` for a
server reached over TCP, or the owner of the server's unix socket directory (the embedded
server keeps its socket in its 0700 data directory, which no other account can enter). Its
config lives in a directory of its own, readable by that account (pytest's 0700 temporary
directories are not). The config is PgBouncer's defaults plus what a test needs to reach the
server: ``ignore_startup_parameters`` stays empty, as in a stock install, so a client sending
``statement_timeout`` at startup is refused exactly as in production.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from tests.conftest import wait_until_sync
from tests.helpers import free_port, require_tool

PGBOUNCER = Path("/usr/sbin/pgbouncer")
LISTENING = "listening on 127.0.0.1:"


@dataclass(frozen=True)
class Backend:
    """Where PgBouncer finds PostgreSQL: a TCP host or a unix socket directory, and a port."""

    host: str
    port: int
    user: str

    @classmethod
    def from_dsn(cls, dsn: str) -> Backend:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
        port = int(query.get("port", [parts.port or 5432])[0])
        return cls(host=host, port=port, user=parts.username or "postgres")


@dataclass
class PgBouncer:
    port: int
    pool_mode: str
    directory: Path
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def dsn_for(self, server_dsn: str) -> str:
        """``server_dsn`` rewritten to reach the same database and user through PgBouncer."""
        parts = urlsplit(server_dsn)
        user = parts.username or "postgres"
        return urlunsplit(("postgresql", f"{user}@127.0.0.1:{self.port}", parts.path, "", ""))

    def logs(self) -> str:
        return "".join(self.lines)


def os_account(backend: Backend) -> pwd.struct_passwd | None:
    """Who runs PgBouncer: None means ourselves (not root); under root ``postgres`` for a
    server over TCP, or the owner of the server's unix socket directory."""
    if os.geteuid() != 0:
        return None
    if backend.host.startswith("/"):
        return pwd.getpwuid(Path(backend.host).stat().st_uid)
    return pwd.getpwnam("postgres")


def start_pgbouncer(
    argv: list[str], directory: Path, account: pwd.struct_passwd | None
) -> tuple[subprocess.Popen[str], list[str]]:
    """PgBouncer (``argv``: its binary and arguments) run in ``directory`` as ``account``,
    once it listens; its log lines keep arriving in the returned list. Popen switches user
    itself (no runuser in between), so terminate() reaches PgBouncer. One that exits or never
    listens is stopped and fails with its log."""
    proc = subprocess.Popen(
        argv,
        cwd=directory,
        user=None if account is None else account.pw_uid,
        group=None if account is None else account.pw_gid,
        extra_groups=None if account is None else [],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        wait_until_sync(lambda: LISTENING in "".join(lines) or proc.poll() is not None)
        if proc.poll() is not None:
            raise AssertionError("pgbouncer did not start:\n" + "".join(lines))
    except BaseException:
        stop_pgbouncer(proc)
        raise
    return proc, lines


def stop_pgbouncer(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _config(backend: Backend, port: int, pool_mode: str, extra: dict[str, str]) -> str:
    settings = {
        "listen_addr": "127.0.0.1",
        "listen_port": str(port),
        "unix_socket_dir": "",
        "auth_type": "trust",
        "auth_file": "userlist.txt",
        "pool_mode": pool_mode,
        # Retry a failed server login after 1 s instead of 15 s, so restart tests are quick.
        "server_login_retry": "1",
        "logfile": "",
        **extra,
    }
    general = "\n".join(f"{key} = {value}" for key, value in settings.items())
    return (
        "[databases]\n"
        f"* = host={backend.host} port={backend.port} user={backend.user}\n\n"
        f"[pgbouncer]\n{general}\n"
    )


@contextlib.contextmanager
def run_pgbouncer(server_dsn: str, pool_mode: str, **extra: str) -> Iterator[PgBouncer]:
    """Start PgBouncer for ``server_dsn`` in ``pool_mode``; stop it on exit."""
    binary = require_tool("pgbouncer", PGBOUNCER, hint="Debian package pgbouncer")
    backend = Backend.from_dsn(server_dsn)
    directory = Path(tempfile.mkdtemp(prefix="tw-exporter-pgbouncer-"))
    try:
        directory.chmod(0o755)
        port = free_port()
        config = directory / "pgbouncer.ini"
        config.write_text(_config(backend, port, pool_mode, extra))
        (directory / "userlist.txt").write_text(f'"{backend.user}" ""\n')
        for path in (config, directory / "userlist.txt"):
            path.chmod(0o644)
        proc, lines = start_pgbouncer([binary, str(config)], directory, os_account(backend))
        try:
            yield PgBouncer(port, pool_mode, directory, proc, lines)
        finally:
            stop_pgbouncer(proc)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
