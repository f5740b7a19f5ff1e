"""The one source of tw-exporter's alert rules and Grafana dashboard.

Alerts, their tunable parameters and the dashboard panels are defined here in Python, naming
metrics only through the ``MetricSpec`` constants of ``exporter.catalog``'s families, and this
module writes every file that ships them:

- ``prometheus/tw-exporter.rules.yml``: the rules with default parameters (``promtool``-tested),
- ``helm/tw-exporter/files/prometheus-rules.yaml.tpl``: the same rules with each parameter as
  ``{{ .Values.prometheusRule.thresholds.<key> }}``, for the chart to render with ``tpl``,
- ``helm/tw-exporter/files/thresholds.yaml``: each parameter's default, for the chart's values,
- ``grafana/dashboards/tw-exporter.json`` and its byte-identical copy
  ``helm/tw-exporter/files/dashboard.json`` (Helm's ``.Files`` cannot reach outside the chart).

Run ``python -m tools.monitoring`` to regenerate them, ``python -m tools.monitoring --check`` to
exit 1 when a file on disk differs from what would be generated (CI does).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from exporter.collectors.base import MetricSpec
from exporter.collectors.platform_stats import (
    PLATFORM_ACTIVE_USERS,
    PLATFORM_LIKES,
    PLATFORM_LIKES_PER_TWEET,
    PLATFORM_TWEETS,
)
from exporter.collectors.top_users import USER_FOLLOWERS
from exporter.collectors.trending_hashtags import HASHTAG_TWEETS
from exporter.health import (
    BUILD_INFO,
    CYCLE_DURATION,
    CYCLES_SKIPPED,
    FAILURE_REASONS,
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

ROOT = Path(__file__).resolve().parent.parent
RULES_PATH = Path("prometheus/tw-exporter.rules.yml")
RULES_TEST_PATH = Path("prometheus/tw-exporter.rules.test.yml")
DASHBOARD_PATH = Path("grafana/dashboards/tw-exporter.json")
HELM_RULES_PATH = Path("helm/tw-exporter/files/prometheus-rules.yaml.tpl")
HELM_THRESHOLDS_PATH = Path("helm/tw-exporter/files/thresholds.yaml")
HELM_DASHBOARD_PATH = Path("helm/tw-exporter/files/dashboard.json")

HELM_VALUES_PREFIX = ".Values.prometheusRule.thresholds"
DASHBOARD_UID = "tw-exporter"
DASHBOARD_SCHEMA_VERSION = 39
DEFAULT_JOB = "tw-exporter"
"""The ``job_name`` the README's scrape config uses; ``exporterJobRegex`` matches it."""

ParamKind = Literal["int", "float", "duration", "string"]
ParamValue = int | float | str


# ---------------------------------------------------------------- tunable parameters


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
        "https://github.com/tw-exporter/tw-exporter/blob/main/README.md",
        "string",
        "Where the README is published; every alert's `runbook_url` is this plus "
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
_PROM_TEMPLATE = re.compile(r"\{\{.*?\}\}")


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


def helm_placeholder(param: Param) -> str:
    """How the chart's ``tpl`` prints a value: Helm parses numbers in values as float64 and
    prints 1000000 as ``1e+06``, so whole-number parameters go through ``int64``."""
    suffix = " | int64" if param.kind == "int" else ""
    return "{{ " + f"{HELM_VALUES_PREFIX}.{param.key}{suffix}" + " }}"


def fill(text: str, value_of: Callable[[Param], str]) -> str:
    """Replace each ``<<key>>`` placeholder by ``value_of(param)``."""

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in PARAMS_BY_KEY:
            raise KeyError(f"unknown parameter <<{key}>>")
        return value_of(PARAMS_BY_KEY[key])

    return _PLACEHOLDER.sub(replace, text)


# ---------------------------------------------------------------- PromQL helpers


def label(spec: MetricSpec, name: str) -> str:
    """A label name of ``spec``, checked, so a renamed label breaks generation, not alerts."""
    if name not in spec.labels:
        raise KeyError(f"{spec.name} has no label {name!r}")
    return name


def bucket(spec: MetricSpec) -> str:
    if spec.kind != "histogram":
        raise ValueError(f"{spec.name} is not a histogram")
    return f"{spec.name}_bucket"


_REASON_TIMEOUT = "timeout"
assert _REASON_TIMEOUT in FAILURE_REASONS
# TwExporterQueryErrors covers every reason but timeout (TwExporterQueryTimeouts has that one).
_ERROR_REASONS = tuple(r for r in FAILURE_REASONS if r != _REASON_TIMEOUT)


def _reason_list(reasons: tuple[str, ...]) -> str:
    """``a``, ``b`` or ``c``: the catalogue's reasons as Markdown code in a sentence."""
    quoted = [f"`{r}`" for r in reasons]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


_PROMQL_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "atan2",
        "inf",
        "nan",
    }
)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (a small lexer, enough for the rules and panels
    written here): strings, label matchers, label lists, ranges and function names dropped."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


# ---------------------------------------------------------------- alert rules


@dataclass(frozen=True)
class Alert:
    """One alerting rule; ``<<key>>`` in any text is a parameter from ``PARAMS``."""

    name: str
    expr: str
    for_: str
    severity: Literal["info", "warning", "critical"]
    summary: str
    description: str
    runbook: tuple[str, str, str]
    """Meaning, likely causes and what to do, for the README's Runbook section."""

    @property
    def anchor(self) -> str:
        return f"runbook-{self.name.lower()}"


@dataclass(frozen=True)
class Group:
    name: str
    alerts: tuple[Alert, ...]


