"""The asyncpg pool and the one way the exporter runs a query.

One asyncpg connection cannot run queries concurrently ("another operation is in progress"),
so the exporter owns a small pool: at most ``--max-connections`` connections (default 5), and
never more than the enabled queries (a reload that adds or removes queries resizes it). The
built-in three run at once, a file of 40 custom queries still opens at most five connections
(the rest wait for a slot, which delays them but is not an error), and a lock or a slow
database can never pile up more connections than that (postgres_exporter #1228).

Fairness: a slow query must not starve the others of their schedule. Every query's slot goes
through ``Slots``, which keeps one connection out of reach of *long* runs, so however many
queries are stuck (on a lock, a slow plan, ``pg_sleep``), a quick query still gets a connection
within its own interval. With ``N`` connections:

* a run is *long* when it holds its connection for longer than the shortest interval among the
  enabled queries (``long_after``): long enough for the most frequent query to miss a tick;
* a query *expects* to be long when its previous run was (before its first run: when its
  ``timeout`` is longer than ``long_after``, as it may legitimately run that long), and such a
  query is admitted only while fewer than ``N - 1`` connections are held by long runs (those
  that expected it and those that have been running longer than ``long_after`` so far);
* a query that expects to be quick takes any free connection;
* otherwise first come, first served; a long query waiting for room does not hold up the quick
  ones queued behind it.

So long runs together hold at most ``N - 1`` connections, except when a query expected to be
quick turns out long (a table locked for the first time): it is long from its next run on, so
that costs at most one run of its. With ``N = 1`` there is nothing to reserve. When every query
has the same interval no run can be long (a timeout never exceeds its interval) and the rule is
plain first come, first served.

A server with fewer free connection slots than the pool wants ("too many connections", for the
server, the role or the database) refuses some connects while others of ours are open: the pool
then uses only the connections it has for ``SCARCE_SECONDS`` (``Slots.limit``), and the query
whose connect was refused waits for its turn on one of them, in arrival order, instead of
failing (with one free slot, the first query to connect used to win every run and the others
to fail every run).

Each query runs in a read-only transaction under a server-side ``statement_timeout``, with a
client-side deadline as backstop for a server that stops answering altogether (a paused VM, a
hung volume, a path that drops packets): at the deadline the query's connection is closed from
the client side at once, since every graceful step (cancel request, rollback, the pool's reset)
would wait for that same server. Failures are classified into the reasons the error counter
exports (``FAILURE_REASONS``), and into whether the server answered at all (``tw_up``).

Nothing depends on session state, so the exporter works unchanged behind a transaction pooler
(PgBouncer ``pool_mode = transaction``), where consecutive transactions of one client may run on
different server connections:

* the timeouts and read-only mode are set *inside* each transaction (``BEGIN READ ONLY`` plus
  ``SET LOCAL``, sent as one simple-protocol message: one round trip, like the plain ``BEGIN``
  it replaces), never as startup parameters, which PgBouncer refuses ("unsupported startup
  parameter"); only ``application_name`` travels at startup, and PgBouncer tracks that one
  itself;
* statements are unnamed (``statement_cache_size=0``) and always parsed inside the open
  transaction, so no prepared statement outlives the server connection it was made on;
* every transaction ends in ``ROLLBACK``, never ``COMMIT``, so whatever a (custom) query
  changed inside it is undone where it was made, on that server connection, pooler or not:
  ``set_config(..., false)``/``SET``, ``LISTEN``, large objects it created, notifications it
  queued (only a commit sends them). Session advisory locks survive a rollback, so the same
  message also releases them (``pg_advisory_unlock_all()``): before the ``ROLLBACK`` after a
  success, right after it after a failure (an aborted transaction runs nothing else). One
  simple-query message is answered as a whole, so a transaction pooler keeps the client on
  the same server connection until both are done. (Not a savepoint to roll back to: on a hot
  standby, PostgreSQL resolves a recovery conflict of a query inside a subtransaction by
  terminating the session instead of cancelling the statement.) The connection goes back as
  it was lent: a released connection needs no ``RESET ALL``, which on
  a transaction pooler would run on some other client's server anyway.

A query may be read with a row limit (``max_rows``): its rows are streamed through a cursor
inside the transaction and reading stops at the limit, so a runaway query costs the exporter
no more memory than the limit (the rest is never sent by the server).

Each query's time is split where a pooler makes a client wait: ``wait`` is the pool acquire
plus the transaction's first round trip (PgBouncer assigns a server connection when that
message arrives), ``run`` is the statement and the end of its transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from exporter.collectors.base import Resolve
from exporter.config.dsn import DsnSource
from exporter.config.settings import DEFAULT_MAX_CONNECTIONS
from exporter.db import keepalive
from exporter.db.connect import Connector
from exporter.db.failures import FailureReason

log = logging.getLogger(__name__)

APPLICATION_NAME = "tw-exporter"
# The client deadline trails the server's statement_timeout so PostgreSQL normally cancels
# first (reason "timeout" with a clean connection); the client only steps in when the server
# itself stops answering.
CLIENT_GRACE_SECONDS = 1.0
# The most connections one exporter opens by default, however many queries it runs.
MAX_POOL_SIZE = DEFAULT_MAX_CONNECTIONS
# Connections idle longer than this are closed, so a pool never holds sockets a database
# restart or a NAT timeout has silently broken for long.
MAX_INACTIVE_CONNECTION_LIFETIME = 300.0
# Pooled connections are replaced after this long even when busy: with a multi-host DSN
# (``host1,host2`` and ``target_session_attrs``) a connection that fell back to another host
# while the preferred one was down goes back to the preferred one within this time.
MAX_CONNECTION_AGE = 300.0

# SQLSTATE classes that mean "the database could not be reached or went away".
_CONNECTION_SQLSTATE_PREFIXES = ("08", "57P", "28", "3D000", "53300")
_TIMEOUT_SQLSTATES = ("57014", "55P03")  # query_canceled (statement_timeout), lock_not_available
# A read-only query at READ COMMITTED cannot fail serialization or deadlock on a primary; on a
# hot standby these are how PostgreSQL cancels a query that blocks WAL replay (a recovery
# conflict: 40001 for snapshot, lock, buffer-pin and tablespace conflicts, 40P01 for a
# buffer-pin deadlock with the startup process). The next run usually succeeds.
_CONFLICT_SQLSTATES = ("40001", "40P01")
# "too many connections" (for the server, a role or a database): with connections of ours
# open, queries take turns on those for this long before another connect is tried.
_TOO_MANY_CONNECTIONS = "53300"
SCARCE_SECONDS = 60.0
# How many times one run waits for a turn on an open connection before failing.
MAX_SCARCE_TURNS = 3
# What the server says when a statement no longer fits the schema it was chosen for (a column
# changed type: "operator does not exist: uuid + integer", a column renamed, a plan whose result
# type changed): undefined_function, datatype_mismatch, undefined_column, and
# feature_not_supported's "cached plan must not change result type".
_SCHEMA_CHANGED_SQLSTATES = ("42883", "42804", "42703")
_CACHED_PLAN_CHANGED = "cached plan must not change result type"
# The memo key holding the memo's epoch (see ``Database._memo_epoch``).
_MEMO_EPOCH = "database.memo_epoch"
# Unnamed statements only: a named prepared statement lives on one server connection, which a
# transaction pooler does not keep for the client ("prepared statement ... does not exist").
STATEMENT_CACHE_SIZE = 0


def local_timeouts(query_timeout: float) -> str:
    """The exporter's timeouts for the current transaction only (milliseconds).

    ``SET LOCAL`` ends with the transaction, so no setting leaks into a pooled server
    connection another client gets next, and nothing depends on one surviving.
    """
    timeout_ms = max(1, round(query_timeout * 1000))
    return (
        f"SET LOCAL statement_timeout = {timeout_ms};"
        f" SET LOCAL lock_timeout = {timeout_ms};"
        f" SET LOCAL idle_in_transaction_session_timeout = {timeout_ms * 2}"
    )


def transaction_setup(query_timeout: float) -> str:
    """The first message of every query's transaction: read-only, with the timeouts."""
    return f"BEGIN READ ONLY; {local_timeouts(query_timeout)}"


