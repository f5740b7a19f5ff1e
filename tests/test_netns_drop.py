"""A network path that silently drops packets: keepalive and TCP_USER_TIMEOUT find dead idle
connections, the client deadline ends queries in flight, and nothing lingers.

The scenario (``tests/netns_drop.py``) runs in a network namespace of its own (``unshare
--net``) with a private PostgreSQL on its loopback and an nftables DROP rule on the server's
port, so no packet leaves the namespace and the machine's own network is untouched. It needs
root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and nftables; CI runs as root and installs nftables, so
there the test fails rather than skips when either is missing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from exporter.db.keepalive import TcpTimeouts
from tests.conftest import REPO
from tests.helpers import require_tool, unavailable
from tests.netns_drop import QUERY_TIMEOUT

pytestmark = pytest.mark.slow
SLACK = 1.5


def test_dropping_path_is_noticed_by_keepalive_deadline_and_user_timeout() -> None:
    unshare = require_tool("unshare", hint="Debian package util-linux")
    require_tool("nft", hint="Debian package nftables")
    require_tool("ip", hint="Debian package iproute2")
    probe = subprocess.run([unshare, "--net", "--", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        unavailable(
            "cannot create a network namespace here (needs root or CAP_SYS_ADMIN): "
            + probe.stderr.strip()
        )
    result = subprocess.run(
        [unshare, "--net", "--", sys.executable, "-m", "tests.netns_drop"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    deadline = out["deadline"]
    timeouts = TcpTimeouts.for_deadline(deadline)
    user_timeout = timeouts.user_timeout_ms / 1000
    print(json.dumps(out, indent=1))

    assert out["first_cycle"] is True
    assert out["options"] == {"SO_KEEPALIVE": 1, **timeouts.options()}
    # Idle pooled connections on a dead path: closed by the kernel after TCP_USER_TIMEOUT
    # (first keepalive probe after TCP_KEEPIDLE), while a connection without the options
    # notices nothing at all.
    assert out["idle_dead_after"] is not None
    assert timeouts.idle <= out["idle_dead_after"] <= user_timeout + timeouts.interval + SLACK
    assert out["plain_open_then"] is True and out["plain_open_at_end"] is True
    # The next run connects afresh; no SYN-ACK comes, so the connect timeout ends it.
    assert out["cycle_connect"] is False
    assert out["cycle_connect_seconds"] < QUERY_TIMEOUT + SLACK
    assert out["up_connect"] == 0
    assert set(out["connection_errors"].values()) == {1.0}
    # The path comes back: the next run succeeds.
    assert (out["cycle_back"], out["up_back"], out["followers_back"]) == (True, 1.0, 2)
    # Queries sent on connections that look fine: the client deadline ends them.
    assert out["cycle_deadline"] is False
    assert deadline - 0.1 <= out["cycle_deadline_seconds"] < deadline + SLACK
    assert set(out["timeout_errors"].values()) == {1.0}
    assert out["up_deadline"] == 0
    # The closed sockets still held unacknowledged data; the kernel drops them within
    # TCP_USER_TIMEOUT instead of retrying for ~15 minutes.
    assert out["orphans_at_deadline"] >= 1
    assert out["orphans_gone_after"] is not None
    assert out["orphans_gone_after"] <= user_timeout + SLACK
    assert out["cycle_final"] is True
