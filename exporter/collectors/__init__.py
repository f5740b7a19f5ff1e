"""The business queries, one module each, in the order they are documented; ``base`` is the
shape they share and ``schema`` picks, per database, which shape of their SQL to run."""

from exporter.collectors import platform_stats, top_users, trending_hashtags
from exporter.collectors.base import MetricSpec, QueryCollector

COLLECTORS: tuple[QueryCollector, ...] = (
    top_users.COLLECTOR,
    trending_hashtags.COLLECTOR,
    platform_stats.COLLECTOR,
)

QUERY_NAMES: tuple[str, ...] = tuple(c.name for c in COLLECTORS)

__all__ = ["COLLECTORS", "QUERY_NAMES", "MetricSpec", "QueryCollector"]
