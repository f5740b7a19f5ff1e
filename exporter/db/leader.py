"""High availability: one leader among replicas, elected through PostgreSQL itself.

Every replica started with ``--ha`` opens one plain asyncpg connection of its own (never a
pooled one: asyncpg's pool runs ``pg_advisory_unlock_all()`` when it releases a connection) and
competes for a session-level advisory lock whose key is derived from ``--ha-group``. The holder
leads and runs the queries; the others wait on the lock and serve health metrics only.

Three rules make this safe rather than lucky:

* Lease. The lock session runs with ``idle_session_timeout`` = the lease, so PostgreSQL itself
  ends the session of a leader that stops talking (SIGSTOP, a paused VM: its socket stays open)
  and the lock is released at most one lease after its last round trip. A healthy leader renews
  it with a heartbeat every third of the lease.
* Fencing. ``confirm()`` must succeed before every query run: a fresh round trip on the lock
  connection checking in ``pg_locks`` that *this session's own backend* still holds the lock.
  A woken frozen leader finds its session gone and steps down without starting a query.
  The lease is longer than the query timeout, so a query a frozen leader started before the
  freeze has ended (``statement_timeout``) before its lock can pass to another replica.
* Where the lock lives. Advisory locks are per server: the lock connection refuses a standby,
  and a transaction pooler, detected before campaigning (a second connection is handed the
  lock session's backend, or the lock session moves to another one) and again after each
  grant (the lock is not held by the session's own backend). It connects host by host like
  the pool (``exporter.db.connect``), so a hung host in a multi-host ``--ha-dsn`` costs one
  connect timeout, and it reads the DSN at each connect (a rotated ``--dsn-file``).

The interface is deliberately narrow so any scheduler shape can use it: ``is_leader``,
``confirm()``, ``on_elected`` / ``on_lost`` callbacks and ``answered`` (for ``tw_up`` on a
follower).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, Protocol

import asyncpg

from exporter.config.dsn import DsnSource
from exporter.db import keepalive
from exporter.db.connect import Connector
from exporter.db.database import describe

log = logging.getLogger(__name__)

# With --ha, each replica's connections carry its name (see ``replica_name``): the query
# connections as "tw-exporter/<replica>", the lock connection as "tw-exporter-ha/<replica>", so
# pg_stat_activity tells replicas, and queries from the lock, apart.
QUERY_APPLICATION_PREFIX = "tw-exporter/"
LOCK_APPLICATION_PREFIX = "tw-exporter-ha/"
# PostgreSQL truncates application_name to NAMEDATALEN - 1 bytes.
MAX_APPLICATION_NAME = 63
KEY_PREFIX = b"tw-exporter:"
# idle_session_timeout, the server-side lease, exists from PostgreSQL 14.
MIN_SERVER_VERSION = 140000
# A reconnect after a failure waits this long at most (it starts at a tenth of it).
MAX_RETRY_SECONDS = 2.0
# Rounds of the pooler check at connect (``_refuse_shared_backends``): two round trips each.
PIN_PROBES = 3

_HELD_SQL = """
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 1
      AND pid = pg_backend_pid() AND classid = $1::bigint::oid AND objid = $2::bigint::oid
)"""


class Fence(Protocol):
    """What a scheduler needs from leadership: ask before starting each query run."""

    async def confirm(self) -> bool: ...


def replica_name() -> str:
    """This replica's name: the host name (a pod's name in Kubernetes) and the process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def application_name(prefix: str, replica: str) -> str:
    return (prefix + replica).encode()[:MAX_APPLICATION_NAME].decode(errors="ignore")


