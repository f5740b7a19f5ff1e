"""Run every benchmark and write ``benchmarks/results/RESULTS.md`` plus the PNG plots.

    python -m benchmarks.run_all [--scales 100k,1m,10m] [--quick] [--skip-scrape] [--drop]

Needs a PostgreSQL it may create databases on (``TW_BENCH_DSN``, default
``postgresql://postgres@127.0.0.1:5432/postgres``), ``wrk`` on the PATH, and the ``bench``
extra (matplotlib, psutil). Datasets are generated once with ``exporter.ops.dataset`` into
``tw_bench_<scale>`` and reused by later runs (``--drop`` removes them at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from benchmarks import db_cycle, report, scrape
from benchmarks.common import (
    RESULTS,
    SCALES,
    create_recommended,
    db_name,
    drop_dataset,
    dsn_for,
    log,
    machine,
    pg_description,
)


async def _ensure_indexed(scale: str) -> str:
    import asyncpg

    dsn = dsn_for(db_name(scale))
    conn = await asyncpg.connect(dsn)
    try:
        await create_recommended(conn)
    finally:
        await conn.close()
    return dsn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scales", default="100k,1m,10m")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 5 s wrk runs")
    parser.add_argument("--skip-scrape", action="store_true")
    parser.add_argument("--skip-db", action="store_true", help="reuse results/db.json")
    parser.add_argument("--drop", action="store_true", help="drop the datasets afterwards")
    args = parser.parse_args()
    scales = [s for s in args.scales.split(",") if s]
    for scale in scales:
        if scale not in SCALES:
            parser.error(f"unknown scale {scale!r} (known: {', '.join(SCALES)})")
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M")}
    db_file = RESULTS / "db.json"
    if args.skip_db and db_file.exists():
        saved = json.loads(db_file.read_text())
        if isinstance(saved, list):  # written before the window sweep existed
            saved = {"db": saved}
        results["db"], results["sweep"] = saved["db"], saved.get("sweep", [])
    else:
        results["db"] = []
        for scale in scales:
            repeat = 3 if args.quick or scale == "10m" else 7
            results["db"].append(asyncio.run(db_cycle.run_scale(scale, repeat)))
        sweep_scales = [s for s in ("1m", "10m") if s in scales] or scales[-1:]
        results["sweep"] = []
        for scale in sweep_scales:
            results["sweep"] += asyncio.run(
                db_cycle.window_sweep(scale, (1, 3, 7, 14), 3 if args.quick else 5)
            )
        db_file.write_text(json.dumps({"db": results["db"], "sweep": results["sweep"]}, indent=1))
    admin_dsn = dsn_for("postgres")
    results["machine"]["postgres"] = asyncio.run(pg_description(admin_dsn))
    if not args.skip_scrape:
        main_scale = "1m" if "1m" in scales else scales[0]
        big_scale = scales[-1]
        results["scrape"] = scrape.run(
            asyncio.run(_ensure_indexed(main_scale)),
            asyncio.run(_ensure_indexed(big_scale)),
            seconds=5 if args.quick else 20,
            quick=args.quick,
        )
        results["scrape"]["dataset"] = main_scale
        results["scrape"]["overlap"]["dataset"] = big_scale
        (RESULTS / "scrape.json").write_text(json.dumps(results["scrape"], indent=1))
    elif (RESULTS / "scrape.json").exists():
        results["scrape"] = json.loads((RESULTS / "scrape.json").read_text())
    results["elapsed_s"] = time.time() - started
    print(report.write(results))
    if args.drop:
        for scale in scales:
            asyncio.run(drop_dataset(scale))
    log(f"done in {time.time() - started:.0f}s; see {RESULTS / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