FOLLOWERS = USER_FOLLOWERS.name
HASHTAGS = HASHTAG_TWEETS.name
USERNAME = label(USER_FOLLOWERS, "username")
VERIFIED = label(USER_FOLLOWERS, "verified")
TAG = label(HASHTAG_TWEETS, "tag")
WINDOW = label(HASHTAG_TWEETS, "window")
QUERY = label(QUERY_LAST_SUCCESS, "query")
REASON = label(QUERY_ERRORS, "reason")
_TARGET = '{job=~"<<exporterJobRegex>>"}'
# The labels that tell replicas apart (a static target's instance; the operator's pod too).
REPLICA_LABELS = "instance, pod"


def across_replicas(metric: str, offset: str = "") -> str:
    """``metric`` as one series per row whichever replica exports it: the latest sample within
    ``haBridgeWindow`` (bridging a takeover's gap), the highest across replicas."""
    shifted = f" offset {offset}" if offset else ""
    return f"max without ({REPLICA_LABELS}) (last_over_time({metric}[<<haBridgeWindow>>]{shifted}))"


# An HA follower runs no queries, so per-query alerts must not read its (absent or frozen)
# query series; without --ha every exporter is its own leader (tw_exporter_leader 1).
_UNLESS_FOLLOWER = f"unless on (job, instance)\n{LEADER.name} == 0"

BUSINESS = Group(
    "tw-exporter.business",
    (
        Alert(
            name="TwUserFollowersMilestone",
            expr=f"""
{across_replicas(FOLLOWERS)} >= <<followersMilestone>>
and
min without ({REPLICA_LABELS}) (min_over_time({FOLLOWERS}[<<followersMilestoneWindow>>]))
< <<followersMilestone>>
""",
            for_="5m",
            severity="info",
            summary="{{ $labels.username }} crossed <<followersMilestone>> followers",
            description=(
                "Top user {{ $labels.username }} (verified={{ $labels.verified }}) now has "
                '{{ $value | printf "%.0f" }} followers and had fewer than '
                "<<followersMilestone>> within the last <<followersMilestoneWindow>>; the alert "
                "resolves by itself "
                "<<followersMilestoneWindow>> after the crossing."
            ),
            runbook=(
                "A user among the exported top users reached the follower milestone within "
                "the last `followersMilestoneWindow`. Users already above the milestone when "
                "they entered the top N, or when the exporter started, are not announced: "
                "only an observed crossing is.",
                "Organic growth; a campaign or a viral tweet; a bulk import or a bug that "
                "inflated `follower_count`.",
                "Informational: congratulate, feature the user. If the jump is implausible, "
                "check recent writes to `tw_users.follower_count` for that user.",
            ),
        ),
        Alert(
            name="TwUserFollowersDrop",
            expr=f"""
(
  {across_replicas(FOLLOWERS, "<<followerDropWindow>>")}
  - {across_replicas(FOLLOWERS)}
)
/ {across_replicas(FOLLOWERS, "<<followerDropWindow>>")}
> <<followerDropRatio>>
and
{across_replicas(FOLLOWERS, "<<followerDropWindow>>")} >= <<followerDropMinFollowers>>
""",
            for_="10m",
            severity="warning",
            summary=(
                "{{ $labels.username }} lost {{ $value | humanizePercentage }} of their followers "
                "in <<followerDropWindow>>"
            ),
            description=(
                "Top user {{ $labels.username }} has {{ $value | humanizePercentage }} fewer "
                "followers than <<followerDropWindow>> ago (threshold: a fraction of "
                "<<followerDropRatio>>, for users who had at least <<followerDropMinFollowers>> "
                "followers)."
            ),
            runbook=(
                "A top user's follower count fell by more than `followerDropRatio` compared "
                "with `followerDropWindow` ago. Users who fall out of the top N disappear "
                "from `tw_user_followers` and cannot be compared.",
                "Mass unfollowing after a controversy; a spam/bot purge; the account was "
                "suspended or its followers deleted; a migration or bug that rewrote "
                "`follower_count`.",
                "Check the user's recent activity and moderation actions. Compare "
                "`tw_users.follower_count` with the follow table if there is one; if a job "
                "rewrote counts, stop it and restore from the source of truth.",
            ),
        ),
        Alert(
            name="TwHashtagTweetsHigh",
            expr=f"{across_replicas(HASHTAGS)} >= <<hashtagTweets>>",
            for_="15m",
            severity="info",
            summary=(
                '#{{ $labels.tag }} has {{ $value | printf "%.0f" }} tweets in the last '
                "{{ $labels.window }}"
            ),
            description=(
                'Hashtag #{{ $labels.tag }} is carried by {{ $value | printf "%.0f" }} '
                "tweets within the trailing {{ $labels.window }} window (threshold "
                "<<hashtagTweets>>). The alert stays active while the tag is above the "
                "threshold and resolves as its tweets age out of the window."
            ),
            runbook=(
                "A trending hashtag is used by at least `hashtagTweets` tweets within the "
                "trending window (`--trending-days`). Unlike followers this count is a "
                "rolling window, so the alert describes a state and resolves by itself.",
                "A big event, campaign or meme; coordinated or automated posting.",
                "Informational: feature the topic, watch moderation queues. If the accounts "
                "posting it look automated, involve trust and safety.",
            ),
        ),
        Alert(
            name="TwHashtagSurge",
            expr=f"""
(
    {across_replicas(HASHTAGS)}
    / clamp_min(
      {across_replicas(HASHTAGS, "<<hashtagSurgeWindow>>")},
      <<hashtagSurgeMinBase>>
    )
  or
    (
      (
        {across_replicas(HASHTAGS)}
        unless {across_replicas(HASHTAGS, "<<hashtagSurgeWindow>>")}
      )
      / <<hashtagSurgeMinBase>>
      and on (job)
      count by (job) ({HASHTAGS} offset <<hashtagSurgeWindow>>)
    )
)
> <<hashtagSurgeRatio>>
""",
            for_="15m",
            severity="info",
            summary=(
                '#{{ $labels.tag }} is surging: {{ $value | printf "%.1f" }}x its tweet count '
                "<<hashtagSurgeWindow>> ago"
            ),
            description=(
                'Hashtag #{{ $labels.tag }} has grown {{ $value | printf "%.1f" }}x within '
                "<<hashtagSurgeWindow>> (threshold <<hashtagSurgeRatio>>x; counts over the "
                "trailing {{ $labels.window }} window). The earlier count is taken as at least "
                "<<hashtagSurgeMinBase>>, also for tags that were not trending then."
            ),
            runbook=(
                "A hashtag's tweet count within the trending window grew more than "
                "`hashtagSurgeRatio` times over `hashtagSurgeWindow`. The earlier count is "
                "floored at `hashtagSurgeMinBase` (so 2 -> 40 tweets is no surge); a tag that "
                "was not among the top K then counts as a surge from that floor, but only "
                "when the exporter already exported hashtags back then (no alert storm after "
                "a fresh install).",
                "Breaking news or a viral post; a coordinated campaign; spam or bots.",
                "Informational: look at the tweets carrying the tag; if they look automated, "
                "involve trust and safety. Raise `hashtagSurgeMinBase` if small tags are too "
                "noisy.",
            ),
        ),
        Alert(
            name="TwPlatformTweetsLow",
            expr=f"{across_replicas(PLATFORM_TWEETS.name)} < <<platformTweetsMin>>",
            for_="30m",
            severity="warning",
            summary=('Only {{ $value | printf "%.0f" }} tweets in the last {{ $labels.window }}'),
            description=(
                'The platform saw {{ $value | printf "%.0f" }} tweets within the trailing '
                "{{ $labels.window }} window, below the floor of <<platformTweetsMin>>."
            ),
            runbook=(
                "Fewer tweets than `platformTweetsMin` were created within the stats window "
                "(`--stats-days`).",
                "Posting is broken (API, app release, write path); tweets are written to "
                "another database than the one the exporter reads; clock skew making "
                "`created_at` look old; a genuinely quiet platform with a floor set too "
                "high.",
                "Post a test tweet and check it reaches `tw_tweets`; check the API's error "
                "rate and the latest deploys; check that the exporter's DSN points at the "
                "primary database.",
            ),
        ),
        Alert(
            name="TwPlatformActiveUsersLow",
            expr=f"{across_replicas(PLATFORM_ACTIVE_USERS.name)} < <<platformActiveUsersMin>>",
            for_="30m",
            severity="warning",
            summary=(
                'Only {{ $value | printf "%.0f" }} users tweeted in the last {{ $labels.window }}'
            ),
            description=(
                '{{ $value | printf "%.0f" }} distinct users tweeted within the trailing '
                "{{ $labels.window }} window, below the floor of <<platformActiveUsersMin>>."
            ),
            runbook=(
                "Fewer distinct users than `platformActiveUsersMin` tweeted within the stats "
                "window.",
                "Login or posting broken for most users; an outage of a client app; the "
                "exporter reading a stale replica or the wrong database.",
                "Check sign-in and posting paths and recent deploys; compare with "
                "TwPlatformTweetsLow (if tweets are normal but users low, a few accounts "
                "produce all the traffic: look for bots).",
            ),
        ),
    ),
)

