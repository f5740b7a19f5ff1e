"""The in-memory snapshot that ``/metrics`` serves, rendered to bytes once per cycle.

Each query's result replaces that query's series wholesale, so a user who leaves the top N or a
tag that leaves the top K disappears in the same cycle (the bug class users reported most
against query-exporter: long-lived gauges set by label keep dead series forever). A failed
query keeps its last good series for at most ``max_staleness``, then they are dropped rather
than served as if current.

After every cycle the whole exposition is rendered once per format (Prometheus text and
OpenMetrics, each also gzipped) into an immutable ``Rendered`` object, and the store swaps one
reference. A scrape then costs what returning bytes costs, never touches the database, and can
never see half a cycle.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client import exposition as text_format
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics_format
from prometheus_client.registry import Collector

from exporter.collectors import QUERY_NAMES
from exporter.health import HealthMetrics
from exporter.labels import DEFAULT_MAX_LABEL_LENGTH, LabelBounder

# What prometheus_client's own server answers: text version 0.0.4 unless the client asks for
# text/plain version 1.0.0 (whose Content-Type is CONTENT_TYPE_LATEST from 0.22 on). Same bytes:
# every name here is a legacy-valid one, so the two versions render identically.
TEXT_CONTENT_TYPE: str = getattr(
    text_format, "CONTENT_TYPE_PLAIN_0_0_4", text_format.CONTENT_TYPE_LATEST
)
TEXT_CONTENT_TYPE_V1: str = text_format.CONTENT_TYPE_LATEST
OPENMETRICS_CONTENT_TYPE = openmetrics_format.CONTENT_TYPE_LATEST
# ``*_created`` series double the health section and no dashboard or alert reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Rendered once per cycle, so a higher level costs nothing per scrape.
GZIP_LEVEL = 6


@dataclass(frozen=True)
class Encoded:
    body: bytes
    gzipped: bytes


@dataclass(frozen=True)
class Rendered:
    """One cycle's exposition in every format a scraper may ask for; never mutated."""

    text: Encoded
    openmetrics: Encoded


@dataclass
class QueryState:
    """The last good result of one query and when it was obtained (monotonic clock)."""

    families: list[Metric] = field(default_factory=list)
    succeeded_at: float | None = None


class _BusinessCollector(Collector):
    """Yields the families of every query whose data is still fresh (client_python's custom
    collector pattern: the state is ours, the registry only asks for it)."""

    def __init__(self, store: SnapshotStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        yield from self._store.fresh_families()


class SnapshotStore:
    """Holds per-query state and the current rendered exposition."""

    def __init__(
        self,
        *,
        interval: float,
        max_staleness: float,
        clock: Callable[[], float] = time.monotonic,
        process_metrics: bool = True,
        max_label_length: int = DEFAULT_MAX_LABEL_LENGTH,
    ) -> None:
        self.max_staleness = max_staleness
        self.labels = LabelBounder(max_label_length)
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=False)
        self.health = HealthMetrics(self.registry, interval)
        self.registry.register(_BusinessCollector(self))
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self.queries: dict[str, QueryState] = {name: QueryState() for name in QUERY_NAMES}
        # An HA follower (see ``drop_business``); the leader and a lone exporter are not.
        self.following = False
        self.current = self.render()

    # ------------------------------------------------------------ updates from the cycle

    def record_success(self, query: str, families: list[Metric], wall_time: float) -> None:
        """Replace ``query``'s series; every label value is bounded here, the one door
        business families pass through (``exporter.labels``). An HA follower keeps none."""
        if self.following:
            return
        bounded = self.labels.bound(query, families)
        if bounded.shortened:
            self.health.label_values_truncated.labels(query=query).inc(bounded.shortened)
        state = self.queries[query]
        state.families = bounded.families
        state.succeeded_at = self._clock()
        self.health.query_last_success.labels(query=query).set(wall_time)

    def drop_business(self) -> None:
        """This replica lost the HA lead: serve no business series at all (the new leader
        serves them), and count as ready (a follower must stay in the Service, scrapeable)."""
        for state in self.queries.values():
            state.families = []
            state.succeeded_at = None
        self.following = True

    def lead(self) -> None:
        """This replica leads its HA group: record and serve results again."""
        self.following = False

    def is_fresh(self, query: str) -> bool:
        succeeded_at = self.queries[query].succeeded_at
        return succeeded_at is not None and self._clock() - succeeded_at <= self.max_staleness

    def fresh_families(self) -> Iterable[Metric]:
        for name, state in self.queries.items():
            if self.is_fresh(name):
                yield from state.families
            elif state.families:
                state.families = []  # expired: drop them so memory does not hold dead data

    @property
    def ready(self) -> bool:
        return self.following or all(self.is_fresh(name) for name in self.queries)

    def stale_queries(self) -> list[str]:
        return [name for name in self.queries if not self.is_fresh(name)]

    # ------------------------------------------------------------ rendering

    def render(self) -> Rendered:
        """Render every format now and publish the result with one reference swap."""
        text = self._encode(text_format.generate_latest(self.registry))
        openmetrics = self._encode(self._openmetrics())
        return self._publish(text, openmetrics)

    async def render_async(self) -> Rendered:
        """``render`` in two steps with a yield to the event loop between them.

        Rendering both formats takes about 2 ms of CPU; split, a scrape that arrives meanwhile
        waits for one format (~1 ms), not both. The published result is the same.
        """
        text = self._encode(text_format.generate_latest(self.registry))
        await asyncio.sleep(0)
        openmetrics = self._encode(self._openmetrics())
        return self._publish(text, openmetrics)

    def _openmetrics(self) -> bytes:
        return openmetrics_format.generate_latest(self.registry)  # type: ignore[no-untyped-call, no-any-return]

    @staticmethod
    def _encode(body: bytes) -> Encoded:
        return Encoded(body, gzip.compress(body, GZIP_LEVEL, mtime=0))

    def _publish(self, text: Encoded, openmetrics: Encoded) -> Rendered:
        rendered = Rendered(text=text, openmetrics=openmetrics)
        self.current = rendered
        return rendered
