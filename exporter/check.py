"""``tw-exporter check``: is this database ready for the exporter? Usable as an init step.

Validates the settings, connects with the exporter's own pool settings, verifies that the
tables and columns each built-in query reads exist and are readable, prepares each custom query
from ``--queries-file`` (never running it) to check the columns the file names, inspects each
query's plan for full-table scans and missing recommended indexes (advice, never a failure), and
runs each enabled built-in query once; every query's effective schedule is printed with the
source of each value. Prints one line per step and exits 0 only when everything would work.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping, Sequence

import asyncpg

from exporter.advice import advise
from exporter.check_queries import prepare_custom, schedule_lines
from exporter.collectors import COLLECTORS, QueryCollector
from exporter.custom import collectors_for
from exporter.database import Database, QueryError, describe, pool_size_for
from exporter.queries_file import QueriesConfig, config_for
from exporter.settings import Settings

Print = Callable[[str], None]

COLUMNS_SQL = """
SELECT c.table_name, c.column_name
FROM information_schema.columns c
WHERE c.table_schema = ANY (current_schemas(false)) AND c.table_name = ANY ($1::text[])
"""


def required_columns(collectors: Sequence[QueryCollector] = COLLECTORS) -> dict[str, set[str]]:
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


async def check(settings: Settings, out: Print = print, config: QueriesConfig | None = None) -> int:
    config = config if config is not None else config_for(settings)
    collectors = collectors_for(config)
    builtins = [c for c in collectors if c.name in config.builtins]
    out(
        f"settings: ok (database {settings.redacted_dsn}, interval {settings.interval:g}s, "
        f"query timeout {settings.query_timeout:g}s)"
    )
    for line in schedule_lines(config):
        out(line)
    try:
        conn = await asyncpg.connect(settings.dsn, timeout=settings.query_timeout)
    except Exception as error:
        out(f"connect: FAILED: {describe(error)}")
        return 1
    try:
        version = await conn.fetchval("SHOW server_version")
        out(f"connect: ok (PostgreSQL {version})")
        needed = required_columns(builtins)
        present: dict[str, set[str]] = {}
        for row in await conn.fetch(COLUMNS_SQL, list(needed)):
            present.setdefault(row["table_name"], set()).add(row["column_name"])
        problems = missing_columns(needed, present)
        for table in sorted(set(needed) & set(present)):
            if not await conn.fetchval("SELECT has_table_privilege($1, 'SELECT')", table):
                problems.append(f"no SELECT privilege on table {table}")
        for problem in problems:
            out(f"schema: FAILED: {problem}")
        if not problems:
            out("schema: ok (" + ", ".join(sorted(needed)) + ")")
        prepared = await prepare_custom(conn, config)
        for line in prepared.lines:
            out(line)
        # Plans and missing indexes: advice only, never a failure; for the queries that can
        # be planned (the built-ins on a complete schema, the custom ones that prepared).
        ready = [
            c
            for c in collectors
            if (c.name in config.custom and c.name not in prepared.failed)
            or (c.name in config.builtins and not problems)
        ]
        problems += [line for line in prepared.lines if ": FAILED" in line]
        if ready:
            try:
                for item in await advise(conn, settings, collectors=ready):
                    out(item.format())
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                out(f"advice: skipped ({describe(error)})")
    finally:
        await conn.close()

    database = Database(
        settings.dsn, pool_size=pool_size_for(len(builtins)), query_timeout=settings.query_timeout
    )
    await database.open()
    failures = len(problems)
    schedules = config.schedules
    try:
        for collector in builtins:
            try:
                result = await database.fetch(
                    collector.sql, collector.params(settings), schedules[collector.name].timeout
                )
            except QueryError as error:
                failures += 1
                out(f"query {collector.name}: FAILED ({error.reason}): {error}")
                continue
            out(
                f"query {collector.name}: ok, {len(result.rows)} rows in "
                f"{result.seconds * 1000:.1f} ms"
            )
    finally:
        await database.close()
    out("check: ok" if failures == 0 else f"check: FAILED ({failures} problem(s))")
    return 0 if failures == 0 else 1


def run_check(settings: Settings, config: QueriesConfig | None = None) -> int:
    return asyncio.run(
        check(settings, lambda line: print(line, file=sys.stdout, flush=True), config)
    )