NO_LEADER = Alert(
    name="TwExporterNoLeader",
    expr=f"max by (job) ({LEADER.name}{_TARGET}) == 0",
    for_="5m",
    severity="critical",
    summary="No tw-exporter replica of job {{ $labels.job }} leads: no business metrics",
    description=(
        "Every scraped replica of job {{ $labels.job }} has been an HA follower "
        "(tw_exporter_leader == 0) for 5 minutes: nobody runs the queries, so business metrics "
        "are absent."
    ),
    runbook=(
        "With `--ha`, only the replica holding the group's advisory lock runs the queries; "
        "here every scraped replica is a follower.",
        "The lock database is down or unreachable from every replica (then "
        "TwExporterDatabaseDown fires too); the leader is running but not scraped (its "
        "target is down or missing from the ServiceMonitor); another process holds the "
        "advisory lock of the same `--ha-group` key.",
        "Read the replicas' logs (`elected leader`, `no longer the leader`, lock errors); "
        "find the lock holder with the query in "
        "[docs/high-availability.md](docs/high-availability.md); check that every pod is "
        "scraped.",
    ),
)


HEALTH = Group(
    "tw-exporter.health",
    (
        Alert(
            name="TwExporterTargetDown",
            expr=f"up{_TARGET} == 0",
            for_="5m",
            severity="critical",
            summary="tw-exporter target {{ $labels.instance }} is down",
            description=(
                "Prometheus has failed to scrape {{ $labels.instance }} (job "
                "{{ $labels.job }}) for 5 minutes: no business or health metrics are "
                "collected from it and every other tw-exporter alert is blind."
            ),
            runbook=(
                "Prometheus cannot scrape the exporter (`up == 0` for a target whose job "
                "matches `exporterJobRegex`).",
                "The process crashed or is restarting (CrashLoopBackOff); wrong port or "
                "address; a NetworkPolicy or firewall; TLS or basic auth configured on one "
                "side only (`--web-config-file` vs. the scrape config); scrape timeout.",
                "Check the pod/process status and logs (`kubectl logs`, exit status); open "
                "`/healthz` from Prometheus' network; on the Prometheus Targets page read "
                "the scrape error.",
            ),
        ),
        Alert(
            name="TwExporterTargetMissing",
            expr=f"absent(up{_TARGET})",
            for_="15m",
            severity="warning",
            summary="No tw-exporter target is being scraped",
            description=(
                'Prometheus has no target whose job matches "<<exporterJobRegex>>": '
                "tw-exporter is not deployed, or service discovery does not find it, so its "
                "alerts cannot fire."
            ),
            runbook=(
                "Prometheus knows no target matching `exporterJobRegex` at all, so even "
                "TwExporterTargetDown cannot fire: a dead man's switch.",
                "The exporter was uninstalled or scaled to zero; the ServiceMonitor is not "
                "selected by the Prometheus (label selector, namespace selector); the job "
                "was renamed and `exporterJobRegex` no longer matches.",
                "Check the Prometheus Targets and Service Discovery pages; check the "
                "ServiceMonitor's labels against the Prometheus' `serviceMonitorSelector`; "
                "set `exporterJobRegex` to the job name actually used.",
            ),
        ),
        Alert(
            name="TwExporterDatabaseDown",
            expr=f"{UP.name} == 0",
            for_="2m",
            severity="critical",
            summary="tw-exporter {{ $labels.instance }} cannot reach PostgreSQL",
            description=(
                "PostgreSQL answered none of the latest queries of {{ $labels.instance }} "
                "(tw_up == 0): it could not connect, or the database stopped answering. "
                "Business metrics are served from the last good data until --max-staleness, "
                "then disappear."
            ),
            runbook=(
                "The exporter runs and is scraped, but the database answered none of its "
                "queries (`tw_up == 0`): the most recent attempt of every query failed "
                "without an answer from the server (connection refused or lost, connect "
                "timeout, or no answer within the client deadline, `--query-timeout` + 1 s). "
                "An error the server sends about a query (statement or lock timeout, missing "
                "table) is an answer and keeps `tw_up` at 1.",
                "PostgreSQL down or restarting; wrong host/port/credentials in the DSN "
                "(password rotated, Secret changed); `pg_hba.conf` rejects the exporter; "
                "`max_connections` reached; the database does not allow connections; "
                "network policy; a database that stopped answering (paused VM, hung storage, "
                "a network path that drops packets), counted under `timeout` first and "
                "`connection` after.",
                "Read the exporter's log (the connection error is logged with the DSN's "
                "password masked); run `tw-exporter check --dsn-file ...` with the same "
                "settings; check the database's status and `pg_stat_activity`. If the log "
                "says `no answer from the database within ...`, look at the database host "
                "itself (paused VM, hung disk, a path that drops packets); see "
                "[docs/database-faults.md](docs/database-faults.md).",
            ),
        ),
        Alert(
            name="TwExporterQueryStale",
            expr=f"""
(
  time() - {QUERY_LAST_SUCCESS.name}
)
> on (job, instance, query)
(
  <<staleIntervals>> * {QUERY_INTERVAL.name}
)
unless on (job, instance)
{UP.name} == 0
{_UNLESS_FOLLOWER}
""",
            for_="5m",
            severity="warning",
            summary=(
                "tw-exporter query {{ $labels.query }} has not succeeded for "
                "{{ $value | humanizeDuration }}"
            ),
            description=(
                "Query {{ $labels.query }} on {{ $labels.instance }} last succeeded "
                "{{ $value | humanizeDuration }} ago, more than <<staleIntervals>> of its "
                "intervals, although the database is reachable: its business metrics are "
                "stale or absent."
            ),
            runbook=(
                "One business query has not succeeded for more than `staleIntervals` of its "
                "own intervals (`tw_exporter_query_interval_seconds`: a query run every 5 "
                "minutes is stale after 15) while the database is reachable (when it is not, "
                "only TwExporterDatabaseDown fires).",
                "The query keeps timing out (slow plan, locks, a large table without "
                "index); a schema change (missing table or column) makes it fail; "
                "permissions revoked.",
                "Look at `tw_exporter_query_errors_total{query=...}` by reason and at the "
                "exporter log; run `tw-exporter check`; see TwExporterQueryErrors and "
                "TwExporterQueryTimeouts.",
            ),
        ),
        Alert(
            name="TwExporterQueryErrors",
            expr=f"""
rate({QUERY_ERRORS.name}{{{REASON}!="{_REASON_TIMEOUT}"}}[5m])
* on (job, instance, query) group_left ()
{QUERY_INTERVAL.name}
> <<queryErrorRatio>>
unless on (job, instance)
{UP.name} == 0
{_UNLESS_FOLLOWER}
""",
            for_="10m",
            severity="warning",
            summary=(
                "tw-exporter query {{ $labels.query }} is failing ({{ $labels.reason }} errors)"
            ),
            description=(
                "Query {{ $labels.query }} on {{ $labels.instance }} failed with reason "
                "{{ $labels.reason }} in {{ $value | humanizePercentage }} of its runs over "
                "the last 5 minutes (threshold <<queryErrorRatio>>)."
            ),
            runbook=(
                "A business query fails in more than `queryErrorRatio` of its runs with "
                f"reason {_reason_list(_ERROR_REASONS)} (every reason but `timeout`; for "
                "`connection`, some connections fail while others work: total loss is "
                "TwExporterDatabaseDown; `data`: a custom query returned rows that cannot be "
                "served).",
                "`sql`: a table or column was renamed or dropped, or the exporter's role "
                "lost SELECT permission. `connection`: `max_connections` or a pooler limit "
                "reached, a failover in progress, flaky network. `conflict`: on a hot "
                "standby, WAL replay cancelled the query (VACUUM on the primary removed rows "
                "it still needed, or a lock it conflicts with) because "
                "`max_standby_streaming_delay` is shorter than the query. `data`: a value "
                "column that is not numeric, two rows with the same labels, more rows than "
                "`max_series`.",
                "Read the exporter log for the PostgreSQL error (or, for `data`, the rows it "
                "could not serve); `tw-exporter check` lists missing tables, columns and "
                "privileges; for `connection`, check the database's (or pooler's) connection "
                "count and failover status; for `conflict`, `tw-exporter check` on the standby "
                "shows `hot_standby_feedback` and `max_standby_streaming_delay`: turn the "
                "feedback on or raise the delay above `--query-timeout`.",
            ),
        ),
        Alert(
            name="TwExporterQueryTimeouts",
            expr=f"""
rate({QUERY_ERRORS.name}{{{REASON}="{_REASON_TIMEOUT}"}}[5m])
* on (job, instance, query) group_left ()
{QUERY_INTERVAL.name}
> <<queryErrorRatio>>
{_UNLESS_FOLLOWER}
""",
            for_="10m",
            severity="warning",
            summary="tw-exporter query {{ $labels.query }} is timing out",
            description=(
                "Query {{ $labels.query }} on {{ $labels.instance }} hit its deadline "
                "(--query-timeout or its timeout in the queries file) in "
                "{{ $value | humanizePercentage }} of its runs over the last 5 minutes "
                "(threshold <<queryErrorRatio>>)."
            ),
            runbook=(
                "A business query exceeds `--query-timeout` (PostgreSQL's statement_timeout "
                "cancels it) in more than `queryErrorRatio` of its cycles.",
                "Table growth without a matching index (e.g. on `tw_tweets.created_at`); "
                "lock contention; an overloaded database; a timeout set too low for the "
                "window (`--trending-days`, `--stats-days`).",
                "Look at the query duration quantiles on the dashboard; `EXPLAIN ANALYZE` "
                "the query (it is in the README) on the database; add the missing index, "
                "or raise `--query-timeout` and `--interval` together.",
            ),
        ),
        Alert(
            name="TwExporterCycleSlow",
            expr=(
                f"{CYCLE_DURATION.name}\n> on (job, instance, query)\n"
                f"<<cycleDurationRatio>> * {QUERY_INTERVAL.name}\n"
                f"{_UNLESS_FOLLOWER}"
            ),
            for_="15m",
            severity="warning",
            summary=("tw-exporter query {{ $labels.query }} on {{ $labels.instance }} runs slowly"),
            description=(
                "The last run of query {{ $labels.query }} on {{ $labels.instance }} took "
                "{{ $value | humanizeDuration }}, more than <<cycleDurationRatio>> of its "
                "interval; slower runs will be skipped."
            ),
            runbook=(
                "A query's scheduled runs (its cycles, including the wait for a pooled "
                "connection) take longer than `cycleDurationRatio` of its own interval "
                "(`tw_exporter_query_interval_seconds`); beyond the interval, runs get "
                "skipped and data ages.",
                "Slow queries (see the duration quantiles); waiting for a pooled "
                "connection; an interval set too short for the dataset.",
                "Find the slow query on the dashboard and fix it as for "
                "TwExporterQueryTimeouts, or raise its interval (`--interval` or the queries "
                "file).",
            ),
        ),
        Alert(
            name="TwExporterCyclesSkipped",
            expr=f"increase({CYCLES_SKIPPED.name}[15m]) > <<skippedCycles>>",
            for_="5m",
            severity="warning",
            summary=(
                "tw-exporter on {{ $labels.instance }} is skipping runs of query "
                "{{ $labels.query }}"
            ),
            description=(
                '{{ $labels.instance }} skipped {{ $value | printf "%.0f" }} scheduled runs '
                "of query {{ $labels.query }} in the last 15 minutes (threshold "
                "<<skippedCycles>>) because its previous run was still running; its data "
                "refreshes less often than its interval."
            ),
            runbook=(
                "Scheduled runs of one query were skipped because its previous run was still "
                "running (the exporter never runs a query twice at once).",
                "Same as TwExporterCycleSlow: slow queries or an interval too short.",
                "As for TwExporterCycleSlow; skipped cycles are harmless for a while but "
                "make the data older than the interval suggests.",
            ),
        ),
        NO_LEADER,
    ),
)

