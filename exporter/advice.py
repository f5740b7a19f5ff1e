"""Plan advice for ``tw-exporter check``: which recommended index would make a query cheap.

For each business query this runs ``EXPLAIN (FORMAT JSON)`` with the query's real parameters
(plain EXPLAIN plans without running anything; ``analyze=True`` also runs it, read-only, to
report its time), lists the sequential scans of large tables in the plan (size from
``pg_class.reltuples``), and compares the indexes that exist (``pg_index``) with the
recommended set in ``sql/recommended-indexes.sql`` *by definition*, not by name: an index
under another name with the same leading key columns and directions, covering the same
columns, and either not partial or with the same predicate counts as present. For every
recommended index that is missing on a large table it prints the exact ``CREATE INDEX
CONCURRENTLY`` statement. Advice never fails ``check``: a small or idle database is fine
without any of it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from exporter.collectors import COLLECTORS, QueryCollector
from exporter.collectors.base import QueryParams

# Below this many rows (pg_class.reltuples) a table is "small": a sequential scan of it costs
# a few milliseconds per cycle and an index would not pay for its upkeep.
DEFAULT_MIN_ROWS = 100_000


@dataclass(frozen=True)
class RecommendedIndex:
    """One index of ``sql/recommended-indexes.sql`` and the queries it speeds up."""

    name: str
    table: str
    keys: tuple[str, ...]  # "column" or "column DESC"
    include: tuple[str, ...] = ()
    where: str | None = None
    queries: tuple[str, ...] = ()

    @property
    def statement(self) -> str:
        sql = (
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {self.name} "
            f"ON {self.table} ({', '.join(self.keys)})"
        )
        if self.include:
            sql += f" INCLUDE ({', '.join(self.include)})"
        if self.where:
            sql += f" WHERE {self.where}"
        return sql + ";"


RECOMMENDED: tuple[RecommendedIndex, ...] = (
    RecommendedIndex(
        name="tw_tweets_created_at_cover_idx",
        table="tw_tweets",
        keys=("created_at",),
        include=("id", "user_id", "like_count"),
        queries=("platform_stats", "trending_hashtags"),
    ),
    RecommendedIndex(
        name="tw_tweets_id_created_at_idx",
        table="tw_tweets",
        keys=("id",),
        include=("created_at",),
        queries=("trending_hashtags",),
    ),
    RecommendedIndex(
        name="tw_users_top_followers_idx",
        table="tw_users",
        keys=("follower_count DESC", "username"),
        where="follower_count IS NOT NULL",
        queries=("top_users",),
    ),
    RecommendedIndex(
        name="tw_tweet_hashtags_tweet_id_hashtag_id_idx",
        table="tw_tweet_hashtags",
        keys=("tweet_id", "hashtag_id"),
        queries=("trending_hashtags",),
    ),
)


@dataclass(frozen=True)
class ExistingIndex:
    """An index as ``pg_index`` describes it (only what the comparison needs)."""

    name: str
    table: str
    method: str
    valid: bool
    keys: tuple[tuple[str, bool, bool], ...]  # (column, descending, nulls first)
    include: tuple[str, ...]
    predicate: str | None


@dataclass(frozen=True)
class SeqScan:
    table: str
    rows: float  # pg_class.reltuples


@dataclass(frozen=True)
class QueryAdvice:
    """What ``check`` prints for one query."""

    query: str
    seq_scans: tuple[SeqScan, ...] = ()
    missing: tuple[RecommendedIndex, ...] = ()
    estimated_cost: float | None = None
    execution_ms: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.seq_scans and not self.missing

    def format(self) -> str:
        """One line, plus one indented line per missing index's CREATE INDEX statement."""
        head = f"advice {self.query}: "
        if self.error is not None:
            return head + f"could not plan the query: {self.error}"
        facts = []
        if self.execution_ms is not None:
            facts.append(f"ran in {self.execution_ms:.1f} ms")
        if self.estimated_cost is not None:
            facts.append(f"plan cost {self.estimated_cost:,.0f}")
        for scan in self.seq_scans:
            facts.append(f"Seq Scan on {scan.table} (~{scan.rows:,.0f} rows)")
        if self.ok:
            # Custom queries have no recommended indexes: only the scans are judged.
            covered = any(self.query in index.queries for index in RECOMMENDED)
            verdict = "recommended indexes present" if covered else "no large sequential scan"
            return head + "ok (" + ", ".join([*facts, verdict]) + ")"
        if self.missing:
            facts.append(f"{len(self.missing)} recommended index(es) missing, create with:")
        lines = [head + "; ".join(facts)]
        lines += [f"    {index.statement}" for index in self.missing]
        return "\n".join(lines)


