"""Issue #11: the exporter's heap with glibc's default vs a fixed mmap threshold, side by side.

``python -m benchmarks.heap_growth --minutes 12 --pgbouncer transaction`` runs two real
exporters at once against one private embedded PostgreSQL (through one PgBouncer with
``--pgbouncer``), under the soak's faults sped up: ``--interval 1 --query-timeout 0.9``, the
database stopped for 2 s every 20 s, ``ACCESS EXCLUSIVE`` on ``tw_users`` for 3 s every 30 s,
and ``/metrics`` scraped every 0.2 s (plain and gzip in turn). ``pinned`` is the exporter as
shipped: ``exporter.allocator`` fixes glibc's mmap threshold at 64 KiB at start (or, with
``--threshold``, ``MALLOC_MMAP_THRESHOLD_`` is set to that many bytes instead), which turns
glibc's dynamic adjustment off, so large blocks the heap's free space cannot hold are mapped and
unmapped instead of growing the heap; ``default`` is glibc's dynamic threshold (the child skips
the pin). Both see the same faults at the same moments, so the comparison is fair on a busy machine.

Every 10 s the RSS of each is read from ``/proc``; every 60 s each child, on SIGUSR1, appends
what it holds: glibc's ``mallinfo2()`` (``arena``: the heap's size; ``uordblks``: bytes live in
it; ``fordblks``: free bytes inside it; ``hblkhd``: bytes mapped), ``sys.getallocatedblocks()``
(live Python objects' blocks), the ``gc`` object count, asyncpg connections, threads and
the CPU time used so far (the cost of mapping large blocks instead of reusing heap). A leak
grows the live figures; fragmentation grows ``arena`` and ``fordblks`` with the live ones flat.
Prints the figures and the ratio of the RSS slopes after ``--warmup-minutes``; writes
``results/HEAP_GROWTH.{md,json}``. Not part of ``run_all``; glibc only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, ROOT, log, machine
from benchmarks.soak import (
    PrivatePostgres,
    hold_lock,
    listening_url,
    load,
    slope,
    stop_process,
)

ARMS = ("pinned", "default")
MALLINFO_FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in MALLINFO_FIELDS.split()]


# ------------------------------------------------------------------ the child (one exporter)


def child(arm: str, stats_path: str, exporter_args: list[str]) -> int:
    """The exporter in this process, with a SIGUSR1 handler that appends its memory figures."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    started = time.monotonic()

    def dump(signum: int, frame: Any) -> None:
        gc.collect()
        objects = gc.get_objects()
        connections = sum(1 for o in objects if type(o).__name__ == "PooledConnection")
        info = libc.mallinfo2()
        record = {
            "t": round(time.monotonic() - started, 1),
            "rss_kib": rss_kib(os.getpid()),
            **{name: getattr(info, name) for name in ("arena", "uordblks", "fordblks", "hblkhd")},
            "py_blocks": sys.getallocatedblocks(),
            "gc_objects": len(objects),
            "connections": connections,
            "threads": threading.active_count(),
            "cpu_s": round(time.process_time(), 2),
        }
        del objects
        with open(stats_path, "a") as out:
            out.write(json.dumps(record) + "\n")

    signal.signal(signal.SIGUSR1, dump)
    if arm == "default":  # glibc's dynamic threshold: what the exporter ran with before #11
        import exporter.app

        exporter.app.pin_mmap_threshold = lambda threshold=0: False
    from exporter.cli import main

    return main(exporter_args)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ------------------------------------------------------------------ the parent


def start(arm: str, dsn: str, workdir: Path, args: argparse.Namespace) -> tuple[Any, str]:
    log_file = workdir / f"{arm}.log"
    handle = log_file.open("w")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    if arm == "pinned" and args.threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.threshold)
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.heap_growth", "child", arm,
         str(workdir / f"{arm}.jsonl"), "run", "--dsn", dsn, "--listen", "127.0.0.1:0",
         "--interval", str(args.interval), "--query-timeout", str(args.query_timeout),
         "--log-level", "info"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=handle,
    )  # fmt: skip
    handle.close()
    return proc, listening_url(proc, log_file, f"{arm} exporter")


