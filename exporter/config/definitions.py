"""The one query model: every query the exporter runs, built-in or custom, is a
:class:`QueryDefinition`, and the scheduler, the snapshot store and its health section, the
reloader and ``check`` read nothing else.

A built-in's SQL shapes and row mapping stay code (its module in ``exporter/collectors/``,
registered in ``exporter.collectors.COLLECTORS``); a custom query's are the queries file's
entry. Their schedules are resolved here, by one set of defaults (:func:`resolve_schedule`:
the file, else the flags, else the defaults of ``exporter.config.settings``) and checked by one
rule (:func:`schedule_errors`, over ``settings.schedule_conflicts``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from exporter.collectors import COLLECTORS, QueryCollector
from exporter.config.queries_model import DEFAULT_MAX_SERIES, BuiltinDef, QueryDef
from exporter.config.settings import (
    DEFAULT_QUERY_TIMEOUT_CAP,
    STALENESS_INTERVALS,
    Settings,
    default_max_staleness,
    default_query_timeout,
    schedule_conflicts,
)


@dataclass(frozen=True)
class Schedule:
    """One query's effective schedule and where each value came from (for ``check``)."""

    interval: float
    timeout: float
    max_staleness: float
    max_series: int = DEFAULT_MAX_SERIES
    # Provenance only: two schedules with the same values are the same schedule (a reload that
    # moved a value from a flag to the file changes nothing).
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class QueryDefinition:
    """One query the exporter knows, built-in or custom: the one model the scheduler, the
    snapshot store, health, reload and ``check`` read.

    A built-in's statement and mapping stay code (``collector``: its SQL shapes and row
    mapping, registered in ``exporter.collectors.COLLECTORS``); a custom query's are the
    file's (``query``). Either way its schedule was resolved and validated here, once, by
    the same rules (:func:`resolve_schedule`, :func:`schedule_errors`).
    """

    name: str
    schedule: Schedule
    collector: QueryCollector | None = None  # a built-in: its code
    query: QueryDef | None = None  # a custom query: the file's entry
    enabled: bool = True

    @property
    def builtin(self) -> bool:
        return self.collector is not None

    @property
    def check_runs(self) -> bool:
        """How ``check`` proves it: a built-in is run once as ``run`` runs it (SQL whose cost
        the project measured, its rows bounded); a custom query is prepared, never run (the
        user's SQL, whose cost ``check`` must not impose on the database)."""
        return self.builtin

    @property
    def kind(self) -> str:
        """How an error line names it: ``built-in query NAME`` or ``query NAME``."""
        return "built-in query" if self.builtin else "query"


def builtin_definition(name: str, schedule: Schedule, enabled: bool = True) -> QueryDefinition:
    """The definition of the registered built-in ``name`` on ``schedule``."""
    collector = next((c for c in COLLECTORS if c.name == name), None)
    if collector is None:
        names = ", ".join(c.name for c in COLLECTORS)
        raise KeyError(f"no built-in query {name!r}: the built-ins are {names}")
    return QueryDefinition(name, schedule, collector=collector, enabled=enabled)


@dataclass(frozen=True)
class QueriesConfig:
    """A validated file: every query's definition (built-ins first, in registry order, then
    the custom ones in the file's order), disabled built-ins included."""

    path: Path | None
    all_definitions: tuple[QueryDefinition, ...]

    # The views below are built once per (immutable) configuration: callers look them up once
    # per query, and with 2,000 queries a view rebuilt on each look made start-up quadratic.
    @cached_property
    def definitions(self) -> dict[str, QueryDefinition]:
        """The enabled queries: what runs, by name."""
        return {d.name: d for d in self.all_definitions if d.enabled}

    @cached_property
    def builtins(self) -> dict[str, Schedule]:
        """The enabled built-ins' schedules."""
        return {n: d.schedule for n, d in self.definitions.items() if d.builtin}

    @cached_property
    def custom(self) -> dict[str, tuple[QueryDef, Schedule]]:
        """The custom queries, with their schedules."""
        return {
            n: (d.query, d.schedule) for n, d in self.definitions.items() if d.query is not None
        }

    @cached_property
    def schedules(self) -> dict[str, Schedule]:
        return {name: d.schedule for name, d in self.definitions.items()}

    @property
    def store_queries(self) -> dict[str, tuple[float, float]]:
        """Each enabled query's (interval, max staleness): what the snapshot store needs to
        export its interval and expire its series."""
        return {name: (s.interval, s.max_staleness) for name, s in self.schedules.items()}


def resolve_schedule(
    file_values: BuiltinDef | QueryDef,
    settings: Settings,
    *,
    where: str,
    builtin: bool,
) -> Schedule:
    """File wins over flag, flag over default; built-ins also follow --max-staleness."""
    sources: dict[str, str] = {}
    if file_values.interval is not None:
        interval, sources["interval"] = file_values.interval, where
    else:
        interval, sources["interval"] = (
            settings.interval,
            settings.sources.get("interval", "default"),
        )
    if file_values.timeout is not None:
        timeout, sources["timeout"] = file_values.timeout, where
    elif "query_timeout" in settings.sources:
        timeout = min(settings.query_timeout, interval)
        sources["timeout"] = f"{settings.sources['query_timeout']} (capped at the interval)"
    else:
        timeout = default_query_timeout(interval)
        sources["timeout"] = f"default (min({DEFAULT_QUERY_TIMEOUT_CAP:g}s, interval))"
    if file_values.max_staleness is not None:
        staleness, sources["max_staleness"] = file_values.max_staleness, where
    elif builtin and "max_staleness" in settings.sources:
        staleness = max(settings.max_staleness, interval)
        sources["max_staleness"] = settings.sources["max_staleness"]
    else:
        staleness = default_max_staleness(interval)
        sources["max_staleness"] = f"default ({STALENESS_INTERVALS} x interval)"
    max_series = DEFAULT_MAX_SERIES
    if isinstance(file_values, QueryDef):
        max_series = file_values.max_series
        sources["max_series"] = where if "max_series" in file_values.model_fields_set else "default"
    return Schedule(interval, timeout, staleness, max_series, sources)


def schedule_errors(definition: QueryDefinition) -> Iterator[tuple[str, str]]:
    """(field, message) for a schedule that contradicts its interval: the rule of
    ``exporter.config.settings.schedule_conflicts``, for every query alike."""
    schedule = definition.schedule
    conflicts = schedule_conflicts(schedule.interval, schedule.timeout, schedule.max_staleness)
    if "timeout" in conflicts:
        # A custom query's line also says where the timeout came from (a flag, the file).
        source = "" if definition.builtin else f" ({schedule.sources['timeout']})"
        yield (
            "timeout",
            f"{schedule.timeout:g}s{source} is longer than the interval {schedule.interval:g}s: "
            "runs would overlap",
        )
    if "max_staleness" in conflicts:
        yield (
            "max_staleness",
            f"{schedule.max_staleness:g}s is shorter than the interval {schedule.interval:g}s",
        )
