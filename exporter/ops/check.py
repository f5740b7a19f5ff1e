"""``tw-exporter check``: is this database ready for the exporter? Usable as an init step.

Validates the settings, connects with the exporter's own connection settings, says whether the
server is a primary or a hot standby (and warns when a standby's settings let recovery
conflicts cancel the queries), verifies that the tables and columns each built-in query reads
exist and are readable, says which query shape the schema gets (``exporter.collectors.schema``),
prepares each custom query from ``--queries-file`` (never running it) to check the columns the file
names, inspects each query's plan for full-table scans and for recommended indexes that are
missing or that the plan does not use (advice, never a failure), and runs each enabled built-in
query once as ``run`` does (the shape detected on the connection it runs on, the rows mapped
onto metrics, so rows ``run`` would count as ``data`` fail here); every query's effective
schedule is printed with the source of each value. Prints one line per step and exits 0 only
when everything would work.

Like the exporter, it keeps no session state and runs unnamed statements inside one read-only
transaction, so it gives the same answers through PgBouncer in transaction pooling mode.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence

import asyncpg

from exporter.collect.custom import collector_of
from exporter.collect.scheduler import fetch_rows
from exporter.collectors import QueryCollector, schema
from exporter.collectors.base import PartialData
from exporter.config.queries_file import QueriesConfig, config_for
from exporter.config.settings import Settings
from exporter.db.connect import Connector
from exporter.db.database import (
    APPLICATION_NAME,
    CLIENT_GRACE_SECONDS,
    STATEMENT_CACHE_SIZE,
    Database,
    QueryError,
    describe,
    local_timeouts,
    pool_size_for,
)
from exporter.ops.advice import advise
from exporter.ops.check_queries import prepare_custom, schedule_lines
from exporter.ops.schema_file import SCHEMA_PATH

Print = Callable[[str], None]

#: Connections ``check`` holds at once: its inspection connection is closed before it runs the
#: queries, one after another. A session pooler's pool needs this many beyond the exporter's
#: (docs/running-against-your-database.md; the walkthrough test runs it with exactly that).
CHECK_CONNECTIONS = 1

COLUMNS_SQL = """
SELECT c.table_name, c.column_name
FROM information_schema.columns c
WHERE c.table_schema = ANY (current_schemas(false)) AND c.table_name = ANY ($1::text[])
"""

SCHEMA_HINT = (
    f"schema: hint: create the tables with {SCHEMA_PATH} "
    f"(psql -v ON_ERROR_STOP=1 -f {SCHEMA_PATH}), or load the demo's sample data into an empty "
    "database with: tw-exporter sample-data --dsn URI"
)

STANDBY_SQL = """
SELECT pg_is_in_recovery() AS standby,
       current_setting('hot_standby_feedback')::bool AS feedback,
       (SELECT setting::int FROM pg_settings WHERE name = 'max_standby_streaming_delay') AS delay