def scrape_forever(urls: list[str], every: float, stop: threading.Event) -> None:
    for gzip in itertools.cycle((False, True)):
        if stop.is_set():
            return
        for url in urls:
            headers = {"Accept-Encoding": "gzip"} if gzip else {}
            with contextlib.suppress(OSError):
                request = urllib.request.Request(url + "/metrics", headers=headers)
                with urllib.request.urlopen(request, timeout=5) as response:
                    response.read()
        stop.wait(every)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    pg = PrivatePostgres()
    workdir = Path(tempfile.mkdtemp(prefix="tw-heap-"))
    stack = contextlib.ExitStack()
    procs: dict[str, Any] = {}
    rss: dict[str, list[tuple[float, int]]] = {arm: [] for arm in ARMS}
    stop = threading.Event()
    locks: list[asyncio.Task[bool]] = []
    restarts = 0
    try:
        await load(pg)
        dsn = pg.dsn
        if args.pgbouncer:
            from tests.pgbouncer import run_pgbouncer

            dsn = stack.enter_context(run_pgbouncer(pg.admin_dsn, args.pgbouncer)).dsn_for(dsn)
        urls = []
        for arm in ARMS:
            procs[arm], url = start(arm, dsn, workdir, args)
            urls.append(url)
        threading.Thread(
            target=scrape_forever, args=(urls, args.scrape_every, stop), daemon=True
        ).start()
        log(f"[heap] pinned and default exporters up; {args.minutes:g} min of faults")
        started = time.monotonic()
        next_sample = next_stats = 0.0
        next_restart, next_lock = args.restart_every, args.lock_every / 2
        while (now := time.monotonic() - started) < args.minutes * 60:
            for arm, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"the {arm} exporter exited ({proc.returncode})")
            if now >= next_sample:
                next_sample += 10.0
                for arm, proc in procs.items():
                    rss[arm].append((round(now, 1), rss_kib(proc.pid)))
            if now >= next_stats:
                next_stats += 60.0
                for proc in procs.values():
                    proc.send_signal(signal.SIGUSR1)
            if now >= next_restart:
                next_restart += args.restart_every
                restarts += 1
                await asyncio.to_thread(pg.stop)
                await asyncio.sleep(2)
                await asyncio.to_thread(pg.start)
            elif now >= next_lock:
                next_lock += args.lock_every
                locks.append(asyncio.create_task(hold_lock(pg, 3)))
            await asyncio.sleep(0.2)
        for proc in procs.values():
            proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(3)
        held = await asyncio.gather(*locks, return_exceptions=True)
    finally:
        stop.set()
        for proc in procs.values():
            stop_process(proc)
        stack.close()
        pg.cleanup()
    stats = {}
    for arm in ARMS:
        path = workdir / f"{arm}.jsonl"
        stats[arm] = [json.loads(line) for line in path.read_text().splitlines()]
    shutil.rmtree(workdir, ignore_errors=True)
    return {
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "restarts": restarts,
        "locks_held": sum(1 for ok in held if ok is True),
        "rss": rss,
        "stats": stats,
    }


