"""The asyncpg pool and the one way the exporter runs a query.

One asyncpg connection cannot run queries concurrently ("another operation is in progress"),
so the exporter owns a small pool sized to the number of queries, at most ``MAX_POOL_SIZE``: the
built-in three run at once, a file of 40 custom queries still opens at most five connections
(the rest wait for a slot, which delays them but is not an error), and a lock or a slow
database can never pile up more connections than that (postgres_exporter #1228).
Each query runs in a read-only transaction under a server-side ``statement_timeout``, with a
client-side deadline as backstop for a server that stops answering altogether. Failures are
classified into the reasons the error counter exports: timeout, connection, sql.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from exporter.health import FailureReason

log = logging.getLogger(__name__)

APPLICATION_NAME = "tw-exporter"
# The client deadline trails the server's statement_timeout so PostgreSQL normally cancels
# first (reason "timeout" with a clean connection); the client only steps in when the server
# itself stops answering.
CLIENT_GRACE_SECONDS = 1.0
# The most connections one exporter opens, however many queries it runs.
MAX_POOL_SIZE = 5
# Connections idle longer than this are closed, so a pool never holds sockets a database
# restart or a NAT timeout has silently broken for long.
MAX_INACTIVE_CONNECTION_LIFETIME = 300.0

# SQLSTATE classes that mean "the database could not be reached or went away".
_CONNECTION_SQLSTATE_PREFIXES = ("08", "57P", "28", "3D000", "53300")
_TIMEOUT_SQLSTATES = ("57014", "55P03")  # query_canceled (statement_timeout), lock_not_available


def pool_size_for(queries: int) -> int:
    """One connection per query, so queries do not wait on each other, up to the bound."""
    return max(1, min(queries, MAX_POOL_SIZE))


class QueryError(Exception):
    """A failed query, with the reason label it is counted under and a password-free message."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason: FailureReason = reason


@dataclass(frozen=True)
class QueryResult:
    rows: Sequence[asyncpg.Record]
    seconds: float


def classify(error: BaseException) -> FailureReason:
    """Map a driver or OS error onto the exported failure reason."""
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(error, asyncpg.PostgresError):
        state = getattr(error, "sqlstate", "") or ""
        if state in _TIMEOUT_SQLSTATES:
            return "timeout"
        if state.startswith(_CONNECTION_SQLSTATE_PREFIXES):
            return "connection"
        return "sql"
    if isinstance(
        error,
        OSError | ConnectionError | asyncpg.InterfaceError | asyncpg.ClientConfigurationError,
    ):
        return "connection"
    return "sql"


def describe(error: BaseException) -> str:
    """A one-line, password-free description (asyncpg messages never contain the DSN)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    name = type(error).__name__
    return f"{name}: {text}" if text else name


class Database:
    """Owns the pool. Creating it never touches the database: connections open on demand, so
    the exporter starts (and serves ``tw_up 0``) while the database is down."""

    def __init__(self, dsn: str, *, pool_size: int, query_timeout: float) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._query_timeout = query_timeout
        self._pool: asyncpg.Pool | None = None
        # Queries beyond the pool's size wait here, outside their deadline: waiting for a slot
        # delays a query's schedule but is never a "connection" or "timeout" error.
        self._slots = asyncio.Semaphore(pool_size)

    async def open(self) -> None:
        timeout_ms = str(max(1, round(self._query_timeout * 1000)))
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=self._pool_size,
            timeout=self._query_timeout,  # connect timeout
            command_timeout=None,
            max_inactive_connection_lifetime=MAX_INACTIVE_CONNECTION_LIFETIME,
            server_settings={
                "application_name": APPLICATION_NAME,
                "statement_timeout": timeout_ms,
                "lock_timeout": timeout_ms,
                "idle_in_transaction_session_timeout": str(int(timeout_ms) * 2),
                "default_transaction_read_only": "on",
            },
        )

    async def close(self, grace: float = 5.0) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), grace)
        except Exception:  # shutdown must finish even if connections hang
            pool.terminate()

    async def fetch(
        self, sql: str, args: Sequence[Any], deadline: float | None = None
    ) -> QueryResult:
        """Run one read-only query within the deadline; raise ``QueryError`` on any failure.

        ``deadline`` is this query's own timeout (default: the pool's ``query_timeout``); a
        different one is set for the transaction only (``SET LOCAL``). The time spent waiting
        for a free pool slot is part of ``seconds`` but not of the deadline.

        Errors while *getting* a connection (refused, unreachable, authentication, a connect
        that times out) count as ``connection``; a timeout while the query runs counts as
        ``timeout``. A connection error *during* the query on a pooled connection is retried
        once on a fresh one: after a database restart every idle connection is dead, and the
        retry lets the first cycle after the restart succeed instead of reporting a failure
        that is already over.
        """
        if self._pool is None:
            raise QueryError("connection", "the connection pool is not open")
        started = time.perf_counter()
        own = deadline is not None and deadline != self._query_timeout
        timeout = deadline if deadline is not None else self._query_timeout
        attempt = _Attempt(timeout=timeout if own else None)
        async with self._slots:
            try:
                async with asyncio.timeout(timeout + CLIENT_GRACE_SECONDS):
                    try:
                        rows = await self._fetch_once(sql, args, attempt)
                    except Exception as error:
                        if attempt.phase != "query" or classify(error) != "connection":
                            raise
                        log.debug("retrying on a fresh connection after %s", describe(error))
                        rows = await self._fetch_once(sql, args, attempt)
            except Exception as error:
                reason: FailureReason = (
                    "connection" if attempt.phase == "connect" else classify(error)
                )
                raise QueryError(reason, describe(error)) from None
        return QueryResult(rows=rows, seconds=time.perf_counter() - started)

    async def _fetch_once(
        self, sql: str, args: Sequence[Any], attempt: _Attempt
    ) -> Sequence[asyncpg.Record]:
        assert self._pool is not None
        attempt.phase = "connect"
        conn = await self._pool.acquire()
        attempt.phase = "query"
        try:
            async with conn.transaction(readonly=True):
                if attempt.timeout is not None:
                    await conn.execute(
                        _SET_LOCAL_TIMEOUTS, str(max(1, round(attempt.timeout * 1000)))
                    )
                rows: Sequence[asyncpg.Record] = await conn.fetch(sql, *args)
                return rows
        finally:
            await self._pool.release(conn)


@dataclass
class _Attempt:
    """Where a query attempt is, so a timeout can be blamed on connecting or on the query."""

    phase: str = "connect"
    timeout: float | None = None  # a per-query deadline other than the pool's


# A query with its own timeout sets it for its transaction only.
_SET_LOCAL_TIMEOUTS = (
    "SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $1, true)"
)
