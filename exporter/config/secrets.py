"""Keeping the DSN password out of logs, errors, ``/metrics`` and ``--help``.

Peers leaked passwords through connection strings echoed in errors (query-exporter #85 #109).
Two layers: every place that shows a DSN shows ``redact_dsn(dsn)``, and a logging filter
scrubs the literal password from any record that slips through (e.g. a driver's message).
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote, unquote

MASK = "***"
# Shorter secrets are not scrubbed from free text: masking every "a" would destroy the log,
# and the structured paths (redact_dsn) still never print them.
_MIN_SCRUB_LENGTH = 3


_PASSWORD_PARAMETER = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)
_PASSWORD_TAIL = re.compile(r"(password\s*=\s*)(\S+)", re.IGNORECASE)


def _split_userinfo(dsn: str) -> tuple[str, str, str] | None:
    """(``scheme://user``, password, ``@rest``) of a URI with a password, else None.

    Deliberately not ``urlsplit``: a password with an unencoded ``#``, ``/``, ``?`` or ``@``
    makes a URL parser end the user part early and the password would go unnoticed. Here the
    password runs from the first ``:`` after ``scheme://`` to the *last* ``@``; masking too
    much is harmless, missing a password is not.
    """
    scheme, sep, rest = dsn.partition("://")
    at = rest.rfind("@")
    if not sep or at == -1:
        return None
    user, colon, password = rest[:at].partition(":")
    if not colon:
        return None
    return f"{scheme}{sep}{user}", password, rest[at:]


def dsn_password(dsn: str) -> str | None:
    """The password in a PostgreSQL URI (user part or ``password=``) or key/value DSN."""
    parts = _split_userinfo(dsn)
    if parts is not None and parts[1]:
        return unquote(parts[1])
    match = _PASSWORD_PARAMETER.search(dsn)
    if match:
        return unquote(match.group(2).strip("'"))
    return None


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***``, safe to log or show in an error."""
    parts = _split_userinfo(dsn)
    if parts is not None:
        dsn = f"{parts[0]}:{MASK}{parts[2]}"
    elif "://" in dsn:
        dsn = _mask_non_port(dsn)
    # Everything after "password=" up to white space: a password containing "&" must not
    # leave its tail behind.
    return _PASSWORD_TAIL.sub(rf"\1{MASK}", dsn)


def _mask_non_port(dsn: str) -> str:
    """A URI without '@' whose first host has a port that is not a number may be
    ``user:password`` that lost its ``@host`` (``postgresql://tw:S3#cr/t@``...): everything
    after that colon is masked, since the password may hold '/', '?' or ','."""
    scheme, _, rest = dsn.partition("://")
    if rest.startswith("["):
        return dsn
    host, colon, tail = rest.partition(":")
    if not colon or "/" in host or "?" in host:
        return dsn
    port = re.match(r"\d*", tail)
    end = port.end() if port else 0
    if end and (end == len(tail) or tail[end] in "/?,"):
        return dsn
    return f"{scheme}://{host}:{MASK}"


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
