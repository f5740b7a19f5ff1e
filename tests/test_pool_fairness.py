"""The pool's bound (``--max-connections``) and its fairness, on a real PostgreSQL: queries stuck
on a lock never hold every connection, so a 1 s query keeps running; the server never sees more
of the exporter's backends than the bound (nor than the enabled queries, also after a reload);
a bad bound is one clear line."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from exporter.cli import main
from exporter.config.queries_file import QueriesConfig, load, parse
from exporter.config.settings import ENV_PREFIX, Settings, query_params
from exporter.db.database import Slots
from exporter.pipeline import build_pipeline
from tests.conftest import StartExporter, wait_until
from tests.helpers import http_get, value
from tests.rig import Rig

SETTINGS = query_params()
OFF = (
    "builtins: {top_users: {enabled: false}, trending_hashtags: {enabled: false}, "
    "platform_stats: {enabled: false}}\n"
)
BACKENDS_SQL = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"


@dataclass
class PoolRig(Rig):
    """A pipeline (``tests.rig.Rig``) and a connection that watches its backends."""

    application_name: str = ""
    admin: asyncpg.Connection | None = None
    seen: list[int] = field(default_factory=list)

    @property
    def text(self) -> str:
        self.store.render()  # a run counts itself before its (debounced) render
        return self.store.current.text.body.decode()

    def metric(self, name: str, **labels: str) -> float | None:
        return value(self.text, name, **labels)

    async def backends(self, where: str = "") -> int:
        """The exporter's server backends now (each sample is kept in ``seen``)."""
        assert self.admin is not None
        count = int(await self.admin.fetchval(BACKENDS_SQL + where, self.application_name))
        if not where:
            self.seen.append(count)
        return count


@pytest.fixture
async def rigs() -> AsyncIterator[list[PoolRig]]:
    made: list[PoolRig] = []
    yield made
    for rig in made:
        await rig.pipeline.close(1.0)
        if rig.admin is not None:
            await rig.admin.close()


async def make_rig(
    dsn: str,
    config: QueriesConfig,
    max_connections: int,
    rigs: list[PoolRig],
    settings: Settings = SETTINGS,
) -> PoolRig:
    """The exporter's pipeline on ``config`` (its scheduler not started yet)."""
    # A name of its own: other tests (and other exporters) share the server.
    application_name = f"tw-exporter-fair-{uuid.uuid4().hex[:8]}"
    pipeline = build_pipeline(
        dataclasses.replace(settings, dsn=dsn, max_connections=max_connections, query_timeout=10.0),
        config,
        application_name=application_name,
        process_metrics=False,
    )
    await pipeline.open()
    rig = PoolRig(pipeline, application_name, await asyncpg.connect(dsn))
    rigs.append(rig)
    return rig


def stuck_queries(count: int) -> str:
    """Queries that read tw_users (blocked while the test holds its lock), each on a 120 s
    schedule with a 100 s timeout: they stay stuck for the whole test unless it lets go."""
    return "".join(
        f"  slow{i}: {{sql: 'SELECT count(*) AS tw_slow{i} FROM tw_users', interval: 120,\n"
        f"          timeout: 100, metrics: {{tw_slow{i}: {{help: h}}}}}}\n"
        for i in range(count)
    )


# Listed last: at start every slow query is ahead of it in the queue.
FAST = "  fast: {sql: 'SELECT 1 AS tw_fast', interval: 1, metrics: {tw_fast: {help: h}}}\n"


