"""The queries file's shape (``--queries-file``): a pydantic model, so the same definition
validates the YAML, reports each error with its location, and generates the JSON Schema
editors use (``schemas/queries.schema.json``).

Only what one field (or one entry) can say is checked here: durations, names, parameter
types. What needs more than one field, another query or the command line is checked on the
query definitions built from it (``exporter.config.definitions``, ``exporter.config.queries_file``).
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    create_model,
)

from exporter.collectors import COLLECTORS
from exporter.config.settings import MAX_INTERVAL, MIN_SECONDS

DEFAULT_MAX_SERIES = 500
MAX_MAX_SERIES = 100_000
QUERY_NAME = r"^[a-z][a-z0-9_]*$"
METRIC_NAME = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"
LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h|d|w))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d|w))+$"


# ---------------------------------------------------------------- durations


def _shown(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut short: an error line names the value without repeating a huge one."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_duration(value: object) -> float:
    """Seconds from a number or a Prometheus-style duration (``90s``, ``5m``, ``1h30m``, ``7d``).

    Strings are converted here, before anything is bound to SQL: asyncpg does not coerce text
    into numbers or intervals, so ``"5m"`` must never reach the driver as a string.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration: seconds as a number, or text such as 30s, 5m, 1h")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond any float
            seconds = math.inf
    elif isinstance(value, str) and _DURATION_RE.match(value.strip()):
        seconds = sum(
            float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(value.strip())
        )
    else:
        raise ValueError(
            f"invalid duration {_shown(value)}: expected seconds as a number, or text such as "
            "30s, 5m, 1h30m, 7d"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {_shown(value)}: expected a finite, positive duration")
    return seconds


def _schedule_seconds(value: object) -> float:
    seconds = parse_duration(value)
    if not MIN_SECONDS <= seconds <= MAX_INTERVAL:
        raise ValueError(
            f"invalid duration {_shown(value)}: expected from {MIN_SECONDS:g}s to {MAX_INTERVAL:g}s"
        )
    return seconds


_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "number", "exclusiveMinimum": 0},
        {"type": "string", "pattern": DURATION_PATTERN},
    ],
    "description": "Seconds as a number, or a duration such as 30s, 5m, 1h30m, 7d.",
}

