"""The silently dropping network path, run inside a network namespace of its own.

``tests/test_netns_drop.py`` runs ``unshare --net python -m tests.netns_drop``: this process
then has a private loopback interface, where a private PostgreSQL listens on 127.0.0.1:5432 and
an nftables rule can drop every packet to or from that port, as a firewall that forgot the
connection or a partitioned link would. Nothing leaves the namespace. Prints one JSON object
with what it measured; the test asserts on it.

SIGSTOP (tests/test_freeze.py) cannot show this: the kernel of a frozen server still
acknowledges packets, so only here do keepalive and TCP_USER_TIMEOUT come into play.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from exporter.collectors import QUERY_NAMES
from exporter.db.database import CLIENT_GRACE_SECONDS
from exporter.db.keepalive import TcpTimeouts
from exporter.ops.embedded import EmbeddedPostgres
from tests.helpers import series, value
from tests.rig import fill, make_rig

HOST, PORT = "127.0.0.1", 5432
QUERY_TIMEOUT = 1.0
NFT_TABLE = "tw_exporter_test"


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


def drop(on: bool) -> None:
    """Drop (or stop dropping) every TCP packet to or from the server's port."""
    if on:
        run("nft", "add", "table", "inet", NFT_TABLE)
        run(
            "nft", "add", "chain", "inet", NFT_TABLE, "out",
            "{ type filter hook output priority 0; }",
        )  # fmt: skip
        run("nft", "add", "rule", "inet", NFT_TABLE, "out", "tcp", "dport", str(PORT), "drop")
        run("nft", "add", "rule", "inet", NFT_TABLE, "out", "tcp", "sport", str(PORT), "drop")
    else:
        run("nft", "delete", "table", "inet", NFT_TABLE)


def client_sockets(besides: int) -> int:
    """Kernel TCP sockets (any state, orphans included) from this namespace to the server,
    other than the one whose local port is ``besides``."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote = line.split()[1:3]
        if int(remote.split(":")[1], 16) == PORT and int(local.split(":")[1], 16) != besides:
            count += 1
    return count


async def poll(condition: Any, timeout: float) -> float | None:
    """Seconds until ``condition()`` holds, or None at the deadline."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return None


def socket_options(conn: Any) -> dict[str, int]:
    sock = conn._con._transport.get_extra_info("socket")
    return {
        "SO_KEEPALIVE": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        **{
            name: sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, name))
            for name in TcpTimeouts.for_deadline(1.0).options()
        },
    }


async def scenario(dsn: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    await fill(dsn)
    rig = await make_rig(dsn, query_timeout=QUERY_TIMEOUT)
    pool = rig.database._pool
    assert pool is not None
    try:
        out["first_cycle"] = await rig.run_all()
        async with pool.acquire() as conn:
            out["options"] = socket_options(conn)
        # A connection without the options, for contrast.
        plain = await asyncpg.connect(dsn)
        plain_port = plain._transport.get_extra_info("sockname")[1]

        # 1. The path starts dropping while the pool's connections are idle.
        drop(True)
        out["idle_dead_after"] = await poll(lambda: pool.get_size() == 0, timeout=30)
        out["plain_open_then"] = not plain.is_closed()

        # 2. A run now: no pooled connection left, a fresh connect gets no SYN-ACK.
        started = time.monotonic()
        out["cycle_connect"] = await rig.run_all()
        out["cycle_connect_seconds"] = time.monotonic() - started
        out["up_connect"] = value(rig.text, "tw_up")
        out["connection_errors"] = {q: rig.errors(q, "connection") for q in QUERY_NAMES}

        # 3. The path comes back: the next run succeeds with the right numbers.
        drop(False)
        out["cycle_back"] = await rig.run_all()
        out["up_back"] = value(rig.text, "tw_up")
        out["followers_back"] = len(series(rig.text, "tw_user_followers"))

        # 4. The path drops again, and a run starts at once on the pooled connections: the
        #    queries get no answer and the deadline closes them.
        drop(True)
        started = time.monotonic()
        out["cycle_deadline"] = await rig.run_all()
        out["cycle_deadline_seconds"] = time.monotonic() - started
        out["timeout_errors"] = {q: rig.errors(q, "timeout") for q in QUERY_NAMES}
        out["up_deadline"] = value(rig.text, "tw_up")
        # The closed sockets had unacknowledged data: the kernel keeps them as orphans until
        # TCP_USER_TIMEOUT, then they are gone (not after tcp_retries2, ~15 minutes).
        out["orphans_at_deadline"] = client_sockets(besides=plain_port)
        out["orphans_gone_after"] = await poll(
            lambda: client_sockets(besides=plain_port) == 0, timeout=20
        )
        # Without keepalive the plain connection has noticed nothing, all this time.
        out["plain_open_at_end"] = not plain.is_closed()
        plain.terminate()
        drop(False)
        out["cycle_final"] = await rig.run_all()
    finally:
        await rig.database.close(grace=1)
    return out


def main() -> None:
    run("ip", "link", "set", "lo", "up")
    directory = Path(tempfile.mkdtemp(prefix="tw-exporter-pg-"))
    server = EmbeddedPostgres(directory / "pgdata")
    result: dict[str, Any] = {"deadline": QUERY_TIMEOUT + CLIENT_GRACE_SECONDS}
    try:
        dsn = server.restart_on_tcp(HOST, PORT)
        result.update(asyncio.run(scenario(dsn)))
    finally:
        subprocess.run(["nft", "delete", "table", "inet", NFT_TABLE], capture_output=True)
        server.cleanup()
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