GROUPS: tuple[Group, ...] = (BUSINESS, HEALTH)
ALERTS: tuple[Alert, ...] = tuple(a for g in GROUPS for a in g.alerts)


def _rules_document(
    value_of: Callable[[Param], str],
    escape: Callable[[str], str],
    for_override: str | None = None,
) -> dict[str, Any]:
    def text(raw: str) -> str:
        return fill(escape(raw.strip()), value_of)

    groups = []
    for group in GROUPS:
        rules = []
        for alert in group.alerts:
            rules.append(
                {
                    "alert": alert.name,
                    "expr": text(alert.expr),
                    "for": for_override if for_override is not None else alert.for_,
                    "labels": {"severity": alert.severity},
                    "annotations": {
                        "summary": text(alert.summary),
                        "description": text(alert.description),
                        "runbook_url": fill("<<runbookBaseUrl>>", value_of) + f"#{alert.anchor}",
                    },
                }
            )
        groups.append({"name": group.name, "rules": rules})
    return {"groups": groups}


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (readable PromQL), no aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style: str | None = None
    if "\n" in data:
        style = "|"
    elif "{{" in data:
        # Quoted whatever the rendered text will contain (Helm fills values in later).
        style = "'"
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(document: Any) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)


def _header(comment: str) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines())


