"""The queries file (``--queries-file``): custom queries beside the built-in three, and per-query
schedules for all of them.

The file's shape is a pydantic model, so the same definition validates the YAML, reports each
error with its location, and generates the JSON Schema editors use
(``schemas/queries.schema.json``). Checks that need more than one field, another query or the
command line (defaults, collisions, interval/timeout contradictions) run after the model, in
:func:`semantic_errors`. Every problem becomes one line naming the file, the query and the
field, so ``run`` and ``check`` can exit 2 with it.

The short form, query-exporter's convention: a metric's value column defaults to the metric's
own name, its type to ``gauge``, the schedule to the command line's, so the common query is::

    queries:
      signups_last_hour:
        sql: SELECT count(*) AS tw_signups_last_hour FROM tw_users
             WHERE created_at >= now() - interval '1 hour'
        metrics:
          tw_signups_last_hour: {help: Users who signed up within the last hour.}
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
    create_model,
)

from exporter.collectors import COLLECTORS, QueryCollector
from exporter.config.settings import (
    DEFAULT_QUERY_TIMEOUT_CAP,
    HA_LEASE_MARGIN,
    MAX_INTERVAL,
    MIN_SECONDS,
    STALENESS_INTERVALS,
    Settings,
    SettingsError,
    default_max_staleness,
    default_query_timeout,
    schedule_conflicts,
)
from exporter.config.webconfig import load_yaml

DEFAULT_MAX_SERIES = 500
MAX_MAX_SERIES = 100_000
BUILTIN_NAMES: tuple[str, ...] = tuple(c.name for c in COLLECTORS)
BUILTIN_METRICS: frozenset[str] = frozenset(m.name for c in COLLECTORS for m in c.metrics)
# Names the exporter itself, the Python client or the scraper own.
RESERVED_METRIC_NAMES = frozenset({"tw_up"})
RESERVED_METRIC_PREFIXES = ("tw_exporter_", "process_", "python_")
RESERVED_LABELS = frozenset({"job", "instance"})
# The suffixes OpenMetrics puts after a family's name in its samples (counter, info, histogram,
# summary, gauge histogram): two metrics collide when one's family name is the other's plus
# one of these, since a scrape would then hold samples a parser attributes to both.
OPENMETRICS_SUFFIXES = (
    "_total",
    "_created",
    "_info",
    "_bucket",
    "_count",
    "_sum",
    "_gcount",
    "_gsum",
)

QUERY_NAME = r"^[a-z][a-z0-9_]*$"
METRIC_NAME = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h|d|w))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w))+$"


class QueriesFileError(SettingsError):
    """An invalid queries file: ``str(error)`` is the one line the user sees."""


# ---------------------------------------------------------------- durations


def _shown(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut short: an error line names the value without repeating a huge one."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_duration(value: object) -> float:
    """Seconds from a number or a Prometheus-style duration (``90s``, ``5m``, ``1h30m``, ``7d``).

    Strings are converted here, before anything is bound to SQL: asyncpg does not coerce text
    into numbers or intervals, so ``"5m"`` must never reach the driver as a string.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration: seconds as a number, or text such as 30s, 5m, 1h")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond any float
            seconds = math.inf
    elif isinstance(value, str) and _DURATION_RE.match(value.strip()):
        seconds = sum(
            float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(value.strip())
        )
    else:
        raise ValueError(
            f"invalid duration {_shown(value)}: expected seconds as a number, or text such as "
            "30s, 5m, 1h30m, 7d"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {_shown(value)}: expected a finite, positive duration")
    return seconds


def _schedule_seconds(value: object) -> float:
    seconds = parse_duration(value)
    if not MIN_SECONDS <= seconds <= MAX_INTERVAL:
        raise ValueError(
            f"invalid duration {_shown(value)}: expected from {MIN_SECONDS:g}s to {MAX_INTERVAL:g}s"
        )
    return seconds


_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": DURATION_PATTERN},
    ],
    "description": "Seconds as a number, or a duration such as 30s, 5m, 1h30m, 7d.",
}

