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
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from apscheduler.events import EVENT_JOB_EXECUTED, JobExecutionEvent
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

    def text(self) -> str:
        """The text exposition served now."""
        return self.store.current.text.body.decode()

    async def first_served(self) -> None:
        """Wait until every query of ``FIRST`` has served its series."""

        async def all_ran() -> bool:
            text = self.text()
            return all(value(text, f"tw_{n}") is not None for n in ("kept", "changed", "removed"))

        await wait_until(all_ran)


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
        store, scheduler, reloader, text = rig.store, rig.scheduler, rig.reloader, rig.text
        await rig.first_served()
        kept_part = store.queries["kept"].part
        kept_success = value(
            text(), "tw_exporter_query_last_success_timestamp_seconds", query="kept"
        )

        path.write_text(SECOND)
        assert (await reloader.reload()).ok is True
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
        assert sorted(j.id for j in scheduler.get_jobs()) == sorted(rig.collector.jobs.values())
        assert sorted(rig.collector.jobs) == ["added", "changed", "kept"]

        path.write_text(SECOND.replace("help: h}}}", "help: h, labels: [job]}}}", 1))
        assert (await reloader.reload()).ok is False
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
        assert (await reloader.reload()).ok is True
        await asyncio.sleep(0)

        async def removed_finished() -> bool:
            return not any(not t.done() for t in collector._running)

        await wait_until(removed_finished)
        store.render()
        text = store.current.text.body.decode()
        assert 'query="removed"' not in text
        assert value(text, "tw_removed") is None


# ------------------------------------------------------------------ all or nothing (issue #22)

BROKEN = {
    # A typo only the database can see: `check` would have caught it, and so does the reload.
    'relation "no_such_table" does not exist': SECOND.replace(
        "SELECT 20 AS tw_changed", "SELECT 20 AS tw_changed FROM no_such_table"
    ),
    "value column 'tw_changed' has type text": SECOND.replace(
        "SELECT 20 AS tw_changed", "SELECT 20::text AS tw_changed"
    ),
    "nested too deeply": "queries: " + "[" * 5000 + "]" * 5000,
    # Drops `removed` and adds a parameter too large to bind (an OverflowError once, applied
    # after `removed` was already gone: it never came back).
    "expected at most 999999999d": SECOND.replace(
        "'SELECT 4 AS tw_added'", "'SELECT $1::interval IS NULL AS b, 4 AS tw_added'"
    ).replace("help: h}}}\n", "help: h}}, params: [{interval: 200000000w}]}\n"),
    "collides with": SECOND.replace(
        "metrics: {tw_added: {help: h}}",
        "metrics: {tw_added: {help: h}, tw_added_total: {help: h, type: counter}}",
    ),
}


async def test_a_failed_reload_changes_nothing_whatever_went_wrong(
    seeded_db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "queries.yml"
    path.write_text(FIRST)
    async with running(seeded_db, path) as rig:
        collector, reloader, text = rig.collector, rig.reloader, rig.text
        await rig.first_served()
        jobs, collectors = dict(collector.jobs), collector.collectors
        for expected, broken in BROKEN.items():
            path.write_text(broken)
            caplog.clear()
            outcome = await reloader.reload()
            assert outcome.ok is False, expected
            assert expected in outcome.line and "\n" not in outcome.line, outcome.line
            failures = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
            assert failures == [f"reload failed, the running configuration is kept: {outcome.line}"]
            assert value(text(), RELOAD_OK) == 0
            assert (value(text(), "tw_changed"), value(text(), "tw_removed")) == (2, 3)
            assert collector.jobs == jobs and collector.collectors is collectors
            assert sorted(j.id for j in rig.scheduler.get_jobs()) == sorted(jobs.values())

        # The file as it runs is valid again: nothing was lost on the way.
        path.write_text(FIRST)
        assert (await reloader.reload()).ok is True
        assert value(text(), RELOAD_OK) == 1
        assert collector.collectors is not collectors  # rebuilt, but nothing changed
        assert collector.jobs == jobs
        assert value(text(), "tw_removed") == 3


async def test_a_reload_while_a_query_runs_keeps_its_series_and_reruns_it_at_once(
    seeded_db: str, tmp_path: Path
) -> None:
    path = tmp_path / "queries.yml"
    # `changed` waits for an advisory lock the test holds whenever it wants a run in flight.
    first = FIRST.replace(
        "SELECT 2 AS tw_changed", "SELECT 2 AS tw_changed FROM pg_advisory_lock_shared(2201)"
    )
    path.write_text(first)
    blocker = await asyncpg.connect(seeded_db)
    try:
        async with running(seeded_db, path) as rig:
            store, collector, text = rig.store, rig.collector, rig.text
            # APScheduler counts a job's run as running until its executor's callback, a moment
            # after the series are served: a tick before that would be refused (max_instances).
            first_run_ended = asyncio.Event()

            def ended(event: JobExecutionEvent) -> None:
                if event.job_id == collector.jobs["changed"]:
                    first_run_ended.set()

            rig.scheduler.add_listener(ended, EVENT_JOB_EXECUTED)

            async def changed_served() -> bool:
                return value(text(), "tw_changed") == 2 and value(text(), "tw_kept") == 1

            await wait_until(changed_served)
            await asyncio.wait_for(first_run_ended.wait(), 15)
            kept_part = store.queries["kept"].part
            await blocker.execute("SELECT pg_advisory_lock(2201)")
            job = rig.scheduler.get_job(collector.jobs["changed"])
            job.modify(next_run_time=datetime.now(UTC))

            async def run_waits() -> bool:
                waiting = await blocker.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND objid = 2201 AND database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                )
                return waiting == 1

            await wait_until(run_waits)
            path.write_text(
                first.replace(
                    "SELECT 2 AS tw_changed FROM pg_advisory_lock_shared(2201)",
                    "SELECT 20 AS tw_changed",
                )
            )
            assert (await rig.reloader.reload()).ok is True
            # Still served, and still ready, while the old definition's run is in flight.
            assert value(text(), "tw_changed") == 2
            assert store.ready
            assert store.queries["kept"].part is kept_part

            async def new_definition_served() -> bool:
                return value(text(), "tw_changed") == 20

            await wait_until(new_definition_served, timeout=8)  # < its 10 s lock timeout
            assert await run_waits()  # the old run is still blocked: nothing waited for it
            assert value(text(), "tw_exporter_cycles_skipped_total", query="changed") == 0
            await blocker.execute("SELECT pg_advisory_unlock_all()")

            async def old_run_over() -> bool:
                return not await run_waits() and not any(not t.done() for t in collector._running)

            await wait_until(old_run_over)
            store.render()
            assert value(text(), "tw_changed") == 20  # the old run's outcome was dropped
    finally:
        await blocker.close()


