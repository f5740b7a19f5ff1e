"""Custom queries as ``QueryCollector``s, so they run through the built-ins' own code path.

A query from the queries file becomes the same object the built-in three are: SQL, bound
parameters and a row-to-families mapping. The mapping follows the built-ins' rules: a NULL value
or a NULL label skips that row. What the built-ins cannot meet but a user's SQL can (a value
that is not a number, a counter below zero, two rows with the same labels, more rows than
``max_series``) does not fail the query: the valid rows are served and the problems are raised
together as :class:`PartialData`, which the scheduler counts once per run under the ``data`` reason.

Rows beyond ``max_series`` are never read: the query's ``max_rows`` is ``max_series + 1``, so
the database streams at most one row more than is served, and that row only says the cap was
hit (``exporter.db.database.read_at_most``).

Every label value a custom query emits is made by :func:`label_value`, the one hook where a
bound on label values applies.
"""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporter.collectors.base import MetricSpec, PartialData, QueryCollector, QueryParams, Row
from exporter.config.queries_file import (
    MetricDef,
    QueriesConfig,
    QueryDef,
    QueryDefinition,
    bind,
)

# PostgreSQL types a sample value can come from (asyncpg returns int, float or Decimal).
NUMERIC_TYPES = frozenset({"int2", "int4", "int8", "float4", "float8", "numeric", "oid", "money"})


def label_value(value: object) -> str:
    """The text of one label value (booleans as the built-ins spell them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def numeric(value: object) -> float | None:
    """A sample value, or None when the column is not a number (text, dates, booleans...)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | decimal.Decimal):
        return float(value)
    return None


@dataclass(frozen=True)
class _Family:
    """How one metric is built from rows."""

    name: str
    definition: MetricDef

    @property
    def value_column(self) -> str:
        return self.definition.value or self.name

    @property
    def label_names(self) -> list[str]:
        return [*self.definition.labels, *self.definition.const_labels]

    def new(self) -> GaugeMetricFamily | CounterMetricFamily:
        if self.definition.type == "counter":
            return CounterMetricFamily(self.name, self.definition.help, labels=self.label_names)
        return GaugeMetricFamily(self.name, self.definition.help, labels=self.label_names)


def to_families(
    families: Sequence[_Family], rows: Sequence[Row], max_series: int
) -> tuple[list[Metric], list[str]]:
    """Build every family from ``rows``; returns the families and the problems found."""
    built: list[Metric] = []
    problems: list[str] = []
    if len(rows) > max_series:
        # At most one row more was read (``max_rows``): how many more exist is not known.
        problems.append(
            f"more than max_series ({max_series}) rows: the first {max_series} are served, "
            "the rest were not read"
        )
        rows = rows[:max_series]
    for family in families:
        metric = family.new()
        built.append(metric)
        const = [label_value(v) for v in family.definition.const_labels.values()]
        columns = (family.value_column, *family.definition.labels)
        if rows and (absent := [c for c in columns if c not in rows[0]]):
            problems.append(
                f"{family.name}: column(s) {', '.join(absent)} not in the result "
                f"(columns: {', '.join(rows[0].keys())})"
            )
            continue
        seen: set[tuple[str, ...]] = set()
        bad_values = duplicates = negative = 0
        counter = family.definition.type == "counter"
        for row in rows:
            raw = row[family.value_column]
            labels_raw = [row[c] for c in family.definition.labels]
            if raw is None or any(v is None for v in labels_raw):
                continue  # the built-ins' rule: a NULL value or label skips the row
            value = numeric(raw)
            if value is None:
                bad_values += 1
                continue
            if counter and value < 0:
                negative += 1  # OpenMetrics: a counter is never negative (the scrape fails)
                continue
            labels = (*(label_value(v) for v in labels_raw), *const)
            if labels in seen:
                duplicates += 1
                continue
            seen.add(labels)
            metric.add_metric(list(labels), value)
        if bad_values:
            problems.append(
                f"{family.name}: {bad_values} row(s) whose column {family.value_column} "
                "is not a number"
            )
        if negative:
            problems.append(
                f"{family.name}: {negative} row(s) with a negative value, which a counter "
                "cannot have"
            )
        if duplicates:
            problems.append(f"{family.name}: {duplicates} row(s) repeat a label set already seen")
    return built, problems


def collector(name: str, query: QueryDef, max_series: int) -> QueryCollector:
    """The ``QueryCollector`` the scheduler runs for one custom query."""
    families = tuple(_Family(metric_name, d) for metric_name, d in query.metrics.items())
    args = tuple(bind(p) for p in query.params)

    def params(_: QueryParams) -> tuple[Any, ...]:
        return args

    def mapping(rows: Sequence[Row], _: QueryParams) -> list[Metric]:
        built, problems = to_families(families, rows, max_series)
        if problems:
            raise PartialData(built, problems)
        return built

    return QueryCollector(
        name=name,
        sql=query.sql,
        tables={},
        metrics=tuple(
            MetricSpec(f.name, f.definition.type, f.definition.help, tuple(f.label_names))
            for f in families
        ),
        params=params,
        to_families=mapping,
        max_rows=max_series + 1,
    )


def column_problems(query: QueryDef, columns: dict[str, str]) -> list[str]:
    """What is wrong between the file's columns and the statement's result columns (name ->
    type name, as the database describes a prepared statement): what ``check`` prints and what
    makes a reload refuse a query."""
    problems = []
    for metric_name, metric in query.metrics.items():
        value = metric.value or metric_name
        if value not in columns:
            problems.append(f"{metric_name}: value column {value!r} is not in the result")
        elif columns[value] not in NUMERIC_TYPES:
            problems.append(
                f"{metric_name}: value column {value!r} has type {columns[value]}, "
                "expected a number"
            )
        for label in metric.labels:
            if label not in columns:
                problems.append(f"{metric_name}: label column {label!r} is not in the result")
    return problems


def collector_of(definition: QueryDefinition) -> QueryCollector:
    """What runs a definition: a built-in's own code, or a custom query's file entry mapped
    onto the same shape."""
    if definition.collector is not None:
        return definition.collector
    assert definition.query is not None, definition.name
    return collector(definition.name, definition.query, definition.schedule.max_series)


def collectors_for(config: QueriesConfig) -> tuple[QueryCollector, ...]:
    """Every query a configuration runs, in its definitions' order (the enabled built-ins,
    then the custom ones)."""
    return tuple(collector_of(d) for d in config.definitions.values())
