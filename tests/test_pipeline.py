"""One run path, one constructor (issue #24): the scheduler's job for each query is
``Collector.run_query``, ``run_all`` is nothing but that job function for every query, and the
pipeline is wired by ``exporter.pipeline`` alone (``app.py``, the tests and the benchmarks)."""

from __future__ import annotations

import ast
from pathlib import Path

from exporter.collectors import QUERY_NAMES
from exporter.config.queries_file import parse
from exporter.pipeline import build_pipeline, settings_given
from tests.helpers import value

REPO = Path(__file__).resolve().parent.parent
# Wiring by hand would construct one of these outside the constructor.
WIRED_ONLY_BY_THE_PIPELINE = {"Collector", "Reloader"}
CUSTOM = (
    "builtins: {top_users: {enabled: false}, trending_hashtags: {enabled: false}}\n"
    "queries:\n"
    "  one: {sql: 'SELECT 1 AS tw_one', interval: 60, metrics: {tw_one: {help: h}}}\n"
)


async def test_run_all_is_the_scheduled_job_function_of_every_query(seeded_db: str) -> None:
    settings = settings_given(dsn=seeded_db)
    pipeline = build_pipeline(settings, parse(CUSTOM, settings), process_metrics=False)
    await pipeline.open()
    try:
        scheduler, _ = pipeline.start()
        collector = pipeline.collector
        jobs = {job.args[0]: job.func for job in scheduler.get_jobs()}
        assert jobs == dict.fromkeys(("platform_stats", "one"), collector.run_query)
        scheduler.pause()  # the test runs the jobs itself from here
        ran: list[str] = []
        job = collector.run_query

        async def counted(name: str) -> bool:
            ran.append(name)
            return await job(name)

        collector.run_query = counted  # type: ignore[method-assign]
        assert await pipeline.run_all() is True
        assert sorted(ran) == ["one", "platform_stats"]
        text = pipeline.store.current.text.body.decode()
        assert value(text, "tw_one") == 1
        assert value(text, "tw_platform_tweets", window="7d") is not None
    finally:
        await pipeline.close(1.0)


def test_the_pipeline_is_wired_in_one_place() -> None:
    """No module but ``exporter/pipeline.py`` constructs a collector or a reloader: app, ops,
    tests and benchmarks take theirs from ``build_pipeline``."""
    wired = []
    for root in ("exporter", "tests", "benchmarks"):
        for path in sorted((REPO / root).rglob("*.py")):
            if path == REPO / "exporter" / "pipeline.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id in WIRED_ONLY_BY_THE_PIPELINE
                ):
                    wired.append(f"{path.relative_to(REPO)}:{node.lineno} {node.func.id}(...)")
    assert not wired, "pipeline wired by hand (use exporter.pipeline.build_pipeline):\n" + (
        "\n".join(wired)
    )


async def test_a_shutdown_during_the_shared_render_wait_ends_the_job_quietly(
    seeded_db: str,
) -> None:
    """A run that finished waits up to ``render_gap`` for the render it shares with runs that
    finish close to it; a shutdown cancelling that wait must end the job without an exception
    (APScheduler printed a ``CancelledError`` traceback) and must not leave the render marked
    pending, or no later run would render again."""
    import asyncio

    settings = settings_given(dsn=seeded_db)
    pipeline = build_pipeline(settings, parse(CUSTOM, settings), process_metrics=False)
    await pipeline.open()
    try:
        collector = pipeline.collector
        collector.render_gap = 60.0
        await collector.run_query("one")  # renders at once: the last render is now
        before = collector.runs_completed["one"]
        waiting = asyncio.create_task(collector.run_query("one"))
        deadline = asyncio.get_running_loop().time() + 10
        while collector.runs_completed["one"] == before:  # the run is done, the wait begins
            assert asyncio.get_running_loop().time() < deadline, "the run did not finish"
            await asyncio.sleep(0.01)
        assert not waiting.done()
        waiting.cancel()
        assert await waiting is True  # the answer, not a CancelledError
        collector.render_gap = 0.0
        rendered = pipeline.store.current
        assert await collector.run_query("one") is True
        assert pipeline.store.current is not rendered  # rendered again
    finally:
        await pipeline.close(1.0)


def test_the_store_serves_only_the_defined_queries() -> None:
    """The snapshot store and its health section know only the queries the configuration
    defines: with every built-in disabled and no custom query, no built-in's health series is
    served (the store once fell back to the built-in three when given no query)."""
    settings = settings_given()
    none = "builtins: {" + ", ".join(f"{n}: {{enabled: false}}" for n in QUERY_NAMES) + "}\n"
    pipeline = build_pipeline(settings, parse(none, settings), process_metrics=False)
    pipeline.store.render()
    text = pipeline.store.current.text.body.decode()
    assert "tw_exporter_query_interval_seconds" in text  # the health section is there
    assert 'query="' not in text, text
    one = build_pipeline(settings, parse(CUSTOM, settings), process_metrics=False)
    one.store.render()
    text = one.store.current.text.body.decode()
    assert value(text, "tw_exporter_query_interval_seconds", query="one") == 60
    assert value(text, "tw_exporter_query_interval_seconds", query="top_users") is None