GENERATED = (
    "Generated by tools/monitoring.py from exporter.catalog: do not edit by hand.\n"
    "Regenerate with `python -m tools.monitoring`; CI runs it with --check."
)


def _check_values(values: Mapping[str, ParamValue]) -> dict[str, ParamValue]:
    unknown = set(values) - set(PARAMS_BY_KEY)
    if unknown:
        raise KeyError(f"unknown parameters: {', '.join(sorted(unknown))}")
    return {**DEFAULTS, **values}


def render_rules(
    thresholds: Mapping[str, ParamValue] | None = None, *, for_override: str | None = None
) -> str:
    """The Prometheus rules file, with ``thresholds`` overriding defaults (and every alert's
    ``for:`` replaced by ``for_override`` when given, for tests against a live Prometheus)."""
    values = _check_values(thresholds or {})
    document = _rules_document(lambda p: format_value(p, values[p.key]), lambda s: s, for_override)
    return _header(GENERATED) + dump_yaml(document)


def _escape_for_helm(text: str) -> str:
    """Hide Prometheus' own ``{{ ... }}`` templates from Helm's ``tpl``."""
    if "`" in text:
        raise ValueError(f"backticks cannot be escaped for Helm: {text!r}")
    return _PROM_TEMPLATE.sub(lambda m: "{{`" + m.group(0) + "`}}", text)


