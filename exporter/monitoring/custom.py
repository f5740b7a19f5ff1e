"""``tw-exporter monitoring``: a Grafana dashboard and alert rules for a queries file's metrics.

The shipped dashboard and rules cover the built-in metrics and the health of every query,
custom ones included. This gives a custom metric what a built-in one gets on the business side,
built by the same code: a dashboard (``dashboard.build_dashboard``: one panel per custom metric,
the same data source, job and instance variables as the main dashboard) and, for each metric
that declares an ``alert`` threshold in the file, an ``alerts.Alert`` rendered by
``render.rules_document``, with promtool unit tests.

Like the shipped business alerts and panels, everything reads a custom metric across HA
replicas (``promql.across_replicas``, ``rate_across_replicas``, ``per_row``): with ``--ha`` a
takeover moves the series to another replica's ``instance`` after a short gap, and an alert
neither resolves nor restarts its ``for:`` there, nor fires once per replica. The generated
tests prove each rule fires beyond its threshold, stays quiet within it, and keeps firing
through a takeover.

Files written to ``--out``: ``custom-dashboard.json``, ``custom.rules.yml``,
``custom.rules.test.yml``. Run ``promtool test rules custom.rules.test.yml`` to check them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.config.queries_file import AlertDef, MetricDef, QueriesConfig
from exporter.monitoring.alerts import Alert, Group
from exporter.monitoring.dashboard import build_dashboard, trend
from exporter.monitoring.grafana import RATE, Panel, Row, sel
from exporter.monitoring.params import DEFAULTS
from exporter.monitoring.promql import across_replicas, rate_across_replicas
from exporter.monitoring.render import dump_yaml, rules_document

DASHBOARD_FILE = "custom-dashboard.json"
RULES_FILE = "custom.rules.yml"
TESTS_FILE = "custom.rules.test.yml"
GROUP = "tw-exporter-custom"
COUNTER_RATE_WINDOW = "5m"
_RATE_MINUTES = 5
BRIDGE_WINDOW = str(DEFAULTS["haBridgeWindow"])
"""The shipped rules' default ``haBridgeWindow``: the generated rules bridge a takeover alike."""
EXAMPLE_JOB = "tw-exporter"
REPLICAS = ("exporter-a:10093", "exporter-b:10093")


@dataclass(frozen=True)
class CustomMetric:
    query: str
    name: str
    definition: MetricDef

    @property
    def labels(self) -> tuple[str, ...]:
        return (*self.definition.labels, *self.definition.const_labels)

    @property
    def is_counter(self) -> bool:
        return self.definition.type == "counter"


def custom_metrics(config: QueriesConfig) -> Iterator[CustomMetric]:
    for query, (definition, _) in config.custom.items():
        for name, metric in definition.metrics.items():
            yield CustomMetric(query, name, metric)


# ---------------------------------------------------------------- dashboard


