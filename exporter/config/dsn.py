"""A PostgreSQL URI taken apart once, checked part by part, and put back together per host.

asyncpg reads a URI with ``urllib.parse``, which ends the user part at the first ``/``, ``?``
or ``#``: a password holding one of them unencoded became a "port" (``invalid literal for
int() ... 'S3cr3t'``) quoted back in every connect error. Here the user part runs to the last
``@`` (as in ``exporter.config.secrets``), every other part is validated with an error that
names the part and never its text, and ``uri_for`` hands asyncpg a URI for one host with the
user and password percent-encoded, so asyncpg cannot misread it.

``target_session_attrs`` (every value libpq has) and libpq's ``connect_timeout`` are read here
and left out of the per-host URIs: the exporter connects host by host itself
(``exporter.db.connect``), and asyncpg would send ``connect_timeout`` to the server as a
setting, which PostgreSQL rejects.

A DSN file (``--dsn-file``) is read by ``read_dsn_file``, the one function ``run``, ``check`` and
every re-read after a credentials rotation use.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode

log = logging.getLogger(__name__)

SCHEMES = ("postgresql", "postgres")
SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
# libpq's own parameters the exporter applies itself, never forwarded to asyncpg.
_OWN_PARAMETERS = ("target_session_attrs", "connect_timeout")
# libpq: "a value less than 2 is treated as 2"; 0 (or absent) means no limit of its own.
MIN_CONNECT_TIMEOUT = 2.0
EXAMPLE = "postgresql://user@host:5432/dbname"

# host, [IPv6], or empty (libpq's default host), then an optional numeric port
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.%\w]+\]|[^\s:/?#\[\],@]*)(?::(?P<port>[0-9]+))?")


class DsnError(ValueError):
    """What is wrong with a DSN: names the part, never quotes the password (nor, to be safe,
    anything the user part could have swallowed)."""


@dataclass(frozen=True)
class Dsn:
    """A PostgreSQL URI's parts. ``hosts`` are ``host[:port]`` specs as written (``""`` for
    libpq's default host); ``query`` holds the decoded parameters the URI passes on."""

    scheme: str
    user: str | None
    password: str | None
    hosts: tuple[str, ...]
    path: str
    query: tuple[tuple[str, str], ...]
    target_session_attrs: str = "any"
    connect_timeout: float | None = None
    hosts_in_query: bool = False  # ?host=a,b (and ?port=...) instead of the authority

    def uri_for(self, host: str) -> str:
        """This URI with only ``host`` (one of ``hosts``) and the parameters asyncpg should
        see, user and password percent-encoded."""
        userinfo = ""
        if self.user is not None or self.password is not None:
            userinfo = quote(self.user or "", safe="")
            if self.password is not None:
                userinfo += ":" + quote(self.password, safe="")
            userinfo += "@"
        query = list(self.query)
        authority = host
        if self.hosts_in_query and len(self.hosts) > 1:
            spec = _HOST_PORT.fullmatch(host)
            assert spec is not None  # validated by parse
            query = [(k, v) for k, v in query if k not in ("host", "port")]
            query.append(("host", spec["host"]))
            if spec["port"]:
                query.append(("port", spec["port"]))
        if self.hosts_in_query:
            authority = ""
        text = f"{self.scheme}://{userinfo}{authority}{self.path}"
        return text + ("?" + urlencode(query, quote_via=quote) if query else "")


def parse(text: str) -> Dsn:
    """Take a PostgreSQL URI apart; ``DsnError`` names the first part that is wrong."""
    dsn = text.strip()
    if "\n" in dsn or "\r" in dsn:
        raise DsnError(f"expected one line holding a PostgreSQL URI such as {EXAMPLE}")
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme not in SCHEMES or not rest:
        raise DsnError(f"expected a PostgreSQL URI such as {EXAMPLE}")
    user = password = None
    at = rest.rfind("@")
    if at != -1:
        userinfo, rest = rest[:at], rest[at + 1 :]
        raw_user, colon, raw_password = userinfo.partition(":")
        user = unquote(raw_user)
        password = unquote(raw_password) if colon else None
    if "#" in rest:
        raise DsnError(
            "expected a PostgreSQL URI without '#' after the user part (percent-encode it as %23)"
        )
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i != -1), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    path, _, raw_query = tail.partition("?")
    try:
        pairs = parse_qsl(raw_query, keep_blank_values=True, strict_parsing=bool(raw_query))
    except ValueError:
        raise DsnError("expected the URI's parameters as name=value pairs joined by '&'") from None
    params = dict(pairs)
    hosts_in_query = not authority and "host" in params
    if hosts_in_query and "," not in params["host"]:
        hosts: tuple[str, ...] = (params["host"],)  # one host or socket directory: as given
    else:
        if hosts_in_query:
            hosts = _hosts_from_query(params["host"], params.get("port", ""))
        else:
            hosts = tuple(authority.split(",")) if authority else ("",)
        for number, host in enumerate(hosts, 1):
            # Without an '@' a "host:port" may be "user:password" missing its host: unquoted.
            _check_host(host, f"host {host!r}" if at != -1 else f"host number {number}")
    attrs = params.get("target_session_attrs", "any")
    if attrs not in SESSION_ATTRS:
        raise DsnError(
            f"expected target_session_attrs to be one of {', '.join(SESSION_ATTRS)}, got {attrs!r}"
        )
    return Dsn(
        scheme=scheme,
        user=user,
        password=password,
        hosts=hosts,
        path=path,
        query=tuple((k, v) for k, v in pairs if k not in _OWN_PARAMETERS),
        target_session_attrs=attrs,
        connect_timeout=_connect_timeout(params.get("connect_timeout")),
        hosts_in_query=hosts_in_query,
    )