def render_helm_rules() -> str:
    document = _rules_document(helm_placeholder, _escape_for_helm)
    header = (
        GENERATED + "\n"
        "Rendered by the chart with `tpl`: values come from prometheusRule.thresholds; "
        "Prometheus templates are escaped."
    )
    return _header(header) + dump_yaml(document)


def render_thresholds() -> str:
    lines = [_header(GENERATED + "\nDefaults of prometheusRule.thresholds.<key>.")]
    for param in PARAMS:
        lines.append(_header(param.meaning.replace("`", "")))
        lines.append(dump_yaml({param.key: param.default}))
    return "".join(lines)


def thresholds_markdown() -> str:
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for param in PARAMS:
        default = format_value(param, param.default)
        rows.append(f"| `{param.key}` | `{default}` | {param.meaning} |")
    return (
        "Alert parameters (Helm values `prometheusRule.thresholds.<key>`; defaults are what "
        f"`{RULES_PATH}` contains):\n\n" + "\n".join(rows) + "\n"
    )


def alerts_markdown() -> str:
    """The README's alert table: each alert's expression with the default parameters filled in
    (white space folded) and the parameters it uses, so the table cannot drift from the rules."""
    rows = [
        "| alert | severity | for | expression (defaults) | parameters |",
        "| --- | --- | --- | --- | --- |",
    ]
    for alert in ALERTS:
        expr = " ".join(fill(alert.expr, lambda p: format_value(p, p.default)).split())
        keys = list(dict.fromkeys(_PLACEHOLDER.findall(alert.expr)))
        params = ", ".join(
            f"`{key}`={format_value(PARAMS_BY_KEY[key], PARAMS_BY_KEY[key].default)}"
            for key in keys
        )
        rows.append(
            f"| [{alert.name}](#{alert.anchor}) | {alert.severity} | {alert.for_} | "
            f"`{expr}` | {params or '-'} |"
        )
    return "\n".join(rows) + "\n"


def runbook_markdown() -> str:
    parts = ["## Runbook\n"]
    for alert in ALERTS:
        meaning, causes, action = alert.runbook
        parts.append(
            f'<a id="{alert.anchor}"></a>\n\n### {alert.name}\n\n'
            f"Severity `{alert.severity}`, fires after `{alert.for_}`.\n\n"
            f"**Meaning.** {meaning}\n\n**Likely causes.** {causes}\n\n"
            f"**What to do.** {action}\n"
        )
    return "\n".join(parts)


# ---------------------------------------------------------------- Grafana dashboard

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'
RATE = "$__rate_interval"


def sel(spec: MetricSpec | str, extra: str = "") -> str:
    """``metric{job=~"$job", instance=~"$instance"[, extra]}`` for a dashboard query."""
    name = spec if isinstance(spec, str) else spec.name
    matchers = f"{SEL}, {extra}" if extra else SEL
    return f"{name}{{{matchers}}}"


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    kind: Literal["timeseries", "stat", "bargauge", "table"]
    description: str
    targets: tuple[Target, ...]
    width: int
    height: int
    unit: str = "short"
    decimals: int | None = None
    steps: tuple[tuple[str, float | None], ...] = (("green", None),)
    min: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    custom: Mapping[str, Any] = field(default_factory=dict)
    mappings: tuple[Mapping[str, Any], ...] = ()
    transformations: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


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

# A 0/1 health value shown as DOWN/UP.
_UP_DOWN_MAPPINGS: tuple[dict[str, Any], ...] = (
    {
        "type": "value",
        "options": {
            "0": {"text": "DOWN", "color": "red", "index": 0},
            "1": {"text": "UP", "color": "green", "index": 1},
        },
    },
)


def _up_down_stat(title: str, description: str, expr: str) -> Panel:
    """A small stat panel showing a per-instance 0/1 health value as a red/green DOWN/UP."""
    return Panel(
        title=title,
        kind="stat",
        description=description,
        targets=(Target(expr, "{{instance}}"),),
        width=6,
        height=4,
        steps=(("red", None), ("green", 1.0)),
        mappings=_UP_DOWN_MAPPINGS,
        options={**_STAT_OPTIONS, "graphMode": "none", "colorMode": "background"},
    )


