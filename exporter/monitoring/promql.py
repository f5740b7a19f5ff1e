"""PromQL helpers shared by the alert rules and the dashboard: catalogue names, checked, and
the small lexer the tests use to prove every expression selects only catalogue metrics."""

from __future__ import annotations

import re

from exporter.collectors.base import MetricSpec
from exporter.collectors.top_users import USER_FOLLOWERS
from exporter.collectors.trending_hashtags import HASHTAG_TWEETS
from exporter.expose.health import FAILURE_REASONS, QUERY_ERRORS, QUERY_LAST_SUCCESS


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
