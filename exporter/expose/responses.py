"""What the HTTP server answers, as bytes: ``Response``, the fixed answers, and their encoding.

Shared by the server (``exporter.expose.http``, which routes a path to a response) and the
per-connection protocol (``exporter.expose.connection``, which answers a malformed or hostile
request itself); docs/http-limits.md lists which limit answers with which status."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from exporter import __version__

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    500: b"Internal Server Error",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}

RELOAD_PATH = b"/-/reload"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = b"text/plain; charset=utf-8"
    gzipped: bool = False
    extra: bytes = b""
    # The bytes on the wire, per (keep-alive, HEAD, the server's extra headers): built once
    # per response object (``MetricsServer.wire``). /metrics responses are kept per snapshot
    # (``MetricsServer._metrics``), so a scrape writes bytes built before it arrived.
    wire: dict[tuple[bool, bool, bytes], bytes] = field(
        default_factory=dict, compare=False, repr=False
    )


UNAUTHORIZED = Response(
    401,
    b"Unauthorized\n",
    extra=b'WWW-Authenticate: Basic realm="tw-exporter", charset="UTF-8"\r\n',
)
AUTH_BUSY = Response(503, b"Too many password checks in progress\n", extra=b"Retry-After: 1\r\n")
AUTH_FAILED = Response(503, b"Service Unavailable\n")
BAD_REQUEST = Response(400, b"Bad Request\n")
EVICTED = Response(503, b"Too many connections\n", extra=b"Retry-After: 1\r\n")
HAS_BODY = Response(413, b"Request bodies are not accepted\n")
DUPLICATE_HEADER = Response(400, b"Repeated Authorization or Accept-Encoding header\n")
HEADERS_TOO_LARGE = Response(431, b"Request headers too large\n")
TOO_MANY_PIPELINED = Response(503, b"Too many pipelined requests\n")
METHOD_NOT_ALLOWED = Response(405, b"Method Not Allowed\n", extra=b"Allow: GET, HEAD\r\n")
NOT_FOUND = Response(404, b"Not Found\n")
HEALTHY = Response(200, b"ok\n")
READY = Response(200, b"ready\n")
REQUEST_TIMEOUT = Response(408, b"Request Timeout\n")
POST_ONLY = Response(405, b"Method Not Allowed\n", extra=b"Allow: POST\r\n")

LANDING_PAGE = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tw-exporter</title></head>
<body><h1>tw-exporter {html.escape(__version__)}</h1>
<p>Prometheus exporter for the platform's business metrics.</p>
<ul><li><a href="metrics">/metrics</a></li><li><a href="healthz">/healthz</a></li>
<li><a href="readyz">/readyz</a></li></ul></body></html>
""".encode()

LANDING = Response(200, LANDING_PAGE, content_type=b"text/html; charset=utf-8")


def encode_headers(headers: tuple[tuple[str, str], ...]) -> bytes:
    """Extra response headers (from the web config) as the bytes every response carries."""
    return b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)


def encode(response: Response, keep_alive: bool, head: bool, extra_headers: bytes) -> bytes:
    """``response`` as written: status line, headers and (unless ``head``) the body."""
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (response.status, _REASONS.get(response.status, b"")),
        b"Content-Type: " + response.content_type + b"\r\n",
        b"Content-Length: %d\r\n" % len(response.body),
        response.extra,
        extra_headers,
    ]
    if response.gzipped:
        lines.append(b"Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n")
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    if not head:
        lines.append(response.body)
    return b"".join(lines)