def _hosts_from_query(hosts: str, ports: str) -> tuple[str, ...]:
    names = hosts.split(",")
    numbers = ports.split(",") if ports else []
    if len(numbers) > 1 and len(numbers) != len(names):
        raise DsnError(
            f"expected as many ports as hosts in the URI's host= and port= parameters, got "
            f"{len(names)} hosts and {len(numbers)} ports"
        )
    if len(numbers) == 1:
        numbers *= len(names)
    specs = []
    for i, name in enumerate(names):
        # Unix socket directories (host=/run/postgresql) keep their slashes.
        if name.startswith("/"):
            raise DsnError("expected TCP hosts in a host= list; a socket directory must be alone")
        shown = f"[{name}]" if ":" in name else name
        specs.append(f"{shown}:{numbers[i]}" if numbers else shown)
    return tuple(specs)


def _check_host(host: str, shown: str) -> None:
    match = _HOST_PORT.fullmatch(host)
    if match is None:
        raise DsnError(
            "expected a PostgreSQL URI with valid hosts and numeric ports (host:port, or "
            f"host1:port1,host2:port2), got {shown}"
        )
    port = match["port"]
    if port is not None and not 1 <= int(port) <= 65535:
        raise DsnError(f"expected a PostgreSQL URI with ports from 1 to 65535, got {port}")


def _connect_timeout(text: str | None) -> float | None:
    if text is None or text.strip() in ("", "0"):
        return None
    try:
        seconds = int(text.strip())
    except ValueError:
        raise DsnError(
            f"expected connect_timeout to be a whole number of seconds, got {text!r}"
        ) from None
    if seconds < 0:
        raise DsnError(f"expected connect_timeout to be 0 or more seconds, got {seconds}")
    return max(MIN_CONNECT_TIMEOUT, float(seconds))


def read_dsn_file(path: Path) -> str:
    """The DSN a file holds: one line (a trailing newline, as Kubernetes Secrets often have, is
    fine), validated. Errors never show the file's content: it is a credential."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DsnError(f"cannot read {str(path)!r}: {error.__class__.__name__}") from None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) > 1:
        raise DsnError(
            f"{str(path)!r} has {len(lines)} lines: expected one line holding the PostgreSQL "
            "URI (the lines are not shown: they may hold passwords)"
        )
    try:
        parse(text)
    except DsnError as error:
        raise DsnError(f"the content of {str(path)!r} is not valid: {error}") from None
    return text.strip()


class DsnSource:
    """Where a connection's DSN comes from, asked at every connect: a fixed string (``--dsn``,
    ``--ha-dsn``, the environment) here; ``DsnFile`` follows a file."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn

    def current(self) -> str:
        return self._dsn

    def reread(self, why: str) -> bool:
        """Read the DSN's source again; True when the DSN changed (a string never does)."""
        return False

    def poll(self) -> bool:
        """Re-read if the source changed since last seen; True when the DSN changed."""
        return False


Fingerprint = tuple[str, int, int, int, int]


class DsnFile(DsnSource):
    """``--dsn-file``, followed: re-read when the file changes (``poll``, once a second), on
    SIGHUP and when a server rejects the password (``reread``). New connections use the new
    DSN; the caller drains the open ones (``on_reload``).

    A change is seen through the *resolved* file: a Kubernetes Secret volume swaps its
    ``..data`` symlink to a new timestamped directory, so the path ``dsn`` (-> ``..data/dsn``)
    never changes, but its real path, inode and mtime do. A file that cannot be read or holds
    no valid DSN leaves the previous DSN in use; that failure is logged and counted once per
    change of the file, not once a second.
    """

    def __init__(
        self,
        path: Path,
        option: str = "--dsn-file",
    ) -> None:
        self.path = path
        self.option = option
        # What to do with a new DSN, and after a failed re-read (the app sets both).
        self.on_reload: Callable[[str], None] = lambda dsn: None
        self.on_failure: Callable[[], None] = lambda: None
        self._seen = self._fingerprint()
        super().__init__(read_dsn_file(path))

    def _fingerprint(self) -> Fingerprint | None:
        try:
            st = os.stat(self.path)  # follows the symlinks
            return (os.path.realpath(self.path), st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            return None

    def poll(self) -> bool:
        seen = self._fingerprint()
        if seen == self._seen:
            return False
        self._seen = seen
        return self.reread("the file changed")

    def reread(self, why: str) -> bool:
        try:
            dsn = read_dsn_file(self.path)
        except DsnError as error:
            log.warning(
                "%s: %s (%s); new connections keep the previous DSN", self.option, error, why
            )
            self.on_failure()
            return False
        if dsn == self._dsn:
            return False
        self._dsn = dsn
        log.info(
            "%s: read %s again (%s): new connections use its DSN, open ones are replaced as "
            "they come back to the pool",
            self.option,
            self.path,
            why,
        )
        self.on_reload(dsn)
        return True
