"""Hostile rows in the database must still give a valid exposition that round-trips exactly.

Exactly, that is, up to the label-value bound (docs/label-values.md): a value longer than
``--max-label-length`` bytes, or empty, comes back as its documented rewritten form
(``exported_as``); every other value comes back as the database's text, byte for byte.

User names and tags are user-controlled text that becomes Prometheus label values: quotes,
backslashes, line breaks, ``}``, ``=``, ``# HELP`` lines, control characters, bidi overrides,
emoji, 10 000-character names; counts at the limits of ``bigint`` and ``integer``, negative,
NULL. Checked twice:

* in-process, as a property over arbitrary text (the collectors' row mapping + the snapshot's
  rendering + prometheus_client's parsers, both formats);
* end to end: rows in a real PostgreSQL, the real exporter process, its ``/metrics`` in both
  formats, ``promtool check metrics`` and prometheus_client's parsers.

PostgreSQL ``text`` cannot hold NUL (``\\x00``), so neither test produces it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from exporter.collectors import QUERY_NAMES, platform_stats, top_users, trending_hashtags
from exporter.config.settings import DEFAULT_MAX_LABEL_LENGTH, query_params
from exporter.expose.labels import fits, rewrite
from exporter.expose.snapshot import OPENMETRICS_CONTENT_TYPE, SnapshotStore
from tests.conftest import StartExporter, wait_until_sync
from tests.helpers import Labels, both_formats, http_get, promtool_check, value

BIGINT_MAX, BIGINT_MIN = 2**63 - 1, -(2**63)
INT_MAX, INT_MIN = 2**31 - 1, -(2**31)

HOSTILE_TEXT: tuple[str, ...] = (
    'a"}',
    "\n# HELP x",
    '\n# TYPE tw_user_followers counter\ntw_user_followers{username="evil"} 1',
    "# EOF",
    "\n# EOF\n",
    'x",verified="true',
    "line\nbreak",
    "tab\there",
    "cr\rhere",
    "\x01ctl\x02\x1f",
    "\x7fdel",
    "back\\slash",
    "trailing\\",
    "\\n (a backslash and an n)",
    '\\"',
    'quote"d',
    "{brace}",
    "eq=ual",
    "a,b",
    "\u202eevil\u202c",
    "\u200f\u05e9\u05dc\u05d5\u05dd",  # RLM + Hebrew
    "🐦\u200d🔥",
    "\u2028line\u2029para\u0085nel",
    "\ufeffbom",
    "",
    " ",
    "a" * 10_000,
    "🔥" * 2_500,  # 10 000 characters, 40 000 bytes
)
# Text a PostgreSQL text column can hold: any code point but NUL (and no lone surrogates).
PG_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)


def exported_as(values: Iterable[str], limit: int = DEFAULT_MAX_LABEL_LENGTH) -> dict[str, str]:
    """What each of one label's values is exported as, per docs/label-values.md: itself when it
    fits, else its first rewritten form that no row exports verbatim."""
    ordered = list(values)
    taken = {v for v in ordered if fits(v, limit)}
    result: dict[str, str] = {}
    for original in ordered:
        if fits(original, limit):
            result[original] = original
            continue
        attempt = 0
        while (new := rewrite(original, limit, attempt)) in taken:
            attempt += 1
        taken.add(new)
        result[original] = new
    return result


# ------------------------------------------------------------------ in-process property


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    users=st.dictionaries(
        PG_TEXT | st.sampled_from(HOSTILE_TEXT),
        st.tuples(st.integers(BIGINT_MIN, BIGINT_MAX), st.booleans()),
        max_size=8,
    ),
    tags=st.dictionaries(
        PG_TEXT | st.sampled_from(HOSTILE_TEXT), st.integers(0, BIGINT_MAX), max_size=8
    ),
    stats=st.tuples(
        st.integers(0, BIGINT_MAX),
        st.integers(0, BIGINT_MAX),
        st.floats(allow_nan=False),
        st.none() | st.floats(allow_nan=False),
    ),
)
@example(
    users={t: (i, i % 2 == 0) for i, t in enumerate(HOSTILE_TEXT)},
    tags={t: i for i, t in enumerate(HOSTILE_TEXT)},
    stats=(BIGINT_MAX, 0, -1e308, None),
)
def test_any_label_text_round_trips_in_both_formats(
    users: dict[str, tuple[int, bool]],
    tags: dict[str, int],
    stats: tuple[int, int, float, float | None],
) -> None:
    params = query_params(top_users=1000, trending_limit=1000)
    store = SnapshotStore(
        interval=1, queries=dict.fromkeys(QUERY_NAMES, (1.0, 3.0)), process_metrics=False
    )
    user_rows = [{"username": u, "follower_count": n, "verified": v} for u, (n, v) in users.items()]
    tag_rows = [{"tag": t, "tweet_count": n} for t, n in tags.items()]
    stat_row = dict(
        zip(("total_tweets", "active_users", "total_likes", "avg_likes"), stats, strict=True)
    )
    for collector, rows in (
        (top_users.COLLECTOR, user_rows),
        (trending_hashtags.COLLECTOR, tag_rows),
        (platform_stats.COLLECTOR, [stat_row]),
    ):
        store.record_success(collector.name, collector.to_families(rows, params), 0.0)
    rendered = store.render()
    text, openmetrics = rendered.text.body, rendered.openmetrics.body

    username, tag = exported_as(users), exported_as(tags)
    assert both_formats(text, openmetrics, "tw_user_followers") == {
        (("username", username[u]), ("verified", "true" if v else "false")): float(n)
        for u, (n, v) in users.items()
    }
    assert both_formats(text, openmetrics, "tw_hashtag_tweets") == {
        (("tag", tag[t]), ("window", "7d")): float(n) for t, n in tags.items()
    }
    per_tweet = both_formats(text, openmetrics, "tw_platform_likes_per_tweet")
    if stats[3] is None:
        assert per_tweet == {}
    else:
        assert per_tweet == {(("window", "7d"),): stats[3]}
    assert both_formats(text, openmetrics, "tw_platform_likes") == {(("window", "7d"),): stats[2]}


# ------------------------------------------------------------------ end to end


@dataclass(frozen=True)
class Expected:
    users: dict[Labels, float]
    tags: dict[Labels, float]
    likes: float
    likes_per_tweet: float
    tweets: float


async def insert_hostile_rows(dsn: str) -> Expected:
    """Every hostile text as a user name and a tag, with extreme counts; returns what the
    exporter must export, read back from the database (so it is the DB's text, exactly)."""
    conn = await asyncpg.connect(dsn)
    try:
        followers = [BIGINT_MAX, BIGINT_MIN, 0, -1, 9 * 10**18]
        await conn.executemany(
            "INSERT INTO tw_users (id, username, follower_count, verified) VALUES ($1, $2, $3, $4)",
            [
                (i + 1, text, followers[i % len(followers)], i % 3 == 0)
                for i, text in enumerate(HOSTILE_TEXT)
            ],
        )
        await conn.execute(
            "INSERT INTO tw_users (id, username, follower_count) VALUES (1000, 'null-count', NULL)"
        )
        # Tweets in the window with extreme and NULL like counts; one old tweet outside it.
        likes = [INT_MAX, INT_MIN, None, 0, INT_MAX]
        await conn.executemany(
            "INSERT INTO tw_tweets (id, user_id, like_count, created_at) "
            "VALUES ($1, $2, $3, now() - interval '1 hour')",
            [(i + 1, (i % len(HOSTILE_TEXT)) + 1, like) for i, like in enumerate(likes)],
        )
        await conn.execute(
            "INSERT INTO tw_tweets (id, user_id, like_count, created_at) "
            "VALUES (100, 1000, 5, now() - interval '30 days')"
        )
        # Tag i is carried by (i % 5) + 1 of the recent tweets; 'stale' only by the old one.
        await conn.executemany(
            "INSERT INTO tw_hashtags (id, tag) VALUES ($1, $2)",
            [(i + 1, text) for i, text in enumerate(HOSTILE_TEXT)] + [(1000, "stale")],
        )
        await conn.executemany(
            "INSERT INTO tw_tweet_hashtags (tweet_id, hashtag_id) VALUES ($1, $2)",
            [(tweet, i + 1) for i in range(len(HOSTILE_TEXT)) for tweet in range(1, i % 5 + 2)]
            + [(100, 1000)],
        )
        user_rows = await conn.fetch(
            "SELECT username, follower_count, verified FROM tw_users "
            "WHERE follower_count IS NOT NULL"
        )
        tag_rows = await conn.fetch(
            "SELECT h.tag, count(*) AS n FROM tw_hashtags h "
            "JOIN tw_tweet_hashtags th ON th.hashtag_id = h.id JOIN tw_tweets t ON t.id = "
            "th.tweet_id WHERE t.created_at > now() - interval '7 days' GROUP BY h.tag"
        )
        stats = await conn.fetchrow(
            "SELECT count(*) AS n, sum(like_count)::float8 AS likes, avg(like_count)::float8 AS "
            "avg FROM tw_tweets WHERE created_at > now() - interval '7 days'"
        )
    finally:
        await conn.close()
    assert stats is not None
    assert {r["username"] for r in user_rows} == set(HOSTILE_TEXT)  # stored exactly
    return Expected(
        users={
            (
                ("username", r["username"]),
                ("verified", "true" if r["verified"] else "false"),
            ): float(r["follower_count"])
            for r in user_rows
        },
        tags={(("tag", r["tag"]), ("window", "7d")): float(r["n"]) for r in tag_rows},
        likes=stats["likes"],
        likes_per_tweet=stats["avg"],
        tweets=float(stats["n"]),
    )


def bounded(series: dict[Labels, float]) -> dict[Labels, float]:
    """``series`` with the username or tag label rewritten as the exporter's bound does."""
    if not series:
        return series
    label = next(name for name, _ in next(iter(series)) if name in ("username", "tag"))
    rewritten = exported_as(dict(key)[label] for key in series)
    return {
        tuple((n, rewritten[v] if n == label else v) for n, v in key): value
        for key, value in series.items()
    }


# `promtool check metrics` exits 1 when the exposition does not parse (what hostile label
# values could cause) and 3 when it parses but its linter flags naming/help conventions. The
# exporter's output is lint-clean today, so no lint line is accepted either; should a future
# metric need an exception, list a substring of its lint line here with the reason.
ACCEPTABLE_LINT: Sequence[str] = ()
PROMTOOL_PARSE_ERROR = 1


@pytest.mark.slow
async def test_hostile_rows_give_a_valid_exposition_that_round_trips(
    seeded_db: str, exporter_proc: StartExporter
) -> None:
    expected = await insert_hostile_rows(seeded_db)
    assert len(expected.users) == len(HOSTILE_TEXT)
    proc = exporter_proc(
        "--interval",
        "1",
        "--top-users",
        "1000",
        "--trending-limit",
        "1000",
        env={"TW_EXPORTER_DSN": seeded_db},
    )

    def collected() -> bool:
        text = http_get(proc.url + "/metrics").text
        return (
            value(text, "tw_up") == 1
            and value(text, "tw_platform_tweets", window="7d") == expected.tweets
            and text.count("tw_hashtag_tweets{") == len(expected.tags)
            # Each query runs on its own job: /readyz says when every one of them is served.
            and http_get(proc.url + "/readyz").status == 200
        )

    await asyncio.to_thread(wait_until_sync, collected)
    text_response = await asyncio.to_thread(http_get, proc.url + "/metrics")
    om_response = await asyncio.to_thread(
        http_get,
        proc.url + "/metrics",
        {"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"},
    )
    assert om_response.headers["Content-Type"] == OPENMETRICS_CONTENT_TYPE
    assert om_response.body.rstrip(b"\n").endswith(b"# EOF")
    text, openmetrics = text_response.body, om_response.body

    # One sample per line: no label value broke out of its quotes. (The format's only line
    # separator is "\n"; str.splitlines() would also split at the \r, \x85, \u2028 inside
    # label values, which the format allows raw.)
    for line in text.decode().rstrip("\n").split("\n"):
        assert line.startswith("#") or line.startswith(("tw_", "process_", "python_")), line

    # Exact round trip of every user name and tag, in both formats (up to the label bound).
    assert both_formats(text, openmetrics, "tw_user_followers") == bounded(expected.users)
    assert both_formats(text, openmetrics, "tw_hashtag_tweets") == bounded(expected.tags)
    assert both_formats(text, openmetrics, "tw_platform_likes") == {
        (("window", "7d"),): expected.likes
    }
    per_tweet = both_formats(text, openmetrics, "tw_platform_likes_per_tweet")
    assert math.isclose(per_tweet[(("window", "7d"),)], expected.likes_per_tweet)
    assert both_formats(text, openmetrics, "tw_up") == {(): 1.0}

    # promtool parses it as Prometheus would, and finds nothing wrong with it.
    checked = promtool_check(text)
    output = checked.stdout + checked.stderr
    assert checked.returncode != PROMTOOL_PARSE_ERROR, f"promtool cannot parse it: {output}"
    lint = [
        line
        for line in output.splitlines()
        if line.strip() and not any(ok in line for ok in ACCEPTABLE_LINT)
    ]
    assert not lint, f"promtool lint problems:\n{output}"
    assert checked.returncode == 0 or not lint
    assert proc.stop() == 0