def _stat(
    title: str, spec: MetricSpec, description: str, floor_key: str | None, decimals: int = 0
) -> Panel:
    steps: tuple[tuple[str, float | None], ...] = (("green", None),)
    if floor_key is not None:
        steps = (("red", None), ("green", float(DEFAULTS[floor_key])))
    return Panel(
        title=title,
        kind="stat",
        description=description,
        targets=(Target(f"max by (window) ({sel(spec)})", "last {{window}}"),),
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
                        f"sort_desc(max by ({USERNAME}) ({sel(USER_FOLLOWERS)}))",
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
            Panel(
                title="Follower trends",
                kind="timeseries",
                description=(
                    f"Followers of each top user over time ({FOLLOWERS}). A line ends when "
                    "its user leaves the top N."
                ),
                targets=(
                    Target(f"max by ({USERNAME}) ({sel(USER_FOLLOWERS)})", f"{{{{{USERNAME}}}}}"),
                ),
                width=10,
                height=10,
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
                        f"max by ({USERNAME}) (delta({sel(USER_FOLLOWERS)}[1h]))",
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
                        f"sort_desc(max by ({TAG}, {WINDOW}) ({sel(HASHTAG_TWEETS)}))",
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
            Panel(
                title="Hashtag tweets over time",
                kind="timeseries",
                description=(
                    f"Tweets per trending hashtag within the trailing window ({HASHTAGS}); a "
                    "steep rise is what TwHashtagSurge alerts on."
                ),
                targets=(Target(f"max by ({TAG}) ({sel(HASHTAG_TWEETS)})", f"#{{{{{TAG}}}}}"),),
                width=16,
                height=10,
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
            _up_down_stat(
                "Database reachable",
                f"{UP.name} per exporter: UP when PostgreSQL answered the latest attempt of "
                "at least one query, DOWN when it answered none (TwExporterDatabaseDown).",
                f"min by (instance) ({sel(UP)})",
            ),
            _up_down_stat(
                "Scrape target up",
                "Prometheus' own up metric for the exporter targets: DOWN when the "
                "exporter cannot be scraped (TwExporterTargetDown).",
                f"min by (instance) ({sel('up')})",
            ),
            Panel(
                title="Exporter version",
                kind="stat",
                description=f"The tw-exporter version each instance runs ({BUILD_INFO.name}).",
                targets=(
                    Target(
                        f"max by (instance, {label(BUILD_INFO, 'version')}) ({sel(BUILD_INFO)})",
                        "{{instance}}: {{version}}",
                        instant=True,
                    ),
                ),
                width=6,
                height=4,
                options={
                    **_STAT_OPTIONS,
                    "graphMode": "none",
                    "colorMode": "none",
                    "textMode": "name",
                },
            ),
            Panel(
                title="Collection interval",
                kind="stat",
                description=(
                    f"Configured collection interval ({INTERVAL.name}, --interval): how often "
                    "business values refresh. Keep Prometheus' scrape interval at or below it."
                ),
                targets=(Target(f"max by (instance) ({sel(INTERVAL)})", "{{instance}}"),),
                width=6,
                height=4,
                unit="s",
                options={**_STAT_OPTIONS, "graphMode": "none", "colorMode": "none"},
            ),
            Panel(
                title="HA role",
                kind="stat",
                description=(
                    f"{LEADER.name} per exporter: LEADER runs the queries (any exporter "
                    "without --ha), FOLLOWER waits for the HA lock and serves health metrics "
                    "only. With --ha exactly one replica should lead (TwExporterNoLeader)."
                ),
                targets=(Target(f"max by (instance) ({sel(LEADER)})", "{{instance}}"),),
                width=6,
                height=4,
                steps=(("blue", None), ("green", 1.0)),
                mappings=(
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "FOLLOWER", "color": "blue", "index": 0},
                            "1": {"text": "LEADER", "color": "green", "index": 1},
                        },
                    },
                ),
                options={**_STAT_OPTIONS, "graphMode": "none", "colorMode": "background"},
            ),
            Panel(
                title="Last configuration reload",
                kind="stat",
                description=(
                    f"{RELOAD_SUCCESSFUL.name}: FAILED when the last reload (SIGHUP or POST "
                    "/-/reload) found an invalid queries file or web config and kept the old "
                    "ones running; OK otherwise."
                ),
                targets=(Target(f"min by (instance) ({sel(RELOAD_SUCCESSFUL)})", "{{instance}}"),),
                width=6,
                height=4,
                steps=(("red", None), ("green", 1.0)),
                mappings=(
                    {
                        "type": "value",
                        "options": {
                            "0": {"text": "FAILED", "color": "red", "index": 0},
                            "1": {"text": "OK", "color": "green", "index": 1},
                        },
                    },
                ),
                options={**_STAT_OPTIONS, "graphMode": "none", "colorMode": "background"},
            ),
            Panel(
                title="Configuration loaded",
                kind="stat",
                description=(
                    "Time since each instance last loaded its configuration successfully "
                    f"(time() - {RELOAD_SUCCESS_TIMESTAMP.name}; the start counts)."
                ),
                targets=(
                    Target(
                        f"time() - max by (instance) ({sel(RELOAD_SUCCESS_TIMESTAMP)})",
                        "{{instance}}",
                    ),
                ),
                width=6,
                height=4,
                unit="s",
                options={**_STAT_OPTIONS, "graphMode": "none", "colorMode": "none"},
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
                    f"{_reason_list(FAILURE_REASONS).replace('`', '')} "
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
            Panel(
                title="Skipped cycles",
                kind="timeseries",
                description=(
                    "Scheduled query runs skipped because the query's previous run was still "
                    f"running (increase of {CYCLES_SKIPPED.name}; TwExporterCyclesSkipped)."
                ),
                targets=(
                    Target(
                        f"sum by ({QUERY}) (increase({sel(CYCLES_SKIPPED)}[{RATE}]))",
                        f"{{{{{QUERY}}}}}",
                    ),
                ),
                width=12,
                height=8,
                min=0,
                steps=(("green", None), ("orange", 1.0)),
                custom={"drawStyle": "bars", "fillOpacity": 80},
            ),
            Panel(
                title="Shortened label values",
                kind="timeseries",
                description=(
                    "Usernames and tags longer than --max-label-length bytes, exported as a "
                    "prefix, '…' and a hash of the whole value (increase of "
                    f"{LABEL_VALUES_TRUNCATED.name} per query; each shortened value counts "
                    "once per run of its query). See docs/label-values.md."
                ),
                targets=(
                    Target(
                        f"sum by ({label(LABEL_VALUES_TRUNCATED, 'query')}) "
                        f"(increase({sel(LABEL_VALUES_TRUNCATED)}[{RATE}]))",
                        f"{{{{{QUERY}}}}}",
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

_TIMESERIES_CUSTOM: Mapping[str, Any] = {
    "drawStyle": "line",
    "lineInterpolation": "linear",
    "lineWidth": 1,
    "fillOpacity": 10,
    "gradientMode": "none",
    "showPoints": "never",
    "pointSize": 4,
    "spanNulls": False,
    "stacking": {"mode": "none", "group": "A"},
    "axisPlacement": "auto",
    "axisLabel": "",
    "scaleDistribution": {"type": "linear"},
    "thresholdsStyle": {"mode": "off"},
}


def _number(value: float | None) -> float | int | None:
    """Whole numbers as JSON integers (``10000``, not ``10000.0``)."""
    return int(value) if value is not None and float(value).is_integer() else value


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = []
    for index, target in enumerate(panel.targets):
        item: dict[str, Any] = {
            "refId": chr(ord("A") + index),
            "datasource": DATASOURCE,
            "editorMode": "code",
            "expr": target.expr,
            "legendFormat": target.legend or "__auto",
            "range": not target.instant,
            "instant": target.instant,
        }
        if target.table:
            item["format"] = "table"
        targets.append(item)
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "color": {"mode": "thresholds" if panel.kind != "timeseries" else "palette-classic"},
        "thresholds": {
            "mode": "absolute",
            "steps": [{"color": color, "value": _number(value)} for color, value in panel.steps],
        },
        "mappings": list(panel.mappings),
    }
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    if panel.min is not None:
        defaults["min"] = _number(panel.min)
    options: dict[str, Any] = dict(panel.options)
    if panel.kind == "timeseries":
        defaults["custom"] = {**_TIMESERIES_CUSTOM, **panel.custom}
        options = {
            "legend": {
                "showLegend": True,
                "displayMode": "table",
                "placement": "right",
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
            **options,
        }
    elif panel.kind == "table":
        defaults["custom"] = {"align": "auto", "cellOptions": {"type": "auto"}}
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": targets,
        "transformations": list(panel.transformations),
    }


def _variable(name: str, label_text: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label_text,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "includeAll": True,
        "allValue": ".+",
        "multi": True,
        "current": {},
        "options": [],
        "hide": 0,
        "skipUrlSync": False,
    }


DASHBOARD_DESCRIPTION = (
    "Business metrics of the Twitter-like platform (top users, trending hashtags, "
    "activity) and the health of tw-exporter. Generated by tools/monitoring.py."
)


def panels_markdown() -> str:
    """The README's table of dashboard panels, from the same definitions as the JSON."""
    rows = ["| row | panel | type | shows |", "| --- | --- | --- | --- |"]
    for row in ROWS:
        for panel in row.panels:
            shows = " ".join(panel.description.split())
            rows.append(f"| {row.title} | {panel.title} | {panel.kind} | {shows} |")
    return "\n".join(rows) + "\n"


def build_dashboard(
    rows: Sequence[Row] | None = None,
    *,
    uid: str = DASHBOARD_UID,
    title: str = "tw-exporter",
    description: str = DASHBOARD_DESCRIPTION,
) -> dict[str, Any]:
    """The dashboard JSON; other rows, uid and title make a companion dashboard with the same
    variables (``tools.custom_monitoring`` builds one for a queries file)."""
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for row in ROWS if rows is None else rows:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel_json(panel, next_id, x, y))
            next_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return {
        "id": None,
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["tw-exporter", "postgresql", "prometheus"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "30s",
        "schemaVersion": DASHBOARD_SCHEMA_VERSION,
        "version": 1,
        "weekStart": "",
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "regex": "",
                    "current": {},
                    "options": [],
                    "refresh": 1,
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                    "skipUrlSync": False,
                },
                _variable("job", "Job", f"label_values({UP.name}, job)"),
                _variable(
                    "instance", "Instance", f'label_values({UP.name}{{job=~"$job"}}, instance)'
                ),
            ]
        },
        "panels": panels,
    }


