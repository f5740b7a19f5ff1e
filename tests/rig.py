"""The collection pipeline in-process on a database, built by ``exporter.pipeline`` as the
exporter builds it, and the few rows the fault tests read; shared by the fault, freeze,
PgBouncer, replica and custom-query tests (``tests/conftest.py``'s ``rigs`` fixture closes what
they open). ``Rig.run_all`` runs every query's scheduled job function once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from exporter.collect.scheduler import Collector
from exporter.collectors.base import QueryCollector
from exporter.config.queries_file import QueriesConfig
from exporter.db.database import Database
from exporter.expose.snapshot import SnapshotStore
from exporter.pipeline import Pipeline, build_pipeline, settings_given
from tests.helpers import value


@dataclass
class Rig:
    pipeline: Pipeline

    @property
    def database(self) -> Database:
        return self.pipeline.database

    @property
    def store(self) -> SnapshotStore:
        return self.pipeline.store

    @property
    def collector(self) -> Collector:
        return self.pipeline.collector

    async def run_all(self) -> bool:
        """Every query's scheduled job function once, concurrently."""
        return await self.pipeline.run_all()

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
    collectors: Sequence[QueryCollector] | None = None,
    config: QueriesConfig | None = None,
    **settings: Any,
) -> Rig:
    """The pipeline ``run`` builds, opened (no scheduler: the test runs the jobs). Settings are
    ``run``'s defaults but for the arguments, as if given as flags; ``config`` defaults to the
    built-ins on those settings;
    ``collectors`` substitutes statements of the test's own under ``config``'s names."""
    params = settings_given(
        dsn=dsn, query_timeout=query_timeout, max_staleness=max_staleness, **settings
    )
    pipeline = build_pipeline(params, config, collectors=collectors, process_metrics=False)
    await pipeline.open()
    return Rig(pipeline)


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


# tw_tweets.id from bigint to uuid, as a platform would migrate it (the link table's key
# follows, or the join would not type-check).
UUID_MIGRATION = """
ALTER TABLE tw_tweet_hashtags DROP CONSTRAINT tw_tweet_hashtags_tweet_id_fkey;
ALTER TABLE tw_tweets ALTER COLUMN id DROP IDENTITY;
ALTER TABLE tw_tweets ALTER COLUMN id TYPE uuid USING md5(id::text)::uuid;
ALTER TABLE tw_tweet_hashtags ALTER COLUMN tweet_id TYPE uuid USING md5(tweet_id::text)::uuid;
ALTER TABLE tw_tweet_hashtags ADD FOREIGN KEY (tweet_id) REFERENCES tw_tweets (id);
"""
