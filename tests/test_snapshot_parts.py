"""The health section's cached rendering is byte for byte what prometheus_client renders,
after changes to one query, to none, and after a query is removed; it is formatted from a copy
taken on the loop, in one thread only (``exporter.expose.snapshot``'s concurrency model)."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Sequence

from prometheus_client import exposition
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as openmetrics

from exporter.expose.snapshot import SnapshotStore


def library(store: SnapshotStore) -> tuple[bytes, bytes]:
    return (
        exposition.generate_latest(store.registry),
        openmetrics.generate_latest(store.registry),  # type: ignore[no-untyped-call]
    )


def test_cached_health_section_equals_the_librarys_rendering() -> None:
    queries = {f"q{i}": (15.0, 45.0) for i in range(5)}
    store = SnapshotStore(interval=15, queries=queries, process_metrics=False)
    health = store.health
    steps = [
        lambda: None,
        lambda: health.query_duration.labels(query="q1").observe(0.3),
        lambda: health.query_errors.labels(query="q3", reason="data").inc(),
        lambda: health.cycles_skipped.labels(query="q0").inc(),
        lambda: health.up.set(1),
        lambda: store.remove_query("q2"),
        lambda: store.add_query("q9", 60, 180),
        lambda: health.query_last_success.labels(query="q9").set(1.5e9),
    ]
    for step in steps:
        step()
        rendered = store.render()
        assert (rendered.text.body, rendered.openmetrics.body) == library(store)
    assert b'query="q2"' not in store.current.text.body
    assert b'tw_exporter_query_interval_seconds{query="q9"} 60.0' in store.current.text.body


async def test_losing_the_ha_lead_drops_every_rendered_part() -> None:
    """An HA step-down (``drop_business``) must clear each query's already rendered part too,
    or the next render would serve the old leader's business series from the cached part;
    leading again serves only what is recorded after it."""
    from prometheus_client.core import GaugeMetricFamily

    queries = {"q1": (15.0, 45.0), "q2": (60.0, 180.0)}
    store = SnapshotStore(interval=15, queries=queries, process_metrics=False)

    def family(name: str, value: float) -> GaugeMetricFamily:
        metric = GaugeMetricFamily(name, "help")
        metric.add_metric([], value)
        return metric

    store.record_success("q1", [family("custom_one", 1)], 1.0)
    store.record_success("q2", [family("custom_two", 2)], 1.0)
    await store.render_async()
    assert b"custom_one 1.0" in store.current.text.body
    assert b"custom_two 2.0" in store.current.text.body
    assert all(state.part is not None for state in store.queries.values())

    store.drop_business()
    assert all(state.part is None and not state.families for state in store.queries.values())
    store.record_success("q1", [family("custom_one", 3)], 2.0)  # a run the fence let finish
    for rendered in (store.render(), await store.render_async()):
        for body in (rendered.text.body, rendered.openmetrics.body):
            assert b"custom_" not in body
    assert all(state.part is None for state in store.queries.values())
    assert store.ready  # a follower stays in the Service

    store.lead()
    store.record_success("q2", [family("custom_two", 4)], 3.0)
    await store.render_async()
    assert b"custom_two 4.0" in store.current.text.body
    assert b"custom_one" not in store.current.text.body


async def test_a_snapshot_shows_a_success_timestamp_exactly_with_its_series() -> None:
    """The health section is formatted in the render thread while runs keep landing on the
    loop. A run that lands meanwhile (its series, its last-success timestamp, its error
    counter) must show in no part of that snapshot, since the thread formats a copy taken
    with the parts (a scrape must never see a new last-success timestamp beside no series,
    nor series beside a timestamp of 0); the next render shows all of it."""
    from prometheus_client.core import GaugeMetricFamily

    store = SnapshotStore(interval=15, queries={"q1": (15.0, 45.0)}, process_metrics=False)
    family = GaugeMetricFamily("custom_one", "help")
    family.add_metric([], 7)
    render_health = store._render_health
    formatting, release = threading.Event(), threading.Event()

    def held(families: Sequence[Metric]) -> tuple[object, object]:
        formatting.set()
        assert release.wait(5)
        return render_health(families)

    store._render_health = held  # type: ignore[method-assign]
    render = asyncio.create_task(store.render_async())
    assert await asyncio.to_thread(formatting.wait, 5)
    # A run finishes now, on the loop, while the render thread formats.
    store.record_success("q1", [family], 1234.0)
    store.health.query_errors.labels(query="q1", reason="data").inc()
    release.set()
    body = (await render).text.body
    assert b'tw_exporter_query_last_success_timestamp_seconds{query="q1"} 1234.0' not in body
    assert b"custom_one" not in body
    assert b'tw_exporter_query_errors_total{query="q1",reason="data"} 0.0' in body
    store._render_health = render_health  # type: ignore[method-assign]
    body = (await store.render_async()).text.body
    assert b'tw_exporter_query_last_success_timestamp_seconds{query="q1"} 1234.0' in body
    assert b"custom_one 7.0" in body
    assert b'tw_exporter_query_errors_total{query="q1",reason="data"} 1.0' in body


async def test_the_health_section_cache_has_one_owner_thread() -> None:
    """Every render, waited for (``render``) or not (``render_async``, several at once),
    formats the health section in the same one thread, never on the loop's: the cache is
    never changed by two threads."""
    store = SnapshotStore(interval=15, queries={"q1": (15.0, 45.0)}, process_metrics=False)
    threads: set[int] = set()
    cache_render = store._health.render

    def recording(families: Sequence[Metric]) -> tuple[bytes, bytes]:
        threads.add(threading.get_ident())
        return cache_render(families)

    store._health.render = recording  # type: ignore[method-assign]
    store.render()
    await asyncio.gather(*(store.render_async() for _ in range(4)))
    store.render()
    assert len(threads) == 1, threads
    assert threading.get_ident() not in threads


def test_a_series_is_never_served_past_its_staleness_even_without_a_render() -> None:
    """Nothing renders while no run ends (a schedule delayed by a wall-clock step, a run hung
    on a lock, a query on a long interval): ``current`` itself drops a query's part once its
    max staleness has passed on the monotonic clock, and keeps the others'."""
    from prometheus_client.core import GaugeMetricFamily

    now = [100.0]
    queries = {"short": (1.0, 3.0), "long": (60.0, 180.0)}
    store = SnapshotStore(interval=1, queries=queries, process_metrics=False, clock=lambda: now[0])
    for name in queries:
        metric = GaugeMetricFamily(f"custom_{name}", "help")
        metric.add_metric([], 1)
        store.record_success(name, [metric], 1.0)
    store.render()
    assert b"custom_short 1.0" in store.current.text.body

    now[0] += 3.0  # exactly the staleness: still served
    assert b"custom_short 1.0" in store.current.text.body
    now[0] += 0.01  # past it, and no render happened since
    served = store.current
    assert b"custom_short" not in served.text.body
    assert b"custom_short" not in served.openmetrics.body
    assert b"custom_short" not in gzip.decompress(served.text.gzipped)
    assert b"custom_long 1.0" in served.text.body
    assert served.openmetrics.body.endswith(b"# EOF\n")
    assert store.stale_queries() == ["short"]
