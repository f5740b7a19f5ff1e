"""The collection pipeline wired in-process on a database (database, snapshot store, collector)
and the few rows the fault tests read; shared by the fault, freeze, PgBouncer and replica tests
(``tests/conftest.py``'s ``rigs`` fixture closes what they open)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from exporter.collect.scheduler import Collector
from exporter.collectors import COLLECTORS
from exporter.collectors.base import QueryCollector
from exporter.config.settings import query_params
from exporter.db.database import Database
from exporter.expose.snapshot import SnapshotStore
from tests.helpers import value


@dataclass
class Rig:
    database: Database
    store: SnapshotStore
    collector: Collector

    @property
    def text(self) -> str:
        return self.store.current.text.body.decode()

    def errors(self, query: str, reason: str) -> float | None:
        return value(self.text, "tw_exporter_query_errors_total", query=query, reason=reason)


async def make_rig(
    dsn: str,
    *,
    query_timeout: float = 2.0,
    max_staleness: float = 60.0,
    collectors: tuple[QueryCollector, ...] = COLLECTORS,
) -> Rig:
    database = Database(dsn, pool_size=len(collectors), query_timeout=query_timeout)
    await database.open()
    store = SnapshotStore(interval=1.0, max_staleness=max_staleness, process_metrics=False)
    return Rig(database, store, Collector(database, store, query_params(), collectors))


async def fill(dsn: str) -> None:
    """Schema and rows, for a fresh server (the shared ones come with the schema)."""
    from exporter.ops import dataset

    conn = await asyncpg.connect(dsn)
    try:
        await dataset.create_schema(conn)
    finally:
        await conn.close()
    await fill_existing(dsn)


async def fill_existing(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            INSERT INTO tw_users (id, username, follower_count) VALUES (1, 'ann', 7), (2, 'ben', 3);
            INSERT INTO tw_tweets (id, user_id, like_count) VALUES (1, 1, 5), (2, 2, 1);
            INSERT INTO tw_hashtags (id, tag) VALUES (1, 'db');
            INSERT INTO tw_tweet_hashtags VALUES (1, 1);
            """
        )
    finally:
        await conn.close()
