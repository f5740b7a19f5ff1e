"""Prose kept as data beside the code that uses it: the alerts' texts (``alerts.toml``) and the
shipped dashboard's panel descriptions (``dashboard.toml``).

The PromQL, colours and layout stay code, built from the metric catalogue; the sentences a
reader reads are easier to write, review and wrap in TOML than as runs of Python string
literals. A text may quote a value the code knows as ``[[name]]`` (any catalogue metric by
its name, and the values each module adds): ``fill`` puts it in and refuses a name it was not
given, so a renamed metric or a typo fails the generator (and its ``--check`` in CI) instead of
shipping.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exporter.expose.catalog import ALL_METRICS

# Every metric of the catalogue may be quoted by its name: ``[[tw_up]]`` renders as ``tw_up``
# and stops rendering when the metric is renamed.
METRIC_NAMES: Mapping[str, str] = {metric.name: metric.name for metric in ALL_METRICS}

_TOKEN = re.compile(r"\[\[(\w*)\]\]")


def load(path: Path) -> dict[str, Any]:
    """A TOML file of texts, as tomllib reads it (tables keep their order)."""
    with path.open("rb") as file:
        return tomllib.load(file)


def fill(text: str, values: Mapping[str, str], where: str) -> str:
    """``text`` with each ``[[name]]`` replaced by ``values[name]``; ``where`` names the text
    in the error when a name is unknown."""

    def value(match: re.Match[str]) -> str:
        if match[1] not in values:
            raise ValueError(f"{where}: [[{match[1]}]] is not a value the code supplies")
        return values[match[1]]

    return _TOKEN.sub(value, text)
