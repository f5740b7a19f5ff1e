"""The collection cycle and the APScheduler job that runs it.

One cycle runs every business query concurrently on the pool, records each outcome in the
snapshot store, and re-renders the exposition once. The job *awaits* its queries (unlike
query-exporter #112, whose job returns before they finish), so with ``max_instances=1``
APScheduler itself refuses to start a run while the previous one is still going; those refused
ticks are counted in ``tw_exporter_cycles_skipped_total`` instead of silently piling up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter.collectors import COLLECTORS, QueryCollector
from exporter.collectors.base import QueryParams
from exporter.database import Database, QueryError
from exporter.leader import Fence
from exporter.snapshot import SnapshotStore

log = logging.getLogger(__name__)

JOB_ID = "collect"


class Collector:
    """Runs the business queries and feeds their results into the snapshot store."""

    def __init__(
        self,
        database: Database,
        store: SnapshotStore,
        params: QueryParams,
        collectors: Sequence[QueryCollector] = COLLECTORS,
        fence: Fence | None = None,
    ) -> None:
        self.database = database
        self.store = store
        self.params = params
        self.collectors = tuple(collectors)
        # With --ha, no query starts unless the fence confirms this replica still leads.
        self.fence = fence
        self.cycles_completed = 0
        self._running: asyncio.Task[bool] | None = None

    async def run_cycle(self) -> bool:
        """One collection cycle; returns whether the database answered any of its queries."""
        self._running = asyncio.current_task()
        try:
            return await self._cycle()
        finally:
            self._running = None

    async def cancel_running(self, grace: float) -> None:
        """Shutdown: cancel a cycle in flight so its connections are released at once
        (asyncpg sends PostgreSQL a cancel request) instead of after the query timeout.

        Waits at most ``grace``: the cancelled query's rollback waits for PostgreSQL to
        acknowledge the cancel, and shutdown must not hang on a server that does not (or that
        stopped answering altogether). ``asyncio.wait`` rather than awaiting the task inside a
        timeout: that would only cancel the task once more, and a task that catches one
        cancellation to roll back can stay blocked on the next await; closing the pool
        afterwards terminates its connection and so ends it.
        """
        task = self._running
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=grace)

    async def _cycle(self) -> bool:
        started = time.perf_counter()
        answered = await asyncio.gather(*(self._run_query(c) for c in self.collectors))
        health = self.store.health
        health.cycle_duration.set(time.perf_counter() - started)
        await self.store.render_async()
        self.cycles_completed += 1
        return any(answered)

    async def _run_query(self, collector: QueryCollector) -> bool:
        """Run one query and record its outcome; returns whether the database answered it."""
        if self.fence is not None and not await self.fence.confirm():
            return False  # a follower: the leader runs the queries
        health = self.store.health
        started = time.perf_counter()
        try:
            result = await self.database.fetch(collector.statement, collector.params(self.params))
            families = collector.to_families(result.rows, self.params)
        except QueryError as error:
            health.query_duration.labels(query=collector.name).observe(
                time.perf_counter() - started
            )
            if error.wait_seconds is not None:
                health.query_wait.labels(query=collector.name).observe(error.wait_seconds)
            if error.run_seconds is not None:
                health.query_run.labels(query=collector.name).observe(error.run_seconds)
            health.query_errors.labels(query=collector.name, reason=error.reason).inc()
            health.record_attempt(collector.name, error.answered)
            log.warning("query %s failed (%s): %s", collector.name, error.reason, error)
            return error.answered
        except Exception:  # a mapping bug must not kill the cycle or the process
            health.query_errors.labels(query=collector.name, reason="sql").inc()
            health.record_attempt(collector.name, True)  # the rows did come back
            log.exception("query %s returned rows that could not be mapped", collector.name)
            return True
        health.query_duration.labels(query=collector.name).observe(result.seconds)
        health.record_attempt(collector.name, True)
        health.query_wait.labels(query=collector.name).observe(result.wait_seconds)
        health.query_run.labels(query=collector.name).observe(result.run_seconds)
        self.store.record_success(collector.name, families, time.time())
        log.debug("query %s: %d rows in %.3fs", collector.name, len(result.rows), result.seconds)
        return True

    def count_skipped(self, event: JobExecutionEvent) -> None:
        """APScheduler listener: a tick found the previous cycle still running."""
        self.store.health.cycles_skipped.inc()
        # Re-render so the counter, and the expiry of stale series, show without waiting.
        self.store.render()
        log.warning("collection cycle skipped: the previous cycle is still running")


def start_scheduler(collector: Collector, interval: float) -> AsyncIOScheduler:
    """Run the cycle now and then every ``interval`` seconds, never two at once."""
    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_listener(collector.count_skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
    scheduler.add_job(
        collector.run_cycle,
        "interval",
        seconds=interval,
        id=JOB_ID,
        next_run_time=datetime.now(UTC),
        max_instances=1,
        coalesce=True,
        # A tick that fires late because the loop was busy still runs rather than being
        # dropped as "missed"; a tick that finds a cycle running is refused (max_instances).
        misfire_grace_time=max(1, int(interval)),
    )
    scheduler.start()
    return scheduler
