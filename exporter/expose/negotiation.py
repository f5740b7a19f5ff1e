"""Which exposition format and encoding a ``/metrics`` request gets (``Accept``,
``Accept-Encoding``), parsed as RFC 9110 says: comma-separated entries, case-insensitive names,
``q`` weights from 0 to 1, and ``q=0`` meaning "not acceptable".

A substring test got this wrong both ways (``gzip;q=0`` was served gzipped, ``GZIP`` was not,
an OpenMetrics entry with ``q=0`` still got OpenMetrics). Parsing costs a few microseconds, so
the server caches the verdict per pair of header values: a scraper sends the same ones each time.
"""

from __future__ import annotations

from dataclasses import dataclass

_OPENMETRICS = "application/openmetrics-text"
_TEXT_RANGES = ("text/plain", "text/*", "*/*")


@dataclass(frozen=True)
class Negotiated:
    """The answer for one ``Accept``/``Accept-Encoding`` pair."""

    openmetrics: bool  # else the Prometheus text format
    text_v1: bool  # the client asked for text/plain version >= 1.0.0 (content type says so)
    gzip: bool


def _entries(header: bytes) -> list[tuple[str, dict[str, str]]]:
    """``a/b;p=1;q=0.5, c`` -> [("a/b", {"p": "1", "q": "0.5"}), ("c", {})], lower-cased."""
    out = []
    for item in header.decode("latin-1").split(","):
        name, *params = item.split(";")
        name = name.strip().lower()
        if not name:
            continue
        values = {}
        for param in params:
            key, _, value = param.partition("=")
            values[key.strip().lower()] = value.strip().strip('"')
        out.append((name, values))
    return out


def _q(params: dict[str, str]) -> float:
    """The entry's weight; a malformed one counts as 0 (not acceptable), as Go's parser does."""
    text = params.get("q")
    if text is None:
        return 1.0
    try:
        q = float(text)
    except ValueError:
        return 0.0
    return q if 0.0 <= q <= 1.0 else 0.0


def _version_at_least_1(params: dict[str, str]) -> bool:
    major = params.get("version", "").split(".", 1)[0]
    return major.isdigit() and int(major) >= 1


def negotiate(accept: bytes | None, accept_encoding: bytes | None) -> Negotiated:
    """OpenMetrics when the client weights it above zero and at least as high as the text
    format (Prometheus sends both, OpenMetrics first); otherwise text, which is also the answer
    when nothing offered is acceptable (a scrape is better served than refused with 406).
    gzip when ``gzip``/``x-gzip`` (or ``*`` without an explicit gzip entry) has q > 0."""
    openmetrics = text_v1 = False
    if accept:
        q_openmetrics = q_text = 0.0
        text_params: dict[str, str] = {}
        for name, params in _entries(accept):
            q = _q(params)
            if name == _OPENMETRICS:
                q_openmetrics = max(q_openmetrics, q)
            elif name in _TEXT_RANGES and q > q_text:
                q_text, text_params = q, params if name == "text/plain" else {}
        openmetrics = q_openmetrics > 0.0 and q_openmetrics >= q_text
        text_v1 = not openmetrics and _version_at_least_1(text_params)
    gzip = False
    if accept_encoding:
        explicit: float | None = None
        wildcard = 0.0
        for name, params in _entries(accept_encoding):
            if name in ("gzip", "x-gzip"):
                explicit = max(explicit or 0.0, _q(params))
            elif name == "*":
                wildcard = _q(params)
        gzip = (explicit if explicit is not None else wildcard) > 0.0
    return Negotiated(openmetrics, text_v1, gzip)
