"""DSN redaction and the log filter that scrubs passwords."""

from __future__ import annotations

import io
import json
import logging

import pytest

from exporter.config.secrets import dsn_password, redact_dsn
from exporter.logs import configure_logging


@pytest.mark.parametrize(
    ("dsn", "password"),
    [
        ("postgresql://u:s3cret@h:5432/db", "s3cret"),
        ("postgresql://u:p%40ss%2Fw@h/db", "p@ss/w"),
        ("postgresql://u@h/db?password=qwerty&sslmode=require", "qwerty"),
        ("postgres://u:a:b@h/db", "a:b"),
        # libpq multi-host URIs: the password sits before the host list.
        ("postgresql://u:s3cret@h1:5432,h2:5433/db?target_session_attrs=prefer-standby", "s3cret"),
        ("postgresql://u:p@ss,w0rd@h1,h2:5433/db", "p@ss,w0rd"),
        ("postgresql://u:pw%2Cx@[::1]:5432,[::2]:5433/db", "pw,x"),
        ("postgresql://u@h1:5432,h2:5433/db?password=qwerty&target_session_attrs=any", "qwerty"),
    ],
)
def test_redaction(dsn: str, password: str) -> None:
    assert dsn_password(dsn) == password
    redacted = redact_dsn(dsn)
    assert password not in redacted
    assert "***" in redacted


def test_no_password_is_left_alone() -> None:
    assert redact_dsn("postgresql://u@h/db") == "postgresql://u@h/db"
    multi = "postgresql://u@h1:5432,h2:5433/db?target_session_attrs=prefer-standby"
    assert redact_dsn(multi) == multi
    assert redact_dsn("postgresql://u:pw@h1:5432,h2:5433/db") == (
        "postgresql://u:***@h1:5432,h2:5433/db"
    )
    assert dsn_password("postgresql://u@h/db") is None


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_filter_scrubs_messages_and_tracebacks(fmt: str) -> None:
    configure_logging("info", fmt, ("s3cret-pass",))
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    handler.setStream(stream)  # type: ignore[attr-defined]
    log = logging.getLogger("test")
    log.info("connecting with %s", "postgresql://u:s3cret-pass@h/db")
    try:
        raise RuntimeError("driver said s3cret-pass")
    except RuntimeError:
        log.exception("boom")
    output = stream.getvalue()
    assert "s3cret-pass" not in output
    assert output.count("***") >= 2
    if fmt == "json":
        for line in output.splitlines():
            json.loads(line)
