"""The alert rules: each alert's PromQL, ``for:``, severity, annotations and runbook text.

Expressions name metrics only through the catalogue (``exporter.expose.health`` and the collectors'
``MetricSpec`` constants) and parameters only as ``<<key>>`` (``params.PARAMS``);
``render`` turns them into the rules file, the Helm template and the README's tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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


@dataclass(frozen=True)
class Alert:
    """One alerting rule; in a shipped alert ``<<key>>`` in any text is a parameter from
    ``PARAMS`` (an alert generated for a queries file has its values filled in already, and its
    texts are the file's, rendered as written)."""

    name: str
    expr: str
    for_: str
    severity: Literal["info", "warning", "critical"]
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
{_UNLESS_DATABASE_DOWN}
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
{_failing_share(f'!="{REASON_TIMEOUT}"')}
{_UNLESS_DATABASE_DOWN}
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
                f"reason {reason_list(ERROR_REASONS)} (every reason but `timeout`; for "
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
{_failing_share(f'="{REASON_TIMEOUT}"')}
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
                "the query (built-ins: `exporter/collectors/`; custom ones: your queries "
                "file) on the database; `tw-exporter check` gives index advice; add the "
                "missing index, or raise `--query-timeout` and `--interval` together.",
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
        Alert(
            name="TwExporterNoLeader",
            expr=f"max by (job) ({LEADER.name}{_TARGET}) == 0",
            for_="5m",
            severity="critical",
            summary="No tw-exporter replica of job {{ $labels.job }} leads: no business metrics",
            description=(
                "Every scraped replica of job {{ $labels.job }} has been an HA follower "
                f"({LEADER.name} == 0) for 5 minutes: nobody runs the queries, so business "
                "metrics are absent."
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
        ),
    ),
)

GROUPS: tuple[Group, ...] = (BUSINESS, HEALTH)
ALERTS: tuple[Alert, ...] = tuple(a for g in GROUPS for a in g.alerts)
