"""The exporter's own health metrics: whether the database answered, how long queries took,
why they failed and how fresh each query's data is.

These are long-lived prometheus_client objects because their label sets are fixed (one per
query, one per failure reason) and pre-created, so ``rate()`` and absence alerts work from the
first scrape. Business series are *not* kept this way: they are rebuilt from each result (see
``snapshot``), so rows that vanish from the database vanish from ``/metrics``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from exporter import __version__
from exporter.collectors.base import MetricSpec
from exporter.db.failures import FAILURE_REASON_MEANINGS, FAILURE_REASONS

QUERY_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

UP = MetricSpec(
    "tw_up",
    "gauge",
    "1 when the database answered: the most recent attempt of at least one query got an "
    "answer from the server (its rows, or an error it sent such as a statement timeout or a "
    "missing table); 0 when the most recent attempt of every query got none (connection "
    "refused or lost, connect timeout, or no answer within the client deadline).",
)
QUERY_DURATION = MetricSpec(
    "tw_exporter_query_duration_seconds",
    "histogram",
    "Wall time of each business query, including waiting for a pooled connection.",
    ("query",),
)
QUERY_ERRORS = MetricSpec(
    "tw_exporter_query_errors_total",
    "counter",
    "Failed runs of each business query by reason: "
    + ", ".join(f"{reason} ({meaning})" for reason, meaning in FAILURE_REASON_MEANINGS.items())
    + ".",
    ("query", "reason"),
)
QUERY_WAIT = MetricSpec(
    "tw_exporter_query_wait_seconds",
    "histogram",
    "Time each business query waited for a usable server connection: the pool acquire (and "
    "connect) plus the transaction's first round trip, where a transaction pooler such as "
    "PgBouncer queues a client until a server connection is free.",
    ("query",),
)
QUERY_RUN = MetricSpec(
    "tw_exporter_query_run_seconds",
    "histogram",
    "Time each business query's statement ran (with the rollback that ends it) once it had a "
    "server connection; with tw_exporter_query_wait_seconds it tells a saturated pool or "
    "pooler apart from a slow query.",
    ("query",),
)
QUERY_LAST_SUCCESS = MetricSpec(
    "tw_exporter_query_last_success_timestamp_seconds",
    "gauge",
    "Unix time of each query's last successful run; its series stop being served after "
    "--max-staleness without a success.",
    ("query",),
)
CYCLE_DURATION = MetricSpec(
    "tw_exporter_cycle_duration_seconds",
    "gauge",
    "Wall time of each query's last scheduled run (its cycle), including waiting for a "
    "pooled connection; compare with tw_exporter_query_interval_seconds.",
    ("query",),
)
CYCLES_SKIPPED = MetricSpec(
    "tw_exporter_cycles_skipped_total",
    "counter",
    "Scheduled runs of each query skipped because its previous run was still running (or, "
    "rarely, because the tick came too late to run: the process stood still); the log line "
    "says which.",
    ("query",),
)
CLOCK_STEPS = MetricSpec(
    "tw_exporter_clock_steps_total",
    "counter",
    "Wall-clock steps of more than a second noticed against the monotonic clock (an NTP "
    "step, a VM restored, a manual date change); every query's schedule was moved with the "
    "step, so it kept its interval.",
)
QUERY_INTERVAL = MetricSpec(
    "tw_exporter_query_interval_seconds",
    "gauge",
    "Each query's own interval (queries file, else --interval): how often it runs.",
    ("query",),
)
RELOAD_SUCCESSFUL = MetricSpec(
    "tw_exporter_config_last_reload_successful",
    "gauge",
    "1 when the last reload of the queries file and web config (SIGHUP or POST /-/reload) "
    "succeeded or none happened, 0 when the files were invalid and the old ones kept running.",
)
RELOAD_SUCCESS_TIMESTAMP = MetricSpec(
    "tw_exporter_config_last_reload_success_timestamp_seconds",
    "gauge",
    "Unix time of the last successful configuration load (the start counts as one).",
)
DSN_RELOADS = MetricSpec(
    "tw_exporter_dsn_reloads_total",
    "counter",
    "Times a re-read of the DSN file (--dsn-file; the HA lock's too when it uses it) brought "
    "a new DSN into use: the file changed (a rotated Secret), SIGHUP, or the server rejected "
    "the password. New connections use it; open ones are replaced as they come back.",
)
DSN_RELOAD_FAILURES = MetricSpec(
    "tw_exporter_dsn_reload_failures_total",
    "counter",
    "Re-reads of the DSN file that failed (unreadable, not one line, not a valid URI): the "
    "previous DSN stays in use.",
)
INTERVAL = MetricSpec(
    "tw_exporter_interval_seconds",
    "gauge",
    "Configured collection interval (--interval): how often business values refresh.",
)
LABEL_VALUES_TRUNCATED = MetricSpec(
    "tw_exporter_label_values_truncated_total",
    "counter",
    "Label values (usernames, tags) longer than --max-label-length bytes that were exported "
    "shortened to a prefix plus a hash, counted once per value per run of the query.",
    ("query",),
)
LEADER = MetricSpec(
    "tw_exporter_leader",
    "gauge",
    "1 on the replica that runs the queries: the leader of its --ha group (it holds the "
    "group's advisory lock), or any exporter without --ha; 0 on a follower, which serves no "
    "business series and whose tw_up means its lock connection's database answered.",
)
BUILD_INFO = MetricSpec(
    "tw_exporter_build_info",
    "gauge",
    "Always 1; the version label tells which tw-exporter build is running.",
    ("version",),
)

HEALTH_METRICS: tuple[MetricSpec, ...] = (
    UP,
    QUERY_DURATION,
    QUERY_WAIT,
    QUERY_RUN,
    QUERY_ERRORS,
    QUERY_LAST_SUCCESS,
    CYCLE_DURATION,
    CYCLES_SKIPPED,
    CLOCK_STEPS,
    INTERVAL,
    QUERY_INTERVAL,
    RELOAD_SUCCESSFUL,
    RELOAD_SUCCESS_TIMESTAMP,
    DSN_RELOADS,
    DSN_RELOAD_FAILURES,
    BUILD_INFO,
    LABEL_VALUES_TRUNCATED,
    LEADER,
)


def _registered_name(spec: MetricSpec) -> str:
    """prometheus_client appends ``_total`` to counters itself."""
    return spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name


# Name, help and labels of each health metric come from its catalogue entry, never retyped.
def _gauge(spec: MetricSpec, registry: CollectorRegistry) -> Gauge:
    return Gauge(_registered_name(spec), spec.help, list(spec.labels), registry=registry)


def _counter(spec: MetricSpec, registry: CollectorRegistry) -> Counter:
    return Counter(_registered_name(spec), spec.help, list(spec.labels), registry=registry)


def _histogram(spec: MetricSpec, registry: CollectorRegistry) -> Histogram:
    return Histogram(
        _registered_name(spec),
        spec.help,
        list(spec.labels),
        buckets=QUERY_DURATION_BUCKETS,
        registry=registry,
    )


class Answered:
    """Whether the most recent attempt of each query got an answer from the server.

    ``tw_up`` is derived from these per-query flags rather than from a cycle's outcome, so it
    stays right when queries run on schedules of their own: each run updates only its query's
    flag. A query not attempted yet does not count.
    """

    def __init__(self) -> None:
        self._latest: dict[str, bool] = {}

    def record(self, query: str, answered: bool) -> None:
        self._latest[query] = answered

    def clear(self) -> None:
        self._latest.clear()

    def forget(self, query: str) -> None:
        """A query removed by a reload no longer counts."""
        self._latest.pop(query, None)

    @property
    def up(self) -> bool:
        return any(self._latest.values())

    def attempted(self, query: str) -> bool:
        """Whether ``query`` has had an attempt (since it was added or this replica led)."""
        return query in self._latest


class HealthMetrics:
    """Owns the health metric objects, registered in the exporter's private registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        interval_seconds: float,
        queries: Mapping[str, float],
    ) -> None:
        """``queries``: each defined query's interval (its series are created now); no
        query is assumed, so a configuration without the built-ins shows none of theirs."""
        self.up = _gauge(UP, registry)
        self.answered = Answered()
        self.query_duration = _histogram(QUERY_DURATION, registry)
        self.query_wait = _histogram(QUERY_WAIT, registry)
        self.query_run = _histogram(QUERY_RUN, registry)
        self.query_errors = _counter(QUERY_ERRORS, registry)
        self.query_last_success = _gauge(QUERY_LAST_SUCCESS, registry)
        self.cycle_duration = _gauge(CYCLE_DURATION, registry)
        self.cycles_skipped = _counter(CYCLES_SKIPPED, registry)
        self.clock_steps = _counter(CLOCK_STEPS, registry)
        self.query_interval = _gauge(QUERY_INTERVAL, registry)
        self.reload_successful = _gauge(RELOAD_SUCCESSFUL, registry)
        self.reload_successful.set(1)
        self.reload_success_timestamp = _gauge(RELOAD_SUCCESS_TIMESTAMP, registry)
        self.reload_success_timestamp.set_to_current_time()
        self.dsn_reloads = _counter(DSN_RELOADS, registry)
        self.dsn_reload_failures = _counter(DSN_RELOAD_FAILURES, registry)
        interval = _gauge(INTERVAL, registry)
        interval.set(interval_seconds)
        build_info = _gauge(BUILD_INFO, registry)
        build_info.labels(version=__version__).set(1)
        self.label_values_truncated = _counter(LABEL_VALUES_TRUNCATED, registry)
        self.leader = _gauge(LEADER, registry)
        self.leader.set(1)
        self.leading = True
        for query, seconds in queries.items():
            self.add_query(query, seconds)

    def add_query(self, query: str, interval_seconds: float) -> None:
        """Pre-create a query's series so ``rate()`` and absence alerts work from the start."""
        self.label_values_truncated.labels(query=query)
        self.query_duration.labels(query=query)
        self.query_wait.labels(query=query)
        self.query_run.labels(query=query)
        self.query_last_success.labels(query=query)
        self.cycle_duration.labels(query=query)
        self.cycles_skipped.labels(query=query)
        self.query_interval.labels(query=query).set(interval_seconds)
        for reason in FAILURE_REASONS:
            self.query_errors.labels(query=query, reason=reason)

    def remove_query(self, query: str) -> None:
        """A query removed by a reload: its health series go with it, and its latest attempt
        no longer counts towards ``tw_up``."""
        for metric in (
            self.label_values_truncated,
            self.query_duration,
            self.query_wait,
            self.query_run,
            self.query_last_success,
            self.cycle_duration,
            self.cycles_skipped,
            self.query_interval,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(query)
        for reason in FAILURE_REASONS:
            with contextlib.suppress(KeyError):
                self.query_errors.remove(query, reason)
        self.forget_attempts(query)

    def forget_attempts(self, query: str) -> None:
        """A query removed by a reload: its latest attempt no longer counts towards ``tw_up``."""
        self.answered.forget(query)
        if self.leading:  # a follower's tw_up follows its lock connection, not the queries
            self.up.set(1 if self.answered.up else 0)

    def record_attempt(self, query: str, answered: bool) -> None:
        """One query attempt ended; ``tw_up`` follows the latest attempt of every query."""
        if not self.leading:  # a run the fence stopped half-way: not counted
            return
        self.answered.record(query, answered)
        self.up.set(1 if self.answered.up else 0)

    def follow(self, lock_answered: bool) -> None:
        """This replica became (or stays) an HA follower: it runs no queries, so ``tw_up``
        follows its lock connection; the query flags start afresh when it leads again."""
        self.leading = False
        self.leader.set(0)
        self.answered.clear()
        self.up.set(1 if lock_answered else 0)

    def lead(self) -> None:
        self.leading = True
        self.leader.set(1)
