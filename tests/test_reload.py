"""Reloading the queries file: SIGHUP and ``POST /-/reload`` (only with --web-enable-lifecycle);
unchanged queries keep their series, an invalid file is ignored and reported."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter.collect.reload import Reloader
from exporter.collect.scheduler import Collector
from exporter.config.queries_file import load
from exporter.config.settings import query_params
from exporter.expose.snapshot import SnapshotStore
from exporter.pipeline import build_pipeline
from tests.conftest import StartExporter, wait_until, wait_until_sync
from tests.helpers import http_get, value

RELOAD_OK = "tw_exporter_config_last_reload_successful"
RELOAD_AT = "tw_exporter_config_last_reload_success_timestamp_seconds"

FIRST = """
builtins: {top_users: {enabled: false}, trending_hashtags: {enabled: false},
           platform_stats: {enabled: false}}
queries:
  kept: {sql: 'SELECT 1 AS tw_kept', interval: 60, metrics: {tw_kept: {help: h}}}
  changed: {sql: 'SELECT 2 AS tw_changed', interval: 60, metrics: {tw_changed: {help: h}}}
  removed: {sql: 'SELECT 3 AS tw_removed', interval: 60, metrics: {tw_removed: {help: h}}}
"""
SECOND = FIRST.replace("SELECT 2 AS tw_changed", "SELECT 20 AS tw_changed").replace(
    "  removed: {sql: 'SELECT 3 AS tw_removed', interval: 60, metrics: {tw_removed: {help: h}}}",
    "  added: {sql: 'SELECT 4 AS tw_added', interval: 60, metrics: {tw_added: {help: h}}}",
)


@dataclass
class Running:
    """An exporter's collection side on a queries file: the scheduler runs its queries and the
    reloader re-reads the file, as SIGHUP would."""

    store: SnapshotStore
    collector: Collector
    scheduler: AsyncIOScheduler
    reloader: Reloader


@contextlib.asynccontextmanager
async def running(dsn: str, path: Path) -> AsyncIterator[Running]:
    """The exporter's pipeline on the queries file at ``path``, started as ``run`` starts it."""
    settings = query_params(queries_file=path, dsn=dsn)
    pipeline = build_pipeline(settings, load(path, settings), process_metrics=False)
    await pipeline.open()
    try:
        scheduler, reloader = pipeline.start()
        yield Running(pipeline.store, pipeline.collector, scheduler, reloader)
    finally:
        await pipeline.close(1.0)


async def test_a_valid_file_applies_the_difference_and_keeps_unchanged_series(
    seeded_db: str, tmp_path: Path
) -> None:
    path = tmp_path / "queries.yml"
    path.write_text(FIRST)
    async with running(seeded_db, path) as rig:
        store, scheduler, reloader = rig.store, rig.scheduler, rig.reloader

        def text() -> str:
            return store.current.text.body.decode()

        async def all_ran() -> bool:
            return all(value(text(), f"tw_{n}") is not None for n in ("kept", "changed", "removed"))

        await wait_until(all_ran)
        kept_part = store.queries["kept"].part
        kept_success = value(
            text(), "tw_exporter_query_last_success_timestamp_seconds", query="kept"
        )

        path.write_text(SECOND)
        assert reloader.reload() is True
        assert store.queries["kept"].part is kept_part  # not re-run, not re-rendered
        assert value(text(), "tw_kept") == 1
        assert value(text(), "tw_removed") is None
        assert value(text(), "tw_exporter_query_interval_seconds", query="removed") is None
        assert value(text(), "tw_exporter_query_errors_total", query="added", reason="data") == 0

        async def new_ones_ran() -> bool:
            return value(text(), "tw_changed") == 20 and value(text(), "tw_added") == 4

        await wait_until(new_ones_ran)
        assert (
            value(text(), "tw_exporter_query_last_success_timestamp_seconds", query="kept")
            == kept_success
        )
        assert value(text(), RELOAD_OK) == 1
        assert sorted(j.id for j in scheduler.get_jobs()) == [
            "query:added",
            "query:changed",
            "query:kept",
        ]

        path.write_text(SECOND.replace("help: h}}}", "help: h, labels: [job]}}}", 1))
        assert reloader.reload() is False
        assert value(text(), RELOAD_OK) == 0
        assert value(text(), "tw_kept") == 1 and value(text(), "tw_added") == 4
        assert len(scheduler.get_jobs()) == 3


