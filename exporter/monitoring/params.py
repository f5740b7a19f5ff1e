"""The tunable alert parameters: the one source of each threshold and window.

Alert texts name a parameter as ``<<key>>``; the renderers fill in its default (the rules file,
the README), a Helm placeholder (the chart's template) or a test's value. The dashboard's
threshold colours read the same defaults, so a panel turns red where the alert fires.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

DEFAULT_JOB = "tw-exporter"
"""The ``job_name`` the README's scrape config uses; ``exporterJobRegex`` matches it."""

ParamKind = Literal["int", "float", "duration", "string"]
ParamValue = int | float | str


@dataclass(frozen=True)
class Param:
    """One tunable rule parameter: Helm values key ``prometheusRule.thresholds.<key>``."""

    key: str
    default: ParamValue
    kind: ParamKind
    meaning: str


PARAMS: tuple[Param, ...] = (
    Param(
        "haBridgeWindow",
        "2m",
        "duration",
        "Business alerts read each series as its latest sample within this window, taken across "
        "replicas (`instance`, `pod`), so an HA takeover, which moves the series to another "
        "replica after a short gap, neither resolves nor restarts an alert. Keep it above "
        "`--ha-lease` + `--interval` + the scrape interval; a row that leaves the top N keeps "
        "alerting this much longer.",
    ),
    Param(
        "exporterJobRegex",
        ".*tw-exporter.*",
        "string",
        "Regular expression matching the Prometheus `job` label of tw-exporter targets (used "
        "by the `up`-based alerts). Matches `job_name: tw-exporter` and the chart's "
        "ServiceMonitor jobs (`<release>-tw-exporter`).",
    ),
    Param(
        "runbookBaseUrl",
        "https://github.com/tw-exporter/tw-exporter/blob/main/docs/runbook.md",
        "string",
        "Where the runbook page (docs/runbook.md) is published; every alert's `runbook_url` is "
        "this plus "
        "`#runbook-<alertname in lower case>`.",
    ),
    Param(
        "followersMilestone",
        1_000_000,
        "int",
        "TwUserFollowersMilestone: follower count whose crossing by a top user is announced.",
    ),
    Param(
        "followersMilestoneWindow",
        "1h",
        "duration",
        "TwUserFollowersMilestone: a user counts as having crossed the milestone when their "
        "lowest count within this window was below it; the alert resolves after this long.",
    ),
    Param(
        "followerDropRatio",
        0.1,
        "float",
        "TwUserFollowersDrop: fraction (0-1) of a top user's followers lost over "
        "`followerDropWindow` above which the alert fires (0.1 = lost more than 10%).",
    ),
    Param(
        "followerDropWindow",
        "1h",
        "duration",
        "TwUserFollowersDrop: the follower count now is compared with the count this long ago.",
    ),
    Param(
        "followerDropMinFollowers",
        1000,
        "int",
        "TwUserFollowersDrop: only users who had at least this many followers "
        "`followerDropWindow` ago are considered, so small accounts do not page on a few "
        "unfollows.",
    ),
    Param(
        "hashtagTweets",
        10_000,
        "int",
        "TwHashtagTweetsHigh: tweets within the trending window at or above which a hashtag "
        "is announced.",
    ),
    Param(
        "hashtagSurgeRatio",
        3,
        "float",
        "TwHashtagSurge: the alert fires when a hashtag's tweet count is more than this many "
        "times its count `hashtagSurgeWindow` ago.",
    ),
    Param(
        "hashtagSurgeWindow",
        "6h",
        "duration",
        "TwHashtagSurge: how far back the comparison looks.",
    ),
    Param(
        "hashtagSurgeMinBase",
        30,
        "int",
        "TwHashtagSurge: floor for the earlier count in the ratio (a tag that was not "
        "trending then counts as this many), so small or absent counts cannot make huge "
        "ratios: with the defaults a tag needs more than 3 x 30 = 90 tweets to surge.",
    ),
    Param(
        "platformTweetsMin",
        1,
        "int",
        "TwPlatformTweetsLow: fewer tweets than this within the stats window fires "
        "(default 1: no tweet at all). Tune to your platform's normal activity.",
    ),
    Param(
        "platformActiveUsersMin",
        1,
        "int",
        "TwPlatformActiveUsersLow: fewer distinct tweeting users than this within the stats "
        "window fires (default 1: nobody tweeted).",
    ),
    Param(
        "staleIntervals",
        3,
        "float",
        "TwExporterQueryStale: a query's data is stale when its last success is older than "
        "this many of its own intervals (`tw_exporter_query_interval_seconds`).",
    ),
    Param(
        "queryErrorRatio",
        0.1,
        "float",
        "TwExporterQueryErrors / TwExporterQueryTimeouts: fraction (0-1) of a query's "
        "runs failing (over 5 minutes) above which the alert fires.",
    ),
    Param(
        "cycleDurationRatio",
        0.8,
        "float",
        "TwExporterCycleSlow: fires when a query's run takes longer than this fraction of its "
        "own interval (1 = the whole interval).",
    ),
    Param(
        "skippedCycles",
        2,
        "int",
        "TwExporterCyclesSkipped: more skipped runs of one query than this within 15 minutes "
        "fires.",
    ),
)

PARAMS_BY_KEY: Mapping[str, Param] = {p.key: p for p in PARAMS}
DEFAULTS: Mapping[str, ParamValue] = {p.key: p.default for p in PARAMS}

_PLACEHOLDER = re.compile(r"<<([A-Za-z][A-Za-z0-9]*)>>")


def format_value(param: Param, value: ParamValue) -> str:
    """A parameter value as it appears in PromQL, ``for:`` durations and annotation text."""
    if param.kind == "int":
        number = float(value)
        if not number.is_integer():
            raise ValueError(f"{param.key}: expected a whole number, got {value!r}")
        return str(int(number))
    if param.kind == "float":
        return f"{float(value):g}"
    text = str(value)
    if "{{" in text or "}}" in text or "\n" in text:
        raise ValueError(f"{param.key}: template braces and newlines are not allowed: {text!r}")
    return text


def fill(text: str, value_of: Callable[[Param], str]) -> str:
    """Replace each ``<<key>>`` placeholder by ``value_of(param)``."""

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in PARAMS_BY_KEY:
            raise KeyError(f"unknown parameter <<{key}>>")
        return value_of(PARAMS_BY_KEY[key])

    return _PLACEHOLDER.sub(replace, text)


def check_values(values: Mapping[str, ParamValue]) -> dict[str, ParamValue]:
    """Every parameter's value: ``values`` over the defaults, unknown keys an error."""
    unknown = set(values) - set(PARAMS_BY_KEY)
    if unknown:
        raise KeyError(f"unknown parameters: {', '.join(sorted(unknown))}")
    return {**DEFAULTS, **values}


def placeholders(text: str) -> list[str]:
    """The parameter keys ``text`` names, in order of first use."""
    return list(dict.fromkeys(_PLACEHOLDER.findall(text)))
