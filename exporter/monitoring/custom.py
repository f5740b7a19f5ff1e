"""``tw-exporter monitoring``: a Grafana dashboard and alert rules for a queries file's metrics.

The shipped dashboard and rules (``exporter/monitoring/``) cover the built-in metrics and the
health of every query, custom ones included. This gives a custom metric what a built-in one
gets on the business side: a dashboard (one panel per custom metric, the same data source, job
and instance variables as the main dashboard, which it is built by) and, for each metric that
declares an ``alert`` threshold in the file, an alert rule and promtool unit tests proving that
rule fires beyond the threshold and stays quiet within it.

Files written to ``--out``: ``custom-dashboard.json``, ``custom.rules.yml``,
``custom.rules.test.yml``. Run ``promtool test rules custom.rules.test.yml`` to check them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.config.queries_file import AlertDef, MetricDef, QueriesConfig
from exporter.monitoring.dashboard import build_dashboard
from exporter.monitoring.grafana import Panel, Row, Target, sel
from exporter.monitoring.render import dump_yaml

DASHBOARD_FILE = "custom-dashboard.json"
RULES_FILE = "custom.rules.yml"
TESTS_FILE = "custom.rules.test.yml"
GROUP = "tw-exporter-custom"
COUNTER_RATE_WINDOW = "5m"
EXAMPLE_JOB, EXAMPLE_INSTANCE = "tw-exporter", "exporter:10093"


@dataclass(frozen=True)
class CustomMetric:
    query: str
    name: str
    definition: MetricDef

    @property
    def labels(self) -> tuple[str, ...]:
        return (*self.definition.labels, *self.definition.const_labels)


def custom_metrics(config: QueriesConfig) -> Iterator[CustomMetric]:
    for query, (definition, _) in config.custom.items():
        for name, metric in definition.metrics.items():
            yield CustomMetric(query, name, metric)


# ---------------------------------------------------------------- dashboard


def panel(metric: CustomMetric) -> Panel:
    by = ", ".join(("instance", *metric.labels))
    legend = " ".join(f"{{{{{label}}}}}" for label in ("instance", *metric.labels))
    if metric.definition.type == "counter":
        expr = f"sum by ({by}) (rate({sel(metric.name)}[$__rate_interval]))"
        unit, what = "cps", "per second"
    else:
        expr = f"max by ({by}) ({sel(metric.name)})"
        unit, what = "short", "value"
    return Panel(
        title=metric.name,
        kind="timeseries",
        description=f"{metric.definition.help} ({what}; query {metric.query})",
        targets=(Target(expr, legend),),
        width=12,
        height=8,
        unit=unit,
    )


def dashboard(config: QueriesConfig) -> dict[str, Any]:
    rows = [
        Row(f"Query {query}", tuple(panel(m) for m in custom_metrics(config) if m.query == query))
        for query in config.custom
    ]
    return build_dashboard(
        rows,
        uid="tw-exporter-custom",
        title="tw-exporter: custom queries",
        description=(
            "The metrics of the custom queries in the queries file, one panel each. Generated "
            "by tw-exporter monitoring; the main tw-exporter dashboard shows their health."
        ),
    )


# ---------------------------------------------------------------- alerts


def alert_name(metric: CustomMetric, alert: AlertDef) -> str:
    words = metric.name.removeprefix("tw_").split("_")
    return (
        "Tw"
        + "".join(w[:1].upper() + w[1:] for w in words if w)
        + ("High" if alert.above is not None else "Low")
    )


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _condition(metric: CustomMetric, alert: AlertDef) -> tuple[str, str, float]:
    """(expression, comparison word, threshold)."""
    subject = metric.name
    if metric.definition.type == "counter":
        subject = f"rate({metric.name}[{COUNTER_RATE_WINDOW}])"
    if alert.above is not None:
        return f"{subject} > {alert.above:g}", "above", alert.above
    assert alert.below is not None
    return f"{subject} < {alert.below:g}", "below", alert.below


def _is_counter(metric: CustomMetric) -> bool:
    return metric.definition.type == "counter"


def _expand(template: str, labels: dict[str, str]) -> str:
    """What Prometheus makes of ``{{ $labels.x }}`` for these labels (the only template used)."""
    for name, value in labels.items():
        template = template.replace(f"{{{{ $labels.{name} }}}}", value)
    return template


def rules(config: QueriesConfig) -> dict[str, Any]:
    result = []
    for metric in custom_metrics(config):
        alert = metric.definition.alert
        if alert is None:
            continue
        expr, word, threshold = _condition(metric, alert)
        where = ", ".join(f"{label}={{{{ $labels.{label} }}}}" for label in metric.labels)
        summary = alert.summary or (
            f"{metric.name} is {word} {threshold:g}" + (f" ({where})" if where else "")
        )
        result.append(
            {
                "alert": alert_name(metric, alert),
                "expr": expr,
                "for": _seconds(alert.for_),
                "labels": {"severity": alert.severity},
                "annotations": {
                    "summary": summary,
                    "description": (
                        f"{metric.definition.help} On {{{{ $labels.instance }}}} it is {word} "
                        f"the threshold {threshold:g}"
                        + (" (per second, over 5 minutes)" if _is_counter(metric) else "")
                        + f" (custom query {metric.query})."
                    ),
                },
            }
        )
    return {"groups": [{"name": GROUP, "rules": result}]} if result else {"groups": []}


def _series_values(metric: CustomMetric, value: float, minutes: int) -> str:
    """A promtool series holding ``value`` (a gauge) or growing at ``value``/s (a counter)."""
    if metric.definition.type == "counter":
        return f"0+{value * 60:g}x{minutes}"
    return f"{value:g}x{minutes}"


def rule_tests(config: QueriesConfig) -> dict[str, Any]:
    """For each alert: a series beyond the threshold fires after ``for``, one within does not."""
    tests = []
    annotations = {
        rule["alert"]: rule["annotations"]
        for group in rules(config)["groups"]
        for rule in group["rules"]
    }
    for metric in custom_metrics(config):
        alert = metric.definition.alert
        if alert is None:
            continue
        _, word, threshold = _condition(metric, alert)
        step = max(1.0, abs(threshold))
        firing_value = threshold + step if word == "above" else threshold - step
        quiet_value = threshold - step if word == "above" else threshold + step
        if metric.definition.type == "counter":
            firing_value, quiet_value = max(firing_value, 0), max(quiet_value, 0)
        minutes = int(alert.for_ // 60) + 10
        labels = {label: "example" for label in metric.definition.labels}
        labels.update(metric.definition.const_labels)

        def series(instance: str, name: str = metric.name, labels: dict[str, str] = labels) -> str:
            pairs = {"job": EXAMPLE_JOB, "instance": instance, **labels}
            text = ", ".join(f'{k}="{v}"' for k, v in pairs.items())
            return f"{name}{{{text}}}"

        tests.append(
            {
                "name": f"{alert_name(metric, alert)} fires {word} {threshold:g}, not within",
                "interval": "1m",
                "input_series": [
                    {
                        "series": series("firing:10093"),
                        "values": _series_values(metric, firing_value, minutes),
                    },
                    {
                        "series": series("quiet:10093"),
                        "values": _series_values(metric, quiet_value, minutes),
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": f"{minutes - 1}m",
                        "alertname": alert_name(metric, alert),
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": alert.severity,
                                    "job": EXAMPLE_JOB,
                                    "instance": "firing:10093",
                                    **labels,
                                },
                                "exp_annotations": {
                                    key: _expand(
                                        text,
                                        {"instance": "firing:10093", "job": EXAMPLE_JOB, **labels},
                                    )
                                    for key, text in annotations[alert_name(metric, alert)].items()
                                },
                            }
                        ],
                    }
                ],
            }
        )
    return {"rule_files": [RULES_FILE], "evaluation_interval": "1m", "tests": tests}


def write(config: QueriesConfig, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        out / DASHBOARD_FILE: json.dumps(dashboard(config), indent=2) + "\n",
        out / RULES_FILE: dump_yaml(rules(config)),
        out / TESTS_FILE: dump_yaml(rule_tests(config)),
    }
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    return list(files)
