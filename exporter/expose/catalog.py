"""Every metric tw-exporter serves, in one list: the source the README's metric table, the
Grafana dashboard, the alert rules and their tests are checked against."""

from __future__ import annotations

from exporter.collectors import COLLECTORS
from exporter.collectors.base import MetricSpec
from exporter.expose.health import HEALTH_METRICS

BUSINESS_METRICS: tuple[MetricSpec, ...] = tuple(m for c in COLLECTORS for m in c.metrics)
ALL_METRICS: tuple[MetricSpec, ...] = BUSINESS_METRICS + HEALTH_METRICS


def sample_names(spec: MetricSpec) -> tuple[str, ...]:
    """The names a PromQL expression may use for a family (histograms expose three)."""
    if spec.kind == "histogram":
        return (f"{spec.name}_bucket", f"{spec.name}_sum", f"{spec.name}_count")
    return (spec.name,)


def all_sample_names() -> frozenset[str]:
    return frozenset(name for spec in ALL_METRICS for name in sample_names(spec))