ScheduleSeconds = Annotated[
    float, BeforeValidator(_schedule_seconds), WithJsonSchema(_DURATION_SCHEMA)
]
DurationSeconds = Annotated[
    float, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA)
]
QueryName = Annotated[str, Field(pattern=QUERY_NAME, max_length=100)]
MetricName = Annotated[str, Field(pattern=METRIC_NAME, max_length=200)]
LabelName = Annotated[str, Field(pattern=LABEL_NAME, max_length=100)]
ColumnName = Annotated[str, Field(min_length=1, max_length=63)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- parameters


def _interval_seconds(value: object) -> float:
    """A duration that fits a ``timedelta`` (what asyncpg binds as an interval), checked here
    so that a huge one is an error in the file, not an ``OverflowError`` when it is bound."""
    seconds = parse_duration(value)
    if seconds > MAX_TIMEDELTA_SECONDS:
        raise ValueError(
            f"invalid duration {_shown(value)}: expected at most "
            f"{MAX_TIMEDELTA_SECONDS / 86400:.0f}d"
        )
    return seconds


MAX_TIMEDELTA_SECONDS = float(timedelta.max.days) * 86400
IntervalSeconds = Annotated[
    float, BeforeValidator(_interval_seconds), WithJsonSchema(_DURATION_SCHEMA)
]


class IntervalParam(_Strict):
    """A duration bound as a PostgreSQL ``interval`` (a ``timedelta``): ``$1::interval``."""

    interval: IntervalSeconds

    def bound(self) -> timedelta:
        return timedelta(seconds=self.interval)


class SecondsParam(_Strict):
    """A duration bound as a number of seconds (``float8``): ``to_timestamp($1)`` and alike."""

    seconds: DurationSeconds

    def bound(self) -> float:
        return self.seconds


Param = StrictBool | StrictInt | StrictFloat | StrictStr | IntervalParam | SecondsParam


def bind(param: Param) -> Any:
    """The Python value asyncpg receives for one parameter."""
    if isinstance(param, IntervalParam | SecondsParam):
        return param.bound()
    return param


# ---------------------------------------------------------------- the file


class AlertDef(_Strict):
    """A threshold for ``tw-exporter monitoring``'s generated alert rule (one of above/below).

    For a counter the threshold applies to its per-second rate over 5 minutes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    above: float | None = Field(None, description="Fire while the value is above this.")
    below: float | None = Field(None, description="Fire while the value is below this.")
    for_: DurationSeconds = Field(
        300, alias="for", description="How long the condition must hold; default 5m."
    )
    severity: Literal["warning", "critical"] = "warning"
    summary: str | None = Field(None, max_length=500, description="Default: generated.")


class MetricDef(_Strict):
    """One metric family a query produces: one sample per row."""

    type: Literal["gauge", "counter"] = Field(
        "gauge", description="gauge, or counter (whose name must end in _total)."
    )
    help: str = Field(min_length=1, max_length=1000, description="The HELP text.")
    value: ColumnName | None = Field(
        None, description="The numeric column holding the value; default: the metric's name."
    )
    labels: tuple[LabelName, ...] = Field(
        (), description="Columns whose text becomes a label of the same name."
    )
    const_labels: dict[LabelName, str] = Field(
        default_factory=dict, description="Labels with the same value on every sample."
    )
    alert: AlertDef | None = Field(
        None, description="A threshold: `tw-exporter monitoring` writes an alert rule for it."
    )


class QueryDef(_Strict):
    """One custom query: a single read-only SELECT/WITH statement and the metrics it produces."""

    sql: str = Field(min_length=1, description="One SELECT or WITH statement; $1..$n params.")
    params: tuple[Param, ...] = Field(
        (),
        description=(
            "Values of $1..$n: integer, float, text, boolean, {interval: DURATION} (bound as "
            "an interval) or {seconds: DURATION} (bound as a number of seconds)."
        ),
    )
    interval: ScheduleSeconds | None = Field(None, description="Default: --interval.")
    timeout: ScheduleSeconds | None = Field(
        None, description="Default: min(10s, interval), or --query-timeout; <= interval."
    )
    max_staleness: ScheduleSeconds | None = Field(
        None, description="How long series outlive failures; default 3 x interval."
    )
    max_series: int = Field(
        DEFAULT_MAX_SERIES,
        ge=1,
        le=MAX_MAX_SERIES,
        description="Rows beyond this are not served and count as a data error.",
    )
    metrics: dict[MetricName, MetricDef] = Field(min_length=1)


class BuiltinDef(_Strict):
    """Schedule overrides for one built-in query (its SQL and metrics are fixed)."""

    enabled: bool = True
    interval: ScheduleSeconds | None = None
    timeout: ScheduleSeconds | None = None
    max_staleness: ScheduleSeconds | None = None


# One optional ``BuiltinDef`` per registered built-in (``exporter.collectors.COLLECTORS``): a
# built-in added there is tunable under ``builtins:`` (and in the JSON Schema) with no edit here.
if TYPE_CHECKING:
    BuiltinsDef = _Strict
else:
    BuiltinsDef = create_model(
        "BuiltinsDef",
        __base__=_Strict,
        **{collector.name: (BuiltinDef, BuiltinDef()) for collector in COLLECTORS},
    )


class QueriesFileModel(_Strict):
    """The queries file."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="tw-exporter queries file",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    builtins: BuiltinsDef = BuiltinsDef()
    queries: dict[QueryName, QueryDef] = Field(default_factory=dict)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the file, as published in ``schemas/queries.schema.json``."""
    return QueriesFileModel.model_json_schema()
