"""The shipped dashboard's rows and panels: what each shows and where its colours turn.

Queries name metrics only through the catalogue, and thresholds come from ``params.DEFAULTS``,
so a panel turns red where the matching alert fires; ``grafana.dashboard_json`` turns the rows
into Grafana's JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from exporter.collectors.base import MetricSpec
from exporter.collectors.platform_stats import (
    PLATFORM_ACTIVE_USERS,
    PLATFORM_LIKES,
    PLATFORM_LIKES_PER_TWEET,
    PLATFORM_TWEETS,
)
from exporter.collectors.top_users import USER_FOLLOWERS
from exporter.collectors.trending_hashtags import HASHTAG_TWEETS
from exporter.db.failures import FAILURE_REASONS
from exporter.expose.health import (
    BUILD_INFO,
    CLOCK_STEPS,
    CYCLE_DURATION,
    CYCLES_SKIPPED,
    DSN_RELOAD_FAILURES,
    DSN_RELOADS,
    INTERVAL,
    LABEL_VALUES_TRUNCATED,
    LEADER,
    QUERY_DURATION,
    QUERY_ERRORS,
    QUERY_INTERVAL,
    QUERY_LAST_SUCCESS,
    QUERY_RUN,
    QUERY_WAIT,
    RELOAD_SUCCESS_TIMESTAMP,
    RELOAD_SUCCESSFUL,
    UP,
)
from exporter.monitoring.grafana import RATE, Panel, Row, Target, dashboard_json, sel
from exporter.monitoring.params import DEFAULTS, PARAMS_BY_KEY, format_value
from exporter.monitoring.promql import (
    FOLLOWERS,
    HASHTAGS,
    QUERY,
    REASON,
    TAG,
    USERNAME,
    WINDOW,
    bucket,
    label,
    per_row,
    reason_list,
)

DASHBOARD_UID = "tw-exporter"

_STAT_OPTIONS: Mapping[str, Any] = {
    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
    "graphMode": "area",
    "colorMode": "value",
    "justifyMode": "auto",
    "textMode": "auto",
    "orientation": "auto",
    "wideLayout": True,
    "showPercentChange": False,
}
_STALE_AFTER = float(DEFAULTS["staleIntervals"])


def _state_stat(
    title: str,
    description: str,
    expr: str,
    *,
    off: tuple[str, str] = ("DOWN", "red"),
    on: tuple[str, str] = ("UP", "green"),
) -> Panel:
    """A small stat panel showing a per-instance 0/1 value as two named states, each
    ``(text, colour)``: DOWN/UP by default, FOLLOWER/LEADER, FAILED/OK."""
    states = {
        str(value): {"text": text, "color": color, "index": value}
        for value, (text, color) in enumerate((off, on))
    }
    return Panel(
        title=title,
        kind="stat",
        description=description,
        targets=(Target(expr, "{{instance}}"),),
        width=6,
        height=4,
        steps=((off[1], None), (on[1], 1.0)),
        mappings=({"type": "value", "options": states},),
        options={**_STAT_OPTIONS, "graphMode": "none", "colorMode": "background"},
    )


def _fact_stat(
    title: str,
    description: str,
    *targets: Target,
    unit: str = "short",
    text_mode: str = "auto",
) -> Panel:
    """A small uncoloured stat panel without a sparkline, one value per instance: facts about
    each exporter (its version, interval, reloads) to read, not values to judge."""
    return Panel(
        title=title,
        kind="stat",
        description=description,
        targets=targets,
        width=6,
        height=4,
        unit=unit,
        options={**_STAT_OPTIONS, "graphMode": "none", "colorMode": "none", "textMode": text_mode},
    )


def _bars(title: str, description: str, expr: str) -> Panel:
    """Per-query counts of events that should not happen (skipped runs, shortened values) as
    bars, orange from one event on."""
    return Panel(
        title=title,
        kind="timeseries",
        description=description,
        targets=(Target(expr, f"{{{{{QUERY}}}}}"),),
        width=12,
        height=8,
        min=0,
        steps=(("green", None), ("orange", 1.0)),
        custom={"drawStyle": "bars", "fillOpacity": 80},
    )


def trend(
    title: str,
    description: str,
    expr: str,
    labels: Sequence[str],
    *,
    width: int,
    height: int = 10,
    legend: str = "",
    unit: str = "short",
) -> Panel:
    """A business metric over time, one line per row (``labels``) whichever replica exports it:
    the shipped trends and every custom metric's panel (``custom``)."""
    legend = legend or " ".join(f"{{{{{label}}}}}" for label in labels)
    return Panel(
        title=title,
        kind="timeseries",
        description=description,
        targets=(Target(per_row(expr, labels), legend),),
        width=width,
        height=height,
        unit=unit,
    )


