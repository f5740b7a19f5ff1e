"""Where the generated files live, relative to the repository root."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES_PATH = Path("prometheus/tw-exporter.rules.yml")
RULES_TEST_PATH = Path("prometheus/tw-exporter.rules.test.yml")
"""The promtool unit tests: written by hand, not generated, so they check the rules
independently of the generator."""
DASHBOARD_PATH = Path("grafana/dashboards/tw-exporter.json")
HELM_RULES_PATH = Path("helm/tw-exporter/files/prometheus-rules.yaml.tpl")
HELM_THRESHOLDS_PATH = Path("helm/tw-exporter/files/thresholds.yaml")
HELM_DASHBOARD_PATH = Path("helm/tw-exporter/files/dashboard.json")