# ------------------------------------------------------------------ catalog reads

_INDEXES_SQL = """
SELECT t.name AS table_name,
       i.relname AS index_name,
       am.amname AS method,
       x.indisvalid AS valid,
       x.indnkeyatts AS key_count,
       array(SELECT pg_get_indexdef(x.indexrelid, k, true)
             FROM generate_series(1, x.indnatts) AS k ORDER BY k) AS columns,
       x.indoption::int2[] AS options,
       pg_get_expr(x.indpred, x.indrelid, true) AS predicate
FROM unnest($1::text[]) AS t(name)
JOIN pg_index x ON x.indrelid = to_regclass(t.name)
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_am am ON am.oid = i.relam
"""

_ROWS_SQL = """
SELECT t.name AS table_name,
       CASE WHEN c.reltuples >= 0 THEN c.reltuples
            ELSE c.relpages::float8 * 50 END AS rows  -- never analyzed: rough guess
FROM unnest($1::text[]) AS t(name)
JOIN pg_class c ON c.oid = to_regclass(t.name)
"""


async def existing_indexes(
    conn: asyncpg.Connection, tables: Sequence[str]
) -> dict[str, list[ExistingIndex]]:
    result: dict[str, list[ExistingIndex]] = {table: [] for table in tables}
    for row in await conn.fetch(_INDEXES_SQL, list(tables)):
        columns = [_unquote(c) for c in row["columns"]]
        key_count: int = row["key_count"]
        options: list[int] = list(row["options"] or [])
        keys = tuple(
            (columns[k], bool(options[k] & 1), bool(options[k] & 2)) for k in range(key_count)
        )
        result[row["table_name"]].append(
            ExistingIndex(
                name=row["index_name"],
                table=row["table_name"],
                method=row["method"],
                valid=row["valid"],
                keys=keys,
                include=tuple(columns[key_count:]),
                predicate=row["predicate"],
            )
        )
    return result


async def table_rows(conn: asyncpg.Connection, tables: Sequence[str]) -> dict[str, float]:
    return {
        row["table_name"]: float(row["rows"]) for row in await conn.fetch(_ROWS_SQL, list(tables))
    }


# ------------------------------------------------------------------ matching


def _unquote(identifier: str) -> str:
    if identifier.startswith('"') and identifier.endswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier.lower()


def _normalize_predicate(predicate: str) -> str:
    return re.sub(r"[\s()]", "", predicate).lower()


def _spec_keys(index: RecommendedIndex) -> list[tuple[str, bool, bool]]:
    keys = []
    for key in index.keys:
        parts = key.split()
        descending = len(parts) > 1 and parts[1].upper() == "DESC"
        keys.append((parts[0].lower(), descending, descending))  # PostgreSQL's NULLS default
    return keys


