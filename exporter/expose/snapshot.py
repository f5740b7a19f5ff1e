"""The in-memory snapshot that ``/metrics`` serves, kept as rendered bytes.

Each query's result replaces that query's series wholesale, so a user who leaves the top N or a
tag that leaves the top K disappears in the same run (the bug class users reported most
against query-exporter: long-lived gauges set by label keep dead series forever). A failed
query keeps its last good series for at most its own max staleness, then they are dropped
rather than served as if current.

The exposition is assembled from parts: each query's business families are rendered (Prometheus
text and OpenMetrics, each also gzipped) once, when its result arrives, and kept; a render
re-renders only the queries whose result changed plus the small health section, then joins the
bytes into an immutable ``Rendered`` object and swaps one reference. Gzip members concatenate
into a valid gzip stream (RFC 1952 2.2; Go's reader, hence Prometheus, reads them as one), so a
query finishing costs its own rendering, not the whole exposition's. A scrape costs what
returning bytes costs, never touches the database, and never sees half a result.

Concurrency, one model: every piece of state (the queries' results and parts, the health
metrics, what is published) is read and changed on the event loop only. The one thing done off
the loop is formatting the health section, whose cost grows with the number of queries: the
loop takes an immutable copy of its samples (``registry.collect()`` builds fresh objects
nobody else holds) and hands it to the store's single render thread, which alone owns the
``SectionCache`` and formats one copy at a time, for ``render`` (which waits for it) and
``render_async`` (which does not hold the loop meanwhile) alike. So no state is shared between
threads but the copy, which nobody changes, and a snapshot's health section is the loop's
state at one instant: the instant its query parts were gathered.
"""

from __future__ import annotations

import asyncio
import gzip
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

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

from exporter.config.settings import DEFAULT_MAX_LABEL_LENGTH
from exporter.expose.health import HealthMetrics
from exporter.expose.labels import LabelBounder

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
    """One format's bytes, plain and gzipped: compressed once per render, never per scrape."""

    body: bytes
    gzipped: bytes


@dataclass(frozen=True)
class Rendered:
    """One cycle's exposition in every format a scraper may ask for; never mutated."""

    text: Encoded
    openmetrics: Encoded


@dataclass(frozen=True)
class Part(Rendered):
    """One query's families, rendered in both formats (OpenMetrics without ``# EOF``): the
    same shape as a whole snapshot's ``Rendered``, of which it is a piece."""


EMPTY_PART = Part(Encoded(b"", b""), Encoded(b"", b""))
OPENMETRICS_EOF = b"# EOF\n"


@dataclass
class QueryState:
    """The last good result of one query and when it was obtained (monotonic clock)."""

    # How long its last good series outlive failures: its definition's (no store-wide default).
    max_staleness: float
    families: list[Metric] = field(default_factory=list)
    succeeded_at: float | None = None
    part: Part | None = None  # None: not rendered since the families changed
    # Unix time of the last success, copied into its health gauge when the parts are gathered
    # (``_fresh_parts``), so a snapshot's timestamp and its series always come from one state.
    success_wall_time: float | None = None

    @property
    def fresh_until(self) -> float:
        """When (monotonic) its last good result stops being fresh; never fresh before one."""
        return -math.inf if self.succeeded_at is None else self.succeeded_at + self.max_staleness


class _Families(Collector):
    """A registry-shaped view of a list of families, for the client library's renderers."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def render_part(families: list[Metric]) -> Part:
    """Render one query's families; an empty part is free."""
    if not families:
        return EMPTY_PART
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    text = text_format.generate_latest(registry)
    om = _openmetrics(registry).removesuffix(OPENMETRICS_EOF)
    return Part(_encode(text), _encode(om))


def _openmetrics(registry: CollectorRegistry) -> bytes:
    return openmetrics_format.generate_latest(registry)  # type: ignore[no-untyped-call, no-any-return]


_SampleKey = tuple[str, tuple[tuple[str, str], ...], float]


