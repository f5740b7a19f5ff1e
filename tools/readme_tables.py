"""Prints the README's configuration and metric tables from the code (their one source).

``python -m tools.readme_tables`` prints them; ``tests/test_readme.py`` asserts the README
contains exactly these lines, so the docs cannot drift from the flags and metrics.
"""

from __future__ import annotations

from exporter import settings as cfg
from exporter.catalog import ALL_METRICS


def configuration_table() -> list[str]:
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for option in cfg.ALL_OPTIONS:
        rows.append(
            f"| `{f'{option.flag} {option.metavar}'.strip()}` | `{option.env}` "
            f"| {option.shown_default} "
            f"| {option.help} |"
        )
    return rows


def metrics_table() -> list[str]:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for spec in ALL_METRICS:
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "-"
        rows.append(f"| `{spec.name}` | {spec.kind} | {labels} | {spec.help} |")
    return rows


if __name__ == "__main__":
    print("\n".join(configuration_table()))
    print()
    print("\n".join(metrics_table()))
