"""Keeping the DSN password out of logs, errors, ``/metrics`` and ``--help``.

Peers leaked passwords through connection strings echoed in errors (query-exporter #85 #109).
Two layers: every place that shows a DSN shows ``redact_dsn(dsn)``, and a logging filter
scrubs the literal password from any record that slips through (e.g. a driver's message).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

MASK = "***"
# Shorter secrets are not scrubbed from free text: masking every "a" would destroy the log,
# and the structured paths (redact_dsn) still never print them.
_MIN_SCRUB_LENGTH = 3


def dsn_password(dsn: str) -> str | None:
    """The password in a PostgreSQL URI, from the userinfo or a ``password=`` parameter."""
    try:
        parts = urlsplit(dsn)
        password = parts.password
    except ValueError:
        password = None
        parts = None
    if password:
        return unquote(password)
    if parts is not None:
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "password" and value:
                return value
    match = re.search(r"password=([^&\s]+)", dsn)
    return unquote(match.group(1)) if match else None


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***``, safe to log or show in an error."""
    try:
        parts = urlsplit(dsn)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{MASK}@{hostinfo}"
        query = re.sub(r"(^|&)password=[^&]*", rf"\1password={MASK}", parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return re.sub(r"(//[^:/@]*:)[^@]*@", rf"\1{MASK}@", dsn)


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if len(secret) >= _MIN_SCRUB_LENGTH:
            text = text.replace(secret, MASK)
            encoded = quote(secret, safe="")
            if encoded != secret:
                text = text.replace(encoded, MASK)
    return text


class SecretScrubbingFilter(logging.Filter):
    """Rewrites each log record so no configured secret survives in its message or traceback."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = scrub(message, self.secrets)
        record.args = None
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
            # Formatters (text and JSON) fall back to exc_text when exc_info is gone, so the
            # scrubbed copy is the only one they can print.
            record.exc_info = None
        return True
