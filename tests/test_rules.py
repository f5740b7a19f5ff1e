"""The alert rules: promtool-valid, unit-tested alert by alert, built only from catalogue metrics,
and in step with their generator and the Helm template the chart renders."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.db.failures import FAILURE_REASONS
from exporter.expose.catalog import ALL_METRICS, all_sample_names, sample_names
from exporter.monitoring.alerts import ALERTS
from exporter.monitoring.files import stale_files, write_files
from exporter.monitoring.params import DEFAULTS
from exporter.monitoring.paths import (
    HELM_RULES_PATH,
    HELM_THRESHOLDS_PATH,
    RULES_PATH,
    RULES_TEST_PATH,
)
from exporter.monitoring.promql import REASON_TIMEOUT, promql_metric_names
from exporter.monitoring.render import render_rules, runbook_markdown
from tests import helpers
from tests.helpers import unavailable
from tools import readme_tables

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / RULES_PATH
RULES_TESTS = ROOT / RULES_TEST_PATH
HELM_FILES = ROOT / HELM_RULES_PATH.parent
TARGET_LABELS = {"job", "instance"}


@pytest.fixture(scope="module")
def promtool() -> str:
    return helpers.promtool()


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def run(*args: str, stdin: str | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_check_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(RULES_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing_and_quiet(rules: list[dict[str, Any]]) -> None:
    tests = yaml.safe_load(RULES_TESTS.read_text(encoding="utf-8"))
    assert tests["rule_files"] == [RULES.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in rules}
    assert names == {alert.name for alert in ALERTS}
    assert names - firing == set(), "alerts without a firing unit test"
    assert names - quiet == set(), "alerts without a quiet unit test"
    assert (firing | quiet) - names == set(), "unit tests for alerts that do not exist"


def test_every_failure_reason_fires_its_own_alert_and_not_the_other() -> None:
    """For each reason of the catalogue a promtool case (run by test_promtool_unit_tests_pass)
    expects a rising count of it to fire the alert that owns it, TwExporterQueryTimeouts for
    ``timeout`` and TwExporterQueryErrors for every other reason (``conflict`` on a hot standby
    included), while the other alert, evaluated at the same time, has no alert for it."""
    errors, timeouts = "TwExporterQueryErrors", "TwExporterQueryTimeouts"
    owner = {r: timeouts if r == REASON_TIMEOUT else errors for r in FAILURE_REASONS}
    tests = yaml.safe_load(RULES_TESTS.read_text(encoding="utf-8"))
    proven: dict[str, str] = {}
    for group in tests["tests"]:
        fired = {
            (case["eval_time"], case["alertname"]): {
                alert["exp_labels"].get("reason") for alert in case.get("exp_alerts") or []
            }
            for case in group.get("alert_rule_test", [])
        }
        for (time, name), reasons in fired.items():
            other = timeouts if name == errors else errors
            for reason in reasons:
                if owner.get(reason) == name and reason not in fired.get((time, other), {reason}):
                    proven[reason] = group["name"]
    assert set(proven) == set(FAILURE_REASONS), (
        f"reasons without a case that fires their own alert only: "
        f"{set(FAILURE_REASONS) - set(proven)}"
    )
    assert "conflict" in proven["conflict"]


def test_rules_use_only_catalogue_metrics(rules: list[dict[str, Any]]) -> None:
    known = all_sample_names() | {"up"}
    for rule in rules:
        used = promql_metric_names(rule["expr"])
        assert used, rule["alert"]
        assert used <= known, f"{rule['alert']} uses unknown metrics {used - known}"


def test_annotations_only_name_labels_the_alert_has(rules: list[dict[str, Any]]) -> None:
    by_sample = {name: spec for spec in ALL_METRICS for name in sample_names(spec)}
    for rule in rules:
        used = promql_metric_names(rule["expr"]) - {"up"}
        available = TARGET_LABELS.union(*(by_sample[name].labels for name in used))
        if rule["expr"].startswith("absent("):
            available = set()
        for text in rule["annotations"].values():
            referenced = set(re.findall(r"\$labels\.(\w+)", text))
            assert referenced <= available, f"{rule['alert']}: {referenced - available}"


def test_every_alert_is_documented_and_routable(rules: list[dict[str, Any]]) -> None:
    base = str(DEFAULTS["runbookBaseUrl"])
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"Tw[A-Za-z]+", name)
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}
        assert annotations["runbook_url"] == f"{base}#runbook-{name.lower()}"
        assert annotations["summary"].strip() and annotations["description"].strip()


def test_runbook_has_a_section_per_alert() -> None:
    text = runbook_markdown()
    for alert in ALERTS:
        assert f'<a id="runbook-{alert.name.lower()}"></a>' in text
        assert f"### {alert.name}\n" in text


def test_generated_files_are_up_to_date() -> None:
    result = run(sys.executable, "-m", "exporter.monitoring", "--check")
    assert result.returncode == 0, result.stderr


def test_check_mode_reports_missing_or_edited_files(tmp_path: Path) -> None:
    result = run(sys.executable, "-m", "exporter.monitoring", "--check", "--root", str(tmp_path))
    assert result.returncode == 1
    assert str(RULES_PATH) in result.stderr
    assert write_files(tmp_path)
    assert stale_files(tmp_path) == []
    (tmp_path / RULES_PATH).write_text("groups: []\n", encoding="utf-8")
    assert stale_files(tmp_path) == [RULES_PATH]


def test_thresholds_file_lists_every_parameter_default() -> None:
    values = yaml.safe_load((ROOT / HELM_THRESHOLDS_PATH).read_text(encoding="utf-8"))
    assert values == dict(DEFAULTS)


def test_render_rules_overrides_thresholds(promtool: str, tmp_path: Path) -> None:
    text = render_rules(
        {
            "followersMilestone": 5,
            "hashtagSurgeWindow": "5m",
            "exporterJobRegex": "demo",
            "haBridgeWindow": "7m",
        },
        for_override="0s",
    )
    assert "(last_over_time(tw_user_followers[7m])) >= 5\n" in text
    assert "offset 5m" in text
    assert 'up{job=~"demo"} == 0' in text
    assert set(re.findall(r"^    for: (\S+)$", text, re.MULTILINE)) == {"0s"}
    path = tmp_path / "rules.yml"
    path.write_text(text, encoding="utf-8")
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    with pytest.raises(KeyError, match="unknownKey"):
        render_rules({"unknownKey": 1})
    with pytest.raises(ValueError, match="whole number"):
        render_rules({"followersMilestone": 1.5})


def test_promql_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (query, le) (rate(a_bucket{job=~"$job"}[5m]))) '
        "> on (job, instance) group_left () 3 * b offset 1h and c unless absent(d) or e[1m:]"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b", "c", "d", "e"}
    assert promql_metric_names('time() - x{y="z"} > bool 1e6') == {"x"}


def _render_helm_template(values: dict[str, Any], chart_dir: Path) -> Any:
    try:
        from helm_python import Chart
    except ImportError:  # pragma: no cover - depends on the environment
        unavailable("helm-python-sdk is not installed (pip install -e '.[test]')")
    (chart_dir / "templates").mkdir(parents=True)
    shutil.copytree(HELM_FILES, chart_dir / "files")
    (chart_dir / "Chart.yaml").write_text(
        "apiVersion: v2\nname: rules-check\nversion: 0.1.0\n", encoding="utf-8"
    )
    # What the chart does with the file: tpl with .Values in scope.
    (chart_dir / "templates" / "rules.yaml").write_text(
        '{{ tpl (.Files.Get "files/prometheus-rules.yaml.tpl") . }}\n', encoding="utf-8"
    )
    rendered = Chart.load(chart_dir).render(
        {"prometheusRule": {"thresholds": values}}, name="t", namespace="default"
    )
    return yaml.safe_load(rendered["rules-check/templates/rules.yaml"])


def test_helm_template_renders_to_the_rules_file(tmp_path: Path) -> None:
    defaults = yaml.safe_load((ROOT / HELM_THRESHOLDS_PATH).read_text(encoding="utf-8"))
    rendered = _render_helm_template(defaults, tmp_path / "defaults")
    assert rendered == yaml.safe_load(RULES.read_text(encoding="utf-8"))

    # Helm reads numbers as float64: large ones must still print as plain integers.
    custom = {**defaults, "followersMilestone": 25_000_000, "followerDropRatio": 0.25}
    rendered = _render_helm_template(custom, tmp_path / "custom")
    assert rendered == yaml.safe_load(render_rules(custom))
    texts = yaml.safe_dump(rendered)
    assert "25000000" in texts
    assert "e+" not in texts


@pytest.mark.parametrize(
    ("page", "table"),
    [
        ("docs/prometheus-and-alerts.md", readme_tables.alerts_table),
        ("docs/prometheus-and-alerts.md", readme_tables.alert_parameters_table),
        ("docs/grafana.md", readme_tables.panels_table),
    ],
)
def test_docs_alert_parameter_and_panel_tables_are_generated(
    page: str, table: Callable[[], str]
) -> None:
    """The docs' tables of alerts (expressions with the defaults filled in), of their
    parameters and of the dashboard's panels are the generator's, so they cannot drift from
    the shipped rules and dashboard."""
    text = (ROOT / page).read_text(encoding="utf-8")
    rows = [line for line in table().splitlines() if line.startswith("|")]
    assert len(rows) > 3
    for row in rows:
        assert row in text, (
            f"{page} row out of date (python -m tools.readme_tables --write):\n{row}"
        )


def test_the_alert_texts_file_is_refused_when_it_and_the_code_disagree(tmp_path: Path) -> None:
    """``alerts.toml`` holds every alert but its PromQL; a table without PromQL (or PromQL
    without a table), a missing key, an unknown severity or an unknown ``[[name]]`` is refused
    with the alert named, so a mistake fails the generator's ``--check``, never a rules file."""
    from exporter.monitoring.alerts import TEXTS_PATH, load_groups

    shipped = TEXTS_PATH.read_text()
    first = ALERTS[0].name

    def refused(text: str) -> str:
        path = tmp_path / "alerts.toml"
        path.write_text(text)
        with pytest.raises(ValueError, match=r"^alerts\.toml: ") as caught:
            load_groups(path)
        return str(caught.value)

    assert [a.name for g in load_groups(TEXTS_PATH) for a in g.alerts] == [a.name for a in ALERTS]
    assert "TwNotAnAlert" in refused(shipped + '\n[health.TwNotAnAlert]\nfor = "5m"\n')
    assert first in refused(shipped.replace(f".{first}]", ".TwRenamed]"))
    assert f"{first}" in refused(shipped.replace('severity = "info"', 'severity = "page"', 1))
    assert "[[nope]]" in refused(shipped.replace("[[tw_exporter_leader]]", "[[nope]]"))
    assert "summary" in refused(shipped.replace("summary =", "sumary =", 1))
    moved = shipped.replace("[health.TwExporterNoLeader]", "[business.TwExporterNoLeader]")
    assert "TwExporterNoLeader" in refused(
        moved + shipped[shipped.index("[health.TwExporterNoLeader]") :]
    )