def satisfies(existing: ExistingIndex, wanted: RecommendedIndex) -> bool:
    """Whether ``existing`` serves the queries as well as ``wanted`` would, by definition."""
    if not existing.valid or existing.method != "btree" or existing.table != wanted.table:
        return False
    spec = _spec_keys(wanted)
    if len(existing.keys) < len(spec):
        return False
    prefix = existing.keys[: len(spec)]
    if [name for name, _, _ in prefix] != [name for name, _, _ in spec]:
        return False
    forward = all(e[1:] == s[1:] for e, s in zip(prefix, spec, strict=True))
    backward = all(e[1] != s[1] and e[2] != s[2] for e, s in zip(prefix, spec, strict=True))
    if not (forward or backward):
        return False
    covered = {name for name, _, _ in existing.keys} | set(existing.include)
    if not {c.lower() for c in wanted.include} <= covered:
        return False
    if existing.predicate is None:
        return True
    return wanted.where is not None and _normalize_predicate(
        existing.predicate
    ) == _normalize_predicate(wanted.where)


def missing_indexes(
    query: str,
    indexes: Mapping[str, Sequence[ExistingIndex]],
    rows: Mapping[str, float],
    min_rows: float,
) -> tuple[RecommendedIndex, ...]:
    """Recommended indexes for ``query`` on large tables that no existing index satisfies."""
    return tuple(
        wanted
        for wanted in RECOMMENDED
        if query in wanted.queries
        and wanted.table in rows
        and rows[wanted.table] >= min_rows
        and not any(satisfies(e, wanted) for e in indexes.get(wanted.table, ()))
    )


# ------------------------------------------------------------------ plans


def plan_nodes(plan: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from plan_nodes(child)


def seq_scans(
    plan: Mapping[str, Any], rows: Mapping[str, float], min_rows: float
) -> tuple[SeqScan, ...]:
    found: dict[str, SeqScan] = {}
    for node in plan_nodes(plan):
        table = node.get("Relation Name")
        if node.get("Node Type") == "Seq Scan" and isinstance(table, str):
            size = rows.get(table, 0.0)
            if size >= min_rows:
                found.setdefault(table, SeqScan(table, size))
    return tuple(found.values())


async def _explain(
    conn: asyncpg.Connection, collector: QueryCollector, params: QueryParams, analyze: bool
) -> Mapping[str, Any]:
    options = "ANALYZE, FORMAT JSON" if analyze else "FORMAT JSON"
    args = collector.params(params)
    async with conn.transaction(readonly=True):
        raw = await conn.fetchval(f"EXPLAIN ({options}) {collector.sql}", *args)
    document = json.loads(raw) if isinstance(raw, str) else raw
    top: Mapping[str, Any] = document[0]
    return top


async def advise(
    conn: asyncpg.Connection,
    settings: QueryParams,
    *,
    analyze: bool = False,
    min_rows: float = DEFAULT_MIN_ROWS,
    collectors: Sequence[QueryCollector] = COLLECTORS,
) -> list[QueryAdvice]:
    """Advice for each query: large-table sequential scans and missing recommended indexes."""
    tables = sorted({t for c in collectors for t in c.tables} | {r.table for r in RECOMMENDED})
    rows = await table_rows(conn, tables)
    indexes = await existing_indexes(conn, tables)
    advice: list[QueryAdvice] = []
    for collector in collectors:
        missing = missing_indexes(collector.name, indexes, rows, min_rows)
        try:
            top = await _explain(conn, collector, settings, analyze)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            advice.append(
                QueryAdvice(collector.name, missing=missing, error=message or type(error).__name__)
            )
            continue
        plan: Mapping[str, Any] = top["Plan"]
        # A custom query's tables are known from its plan only.
        unknown = {
            str(node["Relation Name"])
            for node in plan_nodes(plan)
            if "Relation Name" in node and node["Relation Name"] not in rows
        }
        if unknown:
            rows = {**rows, **await table_rows(conn, sorted(unknown))}
        execution = top.get("Execution Time")
        advice.append(
            QueryAdvice(
                query=collector.name,
                seq_scans=seq_scans(plan, rows, min_rows),
                missing=missing,
                estimated_cost=float(plan.get("Total Cost", 0.0)),
                execution_ms=float(execution) if execution is not None else None,
            )
        )
    return advice
