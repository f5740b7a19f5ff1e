"""``tw-exporter check``: is this database ready for the exporter? Usable as an init step.

Validates the settings, connects with the exporter's own pool settings, verifies that the
tables and columns each query reads exist and are readable, says which query shape the schema
gets (``exporter.schema``), inspects each query's plan for full-table scans and for recommended
indexes that are missing or that the plan does not use (advice, never a failure), and runs each
query once, in the shape detected. Prints one line per step and exits 0 only when everything
would work.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping

import asyncpg

from exporter import schema
from exporter.advice import advise
from exporter.collectors import COLLECTORS
from exporter.database import Database, QueryError, describe
from exporter.settings import Settings

Print = Callable[[str], None]

COLUMNS_SQL = """
SELECT c.table_name, c.column_name
FROM information_schema.columns c
WHERE c.table_schema = ANY (current_schemas(false)) AND c.table_name = ANY ($1::text[])
"""

SCHEMA_HINT = (
    "schema: hint: create the tables with sql/schema.sql "
    "(psql -v ON_ERROR_STOP=1 -f sql/schema.sql), or load the demo's sample data into an empty "
    "database with: tw-exporter sample-data --dsn URI"
)


def required_columns() -> dict[str, set[str]]:
    needed: dict[str, set[str]] = {}
    for collector in COLLECTORS:
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


async def check(settings: Settings, out: Print = print) -> int:
    out(
        f"settings: ok (database {settings.redacted_dsn}, interval {settings.interval:g}s, "
        f"query timeout {settings.query_timeout:g}s)"
    )
    try:
        conn = await asyncpg.connect(settings.dsn, timeout=settings.query_timeout)
    except Exception as error:
        out(f"connect: FAILED: {describe(error)}")
        return 1
    try:
        version = await conn.fetchval("SHOW server_version")
        out(f"connect: ok (PostgreSQL {version})")
        needed = required_columns()
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
        if not problems:
            out("schema: ok (" + ", ".join(sorted(needed)) + ")")
            # Plans and missing indexes: advice only, never a failure.
            try:
                ids = await schema.detect(conn)
                for collector in COLLECTORS:
                    if collector.shapes:
                        out(f"shape {collector.name}: {ids.describe()}")
                for item in await advise(conn, settings, ids=ids):
                    out(item.format())
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                out(f"advice: skipped ({describe(error)})")
    finally:
        await conn.close()

    database = Database(
        settings.dsn, pool_size=len(COLLECTORS), query_timeout=settings.query_timeout
    )
    await database.open()
    failures = len(problems)
    try:
        for collector in COLLECTORS:
            try:
                result = await database.fetch(collector.sql_for(ids), collector.params(settings))
            except QueryError as error:
                failures += 1
                out(f"query {collector.name}: FAILED ({error.reason}): {error}")
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


def run_check(settings: Settings) -> int:
    return asyncio.run(check(settings, lambda line: print(line, file=sys.stdout, flush=True)))
