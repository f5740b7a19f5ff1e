"""``tw-exporter monitoring``: a dashboard and alert rules for a queries file's metrics, the
rules checked by promtool against hand-written expectations (the example file's thresholds,
summaries and labels written out here, not taken from the generator), HA takeovers included."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from exporter import cli
from exporter.monitoring.custom import DASHBOARD_FILE, RULES_FILE, TESTS_FILE
from exporter.monitoring.dashboard import build_dashboard
from exporter.monitoring.grafana import iter_panels
from exporter.monitoring.promql import promql_metric_names
from tests import helpers

REPO = Path(__file__).resolve().parent.parent
ACTIVITY = REPO / "examples" / "queries" / "activity.yml"

# For examples/queries/activity.yml. Replica a leads, then is gone (stale marker); after a gap
# replica b, the new leader, exports the same rows. Without --ha both replicas export them at
# once. Either way an alert fires once, with no instance label, and keeps its `for:`.
HAND_WRITTEN_TESTS = """
rule_files: [custom.rules.yml]
evaluation_interval: 1m
tests:
  - name: daily active users below 1 for 1h fires through a takeover at 30m, once
    interval: 1m
    input_series:
      - series: 'tw_daily_active_users{job="tw-exporter", instance="a:10093", pod="tw-a"}'
        values: '0x30 stale'
      - series: 'tw_daily_active_users{job="tw-exporter", instance="b:10093", pod="tw-b"}'
        values: '_x32 0x40'
      - series: 'tw_daily_active_users{job="other", instance="c:10093"}'
        values: '3x72'
    alert_rule_test:
      - eval_time: 58m
        alertname: TwDailyActiveUsersLow
        exp_alerts: []
      - eval_time: 61m
        alertname: TwDailyActiveUsersLow
        exp_alerts:
          - exp_labels: {severity: warning, job: tw-exporter}
            exp_annotations:
              summary: Nobody tweeted within the last day
              description: >-
                Distinct users who tweeted within the last day. It is below the threshold 1
                (custom query daily_active_users).

  - name: tweets of the last hour below 1 for 2h fires once per row, not per replica
    interval: 1m
    input_series:
      - series: 'tw_tweets_last_hour{job="tw", instance="a", verified="false", window="1h"}'
        values: '0x125'
      - series: 'tw_tweets_last_hour{job="tw", instance="b", verified="false", window="1h"}'
        values: '0x125'
      - series: 'tw_tweets_last_hour{job="tw", instance="a", verified="true", window="1h"}'
        values: '4x125'
      - series: 'tw_tweets_last_hour{job="tw", instance="b", verified="true", window="1h"}'
        values: '4x125'
    alert_rule_test:
      - eval_time: 118m
        alertname: TwTweetsLastHourLow
        exp_alerts: []
      - eval_time: 121m
        alertname: TwTweetsLastHourLow
        exp_alerts:
          - exp_labels: {severity: warning, job: tw, verified: 'false', window: 1h}
            exp_annotations:
              summary: tw_tweets_last_hour is below 1 (verified=false, window=1h)
              description: >-
                Tweets created within the last hour, by whether their author is verified. It
                is below the threshold 1 (custom query tweets_last_hour).

  - name: tweets created faster than 1000/s for 5m fires through a takeover; 500/s does not
    interval: 1m
    input_series:
      # 2000 tweets/s: 120000 a minute, the database's count whichever replica reads it
      - series: 'tw_tweets_created_total{job="tw-exporter", instance="a:10093"}'
        values: '0+120000x6 stale'
      - series: 'tw_tweets_created_total{job="tw-exporter", instance="b:10093"}'
        values: '_x8 960000+120000x20'
      - series: 'tw_tweets_created_total{job="other", instance="c:10093"}'
        values: '0+30000x28'
    alert_rule_test:
      - eval_time: 6m
        alertname: TwTweetsCreatedTotalHigh
        exp_alerts: []
      - eval_time: 14m
        alertname: TwTweetsCreatedTotalHigh
        exp_alerts:
          - exp_labels: {severity: critical, job: tw-exporter}
            exp_annotations:
              summary: tw_tweets_created_total is above 1000
              description: >-
                Tweets ever created (rows in tw_tweets). It is above the threshold 1000 (per
                second, over 5m) (custom query tweets_created).