"""


def required_columns(collectors: Iterable[QueryCollector]) -> dict[str, set[str]]:
    """The columns each table must have for ``collectors`` (what their modules declare)."""
    needed: dict[str, set[str]] = {}
    for collector in collectors:
        for table, columns in collector.tables.items():
            needed.setdefault(table, set()).update(columns)
    return needed


def missing_columns(needed: Mapping[str, set[str]], present: Mapping[str, set[str]]) -> list[str]:
    problems = []
    for table, columns in sorted(needed.items()):
        if table not in present:
            problems.append(f"table {table} is missing")
            continue
        absent = sorted(columns - present[table])
        if absent:
            problems.append(f"table {table} lacks column(s) {', '.join(absent)}")
    return problems


def server_role(standby: bool, feedback: bool, delay_ms: int, query_timeout: float) -> str:
    """The ``server:`` line: primary or hot standby, and whether a standby's recovery
    conflicts can cancel queries that stay within --query-timeout.

    A standby cancels a query that holds up WAL replay for longer than
    ``max_standby_streaming_delay`` (-1: never) unless ``hot_standby_feedback`` keeps the
    primary from removing rows the query still reads. A warning, not a failure: the exporter
    works, and a cancelled query is counted under reason ``conflict`` and retried next cycle.
    """
    if not standby:
        return "server: ok (primary)"
    delay = "-1 (unlimited)" if delay_ms < 0 else f"{delay_ms}ms"
    if feedback or delay_ms < 0 or delay_ms >= query_timeout * 1000:
        return (
            f"server: ok (hot standby; hot_standby_feedback {'on' if feedback else 'off'}, "
            f"max_standby_streaming_delay {delay})"
        )
    return (
        "server: WARNING: hot standby with hot_standby_feedback off and "
        f"max_standby_streaming_delay {delay} below the query timeout "
        f"({query_timeout:g}s): WAL replay may cancel queries (reason conflict); turn "
        "hot_standby_feedback on or raise max_standby_streaming_delay"
    )


async def inspect(
    conn: asyncpg.Connection, settings: Settings, out: Print, config: QueriesConfig
) -> list[str]:
    """Server, schema, privileges, the query shape, the custom queries' statements and the
    plans; returns the problems found."""
    definitions = list(config.definitions.values())
    collectors = {d.name: collector_of(d) for d in definitions}
    version = await conn.fetchval("SHOW server_version")
    out(f"connect: ok (PostgreSQL {version})")
    role = await conn.fetchrow(STANDBY_SQL)
    assert role is not None
    out(server_role(role["standby"], role["feedback"], role["delay"], settings.query_timeout))
    # The tables every query declares: a built-in's, from its module; a custom query declares
    # none (preparing it below proves its statement).
    needed = required_columns(collectors.values())
    present: dict[str, set[str]] = {}
    for row in await conn.fetch(COLUMNS_SQL, list(needed)):
        present.setdefault(row["table_name"], set()).add(row["column_name"])
    problems = missing_columns(needed, present)
    for table in sorted(set(needed) & set(present)):
        if not await conn.fetchval("SELECT has_table_privilege($1, 'SELECT')", table):
            problems.append(f"no SELECT privilege on table {table}")
    for problem in problems:
        out(f"schema: FAILED: {problem}")
    if any(table not in present for table in needed):
        out(SCHEMA_HINT)
    ids = schema.TweetIds(type=None)
    schema_ok = not problems
    if schema_ok:
        out("schema: ok (" + ", ".join(sorted(needed)) + ")")
    prepared = await prepare_custom(conn, config)
    for line in prepared.lines:
        out(line)
    problems += [line for line in prepared.lines if ": FAILED" in line]
    # Plans and missing indexes: advice only, never a failure; for every query whose statement
    # was proven (its declared tables are there, or it prepared).
    failed = set(prepared.failed)
    if not schema_ok:
        failed |= {name for name, c in collectors.items() if c.tables}
    ready = [c for name, c in collectors.items() if name not in failed]
    try:
        if any(c.shapes for c in ready):
            ids = await schema.detect(conn)
            for collector in ready:
                if collector.shapes:
                    out(f"shape {collector.name}: {ids.describe()}")
        if ready:
            for item in await advise(conn, settings, collectors=ready, ids=ids):
                out(item.format())
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        out(f"advice: skipped ({describe(error)})")
    return problems


async def check(settings: Settings, out: Print = print, config: QueriesConfig | None = None) -> int:
    config = config if config is not None else config_for(settings)
    runs = [d for d in config.definitions.values() if d.check_runs]
    out(
        f"settings: ok (database {settings.redacted_dsn}, interval {settings.interval:g}s, "
        f"query timeout {settings.query_timeout:g}s)"
    )
    for line in schedule_lines(config):
        out(line)
    # Every statement has the client deadline ``run`` gives a query: a server that never
    # answers (a session pooler with no free server connection queues the client for its
    # query_wait_timeout, 120 s by default) fails the check at it, not minutes later.
    deadline = settings.query_timeout + CLIENT_GRACE_SECONDS
    try:
        conn = await Connector(settings.dsn).connect(
            timeout=settings.query_timeout,
            command_timeout=deadline,
            statement_cache_size=STATEMENT_CACHE_SIZE,
            server_settings={"application_name": APPLICATION_NAME},
        )
    except Exception as error:
        out(f"connect: FAILED: {describe(error)}")
        return 1
    try:
        # One read-only transaction under the exporter's timeouts: a transaction pooler keeps
        # the same server connection for all of it (advice's EXPLAINs use savepoints).
        async with conn.transaction(readonly=True):
            await conn.execute(local_timeouts(settings.query_timeout))
            problems = await inspect(conn, settings, out, config)
    except TimeoutError:
        problems = [f"no answer from the database within {deadline:g}s (client deadline)"]
        out(f"schema: FAILED: {problems[0]}")
        conn.terminate()  # mid-statement: nothing to say goodbye to
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
        problems = [describe(error)]
        out(f"schema: FAILED: {problems[0]}")
    finally:
        if not conn.is_closed():
            try:
                await conn.close(timeout=CLIENT_GRACE_SECONDS)
            except (TimeoutError, OSError, asyncpg.InterfaceError):
                conn.terminate()

    database = Database(
        settings.dsn,
        pool_size=pool_size_for(len(runs), settings.max_connections),
        query_timeout=settings.query_timeout,
    )
    await database.open()
    failures = len(problems)
    try:
        for definition in runs:
            collector = collector_of(definition)
            # As ``run`` runs it: the statement resolved on the connection it runs on (the
            # shape detected there, again if the server says the schema changed), and the
            # rows mapped onto metrics, so rows ``run`` could not serve fail here too.
            try:
                result = await fetch_rows(
                    database, collector, settings, definition.schedule.timeout
                )
            except QueryError as error:
                failures += 1
                out(f"query {collector.name}: FAILED ({error.reason}): {error}")
                continue
            problem = unservable(collector, result.rows, settings)
            if problem is not None:
                failures += 1
                out(f"query {collector.name}: FAILED ({problem[0]}): {problem[1]}")
                continue
            out(
                f"query {collector.name}: ok, {len(result.rows)} rows in "
                f"{result.seconds * 1000:.1f} ms"
            )
            if collector.note:
                out(f"query {collector.name}: note: {collector.note}")
    finally:
        await database.close()
    out("check: ok" if failures == 0 else f"check: FAILED ({failures} problem(s))")
    return 0 if failures == 0 else 1


def unservable(
    collector: QueryCollector, rows: Sequence[asyncpg.Record], settings: Settings
) -> tuple[str, str] | None:
    """(reason, why) when ``run`` could not serve every row: ``data``, as ``run`` counts
    them, or ``sql`` for a mapping that raises; None when it could."""
    try:
        collector.to_families(rows, settings)
    except PartialData as partial:
        return "data", "; ".join(partial.problems)
    except Exception as error:
        return "sql", f"the rows could not be mapped: {describe(error)}"
    return None


def run_check(settings: Settings, config: QueriesConfig | None = None) -> int:
    return asyncio.run(
        check(settings, lambda line: print(line, file=sys.stdout, flush=True), config)
    )
