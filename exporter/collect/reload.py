"""Reloading the configuration files while running: SIGHUP, or ``POST /-/reload`` when
``--web-enable-lifecycle`` is given (Prometheus' own flag and endpoint).

A reload is all or nothing, and proves the new configuration before applying any of it:

1. *read* (in a worker thread, so scrapes and probes are answered meanwhile: a 5 MB file takes
   seconds to parse): the queries file and the web config are read and validated as at start,
   and every query's collector is built (parameters bound);
2. *prove* (on the database, as ``check`` does): each new or changed custom query is prepared
   and bound with its parameters, never run, in the same read-only transaction, timeouts and
   deadline as its runs, and the columns the file names are checked against its result;
3. *swap* (on the event loop, no await in between, so no run and no scrape sees half of it):
   the difference is applied. Only the health series of added queries are created just
   before, in the worker thread (creating them is most of the cost of adding a query).

If step 1 or 2 fails for any reason (an invalid file, a SQL typo, an unreachable database, or
an error nobody foresaw such as YAML nested too deeply), nothing changes: the old definitions
keep running and keep their series, ``tw_exporter_config_last_reload_successful`` drops to 0,
one log line says why, and ``POST /-/reload`` answers 500 with that line.

The swap keeps what did not change: an unchanged query keeps its job, its state and its served
series, even while it runs. A changed query keeps serving its previous series until a run of
its new definition replaces them (or they go stale, as after any failed run); its new
definition runs at once, on a job of its own, so a run of the old definition still in flight
neither delays it (``max_instances``) nor lands afterwards (its outcome is dropped). Removed
queries stop, and their series and health series go; new ones start at once. Reloads are
serialised: one that arrives while another runs waits for it.

The web config's users and headers apply to the next request; its TLS settings (on/off,
versions, client authentication) need a restart, as they belong to the listening socket
(rotated certificate files are already re-read without one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter.collect.custom import collectors_for, column_problems
from exporter.collect.scheduler import Collector, add_query_job
from exporter.collectors.base import QueryCollector
from exporter.config.dsn import DsnSource
from exporter.config.queries_file import QueriesConfig, bind, config_for, one_line
from exporter.config.settings import Settings, SettingsError
from exporter.db.database import QueryError
from exporter.expose.http import MetricsServer
from exporter.expose.responses import encode_headers
from exporter.logs import scrub_secrets

if TYPE_CHECKING:
    from exporter.config.http_security import HTTPSecurity

log = logging.getLogger(__name__)


class ReloadError(Exception):
    """Why a reload was refused: ``str(error)`` is the one line logged and answered."""


@dataclass(frozen=True)
class Outcome:
    """What a reload did: applied or not, and the one line that says so."""

    ok: bool
    line: str


@dataclass
class Reloader:
    """Everything a reload changes, and the configuration currently running."""

    settings: Settings
    config: QueriesConfig
    collector: Collector
    scheduler: AsyncIOScheduler
    server: MetricsServer | None = None
    # The DSN files followed (--dsn-file, --ha-dsn-file): a reload re-reads them first.
    dsn_files: tuple[DsnSource, ...] = ()
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: set[asyncio.Task[Outcome]] = field(default_factory=set)

    def request(self) -> None:
        """SIGHUP's handler: start a reload (a signal handler cannot await one)."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> Outcome:
        """SIGHUP and ``POST /-/reload``: the DSN files, then the configuration files. The
        outcome's line leaves the process (the HTTP answer), so no secret is in it, as in the
        log."""
        for source in self.dsn_files:
            source.reread("reload requested")
        outcome = await self._reload_files()
        return Outcome(outcome.ok, scrub_secrets(outcome.line))

    async def _reload_files(self) -> Outcome:
        """Read, prove, then swap; on any failure keep everything as it is."""
        async with self._lock:
            health = self.collector.store.health
            try:
                plan = await asyncio.to_thread(self._read)
                await self._prove(plan)
                await asyncio.to_thread(self._create_health_series, plan.config)
            except ReloadError as error:
                line = str(error)
            except Exception as error:  # nothing unforeseen may apply half a file or go unsaid
                line = one_line(error)
            else:
                changed = self._apply(plan)
                health.reload_successful.set(1)
                health.reload_success_timestamp.set(time.time())
                await self.collector.store.render_async()
                log.info("configuration reloaded (%s)", changed)
                return Outcome(True, f"configuration reloaded ({changed})")
            health.reload_successful.set(0)
            log.error("reload failed, the running configuration is kept: %s", line)
            await self.collector.store.render_async()
            return Outcome(False, line)

    def _read(self) -> _Plan:
        """Step 1, in a worker thread: the running state is read (under the lock), never changed."""
        try:
            config = config_for(self.settings)
            security = self._web_security()
            collectors = collectors_for(config)
        except (SettingsError, ValueError) as error:  # QueriesFileError, WebConfigError
            raise ReloadError(str(error)) from None
        return _plan(self.config, config, security, collectors)

    def _web_security(self) -> HTTPSecurity | None:
        if self.settings.web_config_file is None:
            return None
        from exporter.config.http_security import load_http_security

        return load_http_security(self.settings)

    async def _prove(self, plan: _Plan) -> None:
        """Step 2: prepare each new or changed custom query on the database (a built-in's
        statement is the code's, the same before and after)."""
        database = self.collector.database
        proving = {*plan.added, *plan.changed}
        for name, definition in plan.config.definitions.items():
            query, schedule = definition.query, definition.schedule
            if query is None or name not in proving:
                continue
            args = [bind(p) for p in query.params]
            try:
                columns = await database.columns(query.sql, args, schedule.timeout)
            except QueryError as error:
                raise ReloadError(f"query {name} cannot run ({error.reason}): {error}") from None
            problems = column_problems(query, columns)
            if problems:
                raise ReloadError(f"query {name}: {problems[0]}")

    def _create_health_series(self, config: QueriesConfig) -> None:
        """Before the swap, in a worker thread: the health series of the queries about to be
        added (about 25 each; 2,000 new queries took a second of the event loop). Nothing can
        fail between this and the swap, so they never show for a query that does not run."""
        health = self.collector.store.health
        for name, schedule in config.schedules.items():
            if name not in self.collector.store.queries:
                health.add_query(name, schedule.interval)

    def _apply(self, plan: _Plan) -> str:
        """Step 3, on the event loop without awaiting: the difference, all at once."""
        config, added, changed, removed = plan.config, plan.added, plan.changed, plan.removed
        store, collector = self.collector.store, self.collector
        for name in removed:
            collector.remove_job(self.scheduler, name)
            store.remove_query(name)
            collector.forget(name)
            del collector.definitions[name]
        definitions = config.definitions
        # Unchanged queries keep their collector object: a run in flight still counts. A
        # changed query gets its new one, so a run of the old definition still in flight is
        # recognised as replaced and dropped when it lands.
        kept = {c.name: c for c in collector.collectors if c.name not in (*changed, *removed)}
        collector.collectors = tuple(kept.get(c.name, c) for c in plan.collectors)
        for name in (*changed, *added):
            collector.definitions[name] = definitions[name]
            schedule = definitions[name].schedule
            if name in changed:
                collector.forget(name)
                store.change_query(name, schedule.interval, schedule.max_staleness)
                collector.remove_job(self.scheduler, name)
            else:
                store.add_query(name, schedule.interval, schedule.max_staleness, health=False)
            add_query_job(self.scheduler, collector, name, schedule.interval)
        # The pool follows the new set: as many connections as queries (up to
        # --max-connections; extra idle ones close now), and their shortest interval.
        collector.fit_pool()
        self.config = config
        security = plan.security
        if security is not None and self.server is not None:
            from exporter.config.basic_auth import BasicAuth  # loaded with the web config

            new, old = security.authenticator, self.server.authenticator
            if new is not None and isinstance(old, BasicAuth):
                # Verified logins of users whose hash did not change carry over: a reload must
                # not send every scraper back to bcrypt behind a flood of wrong passwords (#21).
                new.adopt_cache(old)
            self.server.authenticator = new
            self.server.extra_headers = encode_headers(security.headers)
            if (security.ssl_context is None) != (self.server.ssl_context is None):
                log.warning("reload: turning TLS on or off takes effect at the next restart")
        return f"{len(added)} added, {len(changed)} changed, {len(removed)} removed"


@dataclass(frozen=True)
class _Plan:
    """A new configuration, read and validated, and how it differs from the running one:
    worked out once, when it is read, and followed by both the proof and the swap."""

    config: QueriesConfig
    security: HTTPSecurity | None
    collectors: tuple[QueryCollector, ...]
    added: tuple[str, ...]  # in the new configuration's order
    changed: tuple[str, ...]  # a new definition or schedule; the new configuration's order
    removed: tuple[str, ...]  # in the running configuration's order


def _plan(
    running: QueriesConfig,
    config: QueriesConfig,
    security: HTTPSecurity | None,
    collectors: tuple[QueryCollector, ...],
) -> _Plan:
    # A query is the same query when its definition is equal: its code or file entry and its
    # schedule's values (``Schedule.sources`` does not count).
    old, new = running.definitions, config.definitions
    return _Plan(
        config,
        security,
        collectors,
        added=tuple(name for name in new if name not in old),
        changed=tuple(name for name in new if name in old and new[name] != old[name]),
        removed=tuple(name for name in old if name not in new),
    )
