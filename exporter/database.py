"""The asyncpg pool and the one way the exporter runs a query.

One asyncpg connection cannot run queries concurrently ("another operation is in progress"),
so the exporter owns a small pool sized to the number of queries: the three run at once, and a
lock or a slow database can never pile up more connections than that (postgres_exporter #1228).
Each query runs in a read-only transaction under a server-side ``statement_timeout``, with a
client-side deadline as backstop for a server that stops answering altogether (a paused VM, a
hung volume, a path that drops packets): at the deadline the query's connection is closed from
the client side at once, since every graceful step (cancel request, rollback, the pool's reset)
would wait for that same server. Failures are classified into the reasons the error counter
exports (timeout, connection, sql), and into whether the server answered at all (``tw_up``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from exporter import keepalive
from exporter.health import FailureReason

log = logging.getLogger(__name__)

APPLICATION_NAME = "tw-exporter"
# The client deadline trails the server's statement_timeout so PostgreSQL normally cancels
# first (reason "timeout" with a clean connection); the client only steps in when the server
# itself stops answering.
CLIENT_GRACE_SECONDS = 1.0
# Connections idle longer than this are closed, so a pool never holds sockets a database
# restart or a NAT timeout has silently broken for long.
MAX_INACTIVE_CONNECTION_LIFETIME = 300.0

# SQLSTATE classes that mean "the database could not be reached or went away".
_CONNECTION_SQLSTATE_PREFIXES = ("08", "57P", "28", "3D000", "53300")
_TIMEOUT_SQLSTATES = ("57014", "55P03")  # query_canceled (statement_timeout), lock_not_available


class PooledConnection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg is untyped
    """asyncpg's connection plus ``memo``, facts learned about this one connection (such as the
    query shape its schema needs, ``exporter.schema``): they are worked out once per
    connection, and again on the fresh connection a reconnect or failover brings."""

    __slots__ = ("memo",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.memo: dict[str, Any] = {}


# A statement that depends on the connection it runs on: resolved there, inside the query's
# read-only transaction and deadline, so a failure to resolve it is counted like the query's.
Resolve = Callable[[asyncpg.Connection], Awaitable[str]]


class QueryError(Exception):
    """A failed query, with the reason label it is counted under, a password-free message, and
    whether the server answered it (an error PostgreSQL sent about the query, such as a
    statement timeout or a missing table, is an answer; a refused or timed-out connect, a lost
    connection and the client deadline are not)."""

    def __init__(self, reason: FailureReason, message: str, *, answered: bool = False) -> None:
        super().__init__(message)
        self.reason: FailureReason = reason
        self.answered = answered


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


def answered(error: BaseException, reason: FailureReason) -> bool:
    """Whether ``error`` is the server's answer to the query (rather than the absence of one)."""
    return isinstance(error, asyncpg.PostgresError) and reason != "connection"


