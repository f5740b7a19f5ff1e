"""``tw-exporter sample-data``: the demo's tables and moving data in a database the user names.

The way from "I have a PostgreSQL" to "``check`` passes and ``/metrics`` shows numbers" without
the embedded server: create the four tables of ``exporter/sql/schema.sql`` in an empty database,
load the demo's synthetic dataset once and, with ``--keep-adding``, keep adding tweets, likes and
followers as the demo does.

It only ever writes to the sample's own tables: a database with none of the four is given them
(created without ``IF NOT EXISTS`` in the same transaction as the load, so a concurrent creator
makes it fail instead of sharing); a database whose four tables are exactly the sample's (the
columns and types of ``exporter/sql/schema.sql``, as an earlier ``sample-data`` or ``psql -f
exporter/sql/schema.sql`` left them) is loaded when they are empty and otherwise left as it
is, so the docs' order (load once, then ``--keep-adding``; or the schema file, then
``sample-data``) works as written. Anything else with one of the four names is refused before
anything is written, naming what differs; a failure rolls everything back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence

import asyncpg

from exporter.config import settings as cfg
from exporter.config.secrets import dsn_password, redact_dsn
from exporter.db.database import describe
from exporter.ops import dataset
from exporter.ops.schema_file import column_types, create_tables_sql

log = logging.getLogger(__name__)

DEFAULT_TWEETS = 200_000
ACTIVITY_EVERY_SECONDS = 2.0
CONNECT_TIMEOUT = 10.0

EXISTING_SQL = """
SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind,
       array(SELECT a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum) AS columns
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = ANY ($1::text[]) AND n.nspname = ANY (current_schemas(false))
ORDER BY 2, 1
"""

# The server's spelling of each type the schema names ("timestamptz" -> "timestamp with time
# zone"), so the comparison with the catalog needs no table of aliases here.
TYPE_NAMES_SQL = "SELECT array(SELECT t::regtype::text FROM unnest($1::text[]) AS t)"


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
    """Create the tables in ``dsn`` and load the dataset; a database that already has the
    sample's tables is loaded only when they are empty (``exporter/sql/schema.sql``), then, with
    ``keep_adding``, given new activity until SIGINT or SIGTERM."""
    shown = redact_dsn(dsn)
    try:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    except Exception as error:
        raise SampleDataError(f"cannot connect to {shown}: {describe(error)}") from None
    try:
        existing = await conn.fetch(EXISTING_SQL, list(dataset.TABLES))
        if existing:
            await _require_sample_tables(conn, existing, shown)
            tweets_there = await conn.fetchval("SELECT count(*) FROM tw_tweets")
            users_there = await conn.fetchval("SELECT count(*) FROM tw_users")
            if tweets_there or users_there:
                if out:
                    print(
                        f"nothing loaded: {shown} already has the sample's tables "
                        f"(schema {existing[0]['schema']}, {tweets_there} tweets, "
                        f"{users_there} users)",
                        flush=True,
                    )
            else:
                await _load(conn, tweets, shown, str(existing[0]["schema"]), False, out)
        else:
            schema = await conn.fetchval("SELECT current_schema()")
            if schema is None:
                raise SampleDataError(f"refused: {shown} has no schema on its search_path to use")
            await _load(conn, tweets, shown, str(schema), True, out)
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


async def _require_sample_tables(
    conn: asyncpg.Connection, existing: Sequence[asyncpg.Record], shown: str
) -> None:
    """Raise unless the relations found are exactly the sample's four tables, in one schema,
    with the columns and types of ``exporter/sql/schema.sql``: the only tables this command will
    write to besides those it creates."""
    wanted = column_types()
    types = [kind for columns in wanted.values() for _, kind in columns]
    spelled = dict(zip(types, await conn.fetchval(TYPE_NAMES_SQL, types), strict=True))
    problems = []
    found = {row["name"]: row for row in existing}
    schemas = sorted({row["schema"] for row in existing})
    if len(schemas) > 1 or len(existing) != len(found):
        problems.append("the tables are spread over schemas " + ", ".join(schemas))
    absent = [table for table in dataset.TABLES if table not in found]
    if absent:
        problems.append("it lacks " + ", ".join(absent))
    for table, row in found.items():
        name = f"{row['schema']}.{table}"
        if row["kind"] not in ("r", "p"):
            problems.append(f"{name} is not a table")
            continue
        have = set(row["columns"])
        need = {f"{column} {spelled[kind]}" for column, kind in wanted[table]}
        if have != need:
            differs = [f"lacks {c}" for c in sorted(need - have)]
            differs += [f"has {c}" for c in sorted(have - need)]
            problems.append(f"{name} " + ", ".join(differs))
    if problems:
        names = ", ".join(f"{row['schema']}.{row['name']}" for row in existing)
        raise SampleDataError(
            f"refused: {shown} already has {names}, which are not the sample's tables "
            f"({'; '.join(problems)}); this command adds to the tables of "
            "exporter/sql/schema.sql only and never changes others: give it an empty database "
            "(e.g. createdb tw_sample)"
        )


async def _load(
    conn: asyncpg.Connection, tweets: int, shown: str, schema: str, create: bool, out: bool
) -> None:
    """Create the tables (``create``) or use the sample's empty ones, and load the dataset,
    all in one transaction."""
    where = "" if create else "the existing empty tables of "
    if out:
        print(f"loading {tweets} tweets into {where}{shown} (schema {schema}) ...", flush=True)
    started = time.monotonic()
    spec = dataset.DatasetSpec(tweets=tweets)
    try:
        async with conn.transaction():
            if create:
                await conn.execute(create_tables_sql())
            await dataset.load_dataset(conn, spec)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, ValueError) as error:
        raise SampleDataError(f"nothing loaded: {describe(error)}") from None
    if out:
        print(
            f"{'created' if create else 'filled'} {', '.join(dataset.TABLES)} and loaded "
            f"{tweets} tweets, {spec.n_users} users and {spec.n_hashtags} hashtags in "
            f"{time.monotonic() - started:.1f} s",
            flush=True,
        )


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
