"""How one connection to PostgreSQL is opened: host by host, each with a timeout of its own.

asyncpg walks a multi-host URI under *one* timeout for the whole list, so a host that hangs
(a frozen VM, a black-holed path: the TCP handshake or the startup exchange never completes)
spends it all, and the next host, a freshly promoted primary, is never tried: no query
succeeded for 33-47 s after a failover, and ``prefer-standby`` with a hung standby first never
reached the healthy primary. libpq instead gives each host its own ``connect_timeout``.

``Connector.connect`` does what libpq does, on asyncpg's public ``connect`` for one host at a
time (so TLS, passfile and authentication stay asyncpg's):

* every host gets ``connect_timeout`` from the URI (libpq's parameter, at least 2 s), else the
  caller's timeout (``--query-timeout``), for the connect *and* the session check;
* ``target_session_attrs`` has libpq's six values: ``any``; ``read-write`` / ``read-only``
  (``default_transaction_read_only`` and hot standby); ``primary`` / ``standby`` (hot standby);
  ``prefer-standby`` (a standby if one answers, else the first other host that did);
* a host that did not answer within its timeout goes to the end of the list for
  ``DEMOTED_SECONDS`` (one that refuses costs nothing to try again), so the connections after
  a failover do not each wait for the hung host first, and ``prefer-standby`` holding a
  fallback does not try it at all; the list order comes back afterwards (and the pool's
  connection age brings existing connections back to the preferred host);
* the DSN is asked for at each connect (``DsnSource``): a rotated password file is used by the
  next connection, and when a server rejects the password the file is re-read at once and the
  connect tried again if it changed.

Errors never carry the DSN: asyncpg's are about hosts and the server's answer, and a URI
asyncpg could misread never reaches it (``exporter.config.dsn``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from exporter.config import dsn as dsn_uri
from exporter.config.dsn import DsnSource

log = logging.getLogger(__name__)

DEMOTED_SECONDS = 60.0
# SQLSTATEs of a rejected login: invalid_password, invalid_authorization_specification.
_REJECTED_SQLSTATES = ("28P01", "28000")


class NoSuitableHost(asyncpg.InterfaceError):  # type: ignore[misc]  # asyncpg is untyped
    """Every host answered, none had the session attributes asked for (counted as
    ``connection``, like asyncpg's own ``TargetServerAttributeNotMatched``)."""


def rejected_login(error: BaseException) -> bool:
    return getattr(error, "sqlstate", None) in _REJECTED_SQLSTATES


async def _session_kind(conn: asyncpg.Connection, attrs: str) -> tuple[bool, bool]:
    """(in hot standby, read-only by default) as libpq decides them: from the ParameterStatus
    PostgreSQL 14+ reports at startup, else by asking. ``any`` needs neither."""
    if attrs == "any":
        return False, False
    settings = conn.get_settings()
    standby_status = getattr(settings, "in_hot_standby", None)
    if standby_status is None:
        standby = bool(await conn.fetchval("SELECT pg_catalog.pg_is_in_recovery()"))
    else:
        standby = standby_status == "on"
    read_only = getattr(settings, "default_transaction_read_only", "off") == "on"
    return standby, read_only


def suits(attrs: str, standby: bool, read_only: bool) -> bool:
    """Whether a session with these properties is one ``target_session_attrs`` accepts
    (``prefer-standby``: the preferred kind; other hosts are its fallback)."""
    if attrs == "read-write":
        return not standby and not read_only
    if attrs == "read-only":
        return standby or read_only
    if attrs == "primary":
        return not standby
    if attrs in ("standby", "prefer-standby"):
        return standby
    return True


class Connector:
    """Opens connections for one DSN source; remembers which hosts failed lately."""

    def __init__(self, source: DsnSource | str, *, clock: Callable[[], float] = time.monotonic):
        self.source = DsnSource(source) if isinstance(source, str) else source
        self._failed: dict[str, float] = {}  # host spec -> when it last failed
        self._clock = clock

    def demoted(self) -> set[str]:
        """Hosts that timed out in the last ``DEMOTED_SECONDS``."""
        now = self._clock()
        return {h for h, at in self._failed.items() if now - at < DEMOTED_SECONDS}

    async def connect(
        self,
        dsn: object = None,
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 - the name asyncpg's pool passes it under
        **kwargs: Any,
    ) -> Any:
        """A connection that suits the DSN's ``target_session_attrs``; keyword arguments go
        to ``asyncpg.connect`` (the pool's ``connect=`` hook passes its own, and ``dsn``,
        which is ignored: the source decides). Raises the last host's error."""
        kwargs.pop("loop", None)
        try:
            return await self._connect_once(timeout, kwargs)
        except Exception as error:
            if not rejected_login(error) or not self.source.reread(
                "the server rejected the password"
            ):
                raise
        return await self._connect_once(timeout, kwargs)

    async def _connect_once(self, seconds: float, kwargs: dict[str, Any]) -> Any:
        try:
            dsn = dsn_uri.parse(self.source.current())
        except dsn_uri.DsnError as error:
            raise asyncpg.ClientConfigurationError(f"invalid DSN: {error}") from None
        attrs = dsn.target_session_attrs
        per_host = dsn.connect_timeout or seconds
        fallback: Any = None
        errors: list[BaseException] = []
        unsuitable = 0
        try:
            demoted = self.demoted()
            # In DSN order, the hosts that timed out lately last.
            ordered = [h for h in dsn.hosts if h not in demoted] + [
                h for h in dsn.hosts if h in demoted
            ]
            for host in ordered:
                if fallback is not None and host in demoted:
                    # prefer-standby holds a usable host already: a standby that failed
                    # lately (hung, say) would cost a timeout on every new connection.
                    break
                try:
                    conn, standby, read_only = await self._open(dsn, host, per_host, kwargs)
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                    if isinstance(e, TimeoutError):  # a refusal costs nothing to retry
                        self._failed[host] = self._clock()
                    errors.append(e)
                    log.debug("connect to host %s failed: %s", host or "(default)", e)
                    continue
                self._failed.pop(host, None)
                if suits(attrs, standby, read_only):
                    if fallback is not None:
                        fallback.terminate()
                    return conn
                unsuitable += 1
                if attrs == "prefer-standby" and fallback is None:
                    fallback = conn
                else:
                    conn.terminate()
        except BaseException:
            if fallback is not None:
                fallback.terminate()
            raise
        if fallback is not None:
            return fallback
        rejected = [e for e in errors if rejected_login(e)]
        if rejected:
            raise rejected[-1]
        if unsuitable or not errors:
            failed = f"; {len(errors)} did not answer ({_name(errors[-1])})" if errors else ""
            raise NoSuitableHost(
                f"none of the {len(dsn.hosts)} host(s) accepts target_session_attrs={attrs}"
                + failed
            )
        raise errors[-1]

    @staticmethod
    async def _open(
        dsn: dsn_uri.Dsn, host: str, seconds: float, kwargs: dict[str, Any]
    ) -> tuple[Any, bool, bool]:
        """Connect to one host and learn its session kind, all within ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                conn = await asyncpg.connect(
                    dsn.uri_for(host), timeout=seconds, target_session_attrs="any", **kwargs
                )
                try:
                    standby, read_only = await _session_kind(conn, dsn.target_session_attrs)
                except BaseException:
                    conn.terminate()
                    raise
        except TimeoutError:
            raise TimeoutError(
                f"host {host or '(default)'} did not answer within {seconds:g}s"
            ) from None
        except (asyncpg.ClientConfigurationError, OSError):  # TLS errors are ValueErrors too
            raise
        except (ValueError, TypeError) as error:
            # asyncpg misreading a URI quoted the misread part (a password's, once): never
            # pass its text on; exporter.config.dsn should have made this impossible.
            raise asyncpg.ClientConfigurationError(
                f"invalid DSN for host {host or '(default)'}: {type(error).__name__}"
            ) from None
        return conn, standby, read_only


def _name(error: BaseException) -> str:
    return type(error).__name__
