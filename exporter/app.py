"""Runs the exporter until a signal: binds the HTTP server, builds the pipeline
(``exporter.pipeline``: database -> collector -> snapshot store) and wires HA, DSN-file
rotation and reloads around it."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter.allocator import pin_mmap_threshold
from exporter.collect.scheduler import Collector
from exporter.config.dsn import DsnFile, DsnSource
from exporter.config.http_security import HTTPSecurity
from exporter.config.queries_file import QueriesConfig, config_for
from exporter.config.secrets import dsn_password
from exporter.config.settings import Settings
from exporter.db.database import APPLICATION_NAME, Database
from exporter.db.leader import (
    QUERY_APPLICATION_PREFIX,
    Leadership,
    application_name,
    replica_name,
)
from exporter.expose.http import MetricsServer, ServerLimits
from exporter.expose.snapshot import SnapshotStore
from exporter.logs import add_secret
from exporter.pipeline import build_pipeline, build_store

log = logging.getLogger(__name__)

# Shutdown waits this long for a cancelled cycle, then as long again for the pool to close
# gracefully, before closing sockets outright; PostgreSQL's own statement and lock timeouts
# end anything left on the server side.
SHUTDOWN_GRACE = 1.0
# How often the DSN file is looked at (one stat) for a rotation.
DSN_POLL_SECONDS = 1.0


class StartupError(Exception):
    """The exporter cannot start (e.g. the listen address is taken); one line for the user."""


@dataclass(frozen=True)
class Listener:
    """The HTTP server, already bound and serving ``store`` (readiness 503 until data), and
    the queries configuration the store was made for."""

    store: SnapshotStore
    server: MetricsServer
    addresses: list[tuple[str, int]]
    config: QueriesConfig


async def listen(
    settings: Settings, security: HTTPSecurity, queries: QueriesConfig | None = None
) -> Listener:
    """Bind the listening sockets and keep them: a taken port fails here, before anything else
    is started, and nothing can take it between a check and the bind.

    ``queries`` is the queries file already read (the CLI validates it first); without it the
    file named by the settings, if any, is read here."""
    config = queries if queries is not None else config_for(settings)
    store = build_store(settings, config)
    server = MetricsServer(
        store,
        authenticator=security.authenticator,
        extra_headers=security.headers,
        ssl_context=security.ssl_context,
        limits=ServerLimits(
            header_timeout=settings.web_header_timeout,
            idle_timeout=settings.web_idle_timeout,
            max_connections=settings.web_max_connections,
            # The database pool's connections and the HA lock connection need descriptors too.
            reserved_descriptors=settings.max_connections + (1 if settings.ha else 0),
        ),
    )
    try:
        addresses = await server.start(settings.listen_host, settings.listen_port)
    except OSError as error:
        await server.close()
        # asyncio wraps the errno's text ("error while attempting to bind on address ...:
        # address already in use"); the system's own words are what the docs and users know.
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise StartupError(f"cannot listen on {settings.listen}: {reason}") from None
    return Listener(store, server, addresses, config)


async def serve(
    settings: Settings,
    security: HTTPSecurity,
    stop: asyncio.Event,
    listener: Listener | None = None,
    queries: QueriesConfig | None = None,
) -> None:
    """Run the exporter until ``stop`` is set; always closes the pool and the sockets.

    ``listener`` is one :func:`listen` returned earlier (the demo binds before loading data);
    without it the sockets are bound here (for ``queries``), before the pool is created.
    """
    if listener is None:
        listener = await listen(settings, security, queries)
    store, server, config = listener.store, listener.server, listener.config
    replica = replica_name()
    query_dsn, ha_dsn = dsn_sources(settings)
    pipeline = build_pipeline(
        settings,
        config,
        store=store,
        dsn=query_dsn,
        # With --ha, pg_stat_activity shows which replica runs the queries.
        application_name=application_name(QUERY_APPLICATION_PREFIX, replica)
        if settings.ha
        else APPLICATION_NAME,
    )
    database, collector = pipeline.database, pipeline.collector
    try:
        await pipeline.open()
    except BaseException:
        await server.close()
        raise
    scheme = "https" if security.ssl_context else "http"
    for host, port in listener.addresses:
        shown = f"[{host}]" if ":" in host else host
        log.info(
            "listening on %s://%s:%d/metrics (at most %d connections)",
            scheme,
            shown,
            port,
            server.max_connections,  # lowered to fit the open-files limit: logged at start
        )
    log.info(
        "collecting from %s every %gs (query timeout %gs, max staleness %gs)",
        settings.redacted_dsn,
        settings.interval,
        settings.query_timeout,
        settings.max_staleness,
    )
    if config.path is not None:
        log.info(
            "queries file %s: %d built-in and %d custom queries",
            config.path,
            len(config.builtins),
            len(config.custom),
        )
    # The files to follow: the lock's only with --ha.
    sources = {query_dsn, ha_dsn} if settings.ha else {query_dsn}
    followed = {source for source in sources if isinstance(source, DsnFile)}
    _follow_dsn_files(followed, query_dsn, database, store)
    leadership = (
        _leadership(settings, ha_dsn, replica, collector, store, stop) if settings.ha else None
    )
    scheduler, reloader = pipeline.start(server, fence=leadership, dsn_files=tuple(followed))
    if leadership is not None:
        leadership.on_elected = lambda: _lead(store, scheduler)
        leadership.start()
    if settings.web_enable_lifecycle:
        server.reload = reloader.reload
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reloader.request)
    # Nothing to watch with DSNs given as URIs.
    watcher = loop.create_task(_watch_dsn_files(followed), name="dsn-files") if followed else None
    try:
        await stop.wait()
    finally:
        if watcher is not None:
            watcher.cancel()
        loop.remove_signal_handler(signal.SIGHUP)
        log.info("shutting down")
        await pipeline.stop(SHUTDOWN_GRACE, "shutting down")
        if leadership is not None:
            await leadership.close()  # releases the lock: a follower takes over at once
        await server.close()
        await database.close(SHUTDOWN_GRACE)
    if leadership is not None and leadership.fatal:
        raise StartupError(leadership.fatal)


def dsn_sources(settings: Settings) -> tuple[DsnSource, DsnSource]:
    """Where the queries' and the HA lock's DSNs come from: files (--dsn-file, --ha-dsn-file;
    one ``DsnFile`` when the lock uses the queries' file: one rotation, one re-read), else
    fixed strings."""
    query: DsnSource = (
        DsnFile(settings.dsn_file) if settings.dsn_file is not None else DsnSource(settings.dsn)
    )
    if settings.ha_dsn_file is None:
        return query, DsnSource(settings.ha_dsn)
    if settings.ha_dsn_file == settings.dsn_file:
        return query, query
    return query, DsnFile(settings.ha_dsn_file, "--ha-dsn-file")


def _follow_dsn_files(
    files: set[DsnFile], query_dsn: DsnSource, database: Database, store: SnapshotStore
) -> None:
    """A new DSN from a file: count it, scrub its password from the logs, and (the queries'
    DSN) have the pool replace its connections as they come back; the lock connection is
    kept, a new one uses the new DSN. A failed re-read is counted too."""

    def follow(source: DsnFile) -> None:
        def reloaded(dsn: str) -> None:
            password = dsn_password(dsn)
            if password:
                add_secret(password)
            if source is query_dsn:
                database.drain()
            store.health.dsn_reloads.inc()
            store.render()

        def failed() -> None:
            store.health.dsn_reload_failures.inc()
            store.render()

        source.on_reload, source.on_failure = reloaded, failed

    for source in files:
        follow(source)


async def _watch_dsn_files(files: set[DsnFile]) -> None:
    """Look at the DSN files every ``DSN_POLL_SECONDS`` (a stat each: cheap)."""
    while True:
        await asyncio.sleep(DSN_POLL_SECONDS)
        for source in files:
            source.poll()


def _leadership(
    settings: Settings,
    dsn: DsnSource,
    replica: str,
    collector: Collector,
    store: SnapshotStore,
    stop: asyncio.Event,
) -> Leadership:
    """The HA campaign, wired to the store and the collector (docs/high-availability.md).

    A replica starts as a follower: no business series, ``tw_up`` from its lock connection.
    Losing the lead cancels the queries in flight and drops the business series at once.
    """
    store.drop_business()
    store.health.follow(False)

    def lost() -> None:
        store.drop_business()
        store.health.follow(leadership.answered)
        store.render()
        asyncio.get_running_loop().create_task(
            collector.cancel_running(SHUTDOWN_GRACE, "this replica is no longer the leader")
        )

    def answer(answered: bool) -> None:
        # A follower runs no queries, so no run renders for it: its ``tw_up`` (from the lock
        # connection) is published here, once per lock answer (every lease/3).
        if not leadership.is_leader:
            store.health.follow(answered)
            store.render()

    def fatal(line: str) -> None:
        stop.set()

    leadership = Leadership(
        dsn,
        settings.ha_group,
        lease=settings.ha_lease,
        connect_timeout=settings.query_timeout,
        replica=replica,
        on_lost=lost,
        on_answer=answer,
        on_fatal=fatal,
    )
    log.info(
        "HA: replica %s campaigning for the lead of group %r on %s (lease %gs)",
        replica,
        settings.ha_group,
        settings.redacted_ha_dsn,
        settings.ha_lease,
    )
    store.render()
    return leadership


def _lead(store: SnapshotStore, scheduler: AsyncIOScheduler) -> None:
    """Elected: record results again and run every query job now, not at its next tick, so
    fresh business series follow a takeover within seconds."""
    store.lead()
    store.health.lead()
    now = datetime.now(UTC)
    for job in scheduler.get_jobs():
        job.modify(next_run_time=now)


def run(settings: Settings, security: HTTPSecurity, queries: QueriesConfig | None = None) -> None:
    """Blocking entry point: SIGTERM/SIGINT stop the exporter cleanly."""
    pin_mmap_threshold()  # RSS flat over days: exporter.allocator

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(settings, security, stop, queries=queries)

    asyncio.run(main())