class SectionCache:
    """Renders the health section reusing what did not change since the last render.

    The section grows with the number of queries (a histogram and a few gauges and counters per
    query, about 25 samples each), and rendering all of it after every query's run would cost
    more than the run's own part: with 50 queries, most of the CPU of a render. Samples are
    grouped by family and ``query`` label; a group whose samples (names, labels, values) equal
    the last render's reuses its bytes, so a run re-renders its own query's samples and the
    small unlabelled families. The output is what prometheus_client renders, in the same order
    of families; samples of one family stay together, as both formats require.
    """

    def __init__(self) -> None:
        self._headers: dict[tuple[str, str, str, str], tuple[bytes, bytes]] = {}
        self._groups: dict[tuple[str, str | None], tuple[list[_SampleKey], bytes, bytes]] = {}

    def render(self, families: Sequence[Metric]) -> tuple[bytes, bytes]:
        """(text, OpenMetrics without ``# EOF``) of ``families`` (a registry's collection)."""
        text: list[bytes] = []
        openmetrics: list[bytes] = []
        seen: set[tuple[str, str | None]] = set()
        for family in families:
            header_text, header_om = self._header(family)
            text.append(header_text)
            openmetrics.append(header_om)
            groups: dict[str | None, list[Any]] = {}
            for sample in family.samples:
                groups.setdefault(sample.labels.get("query"), []).append(sample)
            for query, samples in groups.items():
                key = (family.name, query)
                seen.add(key)
                signature = [(s.name, tuple(sorted(s.labels.items())), s.value) for s in samples]
                cached = self._groups.get(key)
                if cached is None or cached[0] != signature:
                    body_text, body_om = self._render(family, samples)
                    cached = (signature, body_text, body_om)
                    self._groups[key] = cached
                text.append(cached[1])
                openmetrics.append(cached[2])
        for key in [k for k in self._groups if k not in seen]:
            del self._groups[key]  # a query removed by a reload
        return b"".join(text), b"".join(openmetrics)

    def _header(self, family: Metric) -> tuple[bytes, bytes]:
        key = (family.name, family.documentation, family.type, family.unit)
        if key not in self._headers:
            self._headers[key] = self._render(family, [], header=True)
        return self._headers[key]

    @staticmethod
    def _render(family: Metric, samples: list[Any], header: bool = False) -> tuple[bytes, bytes]:
        """The family's samples, or with ``header`` its HELP/TYPE lines only."""
        empty = Metric(family.name, family.documentation, family.type, family.unit)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families([empty]))
        head_text = text_format.generate_latest(registry)
        head_om = _openmetrics(registry).removesuffix(OPENMETRICS_EOF)
        if header:
            return head_text, head_om
        empty.samples = samples
        full_text = text_format.generate_latest(registry)
        full_om = _openmetrics(registry).removesuffix(OPENMETRICS_EOF)
        return full_text[len(head_text) :], full_om[len(head_om) :]


def _encode(body: bytes) -> Encoded:
    return Encoded(body, gzip.compress(body, GZIP_LEVEL, mtime=0) if body else b"")