def panel(metric: CustomMetric) -> Panel:
    """The shipped dashboard's trend panel: one line per row of the query (its labels)."""
    if metric.is_counter:
        expr, unit, what = f"rate({sel(metric.name)}[{RATE}])", "cps", "per second"
    else:
        expr, unit, what = sel(metric.name), "short", "value"
    return trend(
        metric.name,
        expr,
        metric.labels,
        description=f"{metric.definition.help} ({what}; query {metric.query})",
        width=12,
        height=8,
        legend="" if metric.labels else metric.name,
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


def _threshold(alert: AlertDef) -> tuple[str, float]:
    """(``above`` or ``below``, the threshold)."""
    if alert.above is not None:
        return "above", alert.above
    assert alert.below is not None  # the queries file's model allows exactly one
    return "below", alert.below


def custom_alert(metric: CustomMetric, alert: AlertDef) -> Alert:
    word, threshold = _threshold(alert)
    if metric.is_counter:
        subject = rate_across_replicas(metric.name, COUNTER_RATE_WINDOW, bridge=BRIDGE_WINDOW)
    else:
        subject = across_replicas(metric.name, window=BRIDGE_WINDOW)
    where = ", ".join(f"{label}={{{{ $labels.{label} }}}}" for label in metric.labels)
    return Alert(
        name=alert_name(metric, alert),
        expr=f"{subject} {'>' if word == 'above' else '<'} {threshold:g}",
        for_=_duration(alert.for_),
        severity=alert.severity,
        summary=alert.summary
        or f"{metric.name} is {word} {threshold:g}" + (f" ({where})" if where else ""),
        description=(
            f"{metric.definition.help} It is {word} the threshold {threshold:g}"
            + (f" (per second, over {COUNTER_RATE_WINDOW})" if metric.is_counter else "")
            + f" (custom query {metric.query})."
        ),
    )


def alerts(config: QueriesConfig) -> list[tuple[CustomMetric, Alert]]:
    return [
        (metric, custom_alert(metric, metric.definition.alert))
        for metric in custom_metrics(config)
        if metric.definition.alert is not None
    ]


def rules(config: QueriesConfig) -> dict[str, Any]:
    """The rules file's document: the shipped rules' renderer, the file's texts as written."""
    found = tuple(alert for _, alert in alerts(config))
    return rules_document((Group(GROUP, found),), str.strip) if found else {"groups": []}


# ---------------------------------------------------------------- promtool tests


def _expand(template: str, labels: dict[str, str]) -> str:
    """What Prometheus makes of ``{{ $labels.x }}`` for these labels (the only template used)."""
    for name, value in labels.items():
        template = template.replace(f"{{{{ $labels.{name} }}}}", value)
    return template


def _values(metric: CustomMetric, value: float, start: int, minutes: int) -> str:
    """promtool values: ``start`` minutes without a sample, then ``minutes`` + 1 samples holding
    ``value`` (a gauge) or growing by ``value`` per second (a counter, from where it would be
    had it grown since minute 0: the database's count, whichever replica reads it)."""
    gap = f"_x{start} " if start else ""
    if metric.is_counter:
        step = value * 60
        return f"{gap}{_plain(step * start)}+{_plain(step)}x{minutes}"
    return f"{gap}{_plain(value)}x{minutes}"


def _plain(number: float) -> str:
    """A number as promtool's series notation reads it: no exponent (``1.2e+06`` is not one)."""
    return f"{number:f}".rstrip("0").rstrip(".") or "0"


def _duration(seconds: float) -> str:
    """A Prometheus duration: whole seconds, else milliseconds."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def rule_tests(config: QueriesConfig) -> dict[str, Any]:
    """For each alert: a series beyond the threshold fires after ``for``, one within does not,
    and one that moves from replica a to replica b after a one-minute gap still fires on time
    (neither replica alone held it for ``for``)."""
    tests = []
    for metric, alert in alerts(config):
        definition = metric.definition.alert
        assert definition is not None
        word, threshold = _threshold(definition)
        step = max(1.0, abs(threshold))
        firing = threshold + step if word == "above" else threshold - step
        quiet = threshold - step if word == "above" else threshold + step
        if metric.is_counter:
            firing, quiet = max(firing, 0), max(quiet, 0)
        for_minutes = max(1, math.ceil(definition.for_ / 60))
        # Replica a's last sample (late enough for a counter's rate); b's first is 2 minutes on.
        takeover = max(2, for_minutes // 2)
        # A rate needs its window filled before it reaches the firing value.
        eval_at = for_minutes + 2 + (_RATE_MINUTES if metric.is_counter else 0)
        end = eval_at + 5
        labels = {label: "example" for label in metric.definition.labels}
        labels.update(metric.definition.const_labels)
        expected = [
            {
                "exp_labels": {"severity": alert.severity, "job": EXAMPLE_JOB, **labels},
                "exp_annotations": {
                    "summary": _expand(alert.summary, labels),
                    "description": _expand(alert.description, labels),
                },
            }
        ]

        def series(replica: str, name: str = metric.name, labels: dict[str, str] = labels) -> str:
            pairs = {"job": EXAMPLE_JOB, "instance": replica, **labels}
            text = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in pairs.items())
            return f"{name}{{{text}}}"

        checks_firing = [(eval_at, expected)]
        if for_minutes >= 2:
            checks_firing.insert(0, (for_minutes - 1, []))  # pending, not yet firing

        def case(
            title: str,
            inputs: list[dict[str, str]],
            checks: list[tuple[int, list[dict[str, Any]]]],
            name: str = alert.name,
        ) -> dict[str, Any]:
            return {
                "name": f"{name} {title}",
                "interval": "1m",
                "input_series": inputs,
                "alert_rule_test": [
                    {"eval_time": f"{minute}m", "alertname": name, "exp_alerts": exp}
                    for minute, exp in checks
                ],
            }

        a, b = REPLICAS
        tests += [
            case(
                f"fires {word} {threshold:g}",
                [{"series": series(a), "values": _values(metric, firing, 0, end)}],
                checks_firing,
            ),
            case(
                f"stays quiet at {quiet:g}",
                [{"series": series(a), "values": _values(metric, quiet, 0, end)}],
                [(eval_at, [])],
            ),
            case(
                "keeps its for clause through an HA takeover",
                [
                    {
                        "series": series(a),
                        "values": _values(metric, firing, 0, takeover) + " stale",
                    },
                    {
                        "series": series(b),
                        "values": _values(metric, firing, takeover + 2, end - takeover - 2),
                    },
                ],
                checks_firing,
            ),
        ]
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