def render_dashboard() -> str:
    return json.dumps(build_dashboard(), indent=2, ensure_ascii=False) + "\n"


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def expand_variables(expr: str, variables: Mapping[str, str]) -> str:
    """Substitute Grafana's ``$name`` / ``${name}`` variables the way a panel query is sent
    (e.g. ``{"job": "tw-exporter", "__rate_interval": "15s"}``); unknown names are an error."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"no value for dashboard variable ${name} in {expr!r}")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


# ---------------------------------------------------------------- files and CLI


def generated_files() -> dict[Path, str]:
    dashboard = render_dashboard()
    return {
        RULES_PATH: render_rules(),
        HELM_RULES_PATH: render_helm_rules(),
        HELM_THRESHOLDS_PATH: render_thresholds(),
        DASHBOARD_PATH: dashboard,
        HELM_DASHBOARD_PATH: dashboard,
    }


def stale_files(root: Path = ROOT) -> list[Path]:
    """Generated files missing on disk or differing from what would be generated."""
    stale = []
    for path, content in generated_files().items():
        target = root / path
        if not target.is_file() or target.read_text(encoding="utf-8") != content:
            stale.append(path)
    return stale


def write_files(root: Path = ROOT) -> list[Path]:
    written = []
    for path, content in generated_files().items():
        target = root / path
        if target.is_file() and target.read_text(encoding="utf-8") == content:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.monitoring",
        description="Generate tw-exporter's alert rules, Helm rule template and dashboard.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a generated file is missing or out of date",
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.root)
        for path in stale:
            print(f"out of date: {path} (run: python -m tools.monitoring)", file=sys.stderr)
        return 1 if stale else 0
    for path in write_files(args.root):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
