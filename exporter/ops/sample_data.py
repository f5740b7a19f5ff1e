"""``tw-exporter sample-data``: the demo's tables and moving data in a database the user names.

The way from "I have a PostgreSQL" to "``check`` passes and ``/metrics`` shows numbers" without
the embedded server: create the four tables of ``exporter/sql/schema.sql`` in an empty database,
load the demo's synthetic dataset once and, with ``--keep-adding``, keep adding tweets, likes and
followers as the demo does.

It only ever touches tables it has just created: a database that already has a relation of one of
the four names (in a schema on its search path) is refused before anything is written, the tables
are created without ``IF NOT EXISTS`` in the same transaction as the load (so a concurrent creator
makes it fail instead of sharing), and a failure rolls everything back. There is deliberately no
flag to append to existing tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time

import asyncpg

from exporter.config import settings as cfg
from exporter.config.secrets import dsn_password, redact_dsn
from exporter.db.database import describe
from exporter.ops import dataset
from exporter.ops.schema_file import create_tables_sql

log = logging.getLogger(__name__)

DEFAULT_TWEETS = 200_000
ACTIVITY_EVERY_SECONDS = 2.0
CONNECT_TIMEOUT = 10.0

EXISTING_SQL = """
SELECT n.nspname AS schema, c.relname AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = ANY ($1::text[]) AND n.nspname = ANY (current_schemas(false))
ORDER BY 2, 1
"""


class SampleDataError(Exception):
    """Why nothing was loaded; ``str(error)`` is the one line the user sees (no password)."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected a whole number >= 1"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a whole number >= 1")
    return value


def add_tweets_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tweets",
        type=positive_int,
        default=DEFAULT_TWEETS,
        metavar="N",
        help=f"size of the synthetic dataset in tweets (users = N/20). Default: {DEFAULT_TWEETS}.",
    )


def add_sample_data_options(parser: argparse.ArgumentParser) -> None:
    cfg.add_options(parser, cfg.CONNECTION_OPTIONS)
    add_tweets_option(parser)
    parser.add_argument(
        "--keep-adding",
        action="store_true",
        help=(
            f"after loading, keep adding tweets, likes and followers every "
            f"{ACTIVITY_EVERY_SECONDS:g} s as the demo does, until Ctrl-C or SIGTERM "
            "(default: load once and exit)"
        ),
    )


def run_sample_data(args: argparse.Namespace) -> int:
    from exporter.logs import configure_logging

    settings = cfg.settings_from(args, options=cfg.CONNECTION_OPTIONS)
    password = dsn_password(settings.dsn)
    configure_logging(settings.log_level, settings.log_format, (password,) if password else ())
    try:
        asyncio.run(load_sample_data(settings.dsn, args.tweets, keep_adding=args.keep_adding))
    except SampleDataError as error:
        print(f"{cfg.PROG} sample-data: {error}", flush=True)
        return 1
    return 0


async def load_sample_data(
    dsn: str, tweets: int, *, keep_adding: bool = False, out: bool = True
) -> None:
    """Create the tables in ``dsn`` (which must have none of them) and load the dataset."""
    shown = redact_dsn(dsn)
    try:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    except Exception as error:
        raise SampleDataError(f"cannot connect to {shown}: {describe(error)}") from None
    try:
        existing = await conn.fetch(EXISTING_SQL, list(dataset.TABLES))
        if existing:
            names = ", ".join(f"{row['schema']}.{row['name']}" for row in existing)
            raise SampleDataError(
                f"refused: {shown} already has {names}; this command only creates new tables "
                "and never changes existing ones: give it an empty database "
                "(e.g. createdb tw_sample)"
            )
        schema = await conn.fetchval("SELECT current_schema()")
        if schema is None:
            raise SampleDataError(f"refused: {shown} has no schema on its search_path to use")
        if out:
            print(f"loading {tweets} tweets into {shown} (schema {schema}) ...", flush=True)
        started = time.monotonic()
        spec = dataset.DatasetSpec(tweets=tweets)
        try:
            async with conn.transaction():
                await conn.execute(create_tables_sql())
                await dataset.load_dataset(conn, spec)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
            raise SampleDataError(f"nothing loaded: {describe(error)}") from None
        if out:
            print(
                f"created {', '.join(dataset.TABLES)} and loaded {tweets} tweets, "
                f"{spec.n_users} users and {spec.n_hashtags} hashtags in "
                f"{time.monotonic() - started:.1f} s",
                flush=True,
            )
    finally:
        await conn.close()
    if keep_adding:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        if out:
            print(
                f"adding tweets, likes and followers every {ACTIVITY_EVERY_SECONDS:g} s "
                "(Ctrl-C to stop)",
                flush=True,
            )
        await keep_busy(dsn, stop)


async def keep_busy(dsn: str, stop: asyncio.Event) -> None:
    """Add tweets, likes and followers every few seconds so the numbers move (demo and
    ``--keep-adding``); a failed round is logged and retried on a fresh connection."""
    conn: asyncpg.Connection | None = None
    while not stop.is_set():
        try:
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
            await dataset.add_activity(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
            log.warning("adding activity failed: %s", describe(error))
            conn = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), ACTIVITY_EVERY_SECONDS)
    if conn is not None:
        await conn.close()
