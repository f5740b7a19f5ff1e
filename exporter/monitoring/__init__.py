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

Run ``python -m exporter.monitoring`` to regenerate them,
``python -m exporter.monitoring --check`` to exit 1 when a file on disk differs from what would
be generated (CI does).

One module a concern, the way monitoring mixins keep alerts, dashboards and rules apart:

- ``params``: the tunable parameters, the one source of each threshold and window;
- ``promql``: catalogue names, checked, and the PromQL lexer the tests use;
- ``alerts``: the alert rules and their runbook text;
- ``grafana``: the typed panel model and the dashboard JSON it becomes;
- ``dashboard``: the shipped dashboard's rows and panels;
- ``render``: YAML, Helm escaping, the dashboard file and the README's Markdown tables;
- ``paths``, ``files``, ``__main__``: where the files go, ``--check`` and the writer;
- ``custom``: ``tw-exporter monitoring``, the same rules renderer, HA forms and panels for a
  queries file's custom metrics, with generated promtool tests.

The promtool unit tests of the shipped rules (``prometheus/tw-exporter.rules.test.yml``) are
written by hand, not generated, so they check the generated rules independently; so do
``tests/test_custom_monitoring.py``'s for the custom rules of the example queries file.

Like every room's ``__init__``, this one is only its docstring: import names from the module
that holds them.
"""