ScheduleSeconds = Annotated[
    float, BeforeValidator(_schedule_seconds), WithJsonSchema(_DURATION_SCHEMA)
]
DurationSeconds = Annotated[
    float, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA)
]
QueryName = Annotated[str, Field(pattern=QUERY_NAME, max_length=100)]
MetricName = Annotated[str, Field(pattern=METRIC_NAME, max_length=200)]
LabelName = Annotated[str, Field(pattern=LABEL_NAME, max_length=100)]
ColumnName = Annotated[str, Field(min_length=1, max_length=63)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- parameters


def _interval_seconds(value: object) -> float:
    """A duration that fits a ``timedelta`` (what asyncpg binds as an interval), checked here
    so that a huge one is an error in the file, not an ``OverflowError`` when it is bound."""
    seconds = parse_duration(value)
    if seconds > MAX_TIMEDELTA_SECONDS:
        raise ValueError(
            f"invalid duration {_shown(value)}: expected at most "
            f"{MAX_TIMEDELTA_SECONDS / 86400:.0f}d"
        )
    return seconds


MAX_TIMEDELTA_SECONDS = float(timedelta.max.days) * 86400
IntervalSeconds = Annotated[
    float, BeforeValidator(_interval_seconds), WithJsonSchema(_DURATION_SCHEMA)
]


class IntervalParam(_Strict):
    """A duration bound as a PostgreSQL ``interval`` (a ``timedelta``): ``$1::interval``."""

    interval: IntervalSeconds

    def bound(self) -> timedelta:
        return timedelta(seconds=self.interval)


class SecondsParam(_Strict):
    """A duration bound as a number of seconds (``float8``): ``to_timestamp($1)`` and alike."""

    seconds: DurationSeconds

    def bound(self) -> float:
        return self.seconds


Param = StrictBool | StrictInt | StrictFloat | StrictStr | IntervalParam | SecondsParam


def bind(param: Param) -> Any:
    """The Python value asyncpg receives for one parameter."""
    if isinstance(param, IntervalParam | SecondsParam):
        return param.bound()
    return param


# ---------------------------------------------------------------- the file


class AlertDef(_Strict):
    """A threshold for ``tw-exporter monitoring``'s generated alert rule (one of above/below).

    For a counter the threshold applies to its per-second rate over 5 minutes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    above: float | None = Field(None, description="Fire while the value is above this.")
    below: float | None = Field(None, description="Fire while the value is below this.")
    for_: DurationSeconds = Field(
        300, alias="for", description="How long the condition must hold; default 5m."
    )
    severity: Literal["warning", "critical"] = "warning"
    summary: str | None = Field(None, max_length=500, description="Default: generated.")


class MetricDef(_Strict):
    """One metric family a query produces: one sample per row."""

    type: Literal["gauge", "counter"] = Field(
        "gauge", description="gauge, or counter (whose name must end in _total)."
    )
    help: str = Field(min_length=1, max_length=1000, description="The HELP text.")
    value: ColumnName | None = Field(
        None, description="The numeric column holding the value; default: the metric's name."
    )
    labels: tuple[LabelName, ...] = Field(
        (), description="Columns whose text becomes a label of the same name."
    )
    const_labels: dict[LabelName, str] = Field(
        default_factory=dict, description="Labels with the same value on every sample."
    )
    alert: AlertDef | None = Field(
        None, description="A threshold: `tw-exporter monitoring` writes an alert rule for it."
    )


class QueryDef(_Strict):
    """One custom query: a single read-only SELECT/WITH statement and the metrics it produces."""

    sql: str = Field(min_length=1, description="One SELECT or WITH statement; $1..$n params.")
    params: tuple[Param, ...] = Field(
        (),
        description=(
            "Values of $1..$n: integer, float, text, boolean, {interval: DURATION} (bound as "
            "an interval) or {seconds: DURATION} (bound as a number of seconds)."
        ),
    )
    interval: ScheduleSeconds | None = Field(None, description="Default: --interval.")
    timeout: ScheduleSeconds | None = Field(
        None, description="Default: min(10s, interval), or --query-timeout; <= interval."
    )
    max_staleness: ScheduleSeconds | None = Field(
        None, description="How long series outlive failures; default 3 x interval."
    )
    max_series: int = Field(
        DEFAULT_MAX_SERIES,
        ge=1,
        le=MAX_MAX_SERIES,
        description="Rows beyond this are not served and count as a data error.",
    )
    metrics: dict[MetricName, MetricDef] = Field(min_length=1)


class BuiltinDef(_Strict):
    """Schedule overrides for one built-in query (its SQL and metrics are fixed)."""

    enabled: bool = True
    interval: ScheduleSeconds | None = None
    timeout: ScheduleSeconds | None = None
    max_staleness: ScheduleSeconds | None = None


# One optional ``BuiltinDef`` per registered built-in (``exporter.collectors.COLLECTORS``): a
# built-in added there is tunable under ``builtins:`` (and in the JSON Schema) with no edit here.
if TYPE_CHECKING:
    BuiltinsDef = _Strict
else:
    BuiltinsDef = create_model(
        "BuiltinsDef",
        __base__=_Strict,
        **{collector.name: (BuiltinDef, BuiltinDef()) for collector in COLLECTORS},
    )


class QueriesFileModel(_Strict):
    """The queries file."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="tw-exporter queries file",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    builtins: BuiltinsDef = BuiltinsDef()
    queries: dict[QueryName, QueryDef] = Field(default_factory=dict)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the file, as published in ``schemas/queries.schema.json``."""
    return QueriesFileModel.model_json_schema()


# ---------------------------------------------------------------- effective settings


@dataclass(frozen=True)
class Schedule:
    """One query's effective schedule and where each value came from (for ``check``)."""

    interval: float
    timeout: float
    max_staleness: float
    max_series: int = DEFAULT_MAX_SERIES
    sources: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QueryDefinition:
    """One query the exporter knows, built-in or custom: the one model the scheduler, the
    snapshot store, health, reload and ``check`` read.

    A built-in's statement and mapping stay code (``collector``: its SQL shapes and row
    mapping, registered in ``exporter.collectors.COLLECTORS``); a custom query's are the
    file's (``query``). Either way its schedule was resolved and validated here, once, by
    the same rules (:func:`_resolve`, :func:`schedule_errors`).
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
        raise KeyError(f"no built-in query {name!r}: the built-ins are {BUILTIN_NAMES}")
    return QueryDefinition(name, schedule, collector=collector, enabled=enabled)


@dataclass(frozen=True)
class QueriesConfig:
    """A validated file: every query's definition (built-ins first, in registry order, then
    the custom ones in the file's order), disabled built-ins included."""

    path: Path | None
    all_definitions: tuple[QueryDefinition, ...]

    @property
    def definitions(self) -> dict[str, QueryDefinition]:
        """The enabled queries: what runs, by name."""
        return {d.name: d for d in self.all_definitions if d.enabled}

    @property
    def builtins(self) -> dict[str, Schedule]:
        """The enabled built-ins' schedules."""
        return {n: d.schedule for n, d in self.definitions.items() if d.builtin}

    @property
    def custom(self) -> dict[str, tuple[QueryDef, Schedule]]:
        """The custom queries, with their schedules."""
        return {
            n: (d.query, d.schedule) for n, d in self.definitions.items() if d.query is not None
        }

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.definitions)

    @property
    def schedules(self) -> dict[str, Schedule]:
        return {name: d.schedule for name, d in self.definitions.items()}

    @property
    def store_queries(self) -> dict[str, tuple[float, float]]:
        """Each enabled query's (interval, max staleness): what the snapshot store needs to
        export its interval and expire its series."""
        return {name: (s.interval, s.max_staleness) for name, s in self.schedules.items()}


