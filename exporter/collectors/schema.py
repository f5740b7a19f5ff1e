"""Which query shape this database's schema needs, detected from the catalog and the data.

The seed's SQL names tables and columns but no types, so platforms differ (docs/schema-variants.md).
Only one fact changes which SQL the exporter may run: the trending query's fast "id-range" shape
bounds ``tw_tweets.id`` from below (``min(id + 0)``), which needs an integer id, and only pays off
when ids grow with ``created_at`` (sequence or snowflake ids); otherwise it would read nearly every
tweet. Anything else (UUID ids, integer ids in no time order, no index on the id) gets the
"window-join" shape, which is correct on any schema the seed's SQL accepts. The answer is
detected once per pooled connection (``Database``'s ``PooledConnection.memo``), so a reconnect
or a failover to another database detects again, as does every connection once a statement
failed because the schema changed under it (``Database.fetch`` drops the memos and retries),
and once per ``tw-exporter check``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import asyncpg

log = logging.getLogger(__name__)

Shape = Literal["id-range", "window-join"]
SHAPES: tuple[Shape, ...] = ("id-range", "window-join")

_MEMO_KEY = "tw_tweets.id"

_ID_SQL = """
SELECT format_type(a.atttypid, a.atttypmod) AS id_type,
       a.atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) AS is_integer,
       EXISTS (SELECT 1 FROM pg_index x
               WHERE x.indrelid = a.attrelid AND x.indkey[0] = a.attnum AND x.indisvalid
              ) AS indexed
FROM pg_attribute a
WHERE a.attrelid = to_regclass('tw_tweets') AND a.attname = 'id' AND NOT a.attisdropped
"""

# SAMPLES + 1 tweets at evenly spaced id values (one index probe each, ~1 ms in all): with ids
# that grow with time their created_at rise too, apart from jitter far smaller than the spacing;
# with ids in no time order about half the steps go down. One step down is tolerated (a
# backfilled tweet at a sample point); with random ids 19 of 20 steps up happen by chance with
# probability ~1e-17.
SAMPLES = 20
_TIME_ORDER_SQL = f"""
WITH r AS (SELECT min(id)::numeric AS lo, max(id)::numeric AS hi FROM tw_tweets),
p AS (
    SELECT g, (SELECT t.created_at FROM tw_tweets t
               WHERE t.id <= floor(r.lo + (r.hi - r.lo) * g / {SAMPLES})::bigint
               ORDER BY t.id DESC LIMIT 1) AS at
    FROM r, generate_series(0, {SAMPLES}) AS g
    WHERE r.lo IS NOT NULL
)
SELECT count(*) FILTER (WHERE at >= prev) AS rising,
       count(*) FILTER (WHERE at < prev) AS falling
FROM (SELECT at, lag(at) OVER (ORDER BY g) AS prev FROM p) AS steps
"""


@dataclass(frozen=True)
class TweetIds:
    """What the catalog and a sample say about ``tw_tweets.id``."""

    type: str | None  # format_type of the column; None when tw_tweets.id is not there
    integer: bool = False
    indexed: bool = False  # a valid index leads with the id column
    time_ordered: bool | None = None  # None: not sampled (not an indexed integer)

    @property
    def shape(self) -> Shape:
        """The trending query's shape for these ids."""
        return "id-range" if self.integer and self.indexed and self.time_ordered else "window-join"

    def describe(self) -> str:
        """Why this shape, in words for ``check`` and the debug log."""
        if self.type is None:
            return "window-join (tw_tweets.id not found)"
        if not self.integer:
            return f"window-join (tw_tweets.id is {self.type}, not an integer)"
        if not self.indexed:
            return f"window-join (tw_tweets.id is {self.type} but no index leads with it)"
        if not self.time_ordered:
            return f"window-join (tw_tweets.id is {self.type} but does not grow with created_at)"
        return f"id-range (tw_tweets.id is {self.type} and grows with created_at)"


async def detect(conn: asyncpg.Connection) -> TweetIds:
    """Read the id column's type from the catalog and, for an indexed integer, sample its order."""
    row = await conn.fetchrow(_ID_SQL)
    if row is None:
        return TweetIds(type=None)
    ids = TweetIds(type=row["id_type"], integer=row["is_integer"], indexed=row["indexed"])
    if not (ids.integer and ids.indexed):
        return ids
    sample = await conn.fetchrow(_TIME_ORDER_SQL)
    falling = 0 if sample is None else int(sample["falling"])
    return TweetIds(ids.type, ids.integer, ids.indexed, time_ordered=falling <= 1)


async def for_connection(conn: asyncpg.Connection) -> TweetIds:
    """``detect`` once per pooled connection (remembered in its ``memo``) and log the outcome.

    A missing table is not remembered: the query then fails with PostgreSQL's own error, and the
    next cycle looks again, so creating the table later needs no restart.
    """
    memo: dict[str, object] | None = getattr(conn, "memo", None)
    known = memo.get(_MEMO_KEY) if memo is not None else None
    if isinstance(known, TweetIds):
        return known
    ids = await detect(conn)
    if memo is not None and ids.type is not None:
        memo[_MEMO_KEY] = ids
    log.debug("query shape of trending_hashtags on this connection: %s", ids.describe())
    return ids
