"""What ``tw-exporter check`` says about the queries file: every query's effective schedule and
where each value came from, and, for custom queries, whether the database agrees with the file.

Each custom query is *prepared* (parsed, analysed and planned by PostgreSQL, never run), which
tells which columns it returns and their types without touching the data: a value column the
file names must exist and be numeric, a label column must exist. Problems are lines to print;
advice about plans comes from :mod:`exporter.ops.advice` like for the built-ins.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg

from exporter.collect.custom import column_problems
from exporter.config.queries_file import QueriesConfig, Schedule, bind


def schedule_lines(config: QueriesConfig) -> Iterator[str]:
    """One line per query: its effective settings and the source of each."""
    if config.path is not None:
        yield (
            f"queries file: ok ({config.path}: {len(config.builtins)} built-in, "
            f"{len(config.custom)} custom)"
        )
    for name, schedule in config.schedules.items():
        yield f"schedule {name}: {_describe(schedule)}"


def _describe(schedule: Schedule) -> str:
    src = schedule.sources
    parts = [
        f"interval {schedule.interval:g}s ({src.get('interval', 'default')})",
        f"timeout {schedule.timeout:g}s ({src.get('timeout', 'default')})",
        f"max staleness {schedule.max_staleness:g}s ({src.get('max_staleness', 'default')})",
    ]
    if "max_series" in src:
        parts.append(f"max series {schedule.max_series} ({src['max_series']})")
    return ", ".join(parts)


@dataclass
class Prepared:
    """``check``'s lines about the custom queries, and which of them failed."""

    lines: list[str] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)


async def prepare_custom(conn: asyncpg.Connection, config: QueriesConfig) -> Prepared:
    """Prepare every custom query; a problem is a ``FAILED`` line."""
    result = Prepared()
    lines = result.lines
    for name, (query, _) in config.custom.items():
        try:
            async with conn.transaction(readonly=True):
                statement = await conn.prepare(query.sql)
                columns = {a.name: a.type.name for a in statement.get_attributes()}
                # Planning with the file's values checks their types against the statement's.
                await conn.fetch("EXPLAIN " + query.sql, *(bind(p) for p in query.params))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, TypeError, ValueError) as error:
            text = str(error).strip().splitlines()[0] if str(error).strip() else ""
            lines.append(f"prepare {name}: FAILED: {text or type(error).__name__}")
            result.failed.add(name)
            continue
        problems = column_problems(query, columns)
        for problem in problems:
            lines.append(f"prepare {name}: FAILED: {problem}")
            result.failed.add(name)
        if not problems:
            shown = ", ".join(f"{c} {t}" for c, t in columns.items())
            lines.append(f"prepare {name}: ok (columns: {shown})")
    return result
