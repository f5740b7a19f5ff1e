"""Why a query run failed: the reasons ``exporter.db.database`` classifies a failure into (and
``data``, which the scheduler adds for rows that cannot be served).

The one list of them: the error counter's ``reason`` label (``exporter.expose.health``), the
alerts, the dashboard and the docs take it from here. It lives with the database, which
produces the reasons, so the database imports nothing that is served.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

FailureReason = Literal["timeout", "connection", "conflict", "sql", "data"]
FAILURE_REASON_MEANINGS: Mapping[FailureReason, str] = {
    "timeout": "statement_timeout, lock_timeout or client deadline",
    "connection": "database or pooler unreachable, restarted or refused",
    "conflict": "cancelled by a recovery conflict on a hot standby, SQLSTATE 40001/40P01",
    "sql": "any other error, e.g. a missing table",
    "data": "a query returned rows that cannot be served: a value that is not a number, a "
    "repeated label set, more rows than max_series (custom queries), a verified flag that is "
    "not a boolean (top_users); the valid rows are still served",
}
FAILURE_REASONS: tuple[FailureReason, ...] = tuple(FAILURE_REASON_MEANINGS)
"""Every value of the ``reason`` label, each pre-created for every query. The metric help, the
alerts, the dashboard and the docs take the list from here."""
