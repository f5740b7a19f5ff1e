"""The collection pipeline, built in one place: database -> collector -> snapshot store, then
the scheduler and the reloader over them.

``exporter.app`` builds the running exporter with :func:`build_pipeline`, and the tests and
benchmarks build theirs with it too, so what they drive is what production runs: the scheduled
job function of each query (``Collector.run_query``; ``Pipeline.run_all`` gathers it for every
query) and, once :meth:`Pipeline.start` is called, APScheduler's jobs and the reloader.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from exporter.collect.reload import Reloader
from exporter.collect.scheduler import Collector, SteadyScheduler, start_scheduler
from exporter.collectors.base import QueryCollector
from exporter.config.dsn import DsnSource
from exporter.config.queries_file import QueriesConfig, config_for
from exporter.config.settings import Settings, query_params
from exporter.db.database import APPLICATION_NAME, Database
from exporter.db.leader import Fence
from exporter.expose.http import MetricsServer
from exporter.expose.snapshot import SnapshotStore


@dataclass
class Pipeline:
    """One exporter's collection side. ``scheduler`` and ``reloader`` exist once started."""

    settings: Settings
    config: QueriesConfig
    database: Database
    store: SnapshotStore
    collector: Collector
    scheduler: SteadyScheduler | None = None
    reloader: Reloader | None = None

    async def open(self) -> None:
        """The pool (no connection is opened yet: they open on demand)."""
        await self.database.open()

    def start(
        self,
        server: MetricsServer | None = None,
        fence: Fence | None = None,
        dsn_files: tuple[DsnSource, ...] = (),
    ) -> tuple[SteadyScheduler, Reloader]:
        """Schedule every query's job (now, then on its interval) and make the reloader that
        SIGHUP and ``POST /-/reload`` call (it re-reads ``dsn_files`` first); with --ha,
        ``fence`` gates every run."""
        if fence is not None:
            self.collector.fence = fence
        self.scheduler = start_scheduler(self.collector)
        self.reloader = Reloader(
            self.settings, self.config, self.collector, self.scheduler, server, dsn_files
        )
        return self.scheduler, self.reloader

    async def run_all(self) -> bool:
        """Every query's scheduled job function once (``Collector.run_all``)."""
        return await self.collector.run_all()

    async def stop(self, grace: float, why: str = "") -> None:
        """Stop the jobs and cancel the runs in flight (waiting at most ``grace``): nothing
        queries after this, and the pool is still open (``app`` releases the HA lock and
        closes the server between the two)."""
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        await self.collector.cancel_running(grace, why)

    async def close(self, grace: float, why: str = "") -> None:
        """``stop``, then close the pool (waiting as long again, then outright)."""
        await self.stop(grace, why)
        await self.database.close(grace)


def settings_given(**values: Any) -> Settings:
    """Settings with ``values`` as if given on the command line, every other one its default:
    each is recorded as given, so the queries' schedules follow it as they follow a flag (a
    given --query-timeout is every built-in's timeout; without it the default cap applies)."""
    return query_params(**values, sources=dict.fromkeys(values, "given"))


def build_store(
    settings: Settings, config: QueriesConfig, *, process_metrics: bool = True
) -> SnapshotStore:
    """The snapshot store for ``config``'s queries (``/metrics`` serves it; built first, since
    the server is bound before the pool opens)."""
    return SnapshotStore(
        interval=settings.interval,
        queries=config.store_queries,
        max_label_length=settings.max_label_length,
        process_metrics=process_metrics,
    )


def build_pipeline(
    settings: Settings,
    config: QueriesConfig | None = None,
    *,
    store: SnapshotStore | None = None,
    dsn: str | DsnSource | None = None,
    application_name: str = APPLICATION_NAME,
    collectors: Sequence[QueryCollector] | None = None,
    process_metrics: bool = True,
) -> Pipeline:
    """The pipeline for ``settings`` and ``config`` (default: the queries file the settings
    name, else the built-ins), not yet opened nor started.

    ``store``: one already served (``exporter.app.listen``); ``dsn``: a DSN file to follow
    instead of ``settings.dsn``; ``collectors``: what runs under ``config``'s names, for a test
    that substitutes a statement of its own (a slow one) for a query.
    """
    config = config if config is not None else config_for(settings)
    if store is None:
        store = build_store(settings, config, process_metrics=process_metrics)
    database = Database(
        settings.dsn if dsn is None else dsn,
        # The bound; the collector fits it to the enabled queries (again at each reload), and
        # connections open only on demand.
        pool_size=settings.max_connections,
        query_timeout=settings.query_timeout,
        application_name=application_name,
    )
    # ``collectors``: only these run, each under its definition's name and schedule.
    runners = {c.name: c for c in collectors} if collectors is not None else None
    names = list(runners) if runners is not None else list(config.definitions)
    definitions = [config.definitions[name] for name in names]
    collector = Collector(database, store, settings, definitions, runners=runners)
    return Pipeline(settings, config, database, store, collector)
