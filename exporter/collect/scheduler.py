"""The scheduled runs of every query, built-in or custom, and the APScheduler jobs behind them.

Each query has its own job on its own interval (``--interval``, or the queries file's). A
query's scheduled run is its *cycle*: the job runs it at start and then every interval, and
*awaits* it (unlike query-exporter #112, whose job returns before the query finishes), so with
``max_instances=1`` APScheduler itself refuses to start a run while that query's previous one is
still going; those refused ticks are counted per query in
``tw_exporter_cycles_skipped_total{query}`` instead of silently piling up. A slow query only
delays itself: the others keep their own schedules (the pool's slots are shared fairly, see
``exporter.db.database``: long runs never hold every connection; ``Collector.fit_pool`` gives the
pool the number of queries and their shortest interval), and waiting for one counts against
the waiting query's schedule, never as an error.

``run_query`` is the one run path: the scheduled job calls it, and ``run_all`` (what tests and
benchmarks use to run every query once) is nothing but every query's job function gathered.
After each run the snapshot is re-rendered; runs that finish together share one render.

The schedules keep their cadence whatever the wall clock does: ``SteadyScheduler`` moves every
job's next run by a wall-clock step as soon as ``exporter.collect.clock`` notices one, so a
step back of 300 s delays no run (APScheduler 3 plans on the wall clock, and would otherwise
wait the 300 s out), and a step forward makes none misfire.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter.collect.clock import WATCH_PERIOD, ClockWatch, Jump, explain
from exporter.collect.custom import collector_of
from exporter.collectors import QueryCollector
from exporter.collectors.base import PartialData, QueryParams
from exporter.config.queries_file import QueryDefinition
from exporter.db.database import Database, QueryError, QueryResult
from exporter.db.leader import Fence
from exporter.expose.snapshot import SnapshotStore

log = logging.getLogger(__name__)

JOB_PREFIX = "query:"
# The least time between two renders caused by finishing runs (a lone run renders at once).
MIN_RENDER_GAP = 0.2


class Collector:
    """Runs the business queries and feeds their results into the snapshot store."""

    def __init__(
        self,
        database: Database,
        store: SnapshotStore,
        params: QueryParams,
        definitions: Sequence[QueryDefinition],
        *,
        runners: Mapping[str, QueryCollector] | None = None,
        fence: Fence | None = None,
    ) -> None:
        """``definitions``: the queries to run, built-in or custom alike, each with its
        schedule (interval, timeout); the scheduler assumes no query and no default of its
        own. ``runners``: what runs a definition instead of its own statement and mapping
        (a test's slow statement under a query's name)."""
        self.database = database
        self.store = store
        self.params = params
        self.definitions: dict[str, QueryDefinition] = {d.name: d for d in definitions}
        self.collectors = tuple((runners or {}).get(d.name) or collector_of(d) for d in definitions)
        # With --ha, no query starts unless the fence confirms this replica still leads.
        self.fence = fence
        self.runs_completed: dict[str, int] = {}
        self._running: set[asyncio.Task[Any]] = set()
        # Each query's APScheduler job id (see ``add_query_job``).
        self.jobs: dict[str, str] = {}
        self._job_generation = 0
        self._job_names: set[str] = set()  # queries that have had a job
        self._render_pending = False
        self._last_render = -math.inf
        # The least time between two renders caused by finishing runs; a benchmark timing
        # queries sets 0 so its figures do not include the wait.
        self.render_gap = MIN_RENDER_GAP
        self.fit_pool()

    def fit_pool(self) -> None:
        """Size the pool's use to the queries enabled now and tell it their shortest interval:
        at start, and after a reload added or removed queries or changed an interval."""
        intervals = [self.definitions[c.name].schedule.interval for c in self.collectors]
        self.database.fit(len(self.collectors), min(intervals, default=math.inf))

    def by_name(self, name: str) -> QueryCollector | None:
        return next((c for c in self.collectors if c.name == name), None)

    async def run_query(self, name: str) -> bool:
        """One scheduled run of one query (its cycle); returns whether the database answered.

        Its attempt updates that query's flag in ``HealthMetrics.answered``, from which
        ``tw_up`` follows the latest attempt of every query.
        """
        collector = self.by_name(name)
        if collector is None:
            return False  # removed by a reload after the tick fired
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        started = time.perf_counter()
        try:
            if not await self._leading():
                return False  # a follower: no run, no per-query health touched
            answered = await self._run_query(collector)
        except asyncio.CancelledError:
            # An HA step-down or the shutdown cancelled the run (``cancel_running`` logs
            # that once); not an error, so no traceback from APScheduler's executor.
            log.debug("query %s: run cancelled", name)
            return False
        finally:
            self._running.discard(task)
        if self._replaced(collector):
            return answered
        self.store.health.cycle_duration.labels(query=name).set(time.perf_counter() - started)
        self.runs_completed[name] = self.runs_completed.get(name, 0) + 1
        try:
            await self._render_soon()
        except asyncio.CancelledError:
            # The shutdown cancelled the wait for the shared render; the run itself is done.
            log.debug("query %s: render cancelled", name)
        return answered

    async def run_all(self) -> bool:
        """Every query's scheduled job function once, concurrently, as if all their ticks fell
        together; returns whether the database answered any of them. No second run path: this
        is ``run_query`` for each query, nothing more (tests, benchmarks)."""
        names = [c.name for c in self.collectors]
        return any(await asyncio.gather(*(self.run_query(name) for name in names)))

    async def _leading(self) -> bool:
        """With --ha, no query starts unless the fence confirms (by a round trip that started
        now) that this replica still holds the lock; without --ha, always."""
        return self.fence is None or await self.fence.confirm()

    async def _render_soon(self) -> None:
        """Render once for all runs that finish close together: at once after a quiet spell,
        else at most every ``render_gap`` seconds (50 queries finishing in a burst cause a
        few renders, not 50), and always once after the last of them."""
        if self._render_pending:
            return  # a render that has not started yet will include this result
        self._render_pending = True
        loop = asyncio.get_running_loop()
        try:
            await asyncio.sleep(max(0.0, self._last_render + self.render_gap - loop.time()))
        finally:
            self._render_pending = False  # also when cancelled: later runs must render
        self._last_render = loop.time()
        await self.store.render_async()

    def _replaced(self, collector: QueryCollector) -> bool:
        """A reload removed or changed this query while it ran: its outcome is dropped, so
        neither its series nor its health series come back."""
        return self.by_name(collector.name) is not collector or collector.name not in (
            self.store.queries
        )

    def forget(self, name: str) -> None:
        """A query removed (or changed) by a reload no longer counts towards ``tw_up``, and
        the pool forgets how long its runs took."""
        self.store.health.forget_attempts(name)
        self.database.forget(name)

    async def cancel_running(self, grace: float, why: str = "") -> None:
        """Shutdown: cancel a cycle in flight so its connections are released at once
        (asyncpg sends PostgreSQL a cancel request) instead of after the query timeout.

        Waits at most ``grace``: the cancelled query's rollback waits for PostgreSQL to
        acknowledge the cancel, and shutdown must not hang on a server that does not (or that
        stopped answering altogether). ``asyncio.wait`` rather than awaiting the task inside a
        timeout: that would only cancel the task once more, and a task that catches one
        cancellation to roll back can stay blocked on the next await; closing the pool
        afterwards terminates its connection and so ends it.
        """
        tasks = [task for task in self._running if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            if why:
                log.info("cancelled %d query run(s) in flight: %s", len(tasks), why)
            await asyncio.wait(tasks, timeout=grace)

    async def _run_query(self, collector: QueryCollector) -> bool:
        """Run one query and record its outcome; returns whether the database answered it."""
        health = self.store.health
        started = time.perf_counter()
        schedule = self.definitions[collector.name].schedule
        problems: tuple[str, ...] = ()
        try:
            result = await fetch_rows(self.database, collector, self.params, schedule.timeout)
            try:
                families = collector.to_families(result.rows, self.params)
            except PartialData as partial:
                families, problems = partial.families, partial.problems
        except QueryError as error:
            if self._replaced(collector):
                return error.answered
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
            if self._replaced(collector):
                return True
            health.query_errors.labels(query=collector.name, reason="sql").inc()
            health.record_attempt(collector.name, True)  # the rows did come back
            log.exception("query %s returned rows that could not be mapped", collector.name)
            return True
        if self._replaced(collector):
            return True
        health.query_duration.labels(query=collector.name).observe(result.seconds)
        health.record_attempt(collector.name, True)
        health.query_wait.labels(query=collector.name).observe(result.wait_seconds)
        health.query_run.labels(query=collector.name).observe(result.run_seconds)
        self.store.record_success(collector.name, families, time.time())
        if problems:
            # The valid rows are served; the rest is counted once per run, not per row.
            health.query_errors.labels(query=collector.name, reason="data").inc()
            log.warning(
                "query %s returned rows it cannot serve: %s", collector.name, "; ".join(problems)
            )
            return True
        log.debug("query %s: %d rows in %.3fs", collector.name, len(result.rows), result.seconds)
        return True

    def job_id(self, name: str) -> str:
        """A new job id for ``name``: ``query:NAME`` for its first job, ``query:NAME#N`` for
        any later job of the same query (a reload changed it, or removed and added it back).
        APScheduler counts running instances per job id, so a fresh id lets the new
        definition run at once while a run of the old one is still in flight (which
        ``max_instances=1`` would otherwise refuse)."""
        if name not in self._job_names:
            self._job_names.add(name)
            return JOB_PREFIX + name
        self._job_generation += 1
        return f"{JOB_PREFIX}{name}#{self._job_generation}"

    def remove_job(self, scheduler: AsyncIOScheduler, name: str) -> None:
        """Stop scheduling ``name`` (a run in flight is left to finish)."""
        job_id = self.jobs.pop(name, None)
        if job_id is not None and scheduler.get_job(job_id) is not None:
            scheduler.remove_job(job_id)

    def count_skipped(self, event: JobEvent, jumps: Sequence[Jump] = ()) -> None:
        """APScheduler listener: a tick found that query's previous run still running
        (``EVENT_JOB_MAX_INSTANCES``) or fired too late to run (``EVENT_JOB_MISSED``). The log
        line says why: a wall-clock step or a process that stood still (``jumps``, noticed just
        before, all of them) is the real reason when there is one, not the run it left behind."""
        query = event.job_id.removeprefix(JOB_PREFIX).partition("#")[0]
        if query not in self.store.queries or self.jobs.get(query) != event.job_id:
            return
        self.store.health.cycles_skipped.labels(query=query).inc()
        # Re-render so the counter, and the expiry of stale series, show without waiting.
        self.store.render()
        if jumps:
            why = explain(jumps)
        elif event.code == EVENT_JOB_MISSED:
            late = (datetime.now(UTC) - event.scheduled_run_time).total_seconds()
            why = f"it was due {late:.1f}s ago (the event loop was late)"
        else:
            why = "the previous run is still running"
        log.warning("query %s: scheduled run skipped, %s", query, why)

    def clock_stepped(self, step: float) -> None:
        """The wall clock stepped (``SteadyScheduler`` moved the schedules already): counted."""
        self.store.health.clock_steps.inc()


async def fetch_rows(
    database: Database, collector: QueryCollector, params: QueryParams, seconds: float
) -> QueryResult:
    """One run's rows, as every run and ``check`` fetch them: the collector's statement (its
    shape resolved on the connection) and parameters, under the query's timeout, reading at
    most the rows it can serve plus one. Raises ``QueryError``."""
    return await database.fetch(
        collector.statement,
        collector.params(params),
        seconds,
        query=collector.name,
        max_rows=collector.max_rows,
    )


class SteadyScheduler(AsyncIOScheduler):  # type: ignore[misc]  # APScheduler is untyped
    """APScheduler's asyncio scheduler whose jobs keep their cadence across wall-clock steps.

    APScheduler 3 compares each job's next run with ``datetime.now()`` but sleeps on the
    event loop's monotonic clock. The clock is checked before every look for due jobs (so a
    step is never acted on half-way) and once a second by a watchdog; a step moves every job's
    next run by the same amount, which keeps it at the same monotonic moment, and wakes the
    scheduler to re-plan its timer.
    """

    def __init__(self, on_step: Callable[[float], None] = lambda step: None, **options: Any):
        super().__init__(**options)
        self._on_step = on_step
        self.watch = ClockWatch(self._stepped)

    def start(self, paused: bool = False) -> None:
        super().start(paused)
        self.watch.start()

    def shutdown(self, wait: bool = True) -> None:
        self.watch.stop()
        super().shutdown(wait)

    def _process_jobs(self) -> float | None:
        self.watch.check()
        wait: float | None = super()._process_jobs()
        return wait

    def _stepped(self, step: float) -> None:
        moved = 0
        for job in self.get_jobs():
            if job.next_run_time is not None:
                # modify_job also wakes the scheduler, which re-plans its timer.
                job.modify(next_run_time=job.next_run_time + timedelta(seconds=step))
                moved += 1
        log.warning(
            "the wall clock stepped %s by %.1fs; the %d query schedules moved with it, so "
            "every query keeps its interval",
            "back" if step < 0 else "forward",
            abs(step),
            moved,
        )
        self._on_step(step)


def add_query_job(
    scheduler: AsyncIOScheduler, collector: Collector, name: str, interval: float
) -> None:
    """One query's job: now, then every ``interval`` seconds, never two runs at once."""
    job_id = collector.jobs[name] = collector.job_id(name)
    scheduler.add_job(
        collector.run_query,
        "interval",
        args=(name,),
        seconds=interval,
        id=job_id,
        next_run_time=datetime.now(UTC),
        max_instances=1,
        coalesce=True,
        # A tick that fires late because the loop was busy still runs rather than being
        # dropped as "missed"; a tick that finds a run in progress is refused (max_instances).
        misfire_grace_time=max(1, int(interval)),
        replace_existing=True,
    )


def start_scheduler(collector: Collector) -> SteadyScheduler:
    """Every query's job, on its schedule's interval (the collector fitted the pool to them
    when it was built, and a reload fits it again)."""
    scheduler = SteadyScheduler(on_step=collector.clock_stepped, timezone=UTC)

    def skipped(event: JobEvent) -> None:
        # A step or a stall noticed within the last few watchdog periods explains the skip.
        collector.count_skipped(event, scheduler.watch.recent(3 * WATCH_PERIOD))

    scheduler.add_listener(skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
    for query in collector.collectors:
        interval = collector.definitions[query.name].schedule.interval
        add_query_job(scheduler, collector, query.name, interval)
    scheduler.start()
    return scheduler
