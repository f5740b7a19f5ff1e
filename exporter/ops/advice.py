"""Plan advice for ``tw-exporter check``: does each query's plan use the recommended indexes?

For each business query this runs ``EXPLAIN (FORMAT JSON)`` of the statement the exporter would
run on this database (the shape ``exporter.collectors.schema`` picks) with the query's real
parameters (plain EXPLAIN plans without running anything; ``analyze=True`` also runs it, read-only,
to report its time). The verdict comes from the plan, not from the index definitions: a query is
"ok" when its plan reads no large table sequentially (size from ``pg_class.reltuples``) and
uses an index serving each recommended index (``exporter/sql/recommended-indexes.sql``) that
applies to it. For a recommended index the plan does not use, the advice says why it may be:

* no index like it exists: the exact ``CREATE INDEX CONCURRENTLY`` statement;
* a similar index exists but differs where it matters: a partial predicate that tests a
  ``NOT NULL`` column (PostgreSQL 17+ drops that test from the query and can then no longer
  prove the predicate), a key collation other than the one the query orders by, an INVALID
  index left by a failed concurrent build;
* a matching index exists and the planner still chose otherwise: stale statistics (with the
  ``ANALYZE`` to run), or a setting or estimate that makes the scan look cheaper.

Advice never fails ``check``: a small or idle database is fine without any of it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from exporter.collectors import COLLECTORS, QueryCollector, schema
from exporter.collectors.base import QueryParams

# Below this many rows (pg_class.reltuples) a table is "small": a sequential scan of it costs
# a few milliseconds per cycle and an index would not pay for its upkeep.
DEFAULT_MIN_ROWS = 100_000

# More rows changed since the last ANALYZE than this share of the table: statistics are stale.
STALE_SHARE = 0.2

_COLLATE_RE = re.compile(r'\s+COLLATE\s+"?([^"\s]+)"?', re.I)


@dataclass(frozen=True)
class RecommendedIndex:
    """One index of ``exporter/sql/recommended-indexes.sql`` and the queries (shapes) it serves."""

    name: str
    table: str
    keys: tuple[str, ...]  # "column", "column DESC" or 'column COLLATE "C"'
    include: tuple[str, ...] = ()
    where: str | None = None
    queries: tuple[str, ...] = ()
    shapes: tuple[schema.Shape, ...] = schema.SHAPES  # of the trending query; others have one

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

    def applies(self, query: str, shape: schema.Shape) -> bool:
        return query in self.queries and shape in self.shapes


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
        shapes=("id-range",),
    ),
    RecommendedIndex(
        name="tw_users_followers_rank_idx",
        table="tw_users",
        keys=("follower_count DESC", 'username COLLATE "C"'),
        queries=("top_users",),
    ),
    RecommendedIndex(
        name="tw_tweet_hashtags_tweet_id_hashtag_id_idx",
        table="tw_tweet_hashtags",
        keys=("tweet_id", "hashtag_id"),
        queries=("trending_hashtags",),
        shapes=("id-range",),
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
    # Per key column: the collation's name, "default" for the database's, None when the
    # column type has none. Empty when unknown (then collations are not compared).
    collations: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class SeqScan:
    table: str
    rows: float  # pg_class.reltuples
    expected: str | None = None  # why this shape may read the table whole (not a problem)

    def format(self) -> str:
        why = f"; expected: {self.expected}" if self.expected else ""
        return f"Seq Scan on {self.table} (~{self.rows:,.0f} rows{why})"


# Sequential scans a shape may rightly choose: no index can do better (reported, not flagged).
EXPECTED_SEQ_SCANS: dict[tuple[str, schema.Shape], dict[str, str]] = {
    ("trending_hashtags", "window-join"): {
        "tw_tweet_hashtags": "links carry no time and, with ids that do not follow time, the "
        "window's links are spread over the whole table: one read of it can beat an index "
        "probe per tweet in the window"
    },
}


@dataclass(frozen=True)
class TableFacts:
    """What the diagnosis needs to know about a table beyond its indexes."""

    rows: float  # pg_class.reltuples (or a guess when never analyzed)
    analyzed: bool = True  # ANALYZE (manual or auto) has run at least once
    changed_since_analyze: float = 0.0  # pg_stat_user_tables.n_mod_since_analyze
    not_null: frozenset[str] = frozenset()  # columns declared NOT NULL

    @property
    def stale(self) -> bool:
        return not self.analyzed or self.changed_since_analyze > STALE_SHARE * max(self.rows, 1)


@dataclass(frozen=True)
class IndexUse:
    """What the plan does with one recommended index that applies to the query: the line
    ``check`` prints for it, so "ok" never stands for an index that is not there."""

    index: RecommendedIndex
    rows: float  # of its table (pg_class.reltuples)
    min_rows: float  # below this the table is small and the index optional
    used_as: tuple[str, ...] = ()  # indexes the plan scans on its keys and order (any name)
    present: tuple[str, ...] = ()  # indexes like it (its keys and included columns)

    @property
    def state(self) -> str:
        """used (the plan reads an index like it), unused (one exists, the plan reads none of
        them) or missing (none exists, even if the plan reads one on the same keys)."""
        if set(self.used_as) & set(self.present):
            return "used"
        return "unused" if self.present else "missing"

    def format(self) -> str:
        name = self.index.name
        if self.state == "used":
            others = [n for n in self.used_as if n != name and n in self.present]
            return f"{name} used" + (f" (as {', '.join(others)})" if others else "")
        if self.present:
            text = f"{name} present ({', '.join(self.present)}) but not used by the plan"
        else:
            text = f"{name} missing"
        notes = []
        if self.used_as:  # e.g. the primary key on id, without the included columns
            notes.append(f"the plan reads {', '.join(self.used_as)} on the same keys instead")
        if self.rows < self.min_rows:
            notes.append(
                f"fine while {self.index.table} has ~{self.rows:,.0f} rows, "
                f"below {self.min_rows:,.0f}"
            )
        return text + (f" ({'; '.join(notes)})" if notes else "")


@dataclass(frozen=True)
class QueryAdvice:
    """What ``check`` prints for one query."""

    query: str
    seq_scans: tuple[SeqScan, ...] = ()
    indexes: tuple[IndexUse, ...] = ()  # each recommended index for this query and shape
    missing: tuple[RecommendedIndex, ...] = ()
    unused: tuple[str, ...] = ()  # why a recommended index the plan should use is not used
    shape: str | None = None  # the statement's shape, for a query that has several
    estimated_cost: float | None = None
    execution_ms: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        unexpected = [scan for scan in self.seq_scans if scan.expected is None]
        return self.error is None and not unexpected and not self.missing and not self.unused

    def format(self) -> str:
        """One line, plus one indented line per finding and per CREATE INDEX statement."""
        head = f"advice {self.query}: "
        if self.error is not None:
            return head + f"could not plan the query: {self.error}"
        facts = []
        if self.shape is not None:
            facts.append(f"{self.shape} shape")
        if self.execution_ms is not None:
            facts.append(f"ran in {self.execution_ms:.1f} ms")
        if self.estimated_cost is not None:
            facts.append(f"plan cost {self.estimated_cost:,.0f}")
        for scan in self.seq_scans:
            facts.append(scan.format())
        # Index by index, what the plan really does: a small table may rightly do without one,
        # and then the line says so instead of claiming the index is used.
        facts += [use.format() for use in self.indexes]
        if self.ok:
            if not self.indexes and not self.seq_scans:
                facts.append("no large sequential scan")  # custom queries: nothing recommended
            return head + "ok (" + ", ".join(facts) + ")"
        if self.unused:
            facts.append(f"{len(self.unused)} recommended index(es) not used by the plan")
        if self.missing:
            facts.append(f"{len(self.missing)} recommended index(es) missing, create with:")
        lines = [head + "; ".join(facts)]
        lines += [f"    {reason}" for reason in self.unused]
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
       array(SELECT c.collname
             FROM unnest(x.indcollation::oid[]) WITH ORDINALITY AS k(coll, n)
             LEFT JOIN pg_collation c ON c.oid = k.coll
             ORDER BY k.n) AS collations,
       pg_get_expr(x.indpred, x.indrelid, true) AS predicate
FROM unnest($1::text[]) AS t(name)
JOIN pg_index x ON x.indrelid = to_regclass(t.name)
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_am am ON am.oid = i.relam
"""

