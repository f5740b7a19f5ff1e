"""The Grafana dashboard: importable as is, every query on the chosen data source, built from
catalogue metrics only, and showing every metric the exporter serves."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.expose.catalog import ALL_METRICS, all_sample_names, sample_names
from exporter.monitoring.files import stale_files
from exporter.monitoring.grafana import expand_variables, iter_panels
from exporter.monitoring.paths import DASHBOARD_PATH, HELM_DASHBOARD_PATH
from exporter.monitoring.promql import promql_metric_names
from exporter.monitoring.render import render_dashboard
from tests import helpers

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / DASHBOARD_PATH
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
VARIABLES = {"job": "tw-exporter", "instance": ".+", "__rate_interval": "1m"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return document


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in iter_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def test_importable_as_is(dashboard: dict[str, Any]) -> None:
    assert "__inputs" not in dashboard
    assert "__requires" not in dashboard
    assert dashboard["uid"] == "tw-exporter"
    assert dashboard["id"] is None
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["title"]
    assert "${DS_" not in DASHBOARD.read_text(encoding="utf-8")


def test_template_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "instance"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["query"]["query"] == "label_values(tw_up, job)"
    assert variables["instance"]["query"]["query"] == 'label_values(tw_up{job=~"$job"}, instance)'
    for name in ("job", "instance"):
        assert variables[name]["datasource"] == DATASOURCE
        assert variables[name]["type"] == "query"


def test_every_panel_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    panels = [p for p in iter_panels(dashboard) if p["type"] != "row"]
    assert len(panels) >= 15
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == DATASOURCE, title
        assert panel["targets"], title
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, title
        assert panel["description"].strip(), title
        assert panel["fieldConfig"]["defaults"]["unit"], title
        assert panel["fieldConfig"]["defaults"]["thresholds"]["steps"], title


def test_rows_and_layout(dashboard: dict[str, Any]) -> None:
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Top users", "Trending hashtags", "Platform activity", "Exporter health"]
    ids = [p["id"] for p in iter_panels(dashboard)]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in iter_panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area


def test_panel_queries_use_only_catalogue_metrics(dashboard: dict[str, Any]) -> None:
    known = all_sample_names() | {"up"}
    for title, expr in queries(dashboard):
        used = promql_metric_names(expr)
        assert used, title
        assert used <= known, f"{title}: unknown metrics {used - known}"
        # Every selector is scoped to the chosen job and instance.
        for name in used:
            for match in re.finditer(rf"\b{name}\b(.)", expr):
                assert expr[match.start(1) :].startswith('{job=~"$job", instance=~"$instance"'), (
                    f"{title}: {name} not filtered by $job/$instance"
                )


def test_every_catalogue_metric_is_on_the_dashboard(dashboard: dict[str, Any]) -> None:
    used = set().union(*(promql_metric_names(expr) for _, expr in queries(dashboard)))
    missing = [spec.name for spec in ALL_METRICS if not set(sample_names(spec)) & used]
    assert missing == [], f"metrics no panel shows: {missing}"


def test_helm_copy_is_byte_identical() -> None:
    helm_copy = ROOT / HELM_DASHBOARD_PATH
    assert helm_copy.read_bytes() == DASHBOARD.read_bytes()


def test_dashboard_is_generated() -> None:
    stale = stale_files(ROOT)
    assert DASHBOARD_PATH not in stale
    assert HELM_DASHBOARD_PATH not in stale
    assert DASHBOARD.read_text(encoding="utf-8") == render_dashboard()


def test_panel_queries_parse(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses each query (variables substituted) as a recording rule."""
    promtool = helpers.promtool()
    rules = [
        {"record": f"dashboard:query_{index}", "expr": expand_variables(expr, VARIABLES)}
        for index, (_, expr) in enumerate(queries(dashboard))
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_files() -> None:
    datasources = yaml.safe_load(
        (ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text(encoding="utf-8")
    )
    assert datasources["apiVersion"] == 1
    assert [d["type"] for d in datasources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load(
        (ROOT / "grafana/provisioning/dashboards/tw-exporter.yml").read_text(encoding="utf-8")
    )
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/tw-exporter"


def test_expand_variables() -> None:
    assert (
        expand_variables('rate(x{job=~"$job"}[$__rate_interval])', VARIABLES)
        == 'rate(x{job=~"tw-exporter"}[1m])'
    )
    with pytest.raises(KeyError, match="nope"):
        expand_variables("$nope", VARIABLES)


def test_panel_descriptions_and_panels_match_one_to_one(tmp_path: Path) -> None:
    """Every shipped panel's description comes from ``dashboard.toml`` by title: a panel
    without one, a description without a panel, or an unknown ``[[name]]`` (a renamed metric)
    is refused with the title named, so the generator's ``--check`` fails, not the dashboard."""
    from exporter.monitoring.dashboard import _PANELS, DESCRIPTIONS_PATH, ROWS, describe

    shipped = DESCRIPTIONS_PATH.read_text()
    panels = [panel for row in ROWS for panel in row.panels]
    assert panels and all(panel.description for panel in panels)
    assert not any("[[" in panel.description for panel in panels)

    def refused(text: str) -> str:
        path = tmp_path / "dashboard.toml"
        path.write_text(text)
        with pytest.raises(ValueError, match=r"^dashboard\.toml: ") as caught:
            describe(_PANELS, path)
        return str(caught.value)

    assert "Not a panel" in refused(shipped + '"Not a panel" = "text"\n')
    assert "HA role" in refused(shipped.replace('"HA role" =', '"HA rôle" =', 1))
    renamed = shipped.replace("[[tw_exporter_leader]]", "[[tw_exporter_leading]]", 1)
    assert "[[tw_exporter_leading]]" in refused(renamed)