def summary(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    warmup = result["settings"]["warmup_minutes"]
    out: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        samples = [(t / 60, kib / 1024) for t, kib in result["rss"][arm]]
        first, last = result["stats"][arm][0], result["stats"][arm][-1]
        after = [s for s in result["stats"][arm] if s["t"] >= warmup * 60] or [first]
        out[arm] = {
            "rss_slope": slope([p for p in samples if p[0] >= warmup]),
            "rss_start": samples[0][1],
            "rss_end": samples[-1][1],
            "first": first,
            "after_warmup": after[0],
            "last": last,
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    arms = summary(result)
    mib = 2**20

    def row(label: str, key: str, scale: float = mib, fmt: str = ".2f") -> str:
        cells = []
        for arm in ARMS:
            a, b, c = (arms[arm][k][key] / scale for k in ("first", "after_warmup", "last"))
            cells.append(f"{a:{fmt}} / {b:{fmt}} / {c:{fmt}}")
        return f"| {label} | " + " | ".join(cells) + " |"

    pinned, default = arms["pinned"]["rss_slope"], arms["default"]["rss_slope"]
    ratio = f"{default / pinned:.1f}" if pinned and default and pinned > 0 < default else "-"

    def per_min(value: float | None) -> str:
        return "-" if value is None else f"{value:+.4f} MiB/min"

    return "\n".join(
        [
            "# Heap growth: glibc's default vs a fixed mmap threshold (issue #11)",
            "",
            f"`python -m benchmarks.heap_growth --minutes {s['minutes']:g}"
            + (f" --pgbouncer {s['pgbouncer']}" if s["pgbouncer"] else "")
            + f"`: two exporters side by side, `--interval {s['interval']:g} --query-timeout "
            f"{s['query_timeout']:g}`, the database stopped 2 s every {s['restart_every']:g} s "
            f"({result['restarts']} restarts), `ACCESS EXCLUSIVE` on `tw_users` 3 s every "
            f"{s['lock_every']:g} s ({result['locks_held']} held), `/metrics` scraped every "
            f"{s['scrape_every']:g} s (plain and gzip in turn). Pinned: "
            + (
                "as shipped (`exporter.allocator`, 64 KiB); default: glibc's dynamic threshold. "
                if s["threshold"] is None
                else f"`MALLOC_MMAP_THRESHOLD_={s['threshold']}`. "
            )
            + f"Machine: {result['machine']['nproc']} x {result['machine']['cpu']}.",
            "",
            f"RSS slope after minute {s['warmup_minutes']:g} (least squares over 10 s samples): "
            f"pinned {per_min(pinned)}, default {per_min(default)} (default / pinned: {ratio}).",
            "",
            "| first / after warm-up / last | pinned | default |",
            "|---|---|---|",
            f"| RSS (MiB), start / end | {arms['pinned']['rss_start']:.2f} / "
            f"{arms['pinned']['rss_end']:.2f} | {arms['default']['rss_start']:.2f} / "
            f"{arms['default']['rss_end']:.2f} |",
            row("heap size, mallinfo2 `arena` (MiB)", "arena"),
            row("live in the heap, `uordblks` (MiB)", "uordblks"),
            row("free inside the heap, `fordblks` (MiB)", "fordblks"),
            row("mapped, `hblkhd` (MiB)", "hblkhd"),
            row("Python blocks, `sys.getallocatedblocks()`", "py_blocks", 1, ".0f"),
            row("gc objects", "gc_objects", 1, ".0f"),
            row("asyncpg connections", "connections", 1, ".0f"),
            row("threads", "threads", 1, ".0f"),
            row("CPU seconds used (both see the same work)", "cpu_s", 1, ".1f"),
            "",
        ]
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        sys.exit(child(sys.argv[2], sys.argv[3], sys.argv[4:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--warmup-minutes", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--query-timeout", type=float, default=0.9)
    parser.add_argument("--restart-every", type=float, default=20.0)
    parser.add_argument("--lock-every", type=float, default=30.0)
    parser.add_argument("--scrape-every", type=float, default=0.2)
    parser.add_argument("--pgbouncer", choices=("transaction", "session"))
    parser.add_argument(
        "--threshold", type=int, help="pinned arm: MALLOC_MMAP_THRESHOLD_ instead of as shipped"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "HEAP_GROWTH.md")
    args = parser.parse_args()
    result = asyncio.run(measure(args))
    result["summary"] = summary(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