_TABLES_SQL = """
SELECT t.name AS table_name,
       CASE WHEN c.reltuples >= 0 THEN c.reltuples
            ELSE c.relpages::float8 * 50 END AS rows,  -- never analyzed: rough guess
       coalesce(s.last_analyze, s.last_autoanalyze) IS NOT NULL OR c.reltuples >= 0 AS analyzed,
       coalesce(s.n_mod_since_analyze, 0)::float8 AS changed,
       array(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND a.attnotnull
               AND NOT a.attisdropped) AS not_null
FROM unnest($1::text[]) AS t(name)
JOIN pg_class c ON c.oid = to_regclass(t.name)
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
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
                collations=tuple(row["collations"] or ()),
            )
        )
    return result


async def table_facts(conn: asyncpg.Connection, tables: Sequence[str]) -> dict[str, TableFacts]:
    return {
        row["table_name"]: TableFacts(
            rows=float(row["rows"]),
            analyzed=bool(row["analyzed"]),
            changed_since_analyze=float(row["changed"]),
            not_null=frozenset(row["not_null"]),
        )
        for row in await conn.fetch(_TABLES_SQL, list(tables))
    }


async def table_rows(conn: asyncpg.Connection, tables: Sequence[str]) -> dict[str, float]:
    return {table: facts.rows for table, facts in (await table_facts(conn, tables)).items()}


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
        parts = _COLLATE_RE.sub("", key).split()
        descending = len(parts) > 1 and parts[1].upper() == "DESC"
        keys.append((parts[0].lower(), descending, descending))  # PostgreSQL's NULLS default
    return keys


def _spec_collations(index: RecommendedIndex) -> list[str | None]:
    """The collation each key must have; None where the recommendation names none."""
    return [m.group(1) if (m := _COLLATE_RE.search(key)) else None for key in index.keys]


def _same_columns_and_order(existing: ExistingIndex, wanted: RecommendedIndex) -> bool:
    """An index "like" ``wanted``: keys as ``_same_keys``, covering its included columns. Only
    predicate, collation and validity may still differ (``differences``)."""
    covered = {name for name, _, _ in existing.keys} | set(existing.include)
    return _same_keys(existing, wanted) and {c.lower() for c in wanted.include} <= covered


def _same_keys(existing: ExistingIndex, wanted: RecommendedIndex) -> bool:
    """A btree whose leading keys are the recommended columns, all in its direction or all
    reversed (a backward scan gives the same order)."""
    spec = _spec_keys(wanted)
    if existing.method != "btree" or existing.table != wanted.table:
        return False
    if len(existing.keys) < len(spec):
        return False
    prefix = existing.keys[: len(spec)]
    if [name for name, _, _ in prefix] != [name for name, _, _ in spec]:
        return False
    forward = all(e[1:] == s[1:] for e, s in zip(prefix, spec, strict=True))
    backward = all(e[1] != s[1] and e[2] != s[2] for e, s in zip(prefix, spec, strict=True))
    return forward or backward


def differences(existing: ExistingIndex, wanted: RecommendedIndex) -> list[str]:
    """How an index on the recommended columns falls short of ``wanted`` (empty: it serves)."""
    found = []
    if not existing.valid:
        found.append("it is INVALID (a failed CREATE INDEX CONCURRENTLY): drop it and re-create")
    if existing.predicate is not None and not (
        wanted.where is not None
        and _normalize_predicate(existing.predicate) == _normalize_predicate(wanted.where)
    ):
        found.append(f"it is partial (WHERE {existing.predicate})")
    if existing.collations:
        for (column, _, _), need, have in zip(
            _spec_keys(wanted), _spec_collations(wanted), existing.collations, strict=False
        ):
            if need is not None and have != need:
                found.append(
                    f'its {column} key has collation "{have}" where the query orders by '
                    f'COLLATE "{need}"'
                )
    return found


def satisfies(existing: ExistingIndex, wanted: RecommendedIndex) -> bool:
    """Whether ``existing`` serves the queries as well as ``wanted`` would, by definition."""
    return _same_columns_and_order(existing, wanted) and not differences(existing, wanted)


def missing_indexes(
    query: str,
    indexes: Mapping[str, Sequence[ExistingIndex]],
    rows: Mapping[str, float],
    min_rows: float,
    shape: schema.Shape = "id-range",
) -> tuple[RecommendedIndex, ...]:
    """Recommended indexes for ``query`` on large tables with no index on their columns."""
    return tuple(
        wanted
        for wanted in RECOMMENDED
        if wanted.applies(query, shape)
        and wanted.table in rows
        and rows[wanted.table] >= min_rows
        and not any(_same_columns_and_order(e, wanted) for e in indexes.get(wanted.table, ()))
    )


_NOT_NULL_TEST_RE = re.compile(r"^\(*\s*(\w+)\s+IS\s+NOT\s+NULL\s*\)*$", re.I)


def why_unused(
    wanted: RecommendedIndex,
    candidates: Sequence[ExistingIndex],
    facts: TableFacts,
    used: set[str],
    others: Sequence[ExistingIndex] = (),
) -> str | None:
    """Why the plan uses no index serving ``wanted``, or None when it does use one.

    ``candidates`` are the table's indexes like ``wanted`` (at least one), ``others`` all its
    indexes, ``used`` the names of the indexes the plan scans. A used index with the
    recommended keys serves even if it covers fewer columns (the planner may rightly prefer
    the primary key on ``id`` to the wider recommended index when the table is small).
    """
    if any(
        e.name in used and _same_keys(e, wanted) and not differences(e, wanted)
        for e in [*candidates, *others]
    ):
        return None
    reasons = []
    serving = [c for c in candidates if satisfies(c, wanted)]
    for candidate in candidates:
        if candidate in serving:
            continue
        found = differences(candidate, wanted)
        match = _NOT_NULL_TEST_RE.match(candidate.predicate or "")
        if match and match.group(1).lower() in facts.not_null:
            found.append(
                f"its predicate tests {match.group(1)}, which is NOT NULL: PostgreSQL 17+ drops "
                "that test from the query and then cannot prove the predicate"
            )
        used_note = " (the plan uses it)" if candidate.name in used else ""
        reasons.append(f"index {candidate.name}{used_note}: " + "; ".join(found))
    if serving:
        names = ", ".join(c.name for c in serving)
        if facts.stale:
            state = (
                "never analyzed"
                if not facts.analyzed
                else f"{facts.changed_since_analyze:,.0f} rows changed since the last ANALYZE"
            )
            reasons.append(
                f"index {names} serves it but the plan does not use it: statistics of "
                f"{wanted.table} look stale ({state}): run ANALYZE {wanted.table}"
            )
        else:
            reasons.append(
                f"index {names} serves it but the planner estimates another plan cheaper "
                "(statistics are fresh: check settings such as enable_indexscan, "
                "random_page_cost, or a small table)"
            )
    else:
        reasons.append(f"create the recommended one: {wanted.statement}")
    return f"{wanted.name} on {wanted.table}: " + "; ".join(reasons)


def index_use(
    wanted: RecommendedIndex,
    table_indexes: Sequence[ExistingIndex],
    used: set[str],
    rows: float,
    min_rows: float,
) -> IndexUse:
    """Whether the plan (``used``: the indexes it scans) reads an index serving ``wanted``, or
    one like it exists unused, or none does. A used index with the recommended keys serves
    even if it covers fewer columns (the primary key on ``id``, say), as in ``why_unused``."""
    return IndexUse(
        wanted,
        rows,
        min_rows,
        used_as=tuple(
            e.name
            for e in table_indexes
            if e.name in used and _same_keys(e, wanted) and not differences(e, wanted)
        ),
        present=tuple(e.name for e in table_indexes if _same_columns_and_order(e, wanted)),
    )


# ------------------------------------------------------------------ plans


def plan_nodes(plan: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from plan_nodes(child)


def used_indexes(plan: Mapping[str, Any]) -> set[str]:
    """Names of the indexes any node of the plan scans."""
    return {
        node["Index Name"] for node in plan_nodes(plan) if isinstance(node.get("Index Name"), str)
    }


def seq_scans(
    plan: Mapping[str, Any],
    rows: Mapping[str, float],
    min_rows: float,
    expected: Mapping[str, str] | None = None,
) -> tuple[SeqScan, ...]:
    """The plan's sequential scans of large tables; ``expected``: those the shape may choose."""
    found: dict[str, SeqScan] = {}
    for node in plan_nodes(plan):
        table = node.get("Relation Name")
        if node.get("Node Type") == "Seq Scan" and isinstance(table, str):
            size = rows.get(table, 0.0)
            if size >= min_rows:
                found.setdefault(table, SeqScan(table, size, (expected or {}).get(table)))
    return tuple(found.values())


