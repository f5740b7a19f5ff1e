"""The one source of tw-exporter's alert rules and Grafana dashboard.

Alerts, their tunable parameters and the dashboard panels are defined here in Python, naming
metrics only through the ``MetricSpec`` constants of ``exporter.expose.catalog``'s families, and
this package writes every file that ships them:

- ``prometheus/tw-exporter.rules.yml``: the rules with default parameters (``promtool``-tested),
- ``helm/tw-exporter/files/prometheus-rules.yaml.tpl``: the same rules with each parameter as
  ``{{ .Values.prometheusRule.thresholds.<key> }}``, for the chart to render with ``tpl``,
- ``helm/tw-exporter/files/thresholds.yaml``: each parameter's default, for the chart's values,
- ``grafana/dashboards/tw-exporter.json`` and its byte-identical copy
  ``helm/tw-exporter/files/dashboard.json`` (Helm's ``.Files`` cannot reach outside the chart).

Run ``python -m tools.monitoring`` to regenerate them, ``python -m tools.monitoring --check`` to
exit 1 when a file on disk differs from what would be generated (CI does).

One module a concern, the way monitoring mixins keep alerts, dashboards and rules apart:

- ``params``: the tunable parameters, the one source of each threshold and window;
- ``promql``: catalogue names, checked, and the PromQL lexer the tests use;
- ``alerts``: the alert rules and their runbook text;
- ``grafana``: the typed panel model and the dashboard JSON it becomes;
- ``dashboard``: the shipped dashboard's rows and panels;
- ``render``: YAML, Helm escaping, the dashboard file and the README's Markdown tables;
- ``paths``, ``files``, ``__main__``: where the files go, ``--check`` and the writer.

The promtool unit tests (``prometheus/tw-exporter.rules.test.yml``) are written by hand, not
generated, so they check the generated rules independently.

This module re-exports the names the tests, ``tools.custom_monitoring`` and the end-to-end
tests use, so ``from tools import monitoring`` keeps working.
"""

from __future__ import annotations

from tools.monitoring.alerts import ALERTS, GROUPS, Alert, Group
from tools.monitoring.dashboard import DASHBOARD_UID, ROWS, build_dashboard
from tools.monitoring.files import generated_files, stale_files, write_files
from tools.monitoring.grafana import (
    DASHBOARD_SCHEMA_VERSION,
    Panel,
    Row,
    Target,
    expand_variables,
    iter_panels,
    sel,
)
from tools.monitoring.params import DEFAULT_JOB, DEFAULTS, PARAMS, Param, ParamValue
from tools.monitoring.paths import (
    DASHBOARD_PATH,
    HELM_DASHBOARD_PATH,
    HELM_RULES_PATH,
    HELM_THRESHOLDS_PATH,
    ROOT,
    RULES_PATH,
    RULES_TEST_PATH,
)
from tools.monitoring.promql import promql_metric_names
from tools.monitoring.render import (
    alerts_markdown,
    dump_yaml,
    panels_markdown,
    render_dashboard,
    render_helm_rules,
    render_rules,
    render_thresholds,
    runbook_markdown,
    thresholds_markdown,
)

__all__ = [
    "ALERTS",
    "DASHBOARD_PATH",
    "DASHBOARD_SCHEMA_VERSION",
    "DASHBOARD_UID",
    "DEFAULTS",
    "DEFAULT_JOB",
    "GROUPS",
    "HELM_DASHBOARD_PATH",
    "HELM_RULES_PATH",
    "HELM_THRESHOLDS_PATH",
    "PARAMS",
    "ROOT",
    "ROWS",
    "RULES_PATH",
    "RULES_TEST_PATH",
    "Alert",
    "Group",
    "Panel",
    "Param",
    "ParamValue",
    "Row",
    "Target",
    "alerts_markdown",
    "build_dashboard",
    "dump_yaml",
    "expand_variables",
    "generated_files",
    "iter_panels",
    "panels_markdown",
    "promql_metric_names",
    "render_dashboard",
    "render_helm_rules",
    "render_rules",
    "render_thresholds",
    "runbook_markdown",
    "sel",
    "stale_files",
    "thresholds_markdown",
    "write_files",
]
