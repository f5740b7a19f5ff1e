"""Custom queries in a sandbox, on a real PostgreSQL (and through PgBouncer transaction mode):
whatever a query does to its session is undone before its connection is lent again, nothing it
writes is kept, its rows are read only up to ``max_series + 1``, a counter never goes negative,
and a query failing later does not make the exporter unready (issue #22).

Every test drives the scheduler's own path (``run_all``: every query's scheduled job function,
or ``run_query``, on a real pool), and each fails on the code before the fix (checked by hand:
COMMIT instead of the rollback end, ``conn.fetch`` instead of the cursor, the old readiness
rule).
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from exporter.config.queries_file import QueriesConfig, parse
from exporter.config.settings import query_params
from tests.conftest import PgServer
from tests.helpers import fetchval, series, value
from tests.pgbouncer import run_pgbouncer
from tests.rig import Rig
from tests.rig import make_rig as rig_for

SETTINGS = query_params()
BUILTINS_OFF = (
    "builtins: {top_users: {enabled: false}, trending_hashtags: {enabled: false}, "
    "platform_stats: {enabled: false}}\n"
)


# The store's clock, which a test may move forward (monotonic seconds).
Clock = list[float]


async def make_rig(
    dsn: str, text: str, rigs: list[Rig], pool_size: int = 1, clock: Clock | None = None
) -> Rig:
    """The pipeline of ``tests.rig`` on a queries file's queries (closed by ``rigs``)."""
    config: QueriesConfig = parse(text, SETTINGS)
    rig = await rig_for(
        dsn,
        config=config,
        query_timeout=5.0,
        max_staleness=SETTINGS.max_staleness,
        max_connections=pool_size,
    )
    now = clock if clock is not None else [1000.0]
    rig.store._clock = lambda: now[0]  # before anything is recorded
    rigs.append(rig)
    return rig


ADVISORY_LOCKS = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)

# Each changes its session, or writes, in a way a read-only transaction alone does not stop.
LEAKY = """
queries:
  search_path:
    sql: SELECT 1 AS tw_a FROM set_config('search_path', 'pg_catalog', false)
    metrics: {tw_a: {help: h}}
  advisory:
    sql: SELECT 1 AS tw_b FROM pg_advisory_lock(4242)
    metrics: {tw_b: {help: h}}
  advisory_then_fails:
    sql: SELECT 1 / (random() * 0)::int AS tw_c FROM pg_advisory_lock(4243)
    metrics: {tw_c: {help: h}}
  large_object:
    sql: SELECT lo_from_bytea(0, 'written by a custom query')::int8 AS tw_d
    metrics: {tw_d: {help: h}}
  notify:
    sql: SELECT 1 AS tw_e FROM pg_notify('tw_sandbox', 'leaked')
    metrics: {tw_e: {help: h}}
"""


async def assert_left_nothing(dsn: str, rig: Rig) -> None:
    """The built-ins ran after the leaky queries on the same connection(s), and nothing the
    leaky ones did is left on the server."""
    for builtin in ("top_users", "trending_hashtags", "platform_stats"):
        assert rig.errors(builtin, "sql") == 0, rig.text
    assert rig.errors("advisory_then_fails", "sql") == 2  # division by zero, every run
    assert await fetchval(dsn, ADVISORY_LOCKS) == 0
    # A failed run is the last on its connection: its own end must release the lock it took.
    await rig.collector.run_query("advisory_then_fails")
    assert rig.errors("advisory_then_fails", "sql") == 3
    assert await fetchval(dsn, ADVISORY_LOCKS) == 0
    assert await fetchval(dsn, "SELECT count(*) FROM pg_largeobject_metadata") == 0


async def test_a_query_leaves_its_connection_as_it_found_it(
    seeded_db: str, rigs: list[Rig]
) -> None:
    # One connection for all: every query runs on the connection the leaky ones used.
    rig = await make_rig(seeded_db, LEAKY, rigs, pool_size=1)
    listener = await asyncpg.connect(seeded_db)
    heard: list[str] = []
    marker = asyncio.Event()

    def hear(_: object, __: int, ___: str, payload: str) -> None:
        heard.append(payload)
        if payload == "marker":
            marker.set()

    try:
        await listener.add_listener("tw_sandbox", hear)
        for _ in range(2):
            assert await rig.run_all() is True
        await assert_left_nothing(seeded_db, rig)
        # Notifications are delivered in commit order: a "leaked" one sent by a run would
        # arrive before this marker, sent after every run ended.
        await fetchval(seeded_db, "SELECT pg_notify('tw_sandbox', 'marker')")
        await asyncio.wait_for(marker.wait(), 10)
        assert heard == ["marker"]
    finally:
        await listener.close()


