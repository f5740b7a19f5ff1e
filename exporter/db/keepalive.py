"""TCP keepalive and ``TCP_USER_TIMEOUT`` on the database sockets, derived from the deadline.

A network path that silently drops packets (a firewall or NAT that forgot the connection, a
failed-over address, a partitioned link) gives the client no error: an idle pooled connection
looks alive for ever, and data sent on it stays unacknowledged until the kernel gives up after
``tcp_retries2`` (about 15 minutes on Linux). The exporter's client deadline already ends a
*query* that gets no answer; these options make the kernel notice a dead path on *idle*
connections and bound how long a connection the deadline closed may linger in the kernel.

asyncpg takes none of libpq's ``keepalives*``/``tcp_user_timeout`` parameters, and unknown
URI parameters are sent to the server as settings (PostgreSQL and PgBouncer reject them), so
the options are set on the connection's socket once it is open.

With ``deadline`` = query timeout + client grace (seconds):

- ``TCP_KEEPIDLE`` = deadline: an idle connection is probed after that long without traffic;
- ``TCP_KEEPINTVL`` = deadline / 3, ``TCP_KEEPCNT`` = 3: where ``TCP_USER_TIMEOUT`` is not
  available, a path that answers no probe is declared dead after about 2 x deadline;
- ``TCP_USER_TIMEOUT`` = 2 x deadline: the kernel closes a connection whose sent data (a query,
  a keepalive probe) stays unacknowledged that long. Twice the deadline, so a query in flight is
  always ended by the client deadline first (counted as ``timeout``), never by the kernel.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TcpTimeouts:
    """The socket option values; seconds except ``user_timeout_ms``."""

    idle: int
    interval: int
    count: int
    user_timeout_ms: int

    @classmethod
    def for_deadline(cls, deadline: float) -> TcpTimeouts:
        return cls(
            idle=max(1, math.ceil(deadline)),
            interval=max(1, math.ceil(deadline / 3)),
            count=3,
            user_timeout_ms=max(1000, round(2 * deadline * 1000)),
        )

    def options(self) -> dict[str, int]:
        """``{socket module constant name: value}`` for the IPPROTO_TCP level."""
        return {
            "TCP_KEEPIDLE": self.idle,
            "TCP_KEEPINTVL": self.interval,
            "TCP_KEEPCNT": self.count,
            "TCP_USER_TIMEOUT": self.user_timeout_ms,
        }


def apply(sock: Any, timeouts: TcpTimeouts) -> bool:
    """Turn keepalive on and set the timeouts on a TCP socket; returns whether it was TCP.

    ``sock`` is a socket or asyncio's ``TransportSocket`` (``transport.get_extra_info
    ("socket")``, also for TLS connections); a unix-domain socket is left alone.
    """
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in timeouts.options().items():
        option = getattr(socket, name, None)  # Linux names; other platforms have a subset
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
    return True
