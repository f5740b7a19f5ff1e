"""PromQL helpers shared by the alert rules and the dashboard: catalogue names, checked, and
the small lexer the tests use to prove every expression selects only catalogue metrics."""

from __future__ import annotations

import re
from collections.abc import Sequence

from exporter.collectors.base import MetricSpec
from exporter.collectors.top_users import USER_FOLLOWERS
from exporter.collectors.trending_hashtags import HASHTAG_TWEETS
from exporter.db.failures import FAILURE_REASONS
from exporter.expose.health import QUERY_ERRORS, QUERY_LAST_SUCCESS


def label(spec: MetricSpec, name: str) -> str:
    """A label name of ``spec``, checked, so a renamed label breaks generation, not alerts."""
    if name not in spec.labels:
        raise KeyError(f"{spec.name} has no label {name!r}")
    return name


def bucket(spec: MetricSpec) -> str:
    """The ``_bucket`` series of a histogram, checked, for ``histogram_quantile``."""
    if spec.kind != "histogram":
        raise ValueError(f"{spec.name} is not a histogram")
    return f"{spec.name}_bucket"


# Metric and label names the alerts and the panels share, each checked against the catalogue.
FOLLOWERS = USER_FOLLOWERS.name
HASHTAGS = HASHTAG_TWEETS.name
USERNAME = label(USER_FOLLOWERS, "username")
VERIFIED = label(USER_FOLLOWERS, "verified")
TAG = label(HASHTAG_TWEETS, "tag")
WINDOW = label(HASHTAG_TWEETS, "window")
QUERY = label(QUERY_LAST_SUCCESS, "query")
REASON = label(QUERY_ERRORS, "reason")

# ---------------------------------------------------------------- HA replicas
# With --ha the business series move from one replica's ``instance`` (and ``pod``) to another's
# at a takeover, after a short gap; a follower exports none. Every business alert and panel,
# shipped or generated for a queries file, reads them through these, never per instance.

REPLICA_LABELS = "instance, pod"
"""The labels that tell replicas apart (a static target's instance; the operator's pod too)."""
BRIDGE_WINDOW = "<<haBridgeWindow>>"


def across_replicas(metric: str, offset: str = "", window: str = BRIDGE_WINDOW) -> str:
    """``metric`` as one series per row whichever replica exports it: the latest sample within
    ``window`` (``haBridgeWindow``, bridging a takeover's gap), the highest across replicas."""
    shifted = f" offset {offset}" if offset else ""
    return f"max without ({REPLICA_LABELS}) (last_over_time({metric}[{window}]{shifted}))"


def rate_across_replicas(counter: str, window: str, bridge: str = BRIDGE_WINDOW) -> str:
    """A counter's per-second rate over ``window`` as one series per row whichever replica
    exports it: the rate of ``across_replicas`` (a subquery), not the highest of each replica's
    own rate, which dips at a takeover as one replica's samples leave the window before the
    other's fill it. Right for a count the query reads from the database (the same on every
    replica); a counter each process counts itself would need the per-replica form."""
    return f"rate(({across_replicas(counter, window=bridge)})[{window}:])"


def per_row(expr: str, labels: Sequence[str]) -> str:
    """A panel's query: one series per row (``labels``), whichever replica exports it."""
    return f"max by ({', '.join(labels)}) ({expr})" if labels else f"max({expr})"


REASON_TIMEOUT = "timeout"
assert REASON_TIMEOUT in FAILURE_REASONS
# TwExporterQueryErrors covers every reason but timeout (TwExporterQueryTimeouts has that one).
ERROR_REASONS = tuple(r for r in FAILURE_REASONS if r != REASON_TIMEOUT)


def reason_list(reasons: tuple[str, ...]) -> str:
    """``a``, ``b`` or ``c``: the catalogue's reasons as Markdown code in a sentence."""
    quoted = [f"`{r}`" for r in reasons]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


_PROMQL_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "atan2",
        "inf",
        "nan",
    }
)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (a small lexer, enough for the rules and panels
    written here): strings, label matchers, label lists, ranges and function names dropped."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names: set[str] = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names