def _resolve(
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
        sources["max_series"] = (
            where if "max_series" in file_values.model_fields_set else ("default")
        )
    return Schedule(interval, timeout, staleness, max_series, sources)


def default_config(settings: Settings) -> QueriesConfig:
    """No file: the built-in three on the command line's schedule."""
    return build_config(QueriesFileModel(), settings, None)


def build_config(model: QueriesFileModel, settings: Settings, path: Path | None) -> QueriesConfig:
    """Every query's definition: the registered built-ins with the file's overrides, then the
    file's custom queries, each schedule resolved by the same :func:`_resolve`."""
    where = str(path) if path else "file"
    definitions: list[QueryDefinition] = []
    for collector in COLLECTORS:
        override: BuiltinDef = getattr(model.builtins, collector.name)
        schedule = _resolve(override, settings, where=where, builtin=True)
        definitions.append(
            QueryDefinition(collector.name, schedule, collector=collector, enabled=override.enabled)
        )
    for name, query in model.queries.items():
        schedule = _resolve(query, settings, where=where, builtin=False)
        definitions.append(QueryDefinition(name, schedule, query=query))
    return QueriesConfig(path, tuple(definitions))


# ---------------------------------------------------------------- checks beyond one field


def _location(loc: tuple[int | str, ...]) -> str:
    """``('queries', 'q', 'metrics', 'm', 'labels', 0)`` ->
    ``query q, field metrics.m.labels[0]``."""
    parts = list(loc)
    head = ""
    if len(parts) >= 2 and parts[0] in ("queries", "builtins"):
        kind = "query" if parts[0] == "queries" else "built-in query"
        head = f"{kind} {parts[1]}"
        parts = parts[2:]
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "[key]":
            path += " (name)"
        else:
            path += f".{part}" if path else str(part)
    if head and path == " (name)":
        return f"{head}, its name"
    if head and path:
        return f"{head}, field {path}"
    return head or (f"field {path}" if path else "top level")


_PATTERN_MEANING = {
    QUERY_NAME: "expected snake_case: lower-case letters, digits and _, starting with a letter",
    METRIC_NAME: "expected a Prometheus metric name: letters, digits, _ and :, not a digit first",
    LABEL_NAME: "expected a Prometheus label name: letters, digits and _, not a digit first",
}
PARAM_TYPES = (
    "expected an integer, float, text, boolean, {interval: DURATION} or {seconds: DURATION}"
)


def _first_error(error: ValidationError) -> str:
    """pydantic's first error as ``location: message``, in the file's own terms.

    A parameter matches none of the union's members: pydantic reports one error per member;
    the location is cut at the parameter and a duration's own message is kept if there is one.
    """
    errors = error.errors(include_url=False)
    first = errors[0]
    loc = tuple(first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
        if len(loc) == 2 and loc[0] == "builtins":
            message += " (the built-in queries are " + ", ".join(BUILTIN_NAMES) + ")"
    elif first["type"] == "string_pattern_mismatch":
        pattern = (first.get("ctx") or {}).get("pattern")
        message = f"{first['input']!r}: " + _PATTERN_MEANING.get(str(pattern), message)
    if "params" in loc and loc.index("params") + 1 < len(loc):
        cut = loc[: loc.index("params") + 2]
        same = [e for e in errors if tuple(e["loc"])[: len(cut)] == cut]
        durations = [e for e in same if e["type"] == "value_error"]
        message = durations[0]["msg"].removeprefix("Value error, ") if durations else PARAM_TYPES
        loc = cut
    return f"{_location(loc)}: {message}"


def _statement_problem(sql: str) -> str | None:
    """Why ``sql`` is not a single SELECT/WITH statement, or None.

    Comments and quoted text are skipped, so a ``;`` inside a string does not count; the
    read-only transaction the query runs in is the real guard, this is the early, clear error.
    """
    code = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                return "unterminated /* comment"
            i = end + 2
            code.append(" ")
        elif c in ("'", '"'):
            end = i + 1
            while True:
                end = sql.find(c, end)
                if end < 0:
                    return f"unterminated {c} quote"
                if sql.startswith(c * 2, end):
                    end += 2
                    continue
                break
            code.append(" x ")
            i = end + 1
        elif c == "$" and (m := re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", sql[i:])):
            tag = m.group(0)
            end = sql.find(tag, i + len(tag))
            if end < 0:
                return f"unterminated {tag} quote"
            code.append(" x ")
            i = end + len(tag)
        else:
            code.append(c)
            i += 1
    text = "".join(code).strip().rstrip(";").strip()
    if ";" in text:
        return "expected a single statement (found ';' between statements)"
    first = text.split(None, 1)[0].upper() if text else ""
    first = first.split("(", 1)[0]
    if first not in ("SELECT", "WITH"):
        return f"expected a SELECT or WITH statement, got {first or 'nothing'}"
    return None


def placeholders(sql: str) -> set[int]:
    return {int(n) for n in re.findall(r"\$(\d+)", sql)}


def _query_errors(query: QueryDef) -> Iterator[tuple[str, str]]:
    """(field, message) for one query on its own."""
    problem = _statement_problem(query.sql)
    if problem:
        yield "sql", problem
    used = placeholders(query.sql)
    if (max(used) if used else 0) != len(query.params):
        yield (
            "params",
            (
                f"the SQL uses {max(used) if used else 0} parameter(s) ($1..$n) but "
                f"{len(query.params)} value(s) are given"
            ),
        )
    for metric_name, metric in query.metrics.items():
        where = f"metrics.{metric_name}"
        value = metric.value or metric_name
        if metric.type == "counter" and not metric_name.endswith("_total"):
            yield where, f"counter {metric_name!r} must end in _total (OpenMetrics counters)"
        if metric.type == "gauge" and metric_name.endswith(("_total", "_bucket", "_count")):
            yield where, f"gauge {metric_name!r} must not end in _total, _bucket or _count"
        if value in metric.labels:
            yield f"{where}.labels", f"column {value!r} is both a label and the value"
        if metric.alert is not None and (metric.alert.above is None) == (
            metric.alert.below is None
        ):
            yield f"{where}.alert", "give exactly one of above or below"
        seen: set[str] = set()
        for label in (*metric.labels, *metric.const_labels):
            if label in RESERVED_LABELS:
                yield f"{where}.labels", f"label {label!r} is reserved for the scraper"
            elif label.startswith("__"):
                yield f"{where}.labels", f"label {label!r}: names starting __ are reserved"
            if label in seen:
                yield f"{where}.labels", f"label {label!r} is given twice"
            seen.add(label)


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


def _located(definition: QueryDefinition, errors: Iterator[tuple[str, str]]) -> Iterator[str]:
    for where, message in errors:
        yield f"{definition.kind} {definition.name}, field {where}: {message}"


def semantic_errors(config: QueriesConfig) -> Iterator[str]:
    """Every problem no single field shows, as ``location: message``."""
    for definition in config.definitions.values():
        if definition.builtin:
            yield from _located(definition, schedule_errors(definition))
    families = _Families()
    for collector in COLLECTORS:
        for spec in collector.metrics:
            families.claim(spec.name, spec.kind, "the built-in queries")
    for reserved in RESERVED_METRIC_NAMES:
        families.claim(reserved, "gauge", "the exporter itself")
    for definition in config.definitions.values():
        name, query = definition.name, definition.query
        if query is None:
            continue
        if name in BUILTIN_NAMES:
            yield f"query {name}: the name of a built-in query (tune it under builtins:)"
        yield from _located(definition, _query_errors(query))
        yield from _located(definition, schedule_errors(definition))
        for metric_name, metric in query.metrics.items():
            where = f"query {name}, field metrics.{metric_name}"
            if metric_name in RESERVED_METRIC_NAMES or metric_name.startswith(
                RESERVED_METRIC_PREFIXES
            ):
                yield f"{where}: the name {metric_name!r} is reserved for the exporter itself"
            elif clash := families.claim(metric_name, metric.type, f"query {name}"):
                yield f"{where}: {clash}"


def family_name(metric_name: str, kind: str) -> str:
    """The OpenMetrics family a metric is exposed as: a counter's name without ``_total``."""
    return metric_name.removesuffix("_total") if kind == "counter" else metric_name


class _Families:
    """The OpenMetrics family names claimed so far, and by whom."""

    def __init__(self) -> None:
        self._owners: dict[str, tuple[str, str]] = {}  # family -> (metric name, owner)

    def claim(self, metric_name: str, kind: str, owner: str) -> str | None:
        """Claim ``metric_name``'s family; returns why it cannot be had, or None."""
        family = family_name(metric_name, kind)
        related = [family, *(family + suffix for suffix in OPENMETRICS_SUFFIXES)]
        related += [family.removesuffix(s) for s in OPENMETRICS_SUFFIXES if family.endswith(s)]
        for other in related:
            if other in self._owners:
                theirs, by = self._owners[other]
                if theirs == metric_name:
                    return f"{metric_name!r} is already produced by {by}"
                if other == family:
                    why = f"both are the OpenMetrics family {family!r}"
                else:
                    why = (
                        f"the families {family!r} and {other!r} differ by an OpenMetrics "
                        "suffix, so their samples would be read as one family's"
                    )
                return f"{metric_name!r} collides with {theirs!r} of {by}: {why}"
        self._owners[family] = (metric_name, owner)
        return None


# ---------------------------------------------------------------- loading


def parse(text: str, settings: Settings, path: Path | None = None) -> QueriesConfig:
    """Validate a file's text; raise ``QueriesFileError`` with the first problem's line."""
    shown = str(path) if path else "queries file"
    try:
        return _parse(text, settings, path, shown)
    except QueriesFileError:
        raise
    except RecursionError:
        raise QueriesFileError(f"{shown}: nested too deeply to be read") from None
    except Exception as error:  # whatever else a hostile file finds: one line, never a traceback
        raise QueriesFileError(f"{shown}: cannot be read: {one_line(error)}") from None


def one_line(error: BaseException, limit: int = 300) -> str:
    """An unexpected error as one short line: its type and the start of its message."""
    text = " ".join(str(error).split())
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _parse(text: str, settings: Settings, path: Path | None, shown: str) -> QueriesConfig:
    try:
        raw = load_yaml(text)
    except ValueError as error:
        raise QueriesFileError(f"{shown}: {error}") from None
    if raw is None:
        raw = {}
    try:
        model = QueriesFileModel.model_validate(raw)
    except ValidationError as error:
        raise QueriesFileError(f"{shown}: {_first_error(error)}") from None
    config = build_config(model, settings, path)
    for problem in semantic_errors(config):
        raise QueriesFileError(f"{shown}: {problem}")
    return config


def load(path: Path, settings: Settings) -> QueriesConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise QueriesFileError(f"{path}: cannot read the queries file: {error}") from None
    return parse(text, settings, path)


def config_for(settings: Settings) -> QueriesConfig:
    """The queries the exporter runs: the file's, or the built-ins' defaults without one."""
    if settings.queries_file is None:
        return default_config(settings)
    config = load(settings.queries_file, settings)
    check_ha_lease(config, settings)
    return config


def check_ha_lease(config: QueriesConfig, settings: Settings) -> None:
    """With --ha, the lease must outlast the *longest* query timeout (plus the margin), or a
    frozen leader's query could still run when another replica takes the lock; checked
    wherever the file is read (startup and every reload), since the file's timeouts win over
    --query-timeout, which the settings alone checked."""
    if not settings.ha or not config.schedules:
        return
    name, longest = max(config.schedules.items(), key=lambda item: item[1].timeout)
    floor = longest.timeout + HA_LEASE_MARGIN
    if settings.ha_lease < floor:
        raise QueriesFileError(
            f"{config.path}: query {name}, field timeout: {longest.timeout:g}s needs "
            f"--ha-lease >= {floor:g} (the timeout + {HA_LEASE_MARGIN:g}), but the lease is "
            f"{settings.ha_lease:g}: raise --ha-lease or shorten the timeout"
        )
