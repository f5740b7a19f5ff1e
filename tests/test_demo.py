"""``tw-exporter demo``: an embedded PostgreSQL, synthetic data that moves, the real exporter."""

from __future__ import annotations

from tests.conftest import StartExporter, wait_until_sync
from tests.helpers import http_get, series, value


def test_demo_serves_moving_numbers_and_stops_cleanly(exporter_proc: StartExporter) -> None:
    proc = exporter_proc("--tweets", "3000", "--interval", "1", command="demo", wait=120)

    def tweets() -> float:
        return value(http_get(proc.url + "/metrics").text, "tw_platform_tweets", window="7d") or 0

    wait_until_sync(lambda: tweets() > 0, timeout=30)
    first = tweets()
    text = http_get(proc.url + "/metrics").text
    assert len(series(text, "tw_user_followers")) == 10
    assert len(series(text, "tw_hashtag_tweets")) == 10
    assert value(text, "tw_up") == 1
    # The demo keeps adding tweets, so the 7-day count grows while we watch.
    wait_until_sync(lambda: tweets() > first, timeout=30)
    assert proc.stop() == 0