def group_key(group: str) -> int:
    """The advisory lock key of an HA group: the first 8 bytes of
    ``sha256("tw-exporter:" + group)`` as a signed big-endian bigint. Stable across versions,
    machines and Python hash seeds, and prefixed so another application's small integer keys
    do not collide with it."""
    digest = hashlib.sha256(KEY_PREFIX + group.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def key_halves(key: int) -> tuple[int, int]:
    """How ``pg_locks`` shows a bigint key: high half in ``classid``, low half in ``objid``."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


class HAConfigError(Exception):
    """The lock's database cannot hold a leader's lock (standby, pooler, too old): one line."""


class Leadership:
    """Campaigns for the group's lock and keeps it renewed; see the module docstring."""

    def __init__(
        self,
        dsn: str | DsnSource,
        group: str,
        *,
        lease: float,
        connect_timeout: float,
        replica: str = "",
        on_elected: Callable[[], None] = lambda: None,
        on_lost: Callable[[], None] = lambda: None,
        on_answer: Callable[[bool], None] = lambda answered: None,
        on_fatal: Callable[[str], None] = lambda line: None,
    ) -> None:
        self.group = group
        self.key = group_key(group)
        self.lease = lease
        self.heartbeat = lease / 3
        # Host by host like the pool (exporter.db.connect), the DSN read at each connect.
        self._connector = Connector(dsn)
        self.application_name = application_name(LOCK_APPLICATION_PREFIX, replica or replica_name())
        self._connect_timeout = connect_timeout
        self.on_elected = on_elected
        self._on_lost = on_lost
        self._on_answer = on_answer
        self._on_fatal = on_fatal
        self._conn: Any = None
        self._lock = asyncio.Lock()  # one operation at a time on the lock connection
        self._checks_started = 0
        self._last_check: tuple[int, bool] = (0, False)  # (check number, held)
        self._task: asyncio.Task[None] | None = None
        self._tcp = keepalive.TcpTimeouts.for_deadline(self.heartbeat)
        self.is_leader = False
        self.answered = False
        self.fatal: str | None = None

    # ------------------------------------------------------------ public interface

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._campaign(), name="ha-leader")

    async def close(self) -> None:
        """Stop campaigning and release the lock by closing the session (a clean exit hands
        the lead over at once)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=1.0)
        self._step_down("shutting down")
        await self._drop_connection(graceful=True)

    async def confirm(self) -> bool:
        """The fence: True only if a round trip on the lock connection that started after
        this call confirmed that this session's own backend holds the lock. Concurrent callers
        share one round trip. A failed check makes this replica a follower."""
        if not self.is_leader:
            return False
        requested = self._checks_started
        async with self._lock:
            number, held = self._last_check
            if number <= requested:  # no round trip started after our request: make one
                held = await self._check_locked()
        if not held:
            self._step_down("the lock is no longer held by this replica's session")
        return held and self.is_leader

    # ------------------------------------------------------------ the campaign

    async def _campaign(self) -> None:
        retry = MAX_RETRY_SECONDS / 10
        while True:
            try:
                await self._connect()
                retry = MAX_RETRY_SECONDS / 10
                while True:
                    if self.is_leader:
                        await asyncio.sleep(self.heartbeat)
                        if not await self.confirm():
                            break
                    else:
                        await self._try_acquire()
            except HAConfigError as error:
                self.fatal = str(error)
                self._on_fatal(str(error))  # the owner stops the exporter with this line
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the database went away: wait and campaign again
                self._answer(False)
                log.warning("HA lock connection failed: %s", describe(error))
            self._step_down("its lock connection failed")
            await self._drop_connection(graceful=False)
            await asyncio.sleep(retry)
            retry = min(MAX_RETRY_SECONDS, retry * 2)

    async def _open(self) -> asyncpg.Connection:
        """A session set up as the lock session is (the pooler probe must look the same)."""
        return await self._connector.connect(
            timeout=self._connect_timeout,
            command_timeout=None,
            statement_cache_size=0,
            # Only application_name as a startup parameter: poolers refuse unknown ones, and
            # a pooler must get as far as the lock check to be named in the refusal.
            server_settings={"application_name": self.application_name},
        )

    async def _connect(self) -> None:
        self._conn = await self._open()
        # PostgreSQL ending the session (lease expired, pg_terminate_backend, a restart) ends
        # the lead at once, cancelling queries in flight, not at the next heartbeat.
        self._conn.add_termination_listener(self._terminated)
        transport = getattr(self._conn, "_transport", None)
        if transport is not None:
            keepalive.apply(transport.get_extra_info("socket"), self._tcp)
        version, standby = await self._roundtrip(
            self._conn.fetchrow(
                "SELECT current_setting('server_version_num')::int, pg_is_in_recovery()"
            )
        )
        self._answer(True)
        if version < MIN_SERVER_VERSION:
            raise HAConfigError(
                "--ha-dsn: the server is PostgreSQL "
                f"{version // 10000}; HA needs 14 or later (idle_session_timeout is the lease)"
            )
        if standby:
            raise HAConfigError(
                "--ha-dsn reaches a standby (pg_is_in_recovery() is true): the HA lock must "
                "live on the primary; point it at the primary, or add "
                "target_session_attrs=read-write to a multi-host DSN"
            )
        await self._refuse_shared_backends()
        lease_ms = max(1, round(self.lease * 1000))
        await self._roundtrip(
            self._conn.execute(
                # The lease: PostgreSQL ends this session (and so releases the lock) when the
                # client has been silent this long, whatever state its socket is in.
                f"SET idle_session_timeout = {lease_ms};"
                f"SET idle_in_transaction_session_timeout = {lease_ms};"
                # A wait for the lock ends every heartbeat, so a follower reports regularly.
                f"SET statement_timeout = {max(1, round(self.heartbeat * 1000))};"
                "SET lock_timeout = 0"
            )
        )

    async def _refuse_shared_backends(self) -> None:
        """Refuse a pooler that does not pin this session to one backend (PgBouncer in
        transaction or statement mode), before campaigning: there a session lock belongs to
        whichever backend ran the statement, and the lock session may later run on another.

        A second connection asks for its backend between two questions of the lock session:
        a transaction pooler hands it the backend the lock session just released (PgBouncer
        reuses the most recently used one), or moves the lock session to another backend; a
        direct connection or a session pooler keeps the two apart. The check after each
        grant (``_try_acquire``) still catches a pooler that dodges this one."""
        own = await self._roundtrip(self._conn.fetchval("SELECT pg_backend_pid()"))
        probe = await self._open()
        try:
            for _ in range(PIN_PROBES):
                other = await self._roundtrip(probe.fetchval("SELECT pg_backend_pid()"))
                again = await self._roundtrip(self._conn.fetchval("SELECT pg_backend_pid()"))
                if other == own or again != own:
                    seen = "another connection" if other == own else f"backend {again} next"
                    raise HAConfigError(
                        f"--ha-dsn goes through a transaction pooler (this session's backend "
                        f"{own} served {seen}): connect it to PostgreSQL directly or through a "
                        "session pooler (queries may keep a transaction pooler in --dsn, with "
                        "--ha-dsn for the lock)"
                    )
        finally:
            probe.terminate()

    async def _try_acquire(self) -> None:
        """Wait for the lock (up to one heartbeat, the session's statement_timeout); when it
        is granted, check that this session's own backend holds it (a transaction pooler
        would have run the two statements on different backends)."""
        try:
            async with self._lock:
                got_pid = await self._roundtrip(
                    self._conn.fetchval(
                        "SELECT pg_backend_pid() FROM pg_advisory_lock($1)", self.key
                    ),
                    self.heartbeat + self._connect_timeout,
                )
        except asyncpg.QueryCanceledError:  # statement_timeout: nobody released it meanwhile
            self._answer(True)
            return
        self._answer(True)
        async with self._lock:
            held = await self._check_locked()
        if not held:
            with contextlib.suppress(Exception):
                await self._conn.execute("SELECT pg_advisory_unlock_all()")
            raise HAConfigError(
                "--ha-dsn goes through a transaction pooler (the advisory lock taken by backend "
                f"{got_pid} is not held by this session's backend): connect it to PostgreSQL "
                "directly or through a session pooler"
            )
        self.is_leader = True
        log.info("elected leader of HA group %r (lock key %d)", self.group, self.key)
        self.on_elected()

    async def _check_locked(self) -> bool:
        """One round trip: does this session's backend hold the lock? Caller holds _lock."""
        self._checks_started += 1
        number = self._checks_started
        high, low = key_halves(self.key)
        if self._conn is None:  # the campaign dropped the connection: nothing holds the lock
            self._last_check = (number, False)
            return False
        try:
            held = bool(
                await self._roundtrip(self._conn.fetchval(_HELD_SQL, high, low), self.heartbeat)
            )
        except Exception as error:
            self._answer(False)
            log.warning("HA lock check failed: %s", describe(error))
            held = False
        else:
            self._answer(True)
        self._last_check = (number, held)
        return held

    async def _roundtrip(self, operation: Any, within: float | None = None) -> Any:
        """Await one operation on the lock connection, bounded on the client side too."""
        async with asyncio.timeout(self._connect_timeout if within is None else within):
            return await operation

    # ------------------------------------------------------------ state changes

    def _answer(self, answered: bool) -> None:
        self.answered = answered
        self._on_answer(answered)

    def _terminated(self, conn: Any) -> None:
        if conn is self._conn:
            self._step_down("its lock session was closed")

    def _step_down(self, why: str) -> None:
        if not self.is_leader:
            return
        self.is_leader = False
        log.warning("no longer the leader of HA group %r: %s", self.group, why)
        self._on_lost()

    async def _drop_connection(self, *, graceful: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if graceful:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 1.0)
        if not conn.is_closed():
            conn.terminate()
