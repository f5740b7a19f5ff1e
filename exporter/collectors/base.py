"""The shape every business query follows: SQL, the tables it reads, and the row-to-metric mapping.

Keeping the three together (as postgres_exporter's ``collector/`` does) means a metric name, its
SQL and the code that maps rows onto it can only change together, and ``tw-exporter check`` can
learn which tables and columns a query needs from the same object that runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from prometheus_client.metrics_core import Metric

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

    def metric(self, name: str) -> MetricSpec:
        for spec in self.metrics:
            if spec.name == name:
                return spec
        raise KeyError(name)


def window_label(days: int) -> str:
    """The ``window`` label value: a Prometheus-style duration so it reads like PromQL (``7d``)."""
    return f"{days}d"
