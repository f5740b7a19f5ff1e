"""Prints the README's configuration and metric tables from the code (their one source).

``python -m tools.readme_tables`` prints them; ``tests/test_readme.py`` asserts the README
contains exactly these lines, so the docs cannot drift from the flags and metrics.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

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


def _command_table(add_options: Callable[[argparse.ArgumentParser], None]) -> list[str]:
    """A command's flags exactly as its ``--help`` shows them (the help strings carry the
    command's own defaults and environment variables)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_options(parser)
    rows = ["| flag | meaning |", "|---|---|"]
    for action in parser._actions:
        flag = action.option_strings[-1]
        shown = f"{flag} {action.metavar}" if action.metavar else flag
        rows.append(f"| `{shown}` | {action.help} |")
    return rows


def demo_table() -> list[str]:
    from exporter.demo import add_demo_options

    return _command_table(add_demo_options)


def sample_data_table() -> list[str]:
    from exporter.sample_data import add_sample_data_options

    return _command_table(add_sample_data_options)


if __name__ == "__main__":
    print("\n".join(configuration_table()))
    print()
    print("\n".join(metrics_table()))
    print()
    print("\n".join(demo_table()))
    print()
    print("\n".join(sample_data_table()))