def _stat(
    title: str, spec: MetricSpec, description: str, floor_key: str | None, decimals: int = 0
) -> Panel:
    """A platform-activity number per stats window, red below the alert's floor when one
    (``floor_key``, a parameter) applies."""
    steps: tuple[tuple[str, float | None], ...] = (("green", None),)
    if floor_key is not None:
        steps = (("red", None), ("green", float(DEFAULTS[floor_key])))
    return Panel(
        title=title,
        kind="stat",
        description=description,
        targets=(Target(per_row(sel(spec), ["window"]), "last {{window}}"),),
        width=6,
        height=5,
        decimals=decimals,
        steps=steps,
        options=_STAT_OPTIONS,
    )


ROWS: tuple[Row, ...] = (
    Row(
        "Top users",
        (
            Panel(
                title="Top users: followers now",
                kind="bargauge",
                description=(
                    f"Current followers of each exported top user ({FOLLOWERS}, the top N set "
                    "by --top-users). Bars turn purple at the follower milestone of the "
                    "TwUserFollowersMilestone alert."
                ),
                targets=(
                    Target(
                        f"sort_desc({per_row(sel(USER_FOLLOWERS), [USERNAME])})",
                        f"{{{{{USERNAME}}}}}",
                        instant=True,
                    ),
                ),
                width=8,
                height=10,
                steps=(("blue", None), ("purple", float(DEFAULTS["followersMilestone"]))),
                min=0,
                options={
                    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "displayMode": "gradient",
                    "orientation": "horizontal",
                    "showUnfilled": True,
                    "valueMode": "color",
                    "namePlacement": "auto",
                    "sizing": "auto",
                    "minVizHeight": 16,
                    "minVizWidth": 8,
                    "maxVizHeight": 300,
                },
            ),
            trend(
                "Follower trends",
                f"Followers of each top user over time ({FOLLOWERS}). A line ends when its user "
                "leaves the top N.",
                sel(USER_FOLLOWERS),
                [USERNAME],
                width=10,
            ),
            Panel(
                title="Follower change over 1h",
                kind="timeseries",
                description=(
                    "Change of each top user's followers over the trailing hour "
                    f"(delta of {FOLLOWERS}); a sharp negative dip is what "
                    "TwUserFollowersDrop alerts on."
                ),
                targets=(
                    Target(
                        per_row(f"delta({sel(USER_FOLLOWERS)}[1h])", [USERNAME]),
                        f"{{{{{USERNAME}}}}}",
                    ),
                ),
                width=6,
                height=10,
                steps=(("red", None), ("green", 0.0)),
                custom={"thresholdsStyle": {"mode": "line"}},
            ),
        ),
    ),
    Row(
        "Trending hashtags",
        (
            Panel(
                title="Trending hashtags",
                kind="table",
                description=(
                    f"The top K hashtags by tweets within the trending window ({HASHTAGS}; K "
                    "set by --trending-limit, window by --trending-days)."
                ),
                targets=(
                    Target(
                        f"sort_desc({per_row(sel(HASHTAG_TWEETS), [TAG, WINDOW])})",
                        instant=True,
                        table=True,
                    ),
                ),
                width=8,
                height=10,
                options={
                    "showHeader": True,
                    "cellHeight": "sm",
                    "footer": {"show": False, "reducer": ["sum"], "fields": ""},
                    "sortBy": [{"displayName": "Tweets", "desc": True}],
                },
                transformations=(
                    {
                        "id": "organize",
                        "options": {
                            "excludeByName": {"Time": True},
                            "indexByName": {TAG: 0, WINDOW: 1, "Value": 2},
                            "renameByName": {
                                TAG: "Hashtag",
                                WINDOW: "Window",
                                "Value": "Tweets",
                            },
                        },
                    },
                ),
                steps=(("green", None), ("orange", float(DEFAULTS["hashtagTweets"]))),
            ),
            trend(
                "Hashtag tweets over time",
                f"Tweets per trending hashtag within the trailing window ({HASHTAGS}); a "
                "steep rise is what TwHashtagSurge alerts on.",
                sel(HASHTAG_TWEETS),
                [TAG],
                width=16,
                legend=f"#{{{{{TAG}}}}}",
            ),
        ),
    ),
    Row(
        "Platform activity",
        (
            _stat(
                "Tweets",
                PLATFORM_TWEETS,
                f"Tweets created within the stats window ({PLATFORM_TWEETS.name}, window set "
                "by --stats-days). Red below the TwPlatformTweetsLow floor.",
                "platformTweetsMin",
            ),
            _stat(
                "Active users",
                PLATFORM_ACTIVE_USERS,
                "Distinct users who tweeted within the stats window "
                f"({PLATFORM_ACTIVE_USERS.name}). Red below the TwPlatformActiveUsersLow floor.",
                "platformActiveUsersMin",
            ),
            _stat(
                "Likes",
                PLATFORM_LIKES,
                "Sum of the like counts of tweets created within the stats window "
                f"({PLATFORM_LIKES.name}).",
                None,
            ),
            _stat(
                "Likes per tweet",
                PLATFORM_LIKES_PER_TWEET,
                "Average like count of tweets created within the stats window "
                f"({PLATFORM_LIKES_PER_TWEET.name}); empty when the window has no tweet with "
                "a known like count.",
                None,
                decimals=2,
            ),
        ),
    ),
    Row(
        "Exporter health",
        (
            _state_stat(
                "Database reachable",
                f"{UP.name} per exporter: UP when PostgreSQL answered the latest attempt of "
                "at least one query, DOWN when it answered none (TwExporterDatabaseDown).",
                f"min by (instance) ({sel(UP)})",
            ),
            _state_stat(
                "Scrape target up",
                "Prometheus' own up metric for the exporter targets: DOWN when the "
                "exporter cannot be scraped (TwExporterTargetDown).",
                f"min by (instance) ({sel('up')})",
            ),
            _fact_stat(
                "Exporter version",
                f"The tw-exporter version each instance runs ({BUILD_INFO.name}).",
                Target(
                    f"max by (instance, {label(BUILD_INFO, 'version')}) ({sel(BUILD_INFO)})",
                    "{{instance}}: {{version}}",
                    instant=True,
                ),
                text_mode="name",
            ),
            _fact_stat(
                "Collection interval",
                f"Configured collection interval ({INTERVAL.name}, --interval): how often "
                "business values refresh. Keep Prometheus' scrape interval at or below it.",
                Target(f"max by (instance) ({sel(INTERVAL)})", "{{instance}}"),
                unit="s",
            ),
            _state_stat(
                "HA role",
                f"{LEADER.name} per exporter: LEADER runs the queries (any exporter "
                "without --ha), FOLLOWER waits for the HA lock and serves health metrics "
                "only. With --ha exactly one replica should lead (TwExporterNoLeader).",
                f"max by (instance) ({sel(LEADER)})",
                off=("FOLLOWER", "blue"),
                on=("LEADER", "green"),
            ),
            _state_stat(
                "Last configuration reload",
                f"{RELOAD_SUCCESSFUL.name}: FAILED when the last reload (SIGHUP or POST "
                "/-/reload) found an invalid queries file or web config and kept the old "
                "ones running; OK otherwise.",
                f"min by (instance) ({sel(RELOAD_SUCCESSFUL)})",
                off=("FAILED", "red"),
                on=("OK", "green"),
            ),
            _fact_stat(
                "Configuration loaded",
                "Time since each instance last loaded its configuration successfully "
                f"(time() - {RELOAD_SUCCESS_TIMESTAMP.name}; the start counts).",
                Target(
                    f"time() - max by (instance) ({sel(RELOAD_SUCCESS_TIMESTAMP)})",
                    "{{instance}}",
                ),
                unit="s",
            ),
            _fact_stat(
                "DSN file re-reads, last hour",
                f"New DSNs taken from --dsn-file ({DSN_RELOADS.name}: a rotated Secret, "
                f"SIGHUP, a rejected password) and failed re-reads "
                f"({DSN_RELOAD_FAILURES.name}: the previous DSN stays in use) per instance.",
                Target(
                    f"sum by (instance) (increase({sel(DSN_RELOADS)}[1h]))",
                    "{{instance}} new DSN",
                ),
                Target(
                    f"sum by (instance) (increase({sel(DSN_RELOAD_FAILURES)}[1h]))",
                    "{{instance}} failed",
                ),
                unit="none",
            ),
            Panel(
                title="Data age per query, in its intervals",
                kind="timeseries",
                description=(
                    f"Time since each query's last success (time() - "
                    f"{QUERY_LAST_SUCCESS.name}) divided by its own interval "
                    f"({QUERY_INTERVAL.name}), so a query run every 5 minutes and one run "
                    "every 15 seconds read alike; on any replica: with --ha the freshest, so a "
                    "takeover does not show as aging data. The red line is "
                    f"{format_value(PARAMS_BY_KEY['staleIntervals'], DEFAULTS['staleIntervals'])}"
                    " intervals, where TwExporterQueryStale starts counting."
                ),
                targets=(
                    Target(
                        f"min by ({QUERY}) ((time() - ({sel(QUERY_LAST_SUCCESS)} > 0)) "
                        f"/ on (job, instance, query) {sel(QUERY_INTERVAL)})",
                        f"{{{{{QUERY}}}}}",
                    ),
                ),
                width=12,
                height=8,
                unit="none",
                min=0,
                steps=(("green", None), ("red", _STALE_AFTER)),
                custom={"thresholdsStyle": {"mode": "line"}},
            ),
            Panel(
                title="Query duration quantiles",
                kind="timeseries",
                description=(
                    "p50, p90 and p99 of each business query's wall time (histogram "
                    f"{QUERY_DURATION.name}), including waiting for a pooled connection."
                ),
                targets=tuple(
                    Target(
                        f"histogram_quantile({q}, sum by ({label(QUERY_DURATION, 'query')}, le) "
                        f"(rate({sel(bucket(QUERY_DURATION))}[{RATE}])))",
                        f"p{round(q * 100)} {{{{{QUERY}}}}}",
                    )
                    for q in (0.5, 0.9, 0.99)
                ),
                width=12,
                height=8,
                unit="s",
                min=0,
            ),
            Panel(
                title="Where query time goes: waiting vs running (p90)",
                kind="timeseries",
                description=(
                    "p90 of the time each query waited for a usable server connection "
                    f"({QUERY_WAIT.name}: pool acquire plus the transaction's first round "
                    "trip, where PgBouncer queues a client) and of the time its statement ran "
                    f"({QUERY_RUN.name}). A high wait with a normal run is a saturated pool or "
                    "pooler, not a slow query."
                ),
                targets=tuple(
                    Target(
                        f"histogram_quantile(0.9, sum by ({label(spec, 'query')}, le) "
                        f"(rate({sel(bucket(spec))}[{RATE}])))",
                        f"{phase} {{{{{QUERY}}}}}",
                    )
                    for phase, spec in (("wait", QUERY_WAIT), ("run", QUERY_RUN))
                ),
                width=12,
                height=8,
                unit="s",
                min=0,
            ),
            Panel(
                title="Query errors by reason",
                kind="timeseries",
                description=(
                    f"Failed query runs per second by query and reason ({QUERY_ERRORS.name}): "
                    f"{reason_list(FAILURE_REASONS).replace('`', '')} "
                    "(TwExporterQueryErrors, TwExporterQueryTimeouts)."
                ),
                targets=(
                    Target(
                        f"sum by ({label(QUERY_ERRORS, 'query')}, {REASON}) "
                        f"(rate({sel(QUERY_ERRORS)}[{RATE}]))",
                        f"{{{{{QUERY}}}}} {{{{{REASON}}}}}",
                    ),
                ),
                width=12,
                height=8,
                unit="cps",
                min=0,
                steps=(("green", None), ("red", 0.001)),
            ),
            Panel(
                title="Run duration / interval per query",
                kind="timeseries",
                description=(
                    f"Wall time of each query's last run ({CYCLE_DURATION.name}) as a fraction "
                    f"of its own interval ({QUERY_INTERVAL.name}); above 1 the next run is "
                    "skipped (TwExporterCycleSlow fires above cycleDurationRatio)."
                ),
                targets=(
                    Target(
                        f"max by ({QUERY}) ({sel(CYCLE_DURATION)} / on (job, instance, query) "
                        f"{sel(QUERY_INTERVAL)})",
                        f"{{{{{QUERY}}}}}",
                    ),
                ),
                width=12,
                height=8,
                unit="percentunit",
                min=0,
            ),
            _bars(
                "Skipped cycles",
                "Scheduled query runs skipped because the query's previous run was still "
                f"running (increase of {CYCLES_SKIPPED.name}; TwExporterCyclesSkipped).",
                f"sum by ({QUERY}) (increase({sel(CYCLES_SKIPPED)}[{RATE}]))",
            ),
            _bars(
                "Shortened label values",
                "Usernames and tags longer than --max-label-length bytes, exported as a "
                "prefix, '…' and a hash of the whole value (increase of "
                f"{LABEL_VALUES_TRUNCATED.name} per query; each shortened value counts "
                "once per run of its query). See docs/label-values.md.",
                f"sum by ({label(LABEL_VALUES_TRUNCATED, 'query')}) "
                f"(increase({sel(LABEL_VALUES_TRUNCATED)}[{RATE}]))",
            ),
            Panel(
                title="Wall-clock steps",
                kind="timeseries",
                description=(
                    "Steps of the wall clock noticed by each exporter (increase of "
                    f"{CLOCK_STEPS.name}): an NTP step, a VM restored from a snapshot. Every "
                    "query's schedule moves with the step, so none is delayed; frequent steps "
                    "point at the host's time keeping. See docs/database-faults.md."
                ),
                targets=(
                    Target(
                        f"sum by (instance) (increase({sel(CLOCK_STEPS)}[{RATE}]))",
                        "{{instance}}",
                    ),
                ),
                width=12,
                height=8,
                min=0,
                steps=(("green", None), ("orange", 1.0)),
                custom={"drawStyle": "bars", "fillOpacity": 80},
            ),
        ),
    ),
)


DASHBOARD_DESCRIPTION = (
    "Business metrics of the Twitter-like platform (top users, trending hashtags, "
    "activity) and the health of tw-exporter. Generated by exporter/monitoring."
)


def build_dashboard(
    rows: Sequence[Row] | None = None,
    *,
    uid: str = DASHBOARD_UID,
    title: str = "tw-exporter",
    description: str = DASHBOARD_DESCRIPTION,
) -> dict[str, Any]:
    """The dashboard JSON; other rows, uid and title make a companion dashboard with the same
    variables (``exporter.monitoring.custom`` builds one for a queries file)."""
    return dashboard_json(
        ROWS if rows is None else rows, uid=uid, title=title, description=description
    )
