"""A small typed model of the Grafana panels tw-exporter needs, and its dashboard JSON.

``Panel``, ``Target`` and ``Row`` carry what differs between panels; ``dashboard_json`` writes
everything else the same way for every panel of a kind (legend, tooltip, line style, stat
layout), so the dashboard definitions stay short and a field is spelled once. The model is
shared with ``exporter.monitoring.custom``'s companion dashboard.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from exporter.collectors.base import MetricSpec
from exporter.expose.health import UP

DASHBOARD_SCHEMA_VERSION = 39

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
    """One PromQL query of a panel (``instant`` for a current value, ``table`` for rows)."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


@dataclass(frozen=True)
class Panel:
    """A panel as the dashboard needs it; ``_panel_json`` fills in the rest of Grafana's
    fields the same way for every panel of a kind."""

    title: str
    kind: Literal["timeseries", "stat", "bargauge", "table"]
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
    # The shipped panels' descriptions come from dashboard.toml, by title, once all are built.
    description: str = ""


@dataclass(frozen=True)
class Row:
    """A titled row of panels."""

    title: str
    panels: tuple[Panel, ...]


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


def dashboard_json(
    rows: Sequence[Row], *, uid: str, title: str, description: str
) -> dict[str, Any]:
    """A dashboard of ``rows`` with the data source, job and instance variables every
    tw-exporter dashboard shares; panels flow left to right, 24 columns to a line."""
    panels: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for row in rows:
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