def describe(error: BaseException) -> str:
    """A one-line, password-free description (asyncpg messages never contain the DSN)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    name = type(error).__name__
    return f"{name}: {text}" if text else name


class Database:
    """Owns the pool. Creating it never touches the database: connections open on demand, so
    the exporter starts (and serves ``tw_up 0``) while the database is down."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int,
        query_timeout: float,
        application_name: str = APPLICATION_NAME,
    ) -> None:
        self._dsn = dsn
        self._application_name = application_name
        self._pool_size = pool_size
        self._query_timeout = query_timeout
        self._deadline = query_timeout + CLIENT_GRACE_SECONDS
        self._tcp_timeouts = keepalive.TcpTimeouts.for_deadline(self._deadline)
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        timeout_ms = str(max(1, round(self._query_timeout * 1000)))
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=self._pool_size,
            # asyncpg applies it to the whole connect: TCP, TLS, startup and authentication.
            timeout=self._query_timeout,  # connect timeout
            command_timeout=None,
            init=self._tune_socket,
            max_inactive_connection_lifetime=MAX_INACTIVE_CONNECTION_LIFETIME,
            connection_class=PooledConnection,
            server_settings={
                "application_name": self._application_name,
                "statement_timeout": timeout_ms,
                "lock_timeout": timeout_ms,
                "idle_in_transaction_session_timeout": str(int(timeout_ms) * 2),
                "default_transaction_read_only": "on",
            },
        )

    async def _tune_socket(self, conn: asyncpg.Connection) -> None:
        """Pool ``init`` hook, run once per new connection: keepalive and TCP_USER_TIMEOUT on
        its socket (see ``exporter.keepalive``). asyncpg exposes no public accessor for the
        transport, hence the private attribute; without it the connection still works."""
        transport = getattr(conn, "_transport", None)
        if transport is not None:
            keepalive.apply(transport.get_extra_info("socket"), self._tcp_timeouts)

    async def close(self, grace: float = 5.0) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), grace)
        except Exception:  # shutdown must finish even if connections hang
            pool.terminate()

    async def fetch(self, sql: str | Resolve, args: Sequence[Any]) -> QueryResult:
        """Run one read-only query within the deadline; raise ``QueryError`` on any failure.

        Errors while *getting* a connection (refused, unreachable, authentication, a connect
        that times out) count as ``connection``; a timeout while the query runs counts as
        ``timeout``. A connection error *during* the query on a pooled connection is retried
        once on a fresh one: after a database restart every idle connection is dead, and the
        retry lets the first cycle after the restart succeed instead of reporting a failure
        that is already over.

        The deadline (query timeout + ``CLIENT_GRACE_SECONDS``) holds whatever the server does:
        when it passes, the connection the attempt holds is terminated (socket closed, pool
        slot freed) *before* the task is cancelled, so nothing afterwards waits for the server.
        """
        if self._pool is None:
            raise QueryError("connection", "the connection pool is not open")
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        attempt = _Attempt()
        try:
            async with asyncio.timeout(None) as deadline:
                expiry = loop.call_at(loop.time() + self._deadline, attempt.expire, deadline)
                try:
                    try:
                        rows = await self._fetch_once(sql, args, attempt)
                    except Exception as error:
                        if (
                            attempt.expired
                            or attempt.phase != "query"
                            or classify(error) != "connection"
                        ):
                            raise
                        log.debug("retrying on a fresh connection after %s", describe(error))
                        rows = await self._fetch_once(sql, args, attempt)
                finally:
                    expiry.cancel()
        except Exception as error:
            if attempt.phase == "connect":
                raise QueryError("connection", describe(error)) from None
            if attempt.expired:
                raise QueryError(
                    "timeout",
                    f"no answer from the database within {self._deadline:g}s (client "
                    "deadline); its connection was closed",
                ) from None
            reason = classify(error)
            raise QueryError(reason, describe(error), answered=answered(error, reason)) from None
        return QueryResult(rows=rows, seconds=time.perf_counter() - started)

    async def _fetch_once(
        self, sql: str | Resolve, args: Sequence[Any], attempt: _Attempt
    ) -> Sequence[asyncpg.Record]:
        pool = self._pool  # close() may drop the attribute while this attempt unwinds
        attempt.phase = "connect"
        if pool is None:
            raise asyncpg.InterfaceError("the connection pool is closed")
        conn = await pool.acquire()
        attempt.phase = "query"
        attempt.conn = conn
        try:
            async with conn.transaction(readonly=True):
                text = sql if isinstance(sql, str) else await sql(conn)
                rows: Sequence[asyncpg.Record] = await conn.fetch(text, *args)
                return rows
        finally:
            # After the deadline the connection is terminated, which already gave its slot
            # back to the pool; releasing it would wait for the server (reset) for nothing.
            if not attempt.expired:
                await pool.release(conn)
            attempt.conn = None


@dataclass
class _Attempt:
    """Where a query attempt is and which connection it holds, so the deadline can blame
    connecting or the query, and close the connection it finds."""

    phase: str = "connect"
    conn: Any = None  # the pooled connection while the attempt holds one
    expired: bool = False

    def expire(self, deadline: asyncio.Timeout) -> None:
        """The deadline passed: close the held connection from the client side (no cancel
        request, no rollback: the server may not answer either), then cancel the attempt."""
        self.expired = True
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(asyncpg.InterfaceError):  # released meanwhile
                conn.terminate()
        deadline.reschedule(asyncio.get_running_loop().time())
