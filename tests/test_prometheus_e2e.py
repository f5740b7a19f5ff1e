"""End to end: real PostgreSQL -> real tw-exporter -> real Prometheus evaluating the shipped
rules (with lowered thresholds) -> the dashboard's own queries through Prometheus' HTTP API.

Proves that every dashboard panel returns data and that business panels show what the database
holds, that a follower milestone alert fires once a user crosses it, that tw_up drops to 0 and
TwExporterDatabaseDown goes off when the database stops accepting connections and when it stops
answering altogether (frozen), that a live scrape passes ``promtool check metrics``, and that an
HA takeover between two replicas neither restarts a business alert's ``for:`` nor splits a
dashboard panel's series.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from exporter import __version__
from exporter.monitoring.grafana import expand_variables, iter_panels
from exporter.monitoring.params import DEFAULT_JOB, ParamValue
from exporter.monitoring.paths import DASHBOARD_PATH, ROOT
from exporter.monitoring.render import render_rules
from exporter.ops import dataset
from exporter.ops.embedded import EmbeddedPostgres
from tests import helpers
from tests.conftest import MakeDb, PgServer, StartExporter
from tests.helpers import Prometheus, by_label, http_get, poll

pytestmark = pytest.mark.slow

JOB = DEFAULT_JOB
RATE_INTERVAL = "5s"
# Lowered so a handful of rows can cross them; every alert fires as soon as its expression holds.
THRESHOLDS: dict[str, ParamValue] = {"followersMilestone": 1000}

# The known dataset (created_at relative to now(); the exporter's windows are 7 days).
USERS = {  # username: (followers, verified)
    "alice": (900, True),
    "bob": (5000, False),
    "carol": (300, False),
    "eve": (50, False),
    "nobody": (None, False),  # NULL follower count: never exported
}
TWEETS = [  # (author, like_count, age in days, hashtags)
    ("alice", 10, 1, ["python", "grafana"]),
    ("alice", 20, 2, ["python"]),
    ("bob", 5, 3, ["python"]),
    ("bob", None, 4, []),
    ("bob", 7, 5, []),
    ("carol", 100, 30, ["python"]),  # outside every 7-day window
]
FOLLOWERS = {name: float(f) for name, (f, _) in USERS.items() if f is not None}
HASHTAGS = {"python": 3.0, "grafana": 1.0}
PLATFORM = {"Tweets": 5.0, "Active users": 2.0, "Likes": 42.0, "Likes per tweet": 10.5}
# One metric per built-in query: a takeover is complete once the new leader has all three.
BUSINESS = ("tw_platform_tweets", "tw_user_followers", "tw_hashtag_tweets")
# Rule evaluations (1 s apart) watched after a takeover completes, well within the for: 5s
# an alert the takeover had resolved would spend pending again.
SETTLE = 2.0


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    binary = helpers.prometheus_binary()
    started: list[Prometheus] = []

    def start(
        target: str,
        *more_targets: str,
        thresholds: dict[str, ParamValue] = THRESHOLDS,
        for_override: str = "0s",
    ) -> Prometheus:
        (tmp_path / "rules.yml").write_text(
            render_rules(thresholds, for_override=for_override), encoding="utf-8"
        )
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": ["rules.yml"],
            "scrape_configs": [
                {"job_name": JOB, "static_configs": [{"targets": [target, *more_targets]}]}
            ],
        }
        prometheus = helpers.start_prometheus(binary, tmp_path, config)
        started.append(prometheus)
        return prometheus

    yield start
    for prometheus in started:
        prometheus.stop()


async def load_known_dataset(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await dataset.create_schema(conn)
        ids = {}
        for name, (followers, verified) in USERS.items():
            ids[name] = await conn.fetchval(
                "INSERT INTO tw_users (username, follower_count, verified) "
                "VALUES ($1, $2, $3) RETURNING id",
                name,
                followers,
                verified,
            )
        tags = {}
        for author, likes, age_days, hashtags in TWEETS:
            tweet = await conn.fetchval(
                "INSERT INTO tw_tweets (user_id, like_count, created_at) "
                "VALUES ($1, $2, now() - make_interval(days => $3)) RETURNING id",
                ids[author],
                likes,
                age_days,
            )
            for tag in hashtags:
                if tag not in tags:
                    tags[tag] = await conn.fetchval(
                        "INSERT INTO tw_hashtags (tag) VALUES ($1) RETURNING id", tag
                    )
                await conn.execute(
                    "INSERT INTO tw_tweet_hashtags (tweet_id, hashtag_id) VALUES ($1, $2)",
                    tweet,
                    tags[tag],
                )
    finally:
        await conn.close()


async def test_dashboard_and_alerts_against_real_prometheus(
    pg_server: PgServer,
    make_db: MakeDb,
    exporter_proc: StartExporter,
    start_prometheus: Callable[[str], Prometheus],
    tmp_path: Path,
) -> None:
    promtool = helpers.promtool()
    dsn = await make_db()
    await load_known_dataset(dsn)
    # A custom query on its own, longer interval: the health panels must show it too, and its
    # data age is measured in its own intervals.
    queries = tmp_path / "queries.yml"
    queries.write_text(
        "queries:\n  users: {sql: 'SELECT count(*) AS tw_users_rows FROM tw_users', interval: 3,\n"
        "          metrics: {tw_users_rows: {help: Rows in tw_users.}}}\n"
    )
    exporter = exporter_proc("--dsn", dsn, "--interval", "1", "--queries-file", str(queries))
    target = urllib.parse.urlsplit(exporter.url).netloc
    prometheus = start_prometheus(target)

    # ---------------------------------------------------------------- a live scrape lints clean
    scrape = http_get(f"{exporter.url}/metrics")
    assert scrape.status == 200
    lint = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=scrape.body,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert (lint.returncode, lint.stdout + lint.stderr) == (0, b"")

    # ---------------------------------------------------------------- every panel returns data
    variables = {"job": JOB, "instance": target, "__rate_interval": RATE_INTERVAL}
    dashboard = json.loads((ROOT / DASHBOARD_PATH).read_text())
    targets = [
        (panel["title"], t["refId"], t, expand_variables(t["expr"], variables))
        for panel in iter_panels(dashboard)
        for t in panel.get("targets", [])
    ]
    assert len(targets) >= 20

    def run_target(target: dict[str, Any], expr: str) -> list[dict[str, Any]]:
        return prometheus.query(expr) if target["instant"] else prometheus.query_range(expr)

    def all_panels_have_data() -> dict[tuple[str, str], list[dict[str, Any]]] | None:
        results = {(title, ref): run_target(t, expr) for title, ref, t, expr in targets}
        return results if all(results.values()) else None

    try:
        results = await poll(all_panels_have_data, "every dashboard query to return data")
    except AssertionError:
        empty = [key for key, _, t, e in targets if not run_target(t, e)]
        raise AssertionError(f"panels without data: {empty}") from None

    def panel(title: str, label: str) -> dict[str, float]:
        return by_label(results[(title, "A")], label)

    for (title, ref), result in results.items():  # shown with -s, and on failure
        print(f"panel {title!r} {ref}: {len(result)} series, e.g. {result[0]['metric']}")

    # ---------------------------------------------------------------- values match the database
    assert panel("Top users: followers now", "username") == FOLLOWERS
    assert panel("Follower trends", "username") == FOLLOWERS
    assert panel("Trending hashtags", "tag") == HASHTAGS
    assert panel("Hashtag tweets over time", "tag") == HASHTAGS
    for title, expected in PLATFORM.items():
        assert panel(title, "window") == {"7d": expected}, title
    assert panel("Database reachable", "instance") == {target: 1.0}
    assert panel("Scrape target up", "instance") == {target: 1.0}
    assert panel("Exporter version", "version") == {__version__: 1.0}
    assert panel("Collection interval", "instance") == {target: 1.0}
    age = "Data age per query, in its intervals"
    queries_shown = {"top_users", "trending_hashtags", "platform_stats", "users"}
    assert set(panel(age, "query")) == queries_shown
    assert all(intervals < 10 for intervals in panel(age, "query").values())
    assert set(panel("Run duration / interval per query", "query")) == queries_shown
    assert panel("Last configuration reload", "instance") == {target: 1.0}

    # ---------------------------------------------------------------- a threshold alert fires
    assert prometheus.alerts("TwUserFollowersMilestone") == []
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE tw_users SET follower_count = 1500 WHERE username = 'alice'")
    finally:
        await conn.close()

    def milestone_firing() -> list[dict[str, Any]]:
        return [a for a in prometheus.alerts("TwUserFollowersMilestone") if a["state"] == "firing"]

    started = time.monotonic()
    (alert,) = await poll(milestone_firing, "TwUserFollowersMilestone to fire")
    print(f"TwUserFollowersMilestone firing after {time.monotonic() - started:.1f}s: {alert}")
    assert alert["labels"]["username"] == "alice"
    assert alert["labels"]["severity"] == "info"
    assert alert["annotations"]["summary"] == "alice crossed 1000 followers"
    assert float(alert["value"]) == 1500.0
    assert prometheus.alerts("TwExporterDatabaseDown") == []

    # ---------------------------------------------------------------- the database goes away
    database = urllib.parse.urlsplit(dsn).path.lstrip("/")
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            database,
        )
    finally:
        await admin.close()

    started = time.monotonic()
    await poll(
        lambda: by_label(prometheus.query(f'tw_up{{job="{JOB}"}}'), "instance") == {target: 0.0},
        "tw_up to drop to 0 in Prometheus",
    )
    print(f"tw_up == 0 in Prometheus after {time.monotonic() - started:.1f}s")
    (down,) = await poll(
        lambda: [
            a
            for a in prometheus.alerts("TwExporterDatabaseDown")
            if a["state"] in {"pending", "firing"}
        ],
        "TwExporterDatabaseDown to go off",
    )
    print(f"TwExporterDatabaseDown {down['state']} after {time.monotonic() - started:.1f}s")
    assert down["labels"]["instance"] == target
    assert down["labels"]["severity"] == "critical"
    assert float(down["value"]) == 0.0
    errors = prometheus.query(
        f'sum by (reason) (tw_exporter_query_errors_total{{job="{JOB}", reason="connection"}})'
    )
    assert float(errors[0]["value"][1]) >= 1


async def test_database_down_fires_while_the_database_is_frozen(
    frozen_pg: EmbeddedPostgres,
    exporter_proc: StartExporter,
    start_prometheus: Callable[[str], Prometheus],
) -> None:
    """A database that stops answering (SIGSTOP, a private cluster) is 'down' for Prometheus
    too: tw_up drops to 0 and TwExporterDatabaseDown fires (``for`` lowered to 0s)."""
    await load_known_dataset(frozen_pg.dsn)
    exporter = exporter_proc("--dsn", frozen_pg.dsn, "--interval", "1", "--query-timeout", "1")
    target = urllib.parse.urlsplit(exporter.url).netloc
    prometheus = start_prometheus(target)

    def up() -> dict[str, float]:
        return by_label(prometheus.query(f'tw_up{{job="{JOB}"}}'), "instance")

    await poll(lambda: up() == {target: 1.0}, "tw_up to be 1 in Prometheus")
    assert prometheus.alerts("TwExporterDatabaseDown") == []

    frozen_pg.freeze()
    started = time.monotonic()
    try:

        def firing() -> list[dict[str, Any]]:
            alerts = prometheus.alerts("TwExporterDatabaseDown")
            return [a for a in alerts if a["state"] == "firing"]

        (down,) = await poll(firing, "TwExporterDatabaseDown to fire during the freeze")
        print(f"TwExporterDatabaseDown firing {time.monotonic() - started:.1f}s into the freeze")
        assert down["labels"]["instance"] == target
        assert float(down["value"]) == 0.0
        timeouts = prometheus.query(
            f'sum by (query) (tw_exporter_query_errors_total{{job="{JOB}", reason="timeout"}})'
        )
        assert {q: v >= 1 for q, v in by_label(timeouts, "query").items()} == {
            "top_users": True,
            "trending_hashtags": True,
            "platform_stats": True,
        }
    finally:
        frozen_pg.thaw()

    await poll(lambda: up() == {target: 1.0}, "tw_up to be 1 again after the thaw")
    await poll(lambda: not prometheus.alerts("TwExporterDatabaseDown"), "the alert to resolve")


async def test_ha_takeover_keeps_a_firing_business_alert_and_one_series_per_row(
    make_db: MakeDb,
    exporter_proc: StartExporter,
    start_prometheus: Callable[..., Prometheus],
) -> None:
    """Two --ha replicas scraped by one Prometheus; the leader is SIGKILLed. A business alert
    with a for: of five collection intervals, firing before, keeps firing with the same start
    through the takeover, and every business panel still returns one series per user/tag
    (over the whole range, before and after the takeover) with the database's values."""
    dsn = await make_db()
    await load_known_dataset(dsn)
    flags = ("--dsn", dsn, "--ha", "--interval", "1", "--query-timeout", "0.5", "--ha-lease", "3")
    replicas = [exporter_proc(*flags), exporter_proc(*flags)]
    targets = [urllib.parse.urlsplit(r.url).netloc for r in replicas]
    prometheus = start_prometheus(
        *targets,
        # 5 tweets in the window, below this floor: TwPlatformTweetsLow holds all along.
        thresholds={**THRESHOLDS, "platformTweetsMin": 1000, "haBridgeWindow": "15s"},
        for_override="5s",
    )

    def firing() -> list[dict[str, Any]]:
        return [a for a in prometheus.alerts("TwPlatformTweetsLow") if a["state"] == "firing"]

    (before,) = await poll(firing, "TwPlatformTweetsLow to fire", timeout=30)
    assert "instance" not in before["labels"]
    leaders = by_label(prometheus.query(f'tw_exporter_leader{{job="{JOB}"}}'), "instance")
    assert sorted(leaders.values()) == [0.0, 1.0], leaders
    leader_target = next(t for t, v in leaders.items() if v == 1.0)
    follower_target = next(t for t in targets if t != leader_target)
    leader = replicas[targets.index(leader_target)]

    killed = time.time()
    leader.stop(signal.SIGKILL)
    seen = 0
    taken_over: float | None = None

    def taken_over_and_checked() -> bool:
        nonlocal seen, taken_over
        alerts = firing()
        assert len(alerts) == 1, prometheus.alerts("TwPlatformTweetsLow")
        assert alerts[0]["activeAt"] == before["activeAt"], (alerts[0], before)
        seen += 1
        if taken_over is None and all(
            prometheus.query(f'{name}{{instance="{follower_target}"}}') for name in BUSINESS
        ):
            taken_over = time.time()
        # The takeover's gap ends when the follower's series are stored; an alert that the
        # gap resolved would be pending again (for: 5s) at every check in the SETTLE seconds
        # (evaluation intervals) after that, so checking on through them is enough.
        return taken_over is not None and time.time() - taken_over > SETTLE and seen >= 10

    await poll(taken_over_and_checked, "the follower's business series in Prometheus", timeout=30)
    assert seen >= 10  # the alert was checked all through the takeover, not once
    print(f"TwPlatformTweetsLow kept firing since {before['activeAt']} ({seen} checks)")

    variables = {"job": JOB, "instance": ".+", "__rate_interval": RATE_INTERVAL}
    dashboard = json.loads((ROOT / DASHBOARD_PATH).read_text())
    expected = {
        "Top users: followers now": ("username", FOLLOWERS),
        "Follower trends": ("username", FOLLOWERS),
        "Trending hashtags": ("tag", HASHTAGS),
        "Hashtag tweets over time": ("tag", HASHTAGS),
        **{title: ("window", {"7d": value}) for title, value in PLATFORM.items()},
    }
    span = int(time.time() - killed) + 8  # from before the kill to now
    checked = 0
    for panel in iter_panels(dashboard):
        if panel["title"] not in expected or not panel.get("targets"):
            continue
        label, values = expected[panel["title"]]
        expr = expand_variables(panel["targets"][0]["expr"], variables)
        result = prometheus.query_range(expr, seconds=span)
        rows = [item["metric"].get(label, "") for item in result]
        assert sorted(rows) == sorted(values), (panel["title"], rows)
        assert by_label(result, label) == values, panel["title"]
        for item in result:
            times = [float(t) for t, _ in item["values"]]
            assert min(times) < killed < max(times), (panel["title"], item["metric"])
        checked += 1
    assert checked == len(expected)