"""


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("monitoring")
    assert cli.main(["monitoring", "--queries-file", str(ACTIVITY), "--out", str(out)]) == 0
    return out


def _promtool(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helpers.promtool(), *args], cwd=directory, capture_output=True, text=True, timeout=60
    )


def test_rules_pass_promtool_check_and_their_generated_tests(generated: Path) -> None:
    for args in (["check", "rules", RULES_FILE], ["test", "rules", TESTS_FILE]):
        result = _promtool(generated, *args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_rules_meet_hand_written_expectations_across_replicas(generated: Path) -> None:
    (generated / "hand-written.test.yml").write_text(HAND_WRITTEN_TESTS)
    result = _promtool(generated, "test", "rules", "hand-written.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_generated_tests_cover_a_takeover_for_each_rule(generated: Path) -> None:
    tests = yaml.safe_load((generated / TESTS_FILE).read_text())["tests"]
    names = [test["name"] for test in tests]
    for alert in ("TwTweetsLastHourLow", "TwDailyActiveUsersLow", "TwTweetsCreatedTotalHigh"):
        assert f"{alert} keeps its for clause through an HA takeover" in names
        takeover = tests[names.index(f"{alert} keeps its for clause through an HA takeover")]
        instances = {
            s["series"].split('instance="')[1].split('"')[0] for s in takeover["input_series"]
        }
        assert len(instances) == 2, takeover
    assert len(tests) == 9  # each rule firing, quiet, and firing through a takeover


def test_one_rule_per_declared_threshold_read_across_replicas(generated: Path) -> None:
    document = yaml.safe_load((generated / RULES_FILE).read_text())
    rules = {r["alert"]: r for g in document["groups"] for r in g["rules"]}
    assert set(rules) == {
        "TwTweetsLastHourLow",
        "TwDailyActiveUsersLow",
        "TwTweetsCreatedTotalHigh",
    }
    assert rules["TwDailyActiveUsersLow"]["expr"] == (
        "max without (instance, pod) (last_over_time(tw_daily_active_users[2m])) < 1"
    )
    assert rules["TwDailyActiveUsersLow"]["for"] == "3600s"
    assert rules["TwTweetsCreatedTotalHigh"]["expr"] == (
        "rate((max without (instance, pod) (last_over_time(tw_tweets_created_total[2m])))[5m:])"
        " > 1000"
    )
    assert rules["TwTweetsCreatedTotalHigh"]["labels"] == {"severity": "critical"}
    for rule in rules.values():
        assert "instance" not in json.dumps(rule["annotations"]), rule


def test_dashboard_has_one_series_per_row_of_each_custom_metric(generated: Path) -> None:
    dashboard = json.loads((generated / DASHBOARD_FILE).read_text())
    panels = list(iter_panels(dashboard))
    queries = {p["title"]: p["targets"][0] for p in panels if p.get("targets")}
    assert set(queries) == {
        "tw_tweets_last_hour",
        "tw_daily_active_users",
        "tw_tweets_created_total",
        "tw_user_max_likes",
        "tw_user_liked_tweets",
    }
    selector = '{job=~"$job", instance=~"$instance"}'
    assert queries["tw_tweets_last_hour"]["expr"] == (
        f"max by (verified, window) (tw_tweets_last_hour{selector})"
    )
    assert queries["tw_tweets_last_hour"]["legendFormat"] == "{{verified}} {{window}}"
    assert (
        queries["tw_user_max_likes"]["expr"] == f"max by (username) (tw_user_max_likes{selector})"
    )
    assert queries["tw_tweets_created_total"]["expr"] == (
        f"max(rate(tw_tweets_created_total{selector}[$__rate_interval]))"
    )
    assert queries["tw_tweets_created_total"]["legendFormat"] == "tw_tweets_created_total"
    main = build_dashboard()
    assert dashboard["templating"] == main["templating"]
    assert dashboard["uid"] != main["uid"]
    for title, target in queries.items():
        assert promql_metric_names(target["expr"]) == {title}, target["expr"]


def test_an_invalid_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "q.yml"
    path.write_text("queries: {q: {sql: 'SELECT 1 AS m', metrics: {m: {help: h, alert: {}}}}}")
    with pytest.raises(SystemExit) as caught:
        cli.main(["monitoring", "--queries-file", str(path), "--out", str(tmp_path / "out")])
    assert caught.value.code == 2
    assert "field metrics.m.alert: give exactly one of above or below" in capsys.readouterr().err
