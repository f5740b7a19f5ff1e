"""``tw-exporter monitoring``: a dashboard and alert rules for a queries file's metrics, the
rules checked and unit-tested by promtool."""

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


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("monitoring")
    assert cli.main(["monitoring", "--queries-file", str(ACTIVITY), "--out", str(out)]) == 0
    return out


def test_rules_pass_promtool_check_and_their_generated_tests(generated: Path) -> None:
    promtool = helpers.promtool()
    for args in (["check", "rules", RULES_FILE], ["test", "rules", TESTS_FILE]):
        result = subprocess.run(
            [promtool, *args], cwd=generated, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_one_rule_per_declared_threshold_on_the_metric_or_its_rate(generated: Path) -> None:
    document = yaml.safe_load((generated / RULES_FILE).read_text())
    rules = {r["alert"]: r for g in document["groups"] for r in g["rules"]}
    assert set(rules) == {
        "TwTweetsLastHourLow",
        "TwDailyActiveUsersLow",
        "TwTweetsCreatedTotalHigh",
    }
    assert rules["TwDailyActiveUsersLow"]["expr"] == "tw_daily_active_users < 1"
    assert rules["TwDailyActiveUsersLow"]["for"] == "3600s"
    assert rules["TwDailyActiveUsersLow"]["annotations"]["summary"] == (
        "Nobody tweeted within the last day"
    )
    assert rules["TwTweetsCreatedTotalHigh"]["expr"] == "rate(tw_tweets_created_total[5m]) > 1000"
    assert rules["TwTweetsCreatedTotalHigh"]["labels"] == {"severity": "critical"}
    tests = yaml.safe_load((generated / TESTS_FILE).read_text())["tests"]
    assert len(tests) == 3  # each rule firing beyond its threshold and quiet within


def test_dashboard_has_a_panel_per_custom_metric_and_the_main_variables(generated: Path) -> None:
    dashboard = json.loads((generated / DASHBOARD_FILE).read_text())
    panels = list(iter_panels(dashboard))
    titles = {p["title"] for p in panels if p.get("targets")}
    assert titles == {
        "tw_tweets_last_hour",
        "tw_daily_active_users",
        "tw_tweets_created_total",
        "tw_user_max_likes",
        "tw_user_liked_tweets",
    }
    main = build_dashboard()
    assert dashboard["templating"] == main["templating"]
    assert dashboard["uid"] != main["uid"]
    for panel in panels:
        for target in panel.get("targets", []):
            names = promql_metric_names(target["expr"])
            assert names == {panel["title"]}, target["expr"]
    counter = next(p for p in panels if p["title"] == "tw_tweets_created_total")
    assert "rate(tw_tweets_created_total{" in counter["targets"][0]["expr"]


def test_an_invalid_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "q.yml"
    path.write_text("queries: {q: {sql: 'SELECT 1 AS m', metrics: {m: {help: h, alert: {}}}}}")
    with pytest.raises(SystemExit) as caught:
        cli.main(["monitoring", "--queries-file", str(path), "--out", str(tmp_path / "out")])
    assert caught.value.code == 2
    assert "field metrics.m.alert: give exactly one of above or below" in capsys.readouterr().err