async def test_a_reload_reads_the_file_off_the_event_loop(seeded_db: str, tmp_path: Path) -> None:
    path = tmp_path / "queries.yml"
    path.write_text(FIRST)
    async with running(seeded_db, path) as rig:
        # A large file (4 MB, mostly comment) takes about a second to parse.
        path.write_text(SECOND + ("# " + "x" * 98 + "\n") * 40_000)
        loop = asyncio.get_running_loop()
        lags: list[float] = []
        done = asyncio.Event()

        async def tick() -> None:
            while not done.is_set():
                before = loop.time()
                await asyncio.sleep(0.01)
                lags.append(loop.time() - before - 0.01)

        ticker = asyncio.create_task(tick())

        async def ticking() -> bool:
            return bool(lags)

        await wait_until(ticking)
        started = loop.time()
        outcome = await rig.reloader.reload()
        took = loop.time() - started
        done.set()
        await ticker
        assert outcome.ok is True, outcome.line
        assert took > 0.3  # long enough for a stall to show
        assert max(lags) < min(0.5, took / 2), (max(lags), took)


PASSWORD = "Reload-Pw-7731"


def post_text(url: str) -> tuple[int, str]:
    """POST without a body; the status and the response's text."""
    request = urllib.request.Request(url, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def test_a_running_process_refuses_a_broken_reload_says_why_and_stays_ready(
    seeded_db: str, exporter_proc: StartExporter, tmp_path: Path
) -> None:
    path = tmp_path / "queries.yml"
    path.write_text(FIRST)
    # A password the server (trust auth) never asks for: only here to be kept out of answers.
    parts = urlsplit(seeded_db)
    netloc = f"{parts.username or 'postgres'}:{PASSWORD}@{parts.netloc.rpartition('@')[2]}"
    dsn = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    proc = exporter_proc("--dsn", dsn, "--queries-file", str(path), "--web-enable-lifecycle")

    def metrics() -> str:
        return http_get(proc.url + "/metrics").text

    wait_until_sync(lambda: http_get(proc.url + "/readyz").status == 200)
    typo = BROKEN['relation "no_such_table" does not exist']
    path.write_text(typo)
    status, body = post_text(proc.url + "/-/reload")
    assert status == 500
    line = body.strip()
    assert "\n" not in line
    assert line.startswith("reload failed, the running configuration is kept: query changed")
    assert 'relation "no_such_table" does not exist' in line
    text = metrics()
    assert value(text, RELOAD_OK) == 0
    assert (value(text, "tw_changed"), value(text, "tw_removed")) == (2, 3)
    assert value(text, "tw_added") is None
    wait_until_sync(lambda: line in proc.logs())  # stderr is read by a thread: it may trail
    assert http_get(proc.url + "/readyz").status == 200

    # A failure whose text holds the DSN's password is answered without it, as it is logged.
    path.write_text(
        SECOND.replace("SELECT 20 AS tw_changed", f'SELECT 20 AS tw_changed FROM "{PASSWORD}"')
    )
    status, body = post_text(proc.url + "/-/reload")
    assert status == 500 and "does not exist" in body
    assert PASSWORD not in body

    # An error of a type nobody planned for, by SIGHUP: one log line, no traceback.
    path.write_text("queries: " + "[" * 5000 + "]" * 5000)
    proc.proc.send_signal(signal.SIGHUP)
    wait_until_sync(lambda: "nested too deeply" in proc.logs())
    assert (value(metrics(), "tw_changed"), value(metrics(), "tw_removed")) == (2, 3)

    # A query that passes the proof but fails when it runs: the exporter stays in service.
    path.write_text(
        SECOND.replace("'SELECT 4 AS tw_added'", "'SELECT 1 / (random() * 0)::int AS tw_added'")
    )
    proc.proc.send_signal(signal.SIGHUP)

    def applied() -> bool:
        text = metrics()
        failed = value(text, "tw_exporter_query_errors_total", query="added", reason="sql")
        return failed == 1 and value(text, "tw_changed") == 20

    wait_until_sync(applied)
    text = metrics()
    assert value(text, RELOAD_OK) == 1
    assert value(text, "tw_changed") == 20 and value(text, "tw_removed") is None
    assert http_get(proc.url + "/readyz").status == 200
    assert "Traceback" not in proc.logs()
    assert PASSWORD not in proc.logs()
    assert proc.stop() == 0
