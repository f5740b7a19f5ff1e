"""The shape every business query follows: SQL, the tables it reads, and the row-to-metric mapping.

Keeping the three together (as postgres_exporter's ``collector/`` does) means a metric name, its
SQL and the code that maps rows onto it can only change together, and ``tw-exporter check`` can
learn which tables and columns a query needs from the same object that runs it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import asyncpg
from prometheus_client.metrics_core import Metric

from exporter.collectors import schema

# A statement that depends on the connection it runs on (``Database.fetch`` accepts it besides
# SQL text): resolved there, inside the query's read-only transaction and deadline, so a failure
# to resolve it is counted like the query's.
Resolve = Callable[[asyncpg.Connection], Awaitable[str]]

MetricKind = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric family's public contract: dashboards, alerts and docs are checked against it."""

    name: str
    kind: MetricKind
    help: str
    labels: tuple[str, ...] = ()


class QueryParams(Protocol):
    """The settings a query reads; ``Settings`` satisfies it, tests may pass anything similar."""

    @property
    def top_users(self) -> int: ...
    @property
    def trending_days(self) -> int: ...
    @property
    def trending_limit(self) -> int: ...
    @property
    def stats_days(self) -> int: ...


Row = Mapping[str, Any]


@dataclass(frozen=True)
class QueryCollector:
    """A named query and the metric families it produces."""

    name: str
    sql: str
    tables: Mapping[str, tuple[str, ...]]
    metrics: tuple[MetricSpec, ...]
    params: Callable[[QueryParams], tuple[Any, ...]]
    to_families: Callable[[Sequence[Row], QueryParams], list[Metric]]
    #: Where the query knowingly differs from the seed's SQL, for ``check`` to print.
    note: str = ""
    # Statements by schema shape (exporter.collectors.schema) for a query whose fastest SQL only
    # works on some schemas; ``sql`` runs wherever no shape is listed. Empty: one statement for all.
    shapes: Mapping[schema.Shape, str] = field(default_factory=dict)
    # The most rows a run reads (streamed; the server sends no more): a custom query's
    # ``max_series`` + 1, so one row more than it serves tells that the cap was hit. None: all
    # (the built-ins bound their rows in SQL).
    max_rows: int | None = None

    def sql_for(self, ids: schema.TweetIds) -> str:
        """The statement to run on a database whose tweet ids are ``ids``."""
        return self.shapes.get(ids.shape, self.sql)

    @property
    def statement(self) -> str | Resolve:
        """What ``Database.fetch`` runs: the SQL, or for a query with shapes a resolver that
        picks the shape for the connection it runs on (detected once per connection)."""
        if not self.shapes:
            return self.sql

        async def resolve(conn: asyncpg.Connection) -> str:
            return self.sql_for(await schema.for_connection(conn))

        return resolve

    def metric(self, name: str) -> MetricSpec:
        for spec in self.metrics:
            if spec.name == name:
                return spec
        raise KeyError(name)


class PartialData(Exception):
    """Some rows could not be served; ``families`` holds what could. Raised by a row mapping
    (built-in or custom), counted once per run under the ``data`` reason by the scheduler."""

    def __init__(self, families: list[Metric], problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.families = families
        self.problems = tuple(problems)


def window_label(days: int) -> str:
    """The ``window`` label value: a Prometheus-style duration so it reads like PromQL (``7d``)."""
    return f"{days}d"
