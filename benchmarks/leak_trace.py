"""Where does the exporter's Python memory grow? tracemalloc over many collection cycles.

``python -m benchmarks.leak_trace --minutes 10 --pgbouncer transaction`` runs the exporter's own
cycle in-process (``Database`` + ``Collector`` + ``SnapshotStore``, rendering the exposition after
every cycle as a scrape would read it) against a private embedded PostgreSQL, optionally through
a real PgBouncer, with the soak's faults: a restart every ``--restart-every`` seconds and an
``ACCESS EXCLUSIVE`` lock on ``tw_users`` every ``--lock-every`` seconds. It takes a tracemalloc
snapshot every minute and prints the traced size over time, the growth per minute after the
first snapshot, and the allocation sites that grew most between the first and the last
snapshot. This harness's own allocations (its lock tasks, the PgBouncer log it keeps,
tracemalloc's snapshots) are filtered out, so what remains is the exporter and its libraries.

The soak (``benchmarks/soak.py``) measures RSS of the real process; this one says which Python
allocation sites, if any, account for growth. Memory outside Python's allocator (C buffers of
extensions, allocator fragmentation) is not traced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import time
import tracemalloc

from benchmarks.common import log
from benchmarks.soak import PrivatePostgres, hold_lock, load
from exporter.config.settings import query_params
from exporter.pipeline import build_pipeline

HARNESS = (__file__, tracemalloc.__file__, "*/tests/pgbouncer.py", "*/benchmarks/soak.py")


def exporter_only(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    return snapshot.filter_traces(
        [tracemalloc.Filter(False, pattern, all_frames=True) for pattern in HARNESS]
    )


async def trace(args: argparse.Namespace) -> None:
    pg = PrivatePostgres()
    pooler = contextlib.ExitStack()
    try:
        await load(pg)
        dsn = pg.dsn
        if args.pgbouncer:
            from tests.pgbouncer import run_pgbouncer

            dsn = pooler.enter_context(run_pgbouncer(pg.admin_dsn, args.pgbouncer)).dsn_for(dsn)
        pipeline = build_pipeline(
            query_params(
                dsn=dsn,
                query_timeout=args.query_timeout,
                interval=args.interval,
                max_staleness=60.0,
            )
        )
        await pipeline.open()
        store = pipeline.store
        cycles = 0
        tracemalloc.start(args.frames)
        started = time.monotonic()
        snapshots: list[tuple[float, tracemalloc.Snapshot]] = []
        locks: list[asyncio.Task[bool]] = []
        next_snapshot, next_restart, next_lock = 60.0, args.restart_every, args.lock_every / 2
        while (now := time.monotonic() - started) < args.minutes * 60:
            await pipeline.run_all()
            cycles += 1
            store.render()
            if now >= next_restart:
                next_restart += args.restart_every
                await asyncio.to_thread(pg.stop)
                await asyncio.sleep(1)
                await asyncio.to_thread(pg.start)
            if now >= next_lock:
                next_lock += args.lock_every
                locks.append(asyncio.create_task(hold_lock(pg, 3)))
            if now >= next_snapshot:
                next_snapshot += 60.0
                gc.collect()
                snapshot = exporter_only(tracemalloc.take_snapshot())
                snapshots.append((now, snapshot))
                size = sum(stat.size for stat in snapshot.statistics("filename"))
                log(
                    f"t={now:.0f}s cycles={cycles} "
                    f"traced (exporter and libraries)={size / 1024:.1f} KiB"
                )
            await asyncio.sleep(args.interval)
        await asyncio.gather(*locks, return_exceptions=True)
        await pipeline.close(5.0)
    finally:
        pooler.close()
        pg.cleanup()
    if len(snapshots) < 2:
        print("too short: fewer than two snapshots")
        return
    (t0, first), (t1, last) = snapshots[0], snapshots[-1]
    grown = sum(s.size_diff for s in last.compare_to(first, "filename"))
    print(
        f"traced growth from t={t0:.0f}s to t={t1:.0f}s: {grown / 1024:+.1f} KiB "
        f"({grown / 2**20 / ((t1 - t0) / 60):+.5f} MiB/min)"
    )
    print("top allocation sites by growth:")
    for stat in last.compare_to(first, "traceback")[: args.top]:
        print(f"{stat.size_diff / 1024:+.1f} KiB {stat.count_diff:+d} blocks")
        for line in stat.traceback.format()[-6:]:
            print("   ", line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.2, help="pause between cycles (s)")
    parser.add_argument("--query-timeout", type=float, default=1.5)
    parser.add_argument("--restart-every", type=float, default=30.0)
    parser.add_argument("--lock-every", type=float, default=45.0)
    parser.add_argument("--pgbouncer", choices=("transaction", "session"))
    parser.add_argument("--frames", type=int, default=15)
    parser.add_argument("--top", type=int, default=8)
    asyncio.run(trace(parser.parse_args()))


if __name__ == "__main__":
    main()
