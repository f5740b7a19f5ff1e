"""The TCP options derived from the deadline, on real sockets (the end-to-end behaviour on a
dropping path is in test_netns_drop.py)."""

from __future__ import annotations

import socket

import pytest

from exporter.db.keepalive import TcpTimeouts, apply


@pytest.mark.parametrize(
    ("deadline", "expected"),
    [
        (2.0, TcpTimeouts(idle=2, interval=1, count=3, user_timeout_ms=4000)),
        (11.0, TcpTimeouts(idle=11, interval=4, count=3, user_timeout_ms=22000)),
        (1.05, TcpTimeouts(idle=2, interval=1, count=3, user_timeout_ms=2100)),
    ],
)
def test_values_follow_the_deadline(deadline: float, expected: TcpTimeouts) -> None:
    timeouts = TcpTimeouts.for_deadline(deadline)
    assert timeouts == expected
    # A query in flight must meet the client deadline before the kernel gives up on it.
    assert timeouts.user_timeout_ms > deadline * 1000


def test_apply_sets_the_options_on_a_tcp_socket() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        timeouts = TcpTimeouts.for_deadline(11.0)
        assert apply(client, timeouts) is True
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        for name, expected in timeouts.options().items():
            if hasattr(socket, name):
                assert client.getsockopt(socket.IPPROTO_TCP, getattr(socket, name)) == expected


def test_unix_sockets_are_left_alone() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert apply(left, TcpTimeouts.for_deadline(2.0)) is False
        assert apply(None, TcpTimeouts.for_deadline(2.0)) is False
