"""``tw-exporter demo``: an embedded PostgreSQL, synthetic data that moves, the real exporter."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import REPO, StartExporter, exporter_command, wait_until_sync
from tests.helpers import http_get, series, value

ACTIVITY = REPO / "examples" / "queries" / "activity.yml"


def test_demo_serves_moving_numbers_and_stops_cleanly(exporter_proc: StartExporter) -> None:
    proc = exporter_proc(
        "--tweets",
        "3000",
        "--interval",
        "1",
        "--queries-file",
        str(ACTIVITY),
        command="demo",
        wait=120,
    )

    def tweets() -> float:
        return value(http_get(proc.url + "/metrics").text, "tw_platform_tweets", window="7d") or 0

    wait_until_sync(lambda: tweets() > 0, timeout=30)
    # Each query runs on its own job: /readyz says when every one of them is served.
    wait_until_sync(lambda: http_get(proc.url + "/readyz").status == 200, timeout=30)
    first = tweets()
    text = http_get(proc.url + "/metrics").text
    assert len(series(text, "tw_user_followers")) == 10
    assert len(series(text, "tw_hashtag_tweets")) == 10
    assert value(text, "tw_up") == 1
    # The demo keeps adding tweets, so the 7-day count grows while we watch.
    wait_until_sync(lambda: tweets() > first, timeout=30)
    # The custom queries of the documented example run on the demo's data.
    assert (value(http_get(proc.url + "/metrics").text, "tw_tweets_created_total") or 0) >= 3000
    assert proc.stop() == 0


def test_demo_rejects_an_invalid_queries_file_before_starting(tmp_path: Path) -> None:
    path = tmp_path / "queries.yml"
    path.write_text("queries: {q: {sql: 'SELECT 1', metrics: {tw_up: {help: h}}}}")
    result = subprocess.run(
        exporter_command("demo", "--queries-file", str(path), "--listen", "127.0.0.1:0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"tw-exporter: error: {path}: query q, field metrics.tw_up")
    assert "starting embedded PostgreSQL" not in result.stdout