async def test_queries_stuck_on_a_lock_never_starve_a_fast_one(
    seeded_db: str, rigs: list[PoolRig]
) -> None:
    bound, stuck = 3, 4  # more stuck queries than connections
    config = parse(OFF + "queries:\n" + stuck_queries(stuck) + FAST, SETTINGS)
    rig = await make_rig(seeded_db, config, bound, rigs)
    locker = await asyncpg.connect(seeded_db)
    lock = locker.transaction()
    await lock.start()
    await locker.execute("LOCK TABLE tw_users IN ACCESS EXCLUSIVE MODE")
    started = time.monotonic()
    rig.pipeline.start()
    try:
        successes: set[float] = set()

        async def fast_succeeded_four_times() -> bool:
            assert await rig.backends() <= bound
            last = rig.metric("tw_exporter_query_last_success_timestamp_seconds", query="fast")
            if last:
                successes.add(last)
            return len(successes) >= 4

        # Four successes, each a new last-success timestamp, while every slow query is stuck.
        await wait_until(fast_succeeded_four_times, timeout=30)
        for i in range(stuck):
            assert rig.collector.runs_completed.get(f"slow{i}", 0) == 0  # still stuck
        # The stuck ones hold all connections but one: the rule's N - 1.
        assert await rig.backends(" AND wait_event_type = 'Lock'") == bound - 1
        assert max(rig.seen) <= bound
        for name in ("fast", *(f"slow{i}" for i in range(stuck))):
            assert (
                rig.metric("tw_exporter_query_errors_total", query=name, reason="connection") == 0
            ), name
        # The fast query's waits are observed (each run's, however short).
        assert (rig.metric("tw_exporter_query_wait_seconds_count", query="fast") or 0) >= 4

        await lock.rollback()
        released = time.monotonic()

        async def every_slow_query_ran() -> bool:
            assert await rig.backends() <= bound
            return all(rig.collector.runs_completed.get(f"slow{i}", 0) for i in range(stuck))

        await wait_until(every_slow_query_ran, timeout=30)
        for i in range(stuck):
            for reason in ("connection", "timeout"):
                assert (
                    rig.metric("tw_exporter_query_errors_total", query=f"slow{i}", reason=reason)
                    == 0
                ), (i, reason)
        # The slow queries kept out of the lane waited for a slot until the lock went: that
        # wait is counted as theirs (wait seconds), not as an error.
        waits = [
            rig.metric("tw_exporter_query_wait_seconds_sum", query=f"slow{i}") or 0.0
            for i in range(stuck)
        ]
        assert max(waits) >= released - started - 1.0
    finally:
        await rig.pipeline.close(1.0)
        if not locker.is_closed():
            await locker.close()


def sleepers(names: list[str]) -> str:
    return "".join(
        f"  {n}: {{sql: 'SELECT 1 AS tw_{n} FROM pg_sleep(0.3)', interval: 1,\n"
        f"        metrics: {{tw_{n}: {{help: h}}}}}}\n"
        for n in names
    )


async def test_a_reload_resizes_the_pool_to_the_queries_enabled(
    seeded_db: str, tmp_path: Path, rigs: list[PoolRig]
) -> None:
    four = OFF + "queries:\n" + sleepers(["q0", "q1", "q2", "q3"])
    one = OFF + "queries:\n" + sleepers(["q0"])
    path = tmp_path / "queries.yml"
    path.write_text(four)
    settings = query_params(queries_file=path)
    config = load(path, settings)
    rig = await make_rig(seeded_db, config, 3, rigs, settings)
    _, reloader = rig.pipeline.start()
    try:
        assert rig.database.slots.capacity == 3  # 4 queries, bound 3

        async def three_in_use() -> bool:
            return await rig.backends() == 3

        await wait_until(three_in_use, timeout=15)

        path.write_text(one)
        assert (await reloader.reload()).ok is True
        assert rig.database.slots.capacity == 1  # one query left: one connection

        async def down_to_one() -> bool:
            return await rig.backends() <= 1

        await wait_until(down_to_one, timeout=15)
        rig.seen.clear()
        runs = rig.collector.runs_completed["q0"]

        async def q0_ran_three_more_times() -> bool:
            assert await rig.backends() <= 1
            assert rig.metric("tw_q0") == 1  # its series stayed served across the reload
            return rig.collector.runs_completed["q0"] >= runs + 3

        await wait_until(q0_ran_three_more_times, timeout=20)
        assert rig.metric("tw_exporter_query_errors_total", query="q0", reason="connection") == 0

        path.write_text(four)
        assert (await reloader.reload()).ok is True
        assert rig.database.slots.capacity == 3
        await wait_until(three_in_use, timeout=15)
    finally:
        await rig.pipeline.close(1.0)


