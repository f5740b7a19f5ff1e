"""The shipped dashboard's rows and panels: what each shows and where its colours turn.

Queries name metrics only through the catalogue, and thresholds come from ``params.DEFAULTS``,
so a panel turns red where the matching alert fires; ``grafana.dashboard_json`` turns the rows
into Grafana's JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

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
from exporter.monitoring.texts import METRIC_NAMES, fill, load

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
    metric: MetricSpec | str,
    worst: Literal["min", "max"],
    *,
    off: tuple[str, str] = ("DOWN", "red"),
    on: tuple[str, str] = ("UP", "green"),
) -> Panel:
    """A small stat panel showing a per-instance 0/1 gauge as two named states, each
    ``(text, colour)``: DOWN/UP by default, FOLLOWER/LEADER, FAILED/OK. ``worst`` picks the
    value an instance shows when several series (a restart, two jobs) say different things."""
    states = {
        str(value): {"text": text, "color": color, "index": value}
        for value, (text, color) in enumerate((off, on))
    }
    return Panel(
        title=title,
        kind="stat",
        targets=(Target(f"{worst} by (instance) ({sel(metric)})", "{{instance}}"),),
        width=6,
        height=4,
        steps=((off[1], None), (on[1], 1.0)),
        mappings=({"type": "value", "options": states},),
        options={**_STAT_OPTIONS, "graphMode": "none", "colorMode": "background"},
    )


def _fact_stat(
    title: str,
    *targets: Target,
    unit: str = "short",
    text_mode: str = "auto",
) -> Panel:
    """A small uncoloured stat panel without a sparkline, one value per instance: facts about
    each exporter (its version, interval, reloads) to read, not values to judge."""
    return Panel(
        title=title,
        kind="stat",
        targets=targets,
        width=6,
        height=4,
        unit=unit,
        options={**_STAT_OPTIONS, "graphMode": "none", "colorMode": "none", "textMode": text_mode},
    )


def _bars(title: str, expr: str, legend: str = f"{{{{{QUERY}}}}}") -> Panel:
    """Counts of events that should not happen (skipped runs, shortened values per query;
    clock steps per instance) as bars, orange from one event on."""
    return Panel(
        title=title,
        kind="timeseries",
        targets=(Target(expr, legend),),
        width=12,
        height=8,
        min=0,
        steps=(("green", None), ("orange", 1.0)),
        custom={"drawStyle": "bars", "fillOpacity": 80},
    )


def trend(
    title: str,
    expr: str,
    labels: Sequence[str],
    *,
    width: int,
    description: str = "",
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


def _stat(title: str, spec: MetricSpec, floor_key: str | None, decimals: int = 0) -> Panel:
    """A platform-activity number per stats window, red below the alert's floor when one
    (``floor_key``, a parameter) applies."""
    steps: tuple[tuple[str, float | None], ...] = (("green", None),)
    if floor_key is not None:
        steps = (("red", None), ("green", float(DEFAULTS[floor_key])))
    return Panel(
        title=title,
        kind="stat",
        targets=(Target(per_row(sel(spec), ["window"]), "last {{window}}"),),
        width=6,
        height=5,
        decimals=decimals,
        steps=steps,
        options=_STAT_OPTIONS,
    )


_PANELS: tuple[Row, ...] = (
    Row(
        "Top users",
        (
            Panel(
                title="Top users: followers now",
                kind="bargauge",
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
                sel(USER_FOLLOWERS),
                [USERNAME],
                width=10,
            ),
            Panel(
                title="Follower change over 1h",
                kind="timeseries",
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
                "platformTweetsMin",
            ),
            _stat(
                "Active users",
                PLATFORM_ACTIVE_USERS,
                "platformActiveUsersMin",
            ),
            _stat(
                "Likes",
                PLATFORM_LIKES,
                None,
            ),
            _stat(
                "Likes per tweet",
                PLATFORM_LIKES_PER_TWEET,
                None,
                decimals=2,
            ),
        ),
    ),
    Row(
        "Exporter health",
        (
            _state_stat("Database reachable", UP, "min"),
            _state_stat("Scrape target up", "up", "min"),
            _fact_stat(
                "Exporter version",
                Target(
                    f"max by (instance, {label(BUILD_INFO, 'version')}) ({sel(BUILD_INFO)})",
                    "{{instance}}: {{version}}",
                    instant=True,
                ),
                text_mode="name",
            ),
            _fact_stat(
                "Collection interval",
                Target(f"max by (instance) ({sel(INTERVAL)})", "{{instance}}"),
                unit="s",
            ),
            _state_stat("HA role", LEADER, "max", off=("FOLLOWER", "blue"), on=("LEADER", "green")),
            _state_stat(
                "Last configuration reload",
                RELOAD_SUCCESSFUL,
                "min",
                off=("FAILED", "red"),
                on=("OK", "green"),
            ),
            _fact_stat(
                "Configuration loaded",
                Target(
                    f"time() - max by (instance) ({sel(RELOAD_SUCCESS_TIMESTAMP)})",
                    "{{instance}}",
                ),
                unit="s",
            ),
            _fact_stat(
                "DSN file re-reads, last hour",
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
                f"sum by ({QUERY}) (increase({sel(CYCLES_SKIPPED)}[{RATE}]))",
            ),
            _bars(
                "Shortened label values",
                f"sum by ({label(LABEL_VALUES_TRUNCATED, 'query')}) "
                f"(increase({sel(LABEL_VALUES_TRUNCATED)}[{RATE}]))",
            ),
            _bars(
                "Wall-clock steps",
                f"sum by (instance) (increase({sel(CLOCK_STEPS)}[{RATE}]))",
                legend="{{instance}}",
            ),
        ),
    ),
)


# The values, besides the catalogue's metric names, that ``dashboard.toml`` quotes as ``[[name]]``.
TEXT_VALUES: Mapping[str, str] = {
    **METRIC_NAMES,
    "staleIntervals": format_value(PARAMS_BY_KEY["staleIntervals"], DEFAULTS["staleIntervals"]),
    "failureReasons": reason_list(FAILURE_REASONS).replace("`", ""),
}
DESCRIPTIONS_PATH = Path(__file__).with_name("dashboard.toml")


def describe(rows: Sequence[Row], path: Path = DESCRIPTIONS_PATH) -> tuple[Row, ...]:
    """Every panel with its description from ``path``, by title. A panel without one, a
    description without a panel, or two panels of one title is refused: every shipped panel
    says what it shows."""
    texts = load(path)
    titles = [panel.title for row in rows for panel in row.panels]
    if len(set(titles)) != len(titles) or set(titles) != set(texts):
        twice = sorted({title for title in titles if titles.count(title) > 1})
        unmatched = sorted(set(titles) ^ set(texts))
        raise ValueError(
            f"{path.name}: panels and descriptions do not match one to one "
            f"(described or built only once: {unmatched}; titles used twice: {twice})"
        )
    return tuple(
        Row(row.title, tuple(_described(panel, texts[panel.title], path) for panel in row.panels))
        for row in rows
    )


def _described(panel: Panel, text: str, path: Path) -> Panel:
    return replace(panel, description=fill(text, TEXT_VALUES, f"{path.name}: {panel.title!r}"))


ROWS: tuple[Row, ...] = describe(_PANELS)


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
