"""The queries file (``--queries-file``): custom queries beside the built-in three, and per-query
schedules for all of them.

The file's shape is a pydantic model (``exporter.config.queries_model``), which also generates
the JSON Schema editors use. From a valid shape, :func:`build_config` makes one
``QueryDefinition`` per query, the registered built-ins and the file's custom ones alike, each
schedule resolved and checked by the one query model (``exporter.config.definitions``); the
checks that need more than one field or another query (collisions, reserved names, the SQL)
run in :func:`semantic_errors`. Every problem becomes one line naming the file, the query and
the field, so ``run`` and ``check`` can exit 2 with it. The other modules import the queries
file's names from here.

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

import re
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from exporter.collectors import COLLECTORS
from exporter.config.definitions import (
    QueriesConfig,
    QueryDefinition,
    Schedule,
    builtin_definition,
    resolve_schedule,
    schedule_errors,
)
from exporter.config.queries_model import (
    DEFAULT_MAX_SERIES,
    LABEL_NAME,
    METRIC_NAME,
    QUERY_NAME,
    AlertDef,
    BuiltinDef,
    MetricDef,
    QueriesFileModel,
    QueryDef,
    bind,
    json_schema,
    parse_duration,
)
from exporter.config.settings import HA_LEASE_MARGIN, Settings, SettingsError
from exporter.config.strict_yaml import load_yaml

__all__ = [
    "DEFAULT_MAX_SERIES",
    "AlertDef",
    "MetricDef",
    "QueriesConfig",
    "QueriesFileError",
    "QueryDef",
    "QueryDefinition",
    "Schedule",
    "bind",
    "builtin_definition",
    "config_for",
    "json_schema",
    "load",
    "parse",
    "parse_duration",
]

BUILTIN_NAMES: tuple[str, ...] = tuple(c.name for c in COLLECTORS)
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


class QueriesFileError(SettingsError):
    """An invalid queries file: ``str(error)`` is the one line the user sees."""


# ---------------------------------------------------------------- definitions


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
        schedule = resolve_schedule(override, settings, where=where, builtin=True)
        definitions.append(
            QueryDefinition(collector.name, schedule, collector=collector, enabled=override.enabled)
        )
    for name, query in model.queries.items():
        schedule = resolve_schedule(query, settings, where=where, builtin=False)
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
