"""Hostile user names and tags against the label-value bound, end to end (issue #15).

Real PostgreSQL (with the recommended indexes) holding a 100 kB trending tag, a 50 kB top user,
two long tags that differ only after the cut, emoji and combining characters across the cut, a
short tag crafted to equal a shortened one, and empty names (``tests/hostile_labels.py``); the
real exporter process; ``promtool``; and a real Prometheus whose scrape config sets
``label_value_length_limit`` to the documented default. The same Prometheus scrapes a second
exporter whose limit is above Prometheus' (what every release before the bound did, with no limit
at all) and reports ``up == 0`` for it: one long tag blacks out the whole target.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.config.settings import DEFAULT_MAX_LABEL_LENGTH, MAX_MAX_LABEL_LENGTH
from exporter.expose.labels import EMPTY
from tests import hostile_labels as hostile
from tests.conftest import MakeDb, StartExporter, wait_until_sync
from tests.helpers import (
    both_formats,
    by_label,
    http_get,
    poll,
    prometheus_binary,
    promtool_check,
    start_prometheus,
    value,
)

pytestmark = pytest.mark.slow

LIMIT = DEFAULT_MAX_LABEL_LENGTH
ARGS = ("--interval", "1", "--top-users", "20", "--trending-limit", "20")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "label-values.md"
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"}


# What each hostile value is exported as at the default limit (256 bytes), written out: a value
# that fits stays as it is; a longer one becomes its longest prefix of at most 241 bytes that
# ends on a whole character (an emoji, an accented letter, a joined family), "…" (3 bytes) and
# the first 12 hex digits of the SHA-256 of the whole value (docs/label-values.md). The big tag
# collides with the crafted tag (which is its first shortened form) and is re-hashed once.
EXPORTED_TAGS = {
    hostile.BIG_TAG: "spam" * 60 + "s…973445d91e15",
    hostile.TWIN_A: "twin-" + "x" * 236 + "…2cff12c6f005",
    hostile.TWIN_B: "twin-" + "x" * 236 + "…90c084e2df54",
    hostile.EMOJI_TAG: "🔥" * 60 + "…592515b7c413",
    hostile.COMBINING_TAG: "e\u0301" * 80 + "…4dc4b777f3c1",
    hostile.CRAFTED_TAG: hostile.CRAFTED_TAG,
    "": "(empty)",
    "python": "python",
    "grafana": "grafana",
}
EXPORTED_USERS = {
    hostile.BIG_USER: "whale" * 48 + "w…4ffb7ef3cfef",
    hostile.ZWJ_USER: "👩\u200d👩\u200d👧" * 13 + "…ec376f259f9d",
    "🔥" * 100: "🔥" * 60 + "…e6df8fd41eaa",
    "": "(empty)",
    "alice": "alice",
    "bob": "bob",
}
# The first shortened form's hash of each long tag (no re-hash), as the documented SQL takes it.
FIRST_HASHES = {
    hostile.BIG_TAG: "338b4df77133",
    hostile.TWIN_A: "2cff12c6f005",
    hostile.TWIN_B: "90c084e2df54",
    hostile.EMOJI_TAG: "592515b7c413",
    hostile.COMBINING_TAG: "4dc4b777f3c1",
}
EXPECTED_TAGS = {EXPORTED_TAGS[tag]: float(n) for tag, n in hostile.TAGS.items()}
EXPECTED_USERS = {EXPORTED_USERS[name]: float(f) for name, (f, _) in hostile.USERS.items()}


def test_the_written_out_values_fit_the_limit() -> None:
    """The literals above are what the rule says (the bound, the marker, the hash's length)."""
    assert LIMIT == 256, "the literals are written for the default limit"
    for original, exported in (*EXPORTED_TAGS.items(), *EXPORTED_USERS.items()):
        assert len(exported.encode()) <= LIMIT
        if len(original.encode()) > LIMIT:
            prefix, marker, digits = exported.rpartition("…")
            assert marker and original.startswith(prefix) and len(digits) == 12
            # the longest whole-character prefix: a character here is at most 18 bytes
            assert LIMIT - 15 - 18 < len(prefix.encode()) <= LIMIT - 15


def label_values(families: Any) -> Iterator[str]:
    for family in families:
        for sample in family.samples:
            yield from sample.labels.values()


async def test_hostile_rows_are_exported_within_the_limit_as_distinct_series(
    make_db: MakeDb, exporter_proc: StartExporter
) -> None:
    dsn = await make_db()
    await hostile.load_hostile_labels(dsn)
    proc = exporter_proc(*ARGS, env={"TW_EXPORTER_DSN": dsn})

    def two_cycles_done() -> bool:
        # Each query runs on its own schedule (#12): wait for two runs of both of them.
        text = http_get(proc.url + "/metrics").text
        users = value(text, "tw_exporter_label_values_truncated_total", query="top_users")
        tags = value(text, "tw_exporter_label_values_truncated_total", query="trending_hashtags")
        return (
            users is not None
            and users >= 2 * len(hostile.LONG_USERS)
            and tags is not None
            and tags >= 2 * len(hostile.LONG_TAGS)
        )

    await asyncio.to_thread(wait_until_sync, two_cycles_done)
    text = (await asyncio.to_thread(http_get, proc.url + "/metrics")).body
    openmetrics = (await asyncio.to_thread(http_get, proc.url + "/metrics", OPENMETRICS)).body

    # Every label value of every series, in both formats, is valid UTF-8 within the limit.
    for values in (
        label_values(parse_text(text.decode("utf-8"))),
        label_values(parse_openmetrics(openmetrics.decode("utf-8"))),  # type: ignore[no-untyped-call]
    ):
        longest = max(len(v.encode()) for v in values)
        assert 0 < longest <= LIMIT

    # Each tag and user is one series with its own count: the twins stay two, the crafted tag
    # keeps its text, the big tag gets a re-hashed name, empty names get the placeholder.
    tags = both_formats(text, openmetrics, "tw_hashtag_tweets")
    assert tags == {(("tag", t), ("window", "7d")): n for t, n in EXPECTED_TAGS.items()}
    assert tags[(("tag", EXPORTED_TAGS[hostile.TWIN_A]), ("window", "7d"))] == 30.0
    assert tags[(("tag", EXPORTED_TAGS[hostile.TWIN_B]), ("window", "7d"))] == 20.0
    assert tags[(("tag", hostile.CRAFTED_TAG), ("window", "7d"))] == 10.0
    assert tags[(("tag", EMPTY), ("window", "7d"))] == 8.0
    users = both_formats(text, openmetrics, "tw_user_followers")
    assert {dict(k)["username"]: v for k, v in users.items()} == EXPECTED_USERS
    assert len(users) == len(hostile.USERS)

    # promtool parses the scrape and has nothing to say about it.
    checked = await asyncio.to_thread(promtool_check, text)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")

    # Counted every cycle, logged once per value for the whole run.
    truncated = value(text.decode(), "tw_exporter_label_values_truncated_total", query="top_users")
    assert truncated is not None and truncated % len(hostile.LONG_USERS) == 0
    truncated = value(
        text.decode(), "tw_exporter_label_values_truncated_total", query="trending_hashtags"
    )
    assert truncated is not None and truncated >= 2 * len(hostile.LONG_TAGS)
    assert truncated % len(hostile.LONG_TAGS) == 0
    assert proc.stop() == 0
    logs = proc.logs()
    assert logs.count("query trending_hashtags: tag label value of") == len(hostile.LONG_TAGS)
    assert logs.count("query top_users: username label value of") == len(hostile.LONG_USERS)
    assert logs.count("re-hashed 1x") == 1
    assert logs.count("empty tag label value exported as '(empty)'") == 1
    assert hostile.TWIN_A not in logs and hostile.BIG_TAG[:1000] not in logs


async def test_the_documented_sql_finds_the_original_of_a_shortened_value(make_db: MakeDb) -> None:
    dsn = await make_db()
    await hostile.load_hostile_labels(dsn)
    (sql,) = re.findall(r"```sql\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    documented = FIRST_HASHES[hostile.BIG_TAG]
    assert documented in sql  # the example's hash is the real one
    conn = await asyncpg.connect(dsn)
    try:
        for tag in hostile.LONG_TAGS:
            found = await conn.fetch(sql.replace(documented, FIRST_HASHES[tag]))
            assert [row["tag"] for row in found] == [tag]
    finally:
        await conn.close()


async def test_prometheus_with_the_documented_label_limit_keeps_up_and_every_series(
    make_db: MakeDb, exporter_proc: StartExporter, tmp_path: Path
) -> None:
    binary = prometheus_binary()
    dsn = await make_db()
    await hostile.load_hostile_labels(dsn)
    bounded = exporter_proc(*ARGS, env={"TW_EXPORTER_DSN": dsn})
    # A limit above Prometheus' is what every release did before the bound (it had none).
    unbounded = exporter_proc(
        *ARGS, "--max-label-length", str(MAX_MAX_LABEL_LENGTH), env={"TW_EXPORTER_DSN": dsn}
    )
    jobs = {"bounded": bounded.url, "unbounded": unbounded.url}
    for url in jobs.values():  # both hold the hostile rows before Prometheus' first scrape
        await asyncio.to_thread(
            wait_until_sync, lambda url=url: "tw_hashtag_tweets{" in http_get(url + "/metrics").text
        )
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": job,
                "label_value_length_limit": LIMIT,
                "static_configs": [{"targets": [urllib.parse.urlsplit(url).netloc]}],
            }
            for job, url in jobs.items()
        ],
    }
    prometheus = await asyncio.to_thread(start_prometheus, binary, tmp_path, config)
    try:

        def stored(job: str, name: str, label: str) -> dict[str, float]:
            return by_label(prometheus.query(f'{name}{{job="{job}"}}'), label)

        def up(job: str) -> dict[str, float]:
            return by_label(prometheus.query(f'up{{job="{job}"}}'), "job")

        def bounded_complete() -> bool:
            return (
                up("bounded") == {"bounded": 1.0}
                and stored("bounded", "tw_hashtag_tweets", "tag") == EXPECTED_TAGS
                and stored("bounded", "tw_user_followers", "username") == EXPECTED_USERS
            )

        await poll(bounded_complete, "every bounded series stored with up == 1")
        # Several scrapes of the unbounded exporter, every one rejected.
        await poll(
            lambda: prometheus.query('count_over_time(up{job="unbounded"}[1m]) >= 3'),
            "three scrapes of the unbounded exporter",
        )
        assert prometheus.query('max_over_time(up{job="unbounded"}[1m])')[0]["value"][1] == "0"
        assert stored("unbounded", "tw_hashtag_tweets", "tag") == {}
        assert stored("unbounded", "tw_up", "job") == {}  # every metric blacked out
        targets = prometheus.api("targets")["activeTargets"]
        errors = {t["labels"]["job"]: t["lastError"] for t in targets}
        assert errors["bounded"] == ""
        assert "label_value_length_limit exceeded" in errors["unbounded"]
        # Meanwhile the bounded target is still up, scrape after scrape.
        assert up("bounded") == {"bounded": 1.0}
    finally:
        prometheus.stop()