async def explain(
    conn: asyncpg.Connection, sql: str, args: Sequence[Any], analyze: bool = False
) -> Mapping[str, Any]:
    """``EXPLAIN (FORMAT JSON)`` of one statement with its parameters: the top object."""
    options = "ANALYZE, FORMAT JSON" if analyze else "FORMAT JSON"
    async with conn.transaction(readonly=True):
        raw = await conn.fetchval(f"EXPLAIN ({options}) {sql}", *args)
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
    ids: schema.TweetIds | None = None,
) -> list[QueryAdvice]:
    """Advice for each query, judged by its plan: large-table sequential scans, recommended
    indexes that are missing, and recommended indexes the plan does not use (and why)."""
    tables = sorted({t for c in collectors for t in c.tables} | {r.table for r in RECOMMENDED})
    facts = await table_facts(conn, tables)
    rows = {table: f.rows for table, f in facts.items()}
    indexes = await existing_indexes(conn, tables)
    if ids is None:
        ids = await schema.detect(conn)
    advice: list[QueryAdvice] = []
    for collector in collectors:
        shape = ids.shape
        missing = missing_indexes(collector.name, indexes, rows, min_rows, shape)
        shown = ids.describe() if collector.shapes else None
        try:
            top = await explain(conn, collector.sql_for(ids), collector.params(settings), analyze)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else ""
            advice.append(
                QueryAdvice(
                    collector.name,
                    missing=missing,
                    shape=shown,
                    error=message or type(error).__name__,
                )
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
        used = used_indexes(plan)
        applicable = [wanted for wanted in RECOMMENDED if wanted.applies(collector.name, shape)]
        uses = tuple(
            index_use(
                wanted, indexes.get(wanted.table, ()), used, rows.get(wanted.table, 0.0), min_rows
            )
            for wanted in applicable
            if wanted.table in rows
        )
        unused = []
        for wanted in applicable:
            if wanted in missing or rows.get(wanted.table, 0.0) < min_rows:
                continue
            candidates = [
                e for e in indexes.get(wanted.table, ()) if _same_columns_and_order(e, wanted)
            ]
            reason = why_unused(
                wanted, candidates, facts[wanted.table], used, indexes.get(wanted.table, ())
            )
            if reason is not None:
                unused.append(reason)
        execution = top.get("Execution Time")
        advice.append(
            QueryAdvice(
                query=collector.name,
                seq_scans=seq_scans(
                    plan, rows, min_rows, EXPECTED_SEQ_SCANS.get((collector.name, shape))
                ),
                indexes=uses,
                missing=missing,
                unused=tuple(unused),
                shape=shown,
                estimated_cost=float(plan.get("Total Cost", 0.0)),
                execution_ms=float(execution) if execution is not None else None,
            )
        )
    return advice
