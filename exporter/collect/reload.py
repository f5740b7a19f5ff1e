"""Reloading the configuration files while running: SIGHUP, or ``POST /-/reload`` when
``--web-enable-lifecycle`` is given (Prometheus' own flag and endpoint).

The queries file and the web config are re-read and validated as at start. An invalid file is
logged and ignored: the old configuration keeps running and
``tw_exporter_config_last_reload_successful`` drops to 0. A valid one is applied as a
difference: queries that did not change keep their job, their state and their served series;
changed ones restart (their old series go, since their metrics may have changed); removed ones
stop and their series and health series go; new ones start at once.

The web config's users and headers apply to the next request; its TLS settings (on/off,
versions, client authentication) need a restart, as they belong to the listening socket
(rotated certificate files are already re-read without one).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter.collect.custom import collectors_for
from exporter.collect.scheduler import JOB_PREFIX, Collector, add_query_job
from exporter.config.queries_file import QueriesConfig, Schedule, config_for
from exporter.config.settings import Settings, SettingsError
from exporter.expose.http import MetricsServer, encode_headers

if TYPE_CHECKING:
    from exporter.config.http_security import HTTPSecurity

log = logging.getLogger(__name__)


@dataclass
class Reloader:
    """Everything a reload changes, and the configuration currently running."""

    settings: Settings
    config: QueriesConfig
    collector: Collector
    scheduler: AsyncIOScheduler
    server: MetricsServer | None = None

    def reload(self) -> bool:
        """Re-read and apply; returns whether the new configuration was valid."""
        health = self.collector.store.health
        try:
            config = config_for(self.settings)
            security = self._web_security()
        except (SettingsError, ValueError) as error:
            health.reload_successful.set(0)
            log.error("reload failed, the running configuration is kept: %s", error)
            self.collector.store.render()
            return False
        changed = self._apply(config)
        if security is not None and self.server is not None:
            self.server.authenticator = security.authenticator
            self.server.extra_headers = encode_headers(security.headers)
            if (security.ssl_context is None) != (self.server.ssl_context is None):
                log.warning("reload: turning TLS on or off takes effect at the next restart")
        health.reload_successful.set(1)
        health.reload_success_timestamp.set(time.time())
        self.collector.store.render()
        log.info("configuration reloaded (%s)", changed)
        return True

    def _web_security(self) -> HTTPSecurity | None:
        if self.settings.web_config_file is None:
            return None
        from exporter.config.http_security import load_http_security

        return load_http_security(self.settings)

    def _apply(self, config: QueriesConfig) -> str:
        old = _definitions(self.config)
        new = _definitions(config)
        removed = [name for name in old if name not in new]
        added = [name for name in new if name not in old]
        changed = [name for name in new if name in old and new[name] != old[name]]
        store, collector = self.collector.store, self.collector
        for name in removed:
            if self.scheduler.get_job(JOB_PREFIX + name) is not None:
                self.scheduler.remove_job(JOB_PREFIX + name)
            store.remove_query(name)
            collector.forget(name)
            collector.schedules.pop(name, None)
        schedules = config.schedules
        # Unchanged queries keep their collector object: a run in flight still counts.
        kept = {c.name: c for c in collector.collectors if c.name not in (*changed, *removed)}
        collector.collectors = tuple(kept.get(c.name, c) for c in collectors_for(config))
        for name in (*changed, *added):
            schedule = schedules[name]
            collector.schedules[name] = schedule
            if name in changed:
                store.remove_query(name)
                collector.forget(name)
            store.add_query(name, schedule.interval, schedule.max_staleness)
            add_query_job(self.scheduler, collector, name, schedule.interval)
        # The pool follows the new set: as many connections as queries (up to
        # --max-connections; extra idle ones close now), and their shortest interval.
        collector.fit_pool(self.settings.interval)
        self.config = config
        return f"{len(added)} added, {len(changed)} changed, {len(removed)} removed"


def _definitions(config: QueriesConfig) -> dict[str, tuple[object, Schedule]]:
    """What makes a query the same query: its definition and its effective schedule."""
    result: dict[str, tuple[object, Schedule]] = {
        name: (None, _comparable(s)) for name, s in config.builtins.items()
    }
    for name, (query, schedule) in config.custom.items():
        result[name] = (query, _comparable(schedule))
    return result


def _comparable(schedule: Schedule) -> Schedule:
    """The schedule without the provenance of its values (a moved file is not a change)."""
    return Schedule(
        schedule.interval, schedule.timeout, schedule.max_staleness, schedule.max_series
    )