# How every query's transaction ends (one message, one round trip, like the COMMIT it
# replaces): session advisory locks are released (they outlive a rollback), then everything
# else the statement changed is rolled back. Nothing of a run is ever committed.
END_TRANSACTION = "SELECT pg_advisory_unlock_all(); ROLLBACK"
# After a failed statement the transaction is aborted and runs nothing but its end: roll back,
# then release the advisory locks in the same message (so on the same server connection, also
# behind a transaction pooler, which reassigns it only once the whole message is answered).
END_FAILED_TRANSACTION = "ROLLBACK; SELECT pg_advisory_unlock_all()"


class PooledConnection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg is untyped
    """asyncpg's connection plus ``memo``, facts learned about this one connection (such as the
    query shape its schema needs, ``exporter.collectors.schema``): they are worked out once per
    connection, and again on the fresh connection a reconnect or failover brings, and on every
    connection after a query found that the schema changed (``Database.fetch``)."""

    __slots__ = ("memo",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.memo: dict[str, Any] = {}


# How a statement's result is read on its connection (inside the transaction).
Read = Callable[[asyncpg.Connection, str, Sequence[Any]], Awaitable[Any]]


async def read_all(conn: asyncpg.Connection, text: str, args: Sequence[Any]) -> Any:
    """Every row (the built-in queries bound their rows in SQL)."""
    return await conn.fetch(text, *args)


def read_at_most(max_rows: int) -> Read:
    """At most ``max_rows`` rows, streamed: an unnamed statement (the pool caches none) bound
    to a portal that lives only inside this transaction, and one ``Execute`` with a row limit,
    so the server stops there and the exporter never holds more (works through a transaction
    pooler: statement and portal never outlive the transaction)."""

    async def read(conn: asyncpg.Connection, text: str, args: Sequence[Any]) -> Any:
        statement = await conn.prepare(text)
        cursor = await statement.cursor(*args)
        return await cursor.fetch(max_rows)

    return read


async def read_columns(conn: asyncpg.Connection, text: str, args: Sequence[Any]) -> Any:
    """Prove a statement without running it: parsed, analysed, and bound with its parameters
    (which plans it) but never executed; returns its result columns and their type names."""
    statement = await conn.prepare(text)
    await statement.cursor(*args)
    return {a.name: a.type.name for a in statement.get_attributes()}


def pool_size_for(queries: int, max_connections: int = MAX_POOL_SIZE) -> int:
    """One connection per query, so queries do not wait on each other, up to the bound (a
    query never overlaps itself, so more would never be used)."""
    return max(1, min(queries, max_connections))


@dataclass(eq=False)
class Hold:
    """One query's claim on a connection, from admission to release."""

    query: str | None
    long: bool  # admitted as a query expected to run long
    since: float = 0.0  # time.monotonic() at admission


@dataclass(eq=False)
class Slots:
    """Admission to the pool: at most ``capacity`` connections in use, of which at most
    ``capacity - 1`` by long runs (the rule in the module docstring).

    A slot is held from admission to release, connecting included; that time, per query, is
    what tells whether its next run is expected to be long. ``fair = False`` turns the rule off
    (plain first come, first served), for the benchmark's before/after comparison only.
    """

    capacity: int
    long_after: float = math.inf
    fair: bool = True
    # The server refused a further connection (too many connections) while this many of ours
    # were open: until ``scarce_until`` (monotonic) at most that many are used, so queries
    # take turns on them in arrival order instead of failing to connect.
    scarce: int | None = None
    scarce_until: float = 0.0
    _held: set[Hold] = field(default_factory=set)
    _waiting: deque[tuple[Hold, asyncio.Future[None]]] = field(default_factory=deque)
    _last_hold: dict[str, float] = field(default_factory=dict)

    @property
    def in_use(self) -> int:
        return len(self._held)

    @property
    def usable(self) -> int:
        """Connections in use at most now: ``capacity``, or fewer while they are scarce."""
        if self.scarce is not None and time.monotonic() < self.scarce_until:
            return max(1, min(self.capacity, self.scarce))
        return self.capacity

    @property
    def long_lane(self) -> int:
        """How many connections long runs may hold together."""
        return max(1, self.usable - 1)

    def limit(self, connections: int, seconds: float) -> None:
        """The server has room for only ``connections`` of ours: use no more for ``seconds``
        (then try again: a refused connect while others are open costs a wait, not an error)."""
        self.scarce = max(1, connections)
        self.scarce_until = time.monotonic() + seconds

    def expects_long(self, query: str | None, query_timeout: float) -> bool:
        """Its previous run was long; before its first (or without a name): its timeout is."""
        last = self._last_hold.get(query) if query is not None else None
        return (query_timeout if last is None else last) > self.long_after

    def long_runs(self, now: float) -> int:
        """Connections held by long runs: expected long, or running past ``long_after``."""
        return sum(1 for h in self._held if h.long or now - h.since > self.long_after)

    def _admissible(self, hold: Hold, now: float) -> bool:
        if len(self._held) >= self.usable:
            return False
        return not (self.fair and hold.long) or self.long_runs(now) < self.long_lane

    def _grant(self, hold: Hold, now: float) -> None:
        hold.since = now
        self._held.add(hold)

    async def acquire(self, query: str | None, query_timeout: float) -> Hold:
        """Wait for a connection slot (no deadline: the wait delays the query's schedule and
        is counted as its wait time, never as an error)."""
        hold = Hold(query, self.expects_long(query, query_timeout))
        now = time.monotonic()
        # Whoever waits could not be admitted, and only time has passed since (which admits
        # no one): a newcomer that fits jumps no queue.
        if self._admissible(hold, now):
            self._grant(hold, now)
            return hold
        admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (hold, admitted)
        self._waiting.append(entry)
        try:
            await admitted
        except asyncio.CancelledError:
            if admitted.cancelled():
                self._waiting.remove(entry)
            else:  # admitted just before the cancellation: give the slot back
                self.release(hold, record=False)
            raise
        return hold

    def release(self, hold: Hold, *, record: bool = True) -> None:
        now = time.monotonic()
        self._held.discard(hold)
        if record and hold.query is not None:
            self._last_hold[hold.query] = now - hold.since
        self._wake(now)

    def resize(self, capacity: int, long_after: float) -> None:
        self.capacity, self.long_after = capacity, long_after
        self._wake(time.monotonic())

    def forget(self, query: str) -> None:
        """A query removed or changed by a reload: its next run is judged afresh."""
        self._last_hold.pop(query, None)

    def _wake(self, now: float) -> None:
        """Admit waiters in arrival order, each one that fits (a long one that does not fit
        lets the quick ones behind it through)."""
        for entry in list(self._waiting):
            hold, admitted = entry
            if admitted.done():  # cancelled; its task removes the entry when it resumes
                continue
            if self._admissible(hold, now):
                self._waiting.remove(entry)
                self._grant(hold, now)
                admitted.set_result(None)


class QueryError(Exception):
    """A failed query, with the reason label it is counted under, a password-free message, and
    whether the server answered it (an error PostgreSQL sent about the query, such as a
    statement timeout or a missing table, is an answer; a refused or timed-out connect, a lost
    connection and the client deadline are not).

    ``wait_seconds``/``run_seconds`` are the phases the query got through before failing
    (None for a phase it never reached)."""

    def __init__(
        self,
        reason: FailureReason,
        message: str,
        *,
        answered: bool = False,
        wait_seconds: float | None = None,
        run_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason: FailureReason = reason
        self.answered = answered
        self.wait_seconds = wait_seconds
        self.run_seconds = run_seconds


@dataclass(frozen=True)
class QueryResult:
    rows: Sequence[asyncpg.Record]
    seconds: float
    wait_seconds: float = 0.0
    """Pool acquire plus the transaction's first round trip (retries included)."""
    run_seconds: float = 0.0
    """The statement and the end of its transaction."""


def classify(error: BaseException) -> FailureReason:
    """Map a driver or OS error onto the exported failure reason."""
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(error, asyncpg.PostgresError):
        state = getattr(error, "sqlstate", "") or ""
        if state in _TIMEOUT_SQLSTATES:
            return "timeout"
        if state in _CONFLICT_SQLSTATES:
            return "conflict"
        if state.startswith(_CONNECTION_SQLSTATE_PREFIXES):
            return "connection"
        return "sql"
    if isinstance(
        error,
        OSError | ConnectionError | asyncpg.InterfaceError | asyncpg.ClientConfigurationError,
    ):
        return "connection"
    return "sql"


def no_longer_fits(error: BaseException) -> bool:
    """Whether the server refused a statement because the schema changed under it."""
    if not isinstance(error, asyncpg.PostgresError):
        return False
    state = getattr(error, "sqlstate", "") or ""
    return state in _SCHEMA_CHANGED_SQLSTATES or (
        state == "0A000" and _CACHED_PLAN_CHANGED in str(error)
    )


def _closed(conn: Any) -> bool:
    """Whether a pooled connection is gone: closed, or already detached from its proxy because
    the pool saw it close."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # released: asyncpg detached it when it closed
        return True


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
    the exporter starts (and serves ``tw_up 0``) while the database is down.

    ``pool_size`` is the most connections it ever opens (``--max-connections``); ``fit`` lowers
    the number in use to the queries enabled and sets the fairness threshold, at start and at
    every reload."""

    def __init__(
        self,
        dsn: str | DsnSource,
        *,
        pool_size: int,
        query_timeout: float,
        application_name: str = APPLICATION_NAME,
        max_connection_age: float = MAX_CONNECTION_AGE,
    ) -> None:
        # Host by host, each with its own connect timeout, the DSN read at each connect.
        self._connector = Connector(dsn)
        # Connects of ours in flight (see ``_scarce``): the server counts a connection from its
        # startup on, the pool only once the connect (session check included) has returned.
        self._connecting = 0
        self._application_name = application_name
        self._pool_size = pool_size
        self._query_timeout = query_timeout
        self._deadline = query_timeout + CLIENT_GRACE_SECONDS
        self._tcp_timeouts = keepalive.TcpTimeouts.for_deadline(self._deadline)
        self._pool: asyncpg.Pool | None = None
        # Queries beyond the pool's size wait here, outside their deadline: waiting for a slot
        # delays a query's schedule (and counts as wait time) but is never a "connection" or
        # "timeout" error. asyncpg's pool hands out live connections first, so it opens a new
        # one only when every open one is in use: never more than the slots admit.
        self._slots = Slots(pool_size)
        self._max_connection_age = max_connection_age
        self._generation_started = time.monotonic()
        self._setup_sql = transaction_setup(query_timeout)
        # Bumped when a query finds the schema changed: each connection's memo older than
        # this is dropped when the connection is next used, so every one detects afresh.
        self._memo_epoch = 0

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            connect=self._connect,
            min_size=0,
            max_size=self._pool_size,
            # Per host: TCP, TLS, startup, authentication and the session check (see
            # exporter.db.connect; the URI's connect_timeout wins).
            timeout=self._query_timeout,
            command_timeout=None,
            init=self._tune_socket,
            max_inactive_connection_lifetime=MAX_INACTIVE_CONNECTION_LIFETIME,
            connection_class=PooledConnection,
            statement_cache_size=STATEMENT_CACHE_SIZE,
            reset=_no_session_state,
            server_settings={"application_name": self._application_name},
        )

    async def _connect(self, *args: Any, **kwargs: Any) -> Any:
        """The pool's connect hook: the connector's, counted while in flight."""
        self._connecting += 1
        try:
            return await self._connector.connect(*args, **kwargs)
        finally:
            self._connecting -= 1

    def drain(self) -> None:
        """The DSN changed (a rotated password file): connections open from now on use it,
        and the open ones are replaced as they come back to the pool (none is cut mid-query)."""
        self._generation_started = -math.inf

    @property
    def slots(self) -> Slots:
        return self._slots

    def fit(self, queries: int, long_after: float = math.inf) -> None:
        """Use at most one connection per enabled query, up to ``pool_size``, and count a run
        as long past ``long_after`` seconds (the shortest interval among the queries). Called at
        start and by a reload; connections beyond a lowered bound close as soon as they are
        idle."""
        self._slots.resize(pool_size_for(queries, self._pool_size), long_after)
        self._close_idle_beyond_capacity()

    def forget(self, query: str) -> None:
        self._slots.forget(query)

    def connections(self) -> int:
        """Connections open now (in use or idle)."""
        return 0 if self._pool is None else int(self._pool.get_size())

    def _close_idle_beyond_capacity(self) -> None:
        """Close idle connections while more are open than the slots now admit (after a reload
        lowered the bound). asyncpg has no public call for it; this is what its own inactivity
        timer does to an idle connection. Busy ones are closed here when released."""
        pool = self._pool
        if pool is None:
            return
        excess = pool.get_size() - self._slots.capacity
        for holder in getattr(pool, "_holders", ()):
            if excess <= 0:
                return
            if holder.is_connected() and holder.is_idle():
                holder.terminate()
                excess -= 1

    async def _tune_socket(self, conn: asyncpg.Connection) -> None:
        """Pool ``init`` hook, run once per new connection: keepalive and TCP_USER_TIMEOUT on
        its socket (see ``exporter.db.keepalive``). asyncpg exposes no public accessor for the
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

    async def fetch(
        self,
        sql: str | Resolve,
        args: Sequence[Any],
        query_timeout: float | None = None,
        *,
        query: str | None = None,
        max_rows: int | None = None,
    ) -> QueryResult:
        """Run one read-only query within the deadline; raise ``QueryError`` on any failure.

        ``max_rows``: read at most that many rows (streamed, the rest never read).

        ``query_timeout`` is this query's own timeout (default: the pool's ``query_timeout``): its
        transaction's ``SET LOCAL`` timeouts and its client deadline are built from it. The
        time spent waiting for a free pool slot is part of ``seconds`` and ``wait_seconds``
        but not of the deadline. ``query`` names the scheduled query, whose previous runs tell
        the pool whether this one is expected to be long (see ``Slots``).

        Errors while *getting* a connection (refused, unreachable, authentication, a connect
        that times out) count as ``connection``; a timeout while the query runs counts as
        ``timeout``. One failed attempt is retried once (``_may_retry``): when its pooled
        connection turned out to be closed (after a database restart every idle connection
        is dead; a server's ``idle_session_timeout`` can close one just as it is reused,
        whatever error asyncpg then raises), on a fresh connection, counted as ``connection``
        if the retry fails too; and when the server says a connection-dependent statement no
        longer fits the schema (``no_longer_fits``), after every connection's memo is dropped,
        so the statement is chosen afresh (the trending query's shape after ``tw_tweets.id``
        moved from bigint to uuid).

        The client deadline (timeout + ``CLIENT_GRACE_SECONDS``) holds whatever the server, or a
        pooler in front of it, does: when it passes, the connection the attempt holds is
        terminated (socket closed, pool slot freed) *before* the task is cancelled, so nothing
        afterwards waits for the server. It counts as ``timeout``, not answered; when it hit
        the transaction's first round trip (a pooler with no free server connection), the time
        waited is still observed as wait time.
        """
        read = read_all if max_rows is None else read_at_most(max_rows)
        rows, attempt = await self._run(sql, args, query_timeout, query, read)
        assert attempt.wait_seconds is not None
        seconds = attempt.elapsed()
        return QueryResult(
            rows=rows,
            seconds=seconds,
            wait_seconds=attempt.wait_seconds,
            run_seconds=seconds - attempt.wait_seconds,
        )

    async def columns(
        self, sql: str, args: Sequence[Any], query_timeout: float | None = None
    ) -> dict[str, str]:
        """A statement's result columns (name -> type), proved on the database the way a run
        would reach it (same transaction, timeouts and deadline) without running it; raises
        ``QueryError`` like ``fetch``. What a reload does before it applies a new query."""
        columns, _ = await self._run(sql, args, query_timeout, None, read_columns)
        return dict(columns)

    async def _run(
        self,
        sql: str | Resolve,
        args: Sequence[Any],
        query_timeout: float | None,
        query: str | None,
        read: Read,
    ) -> tuple[Any, _Attempt]:
        """``read`` the statement within the deadline (see ``fetch``)."""
        if self._pool is None:
            raise QueryError("connection", "the connection pool is not open")
        timeout = self._query_timeout if query_timeout is None else query_timeout
        setup_sql = (
            self._setup_sql if timeout == self._query_timeout else transaction_setup(timeout)
        )
        client_deadline = timeout + CLIENT_GRACE_SECONDS
        loop = asyncio.get_running_loop()
        attempt = _Attempt(started=time.perf_counter(), setup_sql=setup_sql)
        hold = await self._slots.acquire(query, timeout)
        try:
            await self._recycle_old_connections()
            turns = 0
            while True:
                try:
                    async with asyncio.timeout(None) as deadline:
                        expiry = loop.call_at(
                            loop.time() + client_deadline, attempt.expire, deadline
                        )
                        try:
                            try:
                                rows = await self._fetch_once(sql, args, attempt, read)
                            except Exception as error:
                                if not self._may_retry(error, sql, attempt, query):
                                    raise
                                rows = await self._fetch_once(sql, args, attempt, read)
                        finally:
                            expiry.cancel()
                    break
                except Exception as error:
                    if turns < MAX_SCARCE_TURNS and self._scarce(error, attempt, query):
                        # Wait for one of the connections already open, in arrival order.
                        turns += 1
                        self._slots.release(hold, record=False)
                        hold = await self._slots.acquire(query, timeout)
                        continue
                    raise attempt.failure(error, client_deadline) from None
        finally:
            self._slots.release(hold)
            self._close_idle_beyond_capacity()
        return rows, attempt

    def _scarce(self, error: BaseException, attempt: _Attempt, query: str | None) -> bool:
        """The server refused one more connection (too many connections) while some of ours
        are open: use only those for a while (``Slots.limit``), so the queries take turns on
        them instead of the first to ask winning every time and the others failing."""
        if attempt.expired or attempt.phase != "connect":
            return False
        if getattr(error, "sqlstate", None) != _TOO_MANY_CONNECTIONS:
            return False
        # Ours that the server counts: open, or still connecting (three queries that start
        # together race; the one refused may hear so before the winner's connect returns).
        open_now = self.connections() + self._connecting
        if open_now == 0:
            return False  # nothing to share: a connection failure
        if self._slots.usable >= self._slots.capacity:  # one line per episode
            log.warning(
                "query %s: the database refused another connection (%s); sharing the %d "
                "open one(s) among the queries for %gs",
                query or "-",
                describe(error),
                open_now,
                SCARCE_SECONDS,
            )
        self._slots.limit(min(open_now, self._slots.usable), SCARCE_SECONDS)
        return True

    def _may_retry(
        self, error: BaseException, sql: str | Resolve, attempt: _Attempt, query: str | None
    ) -> bool:
        """Whether one more attempt may succeed where this one failed (see ``fetch``). Never
        after the client deadline, nor when connecting failed (the retry would connect the
        same way)."""
        if attempt.expired or attempt.phase == "connect":
            return False
        if attempt.lost or classify(error) == "connection":
            log.debug(
                "query %s: its pooled connection was closed (%s); retrying on a fresh one",
                query or "-",
                describe(error),
            )
            return True
        if not isinstance(sql, str) and no_longer_fits(error):
            self._memo_epoch += 1
            log.info(
                "query %s: the statement no longer fits the schema (%s); detecting the "
                "schema again and retrying",
                query or "-",
                describe(error),
            )
            return True
        return False

    async def _recycle_old_connections(self) -> None:
        """Every ``max_connection_age`` seconds, have the pool replace its connections (idle
        ones on their next acquire, busy ones on release): a connection lifetime that asyncpg's
        pool does not have, so a multi-host DSN drifts back to its preferred host."""
        now = time.monotonic()
        if self._pool is not None and now - self._generation_started >= self._max_connection_age:
            self._generation_started = now
            await self._pool.expire_connections()

    async def _fetch_once(
        self, sql: str | Resolve, args: Sequence[Any], attempt: _Attempt, read: Read
    ) -> Any:
        pool = self._pool  # close() may drop the attribute while this attempt unwinds
        attempt.phase = "connect"
        attempt.wait_seconds = None
        if pool is None:
            raise asyncpg.InterfaceError("the connection pool is closed")
        conn = await pool.acquire()
        attempt.conn = conn
        attempt.lost = False
        memo = getattr(conn, "memo", None)
        if memo is not None and memo.get(_MEMO_EPOCH, 0) != self._memo_epoch:
            memo.clear()
            memo[_MEMO_EPOCH] = self._memo_epoch
        try:
            attempt.phase = "begin"
            await conn.execute(attempt.setup_sql)
            attempt.wait_seconds = attempt.elapsed()
            attempt.phase = "query"
            text = sql if isinstance(sql, str) else await sql(conn)
            rows = await read(conn, text, args)
            await conn.execute(END_TRANSACTION)  # nothing a run did is kept (module docstring)
            return rows
        except BaseException:
            # After the deadline the connection is already terminated: nothing to roll back.
            if not attempt.expired:
                attempt.lost = _closed(conn)
                await _rollback(conn)
            raise
        finally:
            # A terminated connection already gave its slot back to the pool; releasing it
            # would wait for the server (reset) for nothing.
            if not attempt.expired:
                await pool.release(conn)
            attempt.conn = None


async def _rollback(conn: asyncpg.pool.PoolConnectionProxy[Any]) -> None:
    """End a failed query's transaction, as ``Transaction.__aexit__`` would, and undo its
    session state as a successful run's end does (roll back, release advisory locks): the
    connection goes back to the pool (and, on a pooler, its server to other clients) idle and
    as it was lent. A connection that is already broken is left to the pool, which discards
    it."""
    if _closed(conn) or not conn.is_in_transaction():
        return
    try:
        await conn.execute(END_FAILED_TRANSACTION)
    except Exception as error:
        log.debug("rollback failed: %s", describe(error))


async def _no_session_state(conn: asyncpg.Connection[Any]) -> None:
    """The pool's reset hook: every transaction already ended by undoing what it changed
    (``END_TRANSACTION``: timeouts are ``SET LOCAL``, a query's own ``set_config``/``LISTEN``/
    large objects are rolled back, its advisory locks released), so a released connection
    needs no reset query. asyncpg still rolls back an open transaction before calling this."""


@dataclass
class _Attempt:
    """Where a query attempt is, which connection it holds and how long it waited for a usable
    server connection, so a failure is blamed on connecting or on the query, and the deadline
    can close the connection it finds."""

    started: float
    setup_sql: str  # BEGIN READ ONLY plus this query's SET LOCAL timeouts
    phase: str = "connect"  # connect -> begin -> query
    wait_seconds: float | None = None
    conn: Any = None  # the pooled connection while the attempt holds one
    expired: bool = False
    lost: bool = False  # the attempt's connection was found closed after it failed

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def run_seconds(self) -> float | None:
        """Time since the statement was sent, if it was."""
        if self.phase != "query" or self.wait_seconds is None:
            return None
        return self.elapsed() - self.wait_seconds

    def expire(self, deadline: asyncio.Timeout) -> None:
        """The deadline passed: close the held connection from the client side (no cancel
        request, no rollback: the server may not answer either), then cancel the attempt."""
        self.expired = True
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(asyncpg.InterfaceError):  # released meanwhile
                conn.terminate()
        deadline.reschedule(asyncio.get_running_loop().time())

    def failure(self, error: BaseException, deadline: float) -> QueryError:
        """The ``QueryError`` this attempt ended in."""
        if self.phase == "connect":
            return QueryError("connection", describe(error), wait_seconds=self.wait_seconds)
        if self.expired:
            # Stuck in the first round trip: all of it was waiting for a server connection.
            wait = self.elapsed() if self.phase == "begin" else self.wait_seconds
            return QueryError(
                "timeout",
                f"no answer from the database within {deadline:g}s (client deadline); its "
                "connection was closed",
                wait_seconds=wait,
                run_seconds=self.run_seconds(),
            )
        # A connection that closed under the query is a connection failure, whatever asyncpg
        # raised (an idle_session_timeout racing the reuse surfaces as InternalClientError).
        reason = "connection" if self.lost else classify(error)
        return QueryError(
            reason,
            describe(error),
            answered=answered(error, reason),
            wait_seconds=self.wait_seconds,
            run_seconds=self.run_seconds(),
        )