class SnapshotStore:
    """Holds per-query state and the current rendered exposition."""

    def __init__(
        self,
        *,
        interval: float,
        queries: Mapping[str, tuple[float, float]],
        clock: Callable[[], float] = time.monotonic,
        process_metrics: bool = True,
        max_label_length: int = DEFAULT_MAX_LABEL_LENGTH,
    ) -> None:
        """``queries``: name -> (interval, max staleness), every query the configuration
        defines (``QueriesConfig.store_queries``), built-in or custom alike: the store knows no
        query of its own. ``interval``: --interval, exported as ``tw_exporter_interval_seconds``."""
        self.labels = LabelBounder(max_label_length)
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=False)
        self.health = HealthMetrics(
            self.registry, interval, {name: every for name, (every, _) in queries.items()}
        )
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self.queries: dict[str, QueryState] = {
            name: QueryState(max_staleness=staleness) for name, (_, staleness) in queries.items()
        }
        # An HA follower (see ``drop_business``); the leader and a lone exporter are not.
        self.following = False
        # Became ready once (see ``ready``): stays so until the process stops.
        self._started = False
        self._generation = self._published = 0
        self._served: frozenset[str] = frozenset()
        # What ``current`` was joined from, to drop an expired part at scrape time.
        self._served_parts: list[tuple[str, Part, float]] = []
        self._served_health: tuple[Encoded, Encoded] = (EMPTY_PART.text, EMPTY_PART.openmetrics)
        self._expires_at = math.inf
        # The health section's cache, touched only by the one render thread (see the module's
        # docstring); the thread starts at the first render and ends with the store.
        self._health = SectionCache()
        self._render_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tw-render")
        self._current = self.render()

    # ------------------------------------------------------------ the set of queries

    def add_query(
        self, query: str, interval: float, max_staleness: float, *, health: bool = True
    ) -> None:
        """A query added by a reload. ``health=False``: its health series were already
        created (``HealthMetrics.add_query``, which a reload runs in a worker thread: for
        thousands of queries it takes a second)."""
        self.queries[query] = QueryState(max_staleness=max_staleness)
        if health:
            self.health.add_query(query, interval)

    def change_query(self, query: str, interval: float, max_staleness: float) -> None:
        """A query whose definition a reload changed: its new schedule applies at once, and
        its current series stay served until a run of the new definition replaces them (or
        they go stale, as after any failed run): a reload never hides a query's series."""
        state = self.queries.get(query)
        if state is None:
            self.add_query(query, interval, max_staleness)
            return
        state.max_staleness = max_staleness
        self.health.query_interval.labels(query=query).set(interval)

    def remove_query(self, query: str) -> None:
        self.queries.pop(query, None)
        self.health.remove_query(query)

    # ------------------------------------------------------------ updates from the cycle

    def record_success(self, query: str, families: list[Metric], wall_time: float) -> None:
        """Replace ``query``'s series; every label value is bounded here, the one door
        business families, built-in and custom, pass through (``exporter.expose.labels``). An HA
        follower keeps none."""
        if self.following:
            return
        state = self.queries.get(query)
        if state is None:
            return  # removed by a reload while it ran
        bounded = self.labels.bound(query, families)
        if bounded.shortened:
            self.health.label_values_truncated.labels(query=query).inc(bounded.shortened)
        state.families = bounded.families
        state.part = None
        state.succeeded_at = self._clock()
        state.success_wall_time = wall_time

    def drop_business(self) -> None:
        """This replica lost the HA lead: serve no business series at all (the new leader
        serves them), and count as ready (a follower must stay in the Service, scrapeable)."""
        for state in self.queries.values():
            state.families, state.part = [], None
            state.succeeded_at = None
        self.following = True

    def lead(self) -> None:
        """This replica leads its HA group: record and serve results again."""
        self.following = False

    def is_fresh(self, query: str) -> bool:
        return self._clock() <= self.queries[query].fresh_until

    def fresh_families(self) -> Iterable[Metric]:
        for name, state in self.queries.items():
            if self.is_fresh(name):
                yield from state.families

    @property
    def current(self) -> Rendered:
        """What ``/metrics`` serves now: the last render, minus any query's series whose max
        staleness has passed since (checked here, at scrape time, on the monotonic clock), so
        no series is served past its staleness even when nothing renders: no run finishing
        (a wall-clock step that delayed the schedule, a run hung on a lock) or a query on a
        long interval."""
        now = self._clock()
        if now > self._expires_at:
            self._drop_expired(now)
        return self._current

    def _drop_expired(self, now: float) -> None:
        """Republish the last render without the parts that expired: its bytes are kept, so
        this joins bytes and renders nothing (no health section, no render thread)."""
        kept = [entry for entry in self._served_parts if now <= entry[2]]
        self._set_current(kept, *self._served_health)

    def _set_current(
        self, parts: list[tuple[str, Part, float]], health_text: Encoded, health_om: Encoded
    ) -> Rendered:
        rendered = _joined(parts, health_text, health_om)
        self._served_parts = parts
        self._served_health = (health_text, health_om)
        self._served = frozenset(name for name, _, _ in parts)
        self._expires_at = min((expiry for _, _, expiry in parts), default=math.inf)
        self._current = rendered
        return rendered

    def _fresh_parts(self) -> list[tuple[str, Part, float]]:
        """Each fresh query's name, rendered part (rendering the ones whose result changed)
        and expiry."""
        parts = []
        now = self._clock()
        for name, state in self.queries.items():
            if state.success_wall_time is not None:
                self.health.query_last_success.labels(query=name).set(state.success_wall_time)
            expiry = state.fresh_until
            if now > expiry:
                # Expired: drop the data so memory does not hold it and it is never served.
                state.families, state.part = [], None
                continue
            if state.part is None:
                state.part = render_part(state.families)
            parts.append((name, state.part, expiry))
        return parts

    def _served_fresh(self, name: str) -> bool:
        """Fresh, and its data is in what ``/metrics`` serves now (renders after a run may
        trail it by a moment), so ``/readyz`` never says ready before ``/metrics`` is."""
        return name in self._served and self.is_fresh(name)

    @property
    def ready(self) -> bool:
        """``/readyz``: this process serves scrapes (docs/configuration.md#endpoints).

        Not ready until it has something to serve: every query's data is served, or every
        query has been attempted, the database answered, and whatever succeeded is served.
        From then on ready until it stops, whatever queries do: a custom query that fails, a
        reload, even the database going away are shown by the metrics (``tw_up``, the error
        counters), which Prometheus can only scrape from a pod in service. An HA follower is
        always ready (it must stay scrapeable), and stays ready when it is elected (no flap
        while it runs its first queries as the leader)."""
        if self.following:
            self._started = True  # it serves scrapes; elected later, it stays in service
        if self._started:
            return True
        attempted = self.health.answered
        self._started = all(self._served_fresh(name) for name in self.queries) or (
            attempted.up
            and all(attempted.attempted(name) for name in self.queries)
            and all(
                self._served_fresh(name)
                for name, state in self.queries.items()
                if state.succeeded_at is not None
            )
        )
        return self._started

    def stale_queries(self) -> list[str]:
        return [name for name in self.queries if not self._served_fresh(name)]

    # ------------------------------------------------------------ rendering

    def render(self) -> Rendered:
        """Render what changed now and publish the result with one reference swap (waiting for
        the render thread to format the health section)."""
        parts = self._fresh_parts()
        text, openmetrics = self._render_thread.submit(
            self._render_health, self._health_samples()
        ).result()
        return self._publish(parts, text, openmetrics)

    async def render_async(self) -> Rendered:
        """``render`` without holding the event loop: the changed parts are rendered on the loop
        (each a few hundred microseconds); the health section, whose formatting grows with the
        number of queries (about 25 samples each), is formatted by the render thread from a
        copy taken here, and scrapes are answered meanwhile. A render that finishes after a
        newer one is not published."""
        # Many results arriving together (50 queries started at once) are rendered one part
        # per turn of the event loop, so the loop never stalls for more than one part.
        for name, state in list(self.queries.items()):
            if state.part is None and state.families and self.is_fresh(name):
                families = state.families
                part = render_part(families)
                if state.families is families:  # not replaced meanwhile
                    state.part = part
                await asyncio.sleep(0)
        # The parts and the health samples are taken together, on the loop: a run that lands
        # while the render thread formats is in neither, so this snapshot's timestamps and
        # series agree; the next render publishes both (a mismatch was found by test_freeze).
        parts = self._fresh_parts()
        samples = self._health_samples()
        generation = self._next_generation()
        text, openmetrics = await asyncio.wrap_future(
            self._render_thread.submit(self._render_health, samples)
        )
        return self._publish(parts, text, openmetrics, generation)

    def _health_samples(self) -> tuple[Metric, ...]:
        """The health section's samples now: a copy (fresh objects), taken on the loop."""
        return tuple(self.registry.collect())

    def _render_health(self, families: Sequence[Metric]) -> tuple[Encoded, Encoded]:
        """In the render thread: format (reusing the cache) and compress the health section."""
        text, openmetrics = self._health.render(families)
        return _encode(text), _encode(openmetrics + OPENMETRICS_EOF)

    def _next_generation(self) -> int:
        self._generation += 1
        return self._generation

    def _publish(
        self,
        parts: list[tuple[str, Part, float]],
        health_text: Encoded,
        health_om: Encoded,
        generation: int | None = None,
    ) -> Rendered:
        """Business parts first, then the health section, whose OpenMetrics keeps the EOF."""
        generation = self._next_generation() if generation is None else generation
        if generation > self._published:
            self._published = generation
            return self._set_current(parts, health_text, health_om)
        return _joined(parts, health_text, health_om)


def _joined(
    parts: list[tuple[str, Part, float]], health_text: Encoded, health_om: Encoded
) -> Rendered:
    """Business parts first, then the health section (whose OpenMetrics keeps the EOF)."""
    return Rendered(
        text=_join([p.text for _, p, _ in parts], health_text),
        openmetrics=_join([p.openmetrics for _, p, _ in parts], health_om),
    )


def _join(parts: list[Encoded], last: Encoded) -> Encoded:
    if not parts:
        return last
    return Encoded(
        b"".join([*(p.body for p in parts), last.body]),
        b"".join([*(p.gzipped for p in parts), last.gzipped]),
    )