def post(url: str, body: bytes | None = None) -> int:
    """POST ``body`` (default: none; the exporter refuses every request body with 413)."""
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_sighup_and_the_lifecycle_endpoint_reload_the_running_exporter(
    seeded_db: str, exporter_proc: StartExporter, tmp_path: Path
) -> None:
    path = tmp_path / "queries.yml"
    path.write_text(FIRST)
    plain = exporter_proc("--dsn", seeded_db, "--queries-file", str(path))
    assert post(plain.url + "/-/reload") == 405  # not without --web-enable-lifecycle

    wait_until_sync(lambda: value(http_get(plain.url + "/metrics").text, "tw_kept") == 1)
    started_at = value(http_get(plain.url + "/metrics").text, RELOAD_AT)
    assert started_at is not None and started_at > 0, "the start counts as a successful load"
    path.write_text(SECOND)
    signalled_at = time.time()
    plain.proc.send_signal(signal.SIGHUP)
    wait_until_sync(lambda: value(http_get(plain.url + "/metrics").text, "tw_added") == 4)
    text = http_get(plain.url + "/metrics").text
    assert value(text, RELOAD_OK) == 1
    reloaded_at = value(text, RELOAD_AT)
    assert reloaded_at is not None, f"{RELOAD_AT} is missing after a reload"
    assert reloaded_at > started_at and reloaded_at >= signalled_at, (started_at, reloaded_at)
    assert value(text, "tw_removed") is None

    path.write_text("queries: [")
    plain.proc.send_signal(signal.SIGHUP)
    wait_until_sync(lambda: value(http_get(plain.url + "/metrics").text, RELOAD_OK) == 0)
    assert value(http_get(plain.url + "/metrics").text, "tw_added") == 4
    assert "reload failed, the running configuration is kept" in plain.logs()
    assert plain.stop() == 0

    path.write_text(FIRST)
    lifecycle = exporter_proc(
        "--dsn", seeded_db, "--queries-file", str(path), "--web-enable-lifecycle"
    )
    wait_until_sync(lambda: value(http_get(lifecycle.url + "/metrics").text, "tw_kept") == 1)
    assert http_get(lifecycle.url + "/-/reload").status == 405
    path.write_text(SECOND)
    assert post(lifecycle.url + "/-/reload", b"{}") == 413  # no body, as on every path (#10)
    assert post(lifecycle.url + "/-/reload") == 200
    wait_until_sync(lambda: value(http_get(lifecycle.url + "/metrics").text, "tw_added") == 4)
    path.write_text("queries: [")
    assert post(lifecycle.url + "/-/reload") == 500
    assert value(http_get(lifecycle.url + "/metrics").text, RELOAD_OK) == 0
    assert lifecycle.stop() == 0


async def test_a_query_removed_while_it_runs_leaves_nothing_behind(
    seeded_db: str, tmp_path: Path
) -> None:
    path = tmp_path / "queries.yml"
    path.write_text(
        FIRST.replace("SELECT 3 AS tw_removed", "SELECT 3 AS tw_removed FROM pg_sleep(1)")
    )
    async with running(seeded_db, path) as rig:
        store, collector, reloader = rig.store, rig.collector, rig.reloader

        async def kept_ran() -> bool:
            return collector.runs_completed.get("kept", 0) >= 1

        await wait_until(kept_ran)
        assert "removed" not in collector.runs_completed  # still sleeping
        path.write_text(SECOND)
        assert reloader.reload() is True
        await asyncio.sleep(0)

        async def removed_finished() -> bool:
            return not any(not t.done() for t in collector._running)

        await wait_until(removed_finished)
        store.render()
        text = store.current.text.body.decode()
        assert 'query="removed"' not in text
        assert value(text, "tw_removed") is None
