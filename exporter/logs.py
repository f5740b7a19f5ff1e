"""Logging set-up: text for people, JSON for log pipelines, secrets scrubbed from both."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator

from pythonjsonlogger.json import JsonFormatter

from exporter.config.secrets import SecretScrubbingFilter, scrub

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, fmt: str, secrets: tuple[str, ...] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"levelname": "level", "asctime": "time", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    handler.addFilter(SecretScrubbingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # APScheduler logs every run at INFO; its skip warnings are reported by our own listener.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    sys.unraisablehook = UnraisableLog()


def _scrubbing_filters() -> Iterator[SecretScrubbingFilter]:
    """The secret scrubbers of the configured log handlers."""
    for handler in logging.getLogger().handlers:
        for log_filter in handler.filters:
            if isinstance(log_filter, SecretScrubbingFilter):
                yield log_filter


def add_secret(secret: str) -> None:
    """Scrub one more secret from every log record (a password read from a rotated DSN file)."""
    for log_filter in _scrubbing_filters():
        if secret not in log_filter.secrets:
            log_filter.secrets = (*log_filter.secrets, secret)


class UnraisableLog:
    """``sys.unraisablehook`` through the configured logger, instead of a traceback printed on
    stderr whatever ``--log-format`` and ``--log-level`` say (issue #21).

    CPython reports there what it cannot raise, notably from the TLS layer: its ssl module
    decodes a client's server name (SNI) as ASCII before calling the context's
    ``sni_callback``, and a client sending any other byte printed a 5-line traceback per
    handshake (the handshake fails, which is right: RFC 6066 host names are ASCII). That one is
    routine for a hostile client, so debug level; anything else is an error, with its
    traceback, at most once a minute per kind (a client must not be able to flood the log)."""

    INTERVAL = 60.0

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], float] = {}

    def __call__(self, unraisable: sys.UnraisableHookArgs) -> None:
        error, where = unraisable.exc_value, unraisable.object
        if isinstance(error, UnicodeError) and isinstance(where, bytes):
            logging.getLogger("exporter.tls").debug(
                "TLS handshake refused: the client's server name (SNI) %r is not ASCII",
                where[:100],
            )
            return
        key = (unraisable.exc_type.__name__, unraisable.err_msg or "")
        now = time.monotonic()
        if now - self._last.get(key, -self.INTERVAL) < self.INTERVAL:
            return
        if len(self._last) > 100:
            self._last.clear()
        self._last[key] = now
        logging.getLogger("exporter").error(
            "%s: %r",
            unraisable.err_msg or "Exception ignored in",
            where,
            exc_info=(unraisable.exc_type, error, unraisable.exc_traceback)
            if error is not None
            else None,
        )


def scrub_secrets(text: str) -> str:
    """``text`` without any secret the log handlers scrub: for a line that leaves the process
    another way (the answer to ``POST /-/reload``)."""
    for log_filter in _scrubbing_filters():
        text = scrub(text, log_filter.secrets)
    return text