async def test_the_flag_bounds_a_running_exporter(
    exporter_proc: StartExporter, seeded_db: str, tmp_path: Path
) -> None:
    path = tmp_path / "queries.yml"
    names = ["a", "b", "c", "d"]
    path.write_text(OFF + "queries:\n" + sleepers(names))
    proc = exporter_proc(
        "--dsn",
        seeded_db,
        "--queries-file",
        str(path),
        env={ENV_PREFIX + "MAX_CONNECTIONS": "2"},
    )
    admin = await asyncpg.connect(seeded_db)
    seen: list[int] = []
    try:

        async def all_served() -> bool:
            seen.append(
                int(
                    await admin.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                        "'tw-exporter' AND datname = current_database()"
                    )
                )
            )
            text = (await asyncio.to_thread(http_get, proc.url + "/metrics")).text
            return all(value(text, f"tw_{n}") == 1 for n in names) and len(seen) > 40

        await wait_until(all_served, timeout=30)
        # Four queries sleeping 0.3 s each second want four connections: they got two.
        assert max(seen) == 2
    finally:
        await admin.close()
    assert proc.stop() == 0


@pytest.mark.parametrize(
    ("argv", "env", "names"),
    [
        (["--max-connections", "0"], {}, ["--max-connections", "'0'", "from 1 to 65535"]),
        (["--max-connections", "-3"], {}, ["--max-connections", "'-3'", "from 1 to 65535"]),
        (["--max-connections", "2.5"], {}, ["--max-connections", "'2.5'", "whole number"]),
        (["--max-connections", "many"], {}, ["--max-connections", "'many'", "connections"]),
        ([], {"TW_EXPORTER_MAX_CONNECTIONS": "70000"}, ["TW_EXPORTER_MAX_CONNECTIONS", "70000"]),
    ],
)
def test_a_bad_bound_is_one_line(
    argv: list[str],
    env: dict[str, str],
    names: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, raw in env.items():
        monkeypatch.setenv(key, raw)
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--dsn", "postgresql://tw@db/app", *argv])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    for name in names:
        assert name in lines[0]


async def test_long_runs_never_take_the_last_slot() -> None:
    """The admission rule alone: with 3 slots, queries expected to be long (timeout 10 s, the
    shortest interval 1 s) get at most 2; quick ones pass a long one that waits."""
    slots = Slots(3, long_after=1.0)
    first = await slots.acquire("a", 10)
    await slots.acquire("b", 10)
    third = asyncio.create_task(slots.acquire("c", 10))
    await wait_until(lambda: waiting(slots, 1))
    assert not third.done()
    quick = await slots.acquire("fast", 0.5)  # the last slot, past the waiting long query
    assert slots.in_use == 3
    slots.release(quick)
    assert not third.done()  # a free slot, but not for a third long run
    slots.release(first)
    await asyncio.wait_for(third, 5)
    assert slots.in_use == 2

    # A cancelled waiter leaves the queue; without the rule the last slot goes to anyone.
    fourth = asyncio.create_task(slots.acquire("d", 10))
    await wait_until(lambda: waiting(slots, 1))
    fourth.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fourth
    assert len(slots._waiting) == 0 and slots.in_use == 2
    slots.fair = False
    await asyncio.wait_for(slots.acquire("d", 10), 5)
    assert slots.in_use == 3


async def waiting(slots: Slots, count: int) -> bool:
    return len(slots._waiting) == count
