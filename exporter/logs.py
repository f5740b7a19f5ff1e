"""Logging set-up: text for people, JSON for log pipelines, secrets scrubbed from both."""

from __future__ import annotations

import logging
import sys

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


def add_secret(secret: str) -> None:
    """Scrub one more secret from every log record (a password read from a rotated DSN file)."""
    for handler in logging.getLogger().handlers:
        for log_filter in handler.filters:
            if isinstance(log_filter, SecretScrubbingFilter) and secret not in log_filter.secrets:
                log_filter.secrets = (*log_filter.secrets, secret)


def scrub_secrets(text: str) -> str:
    """``text`` without any secret the log handlers scrub: for a line that leaves the process
    another way (the answer to ``POST /-/reload``)."""
    for handler in logging.getLogger().handlers:
        for log_filter in handler.filters:
            if isinstance(log_filter, SecretScrubbingFilter):
                text = scrub(text, log_filter.secrets)
    return text
