"""The alert rules: each alert's PromQL here, its ``for:``, severity, annotations and runbook
text in ``alerts.toml`` beside this file (prose is data; the PromQL is built from the catalogue).

Expressions name metrics only through the catalogue (``exporter.expose.health`` and the collectors'
``MetricSpec`` constants) and parameters only as ``<<key>>`` (``params.PARAMS``);
``render`` turns them into the rules file, the Helm template and the README's tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

from exporter.collectors.platform_stats import PLATFORM_ACTIVE_USERS, PLATFORM_TWEETS
from exporter.expose.health import (
    CYCLE_DURATION,
    CYCLES_SKIPPED,
    LEADER,
    QUERY_ERRORS,
    QUERY_INTERVAL,
    QUERY_LAST_SUCCESS,
    UP,
)
from exporter.monitoring.promql import (
    ERROR_REASONS,
    FOLLOWERS,
    HASHTAGS,
    REASON,
    REASON_TIMEOUT,
    REPLICA_LABELS,
    across_replicas,
    reason_list,
)
from exporter.monitoring.texts import METRIC_NAMES, fill, load

Severity = Literal["info", "warning", "critical"]


@dataclass(frozen=True)
class Alert:
    """One alerting rule; in a shipped alert ``<<key>>`` in any text is a parameter from
    ``PARAMS`` (an alert generated for a queries file has its values filled in already, and its
    texts are the file's, rendered as written)."""

    name: str
    expr: str
    for_: str
    severity: Severity
    summary: str
    description: str
    runbook: tuple[str, str, str] | None = None
    """Meaning, likely causes and what to do, for the runbook page; every shipped alert has
    one (and a ``runbook_url``), an alert generated for a queries file has none."""

    @property
    def anchor(self) -> str:
        """The runbook section's HTML anchor, which every ``runbook_url`` links to."""
        return f"runbook-{self.name.lower()}"


@dataclass(frozen=True)
class Group:
    """A Prometheus rule group: the business alerts and the exporter's health alerts."""

    name: str
    alerts: tuple[Alert, ...]


_TARGET = '{job=~"<<exporterJobRegex>>"}'


# An HA follower runs no queries, so per-query alerts must not read its (absent or frozen)
# query series; without --ha every exporter is its own leader (tw_exporter_leader 1).
_UNLESS_FOLLOWER = f"unless on (job, instance)\n{LEADER.name} == 0"
# When the database answers nothing, TwExporterDatabaseDown says so, not every query's alert.
_UNLESS_DATABASE_DOWN = f"unless on (job, instance)\n{UP.name} == 0"


def _failing_share(reasons: str) -> str:
    """A query's runs failing with ``reasons`` (a matcher on ``reason``) over 5 minutes, as a
    share of its runs: errors per second times its own interval, so a query run every 5
    minutes that fails once in 5 minutes fails every run, not one in ten."""
    return (
        f"rate({QUERY_ERRORS.name}{{{REASON}{reasons}}}[5m])\n"
        "* on (job, instance, query) group_left ()\n"
        f"{QUERY_INTERVAL.name}\n"
        "> <<queryErrorRatio>>"
    )


# Each shipped alert's PromQL, by name; everything else about it is in ``alerts.toml``.
EXPRESSIONS: dict[str, str] = {
    "TwUserFollowersMilestone": f"""
{across_replicas(FOLLOWERS)} >= <<followersMilestone>>
and
min without ({REPLICA_LABELS}) (min_over_time({FOLLOWERS}[<<followersMilestoneWindow>>]))
< <<followersMilestone>>
""",
    "TwUserFollowersDrop": f"""
(
  {across_replicas(FOLLOWERS, "<<followerDropWindow>>")}
  - {across_replicas(FOLLOWERS)}
)
/ {across_replicas(FOLLOWERS, "<<followerDropWindow>>")}
> <<followerDropRatio>>
and
{across_replicas(FOLLOWERS, "<<followerDropWindow>>")} >= <<followerDropMinFollowers>>
""",
    "TwHashtagTweetsHigh": f"{across_replicas(HASHTAGS)} >= <<hashtagTweets>>",
    "TwHashtagSurge": f"""
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
    "TwPlatformTweetsLow": f"{across_replicas(PLATFORM_TWEETS.name)} < <<platformTweetsMin>>",
    "TwPlatformActiveUsersLow": (
        f"{across_replicas(PLATFORM_ACTIVE_USERS.name)} < <<platformActiveUsersMin>>"
    ),
    "TwExporterTargetDown": f"up{_TARGET} == 0",
    "TwExporterTargetMissing": f"absent(up{_TARGET})",
    "TwExporterDatabaseDown": f"{UP.name} == 0",
    "TwExporterQueryStale": f"""
(
  time() - {QUERY_LAST_SUCCESS.name}
)
> on (job, instance, query)
(
  <<staleIntervals>> * {QUERY_INTERVAL.name}
)
{_UNLESS_DATABASE_DOWN}
{_UNLESS_FOLLOWER}
""",
    "TwExporterQueryErrors": f"""
{_failing_share(f'!="{REASON_TIMEOUT}"')}
{_UNLESS_DATABASE_DOWN}
{_UNLESS_FOLLOWER}
""",
    "TwExporterQueryTimeouts": f"""
{_failing_share(f'="{REASON_TIMEOUT}"')}
{_UNLESS_FOLLOWER}
""",
    "TwExporterCycleSlow": f"{CYCLE_DURATION.name}\n> on (job, instance, query)\n"
    f"<<cycleDurationRatio>> * {QUERY_INTERVAL.name}\n"
    f"{_UNLESS_FOLLOWER}",
    "TwExporterCyclesSkipped": f"increase({CYCLES_SKIPPED.name}[15m]) > <<skippedCycles>>",
    "TwExporterNoLeader": f"max by (job) ({LEADER.name}{_TARGET}) == 0",
}

# The values, besides the catalogue's metric names, that ``alerts.toml`` quotes as ``[[name]]``.
TEXT_VALUES: dict[str, str] = {**METRIC_NAMES, "errorReasons": reason_list(ERROR_REASONS)}

TEXTS_PATH = Path(__file__).with_name("alerts.toml")
_GROUP_PREFIX = "tw-exporter."
_SEVERITIES = get_args(Severity)


def _alert(name: str, table: dict[str, str], where: str) -> Alert:
    expected = {"for", "severity", "summary", "description", "meaning", "causes", "actions"}
    if set(table) != expected:
        raise ValueError(f"{where}: keys {sorted(table)}, expected {sorted(expected)}")
    severity = table["severity"]
    if severity not in _SEVERITIES:
        raise ValueError(f"{where}: severity {severity!r} is not one of {_SEVERITIES}")
    texts = {
        key: fill(table[key], TEXT_VALUES, f"{where}.{key}")
        for key in expected - {"for", "severity"}
    }
    return Alert(
        name=name,
        expr=EXPRESSIONS[name],
        for_=table["for"],
        severity=cast(Severity, severity),
        summary=texts["summary"],
        description=texts["description"],
        runbook=(texts["meaning"], texts["causes"], texts["actions"]),
    )


def load_groups(path: Path = TEXTS_PATH) -> tuple[Group, ...]:
    """The rule groups: ``alerts.toml``'s tables in their order, each joined with its PromQL.
    A name on one side only, a missing or unknown key, or an unknown ``[[name]]`` is refused
    (the generator's ``--check`` and the tests load it, so a mistake never ships)."""
    document = load(path)
    named = [name for tables in document.values() for name in tables]
    twice = sorted({name for name in named if named.count(name) > 1})
    if twice:
        raise ValueError(f"{path.name}: alerts {twice} are in more than one group")
    if set(named) != set(EXPRESSIONS):
        raise ValueError(
            f"{path.name}: alerts {sorted(set(named) ^ set(EXPRESSIONS))} are named in only one "
            "of alerts.toml and EXPRESSIONS"
        )
    return tuple(
        Group(
            _GROUP_PREFIX + group,
            tuple(
                _alert(name, table, f"{path.name}: {group}.{name}")
                for name, table in tables.items()
            ),
        )
        for group, tables in document.items()
    )


GROUPS: tuple[Group, ...] = load_groups()
ALERTS: tuple[Alert, ...] = tuple(a for g in GROUPS for a in g.alerts)