async def test_a_query_leaves_nothing_through_pgbouncer_transaction_mode(
    pg_server: PgServer, seeded_db: str, rigs: list[Rig]
) -> None:
    # One server connection behind the pooler: whatever a transaction left on it, the next
    # client transaction would find.
    with run_pgbouncer(pg_server.dsn, "transaction", default_pool_size="1") as bouncer:
        through = bouncer.dsn_for(seeded_db)
        rig = await make_rig(through, LEAKY, rigs, pool_size=3)
        for _ in range(2):
            assert await rig.run_all() is True
        await assert_left_nothing(seeded_db, rig)
        # Streaming and a reload's proof work through it too (unnamed statements, a portal
        # that lives only inside the transaction).
        capped = await make_rig(through, BUILTINS_OFF + CAPPED, rigs)
        assert await capped.run_all() is True
        assert len(series(capped.text, "tw_v")) == 100
        assert capped.errors("capped", "sql") == 0 and capped.errors("capped", "data") == 1
        columns = await rig.database.columns("SELECT $1::int AS tw_x, 'a'::text AS k", [7])
        assert columns == {"tw_x": "int4", "k": "text"}


# Rows past the 101st would fail the query (division by zero): they must never be computed.
CAPPED = """
queries:
  capped:
    sql: >-
      SELECT g AS k, CASE WHEN g <= 101 THEN g ELSE 1 / (g - g) END AS tw_v
      FROM generate_series(1, 100000) g
    max_series: 100
    metrics: {tw_v: {help: h, labels: [k]}}
"""


async def test_rows_beyond_max_series_are_never_read(
    seeded_db: str, rigs: list[Rig], caplog: pytest.LogCaptureFixture
) -> None:
    rig = await make_rig(seeded_db, BUILTINS_OFF + CAPPED, rigs)
    assert await rig.run_all() is True
    assert rig.errors("capped", "sql") == 0, caplog.text
    assert rig.errors("capped", "data") == 1
    assert set(series(rig.text, "tw_v")) == {(("k", str(g)),) for g in range(1, 101)}
    assert "more than max_series (100) rows" in caplog.text


async def test_a_negative_counter_is_a_data_error_and_the_scrape_stays_valid(
    seeded_db: str, rigs: list[Rig]
) -> None:
    rig = await make_rig(
        seeded_db,
        BUILTINS_OFF
        + """
queries:
  signed:
    sql: SELECT k, v AS tw_signed_total FROM (VALUES ('up', 3), ('down', -2)) t(k, v)
    metrics: {tw_signed_total: {help: h, type: counter, labels: [k]}}
""",
        rigs,
    )
    assert await rig.run_all() is True
    assert series(rig.text, "tw_signed_total") == {(("k", "up"),): 3.0}
    assert rig.errors("signed", "data") == 1
    openmetrics = rig.store.current.openmetrics.body.decode()
    families = {f.name: f for f in text_string_to_metric_families(openmetrics)}
    assert [s.value for s in families["tw_signed"].samples if s.name == "tw_signed_total"] == [3]


async def test_a_query_failing_later_keeps_the_exporter_ready(
    seeded_db: str, rigs: list[Rig]
) -> None:
    await fetchval(seeded_db, "CREATE TABLE tw_sandbox_t AS SELECT 1 AS n")
    now: Clock = [1000.0]
    rig = await make_rig(
        seeded_db,
        """
queries:
  fragile:
    sql: SELECT count(*) AS tw_fragile FROM tw_sandbox_t
    metrics: {tw_fragile: {help: h}}
""",
        rigs,
        pool_size=4,
        clock=now,
    )
    assert not rig.store.ready  # nothing served yet
    assert await rig.run_all() is True
    assert rig.store.ready
    await fetchval(seeded_db, "DROP TABLE tw_sandbox_t")
    now[0] += 10 * SETTINGS.max_staleness  # long past the failing query's staleness
    assert await rig.run_all() is True
    assert rig.errors("fragile", "sql") == 1
    assert value(rig.text, "tw_fragile") is None  # its series went stale
    assert value(rig.text, "tw_up") == 1
    assert rig.store.ready  # the process still serves scrapes: it stays in service
