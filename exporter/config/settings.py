"""Command-line flags, ``TW_EXPORTER_*`` environment variables and their validation.

Every flag can also come from the environment (flags win over env, env over defaults) so the
container image is configured without a shell. Values are parsed here, once, into a frozen
``Settings``: a wrong value stops the process with exit status 2 and one line that names the
flag (or variable), the value and what is expected — never a traceback, never a password.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from exporter import __version__
from exporter.config import dsn as dsn_uri
from exporter.config.secrets import redact_dsn

PROG = "tw-exporter"
ENV_PREFIX = "TW_EXPORTER_"
DEFAULT_PORT = 10093
DEFAULT_LISTEN = f"0.0.0.0:{DEFAULT_PORT}"
DEFAULT_QUERY_TIMEOUT_CAP = 10.0
STALENESS_INTERVALS = 3
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
MAX_INTERVAL = 86_400.0
# Below this an "interval" is a busy loop against the database, not a schedule.
MIN_SECONDS = 0.05
MAX_TOP_N = 1000
MAX_DAYS = 3650
MAX_CONNECTIONS = 65_535
DEFAULT_MAX_CONNECTIONS = 5
# The HTTP server's defaults (--web-header-timeout, --web-idle-timeout, --web-max-connections);
# exporter.expose's ServerLimits defaults to them too, for servers built without settings.
WEB_HEADER_TIMEOUT = 10.0
WEB_IDLE_TIMEOUT = 75.0
WEB_MAX_CONNECTIONS = 256
DSN_SCHEMES = dsn_uri.SCHEMES
MAX_GROUP_LENGTH = 200
# --max-label-length, in bytes (exporter.expose.labels shortens longer values to fit).
DEFAULT_MAX_LABEL_LENGTH = 256
# The smallest limit that still leaves room for a readable prefix before the marker and hash.
MIN_MAX_LABEL_LENGTH = 32
# A ceiling so a typo cannot switch the bound off; above 2,048 bytes Mimir, Cortex and Grafana
# Cloud already reject the series, so larger limits only suit a Prometheus without any limit.
MAX_MAX_LABEL_LENGTH = 65_536
DEFAULT_HA_LEASE = 15.0
# The lease must outlast a query a frozen leader started just before it froze (query timeout
# plus the client's grace), so that query has ended before the lock can pass on.
HA_LEASE_MARGIN = 2.0

T = TypeVar("T")


class SettingsError(Exception):
    """A bad value: ``str(error)`` is the one line the user sees."""


@dataclass(frozen=True)
class Settings:
    """Every setting, resolved. No field has a default of its own: the option table holds
    them, and ``build_settings`` (or ``query_params``) fills every field from it."""

    dsn: str
    listen_host: str
    listen_port: int
    interval: float
    query_timeout: float
    top_users: int
    trending_days: int
    trending_limit: int
    stats_days: int
    max_staleness: float
    max_label_length: int
    log_level: str
    log_format: str
    web_config_file: Path | None
    ha: bool
    ha_group: str
    ha_dsn: str
    ha_lease: float
    queries_file: Path | None
    web_enable_lifecycle: bool
    # Where each explicitly given value came from (flag or env variable), by option dest:
    # the queries file resolves per-query defaults and ``check`` reports them from it.
    sources: Mapping[str, str]
    web_header_timeout: float
    web_idle_timeout: float
    web_max_connections: int
    max_connections: int
    # The file the DSN was read from (--dsn-file), re-read when it changes; likewise the HA
    # lock's DSN when it is that same file's.
    dsn_file: Path | None
    ha_dsn_file: Path | None

    @property
    def redacted_dsn(self) -> str:
        return redact_dsn(self.dsn)

    @property
    def redacted_ha_dsn(self) -> str:
        return redact_dsn(self.ha_dsn)

    @property
    def listen(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"{host}:{self.listen_port}"


def default_query_timeout(interval: float) -> float:
    """The query timeout when none is given: the cap, or the interval if that is shorter, so
    a query never outlasts its cycle."""
    return min(DEFAULT_QUERY_TIMEOUT_CAP, interval)


def default_max_staleness(interval: float) -> float:
    """How long last good series outlive failures when --max-staleness is not given."""
    return STALENESS_INTERVALS * interval


def schedule_conflicts(interval: float, timeout: float, max_staleness: float) -> tuple[str, ...]:
    """The fields of a schedule that contradict its interval (``timeout``: longer, so runs
    would overlap; ``max_staleness``: shorter, so series would vanish between two good runs).
    The one rule for every schedule: the flags' (``build_settings``) and each query's, built-in
    or custom (``exporter.config.queries_file``); each caller words the error for its source."""
    fields = []
    if timeout > interval:
        fields.append("timeout")
    if max_staleness < interval:
        fields.append("max_staleness")
    return tuple(fields)


# ---------------------------------------------------------------- value parsers
# Each takes the raw text and returns the value or raises ValueError("what is expected").


def parse_seconds(text: str) -> float:
    expected = f"expected a number of seconds from {MIN_SECONDS:g} to {MAX_INTERVAL:g}, e.g. 30"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(expected) from None
    if not math.isfinite(value) or not MIN_SECONDS <= value <= MAX_INTERVAL:
        raise ValueError(expected)
    return value


def _int_in_range(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected a whole number of {what} from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"expected a whole number of {what} from {low} to {high}")
        return value

    return parse


parse_top_n = _int_in_range(1, MAX_TOP_N, "rows")
parse_connections = _int_in_range(1, MAX_CONNECTIONS, "connections")
parse_days = _int_in_range(1, MAX_DAYS, "days")
parse_label_length = _int_in_range(MIN_MAX_LABEL_LENGTH, MAX_MAX_LABEL_LENGTH, "bytes")


def parse_listen(text: str) -> tuple[str, int]:
    expected = (
        f"expected HOST:PORT with a port from 0 to 65535, e.g. {DEFAULT_LISTEN} or "
        f"[::1]:{DEFAULT_PORT}"
    )
    host, sep, port_text = text.rpartition(":")
    if not sep or not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(expected)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(expected + " (put IPv6 addresses in brackets)")
    if any(c.isspace() or c in "[]/@" for c in host) or not host.isprintable():
        raise ValueError(expected)
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(expected)
    return host or "0.0.0.0", port


def parse_dsn(text: str) -> str:
    """A PostgreSQL URI, with one host or libpq's comma-separated list of ``host[:port]``
    (``postgresql://u@h1:5432,h2:5432/db?target_session_attrs=prefer-standby``), each port
    a number from 1 to 65535; every part is checked (``exporter.config.dsn``)."""
    dsn_uri.parse(text)
    return text.strip()


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def parse_group(text: str) -> str:
    value = text.strip()
    if not 1 <= len(value) <= MAX_GROUP_LENGTH or not value.isprintable():
        raise ValueError(
            f"expected a name of 1 to {MAX_GROUP_LENGTH} printable characters, e.g. prod-db"
        )
    return value


def dsn_hosts(text: str) -> int:
    """How many hosts a (possibly multi-host) PostgreSQL URI names."""
    return len(dsn_uri.parse(text).hosts)


def requires_primary(text: str) -> bool:
    """Whether a multi-host DSN is pinned to the primary (``target_session_attrs``)."""
    return dsn_uri.parse(text).target_session_attrs in ("read-write", "primary")


def parse_choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value

    return parse


def parse_existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise ValueError("expected a path to a readable file")
    return path


# ---------------------------------------------------------------- the flag table


@dataclass(frozen=True)
class Option:
    """One flag: the single place its name, env variable, default and parser are defined.

    ``default`` is raw text parsed exactly like user input; ``default_doc`` describes a
    default derived from other values (shown in ``--help`` and the docs/configuration.md
    table instead).
    """

    flag: str
    metavar: str
    help: str
    parse: Callable[[str], Any]
    default: str | None = None
    default_doc: str | None = None
    secret: bool = False
    # A switch may be given without a value (``--ha`` = ``--ha true``).
    switch: bool = False
    takes_value: bool = True  # False: a bare switch (``--flag``); its env variable says true

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()

    @property
    def shown_default(self) -> str:
        return self.default_doc or self.default or "(none)"


def _top_n_option(flag: str, metavar: str, what: str) -> Option:
    """A "how many rows" flag: its help states the very range ``parse_top_n`` accepts."""
    return Option(
        flag, metavar, f"How many {what} to export (1-{MAX_TOP_N}).", parse_top_n, default="10"
    )


CONNECTION_OPTIONS = (
    Option(
        "--dsn",
        "URI",
        "PostgreSQL URI, e.g. postgresql://tw_exporter@db:5432/app (a password in it is never "
        "printed). Prefer --dsn-file or the environment for passwords.",
        parse_dsn,
        default_doc="required, or --dsn-file",
        secret=True,
    ),
    Option(
        "--dsn-file",
        "PATH",
        "File whose content is the PostgreSQL URI, one line (e.g. a mounted Kubernetes "
        "Secret); read again when it changes, on SIGHUP and when the server rejects the "
        "password, so a rotated password needs no restart.",
        parse_existing_file,
    ),
)

POOL_OPTIONS = (
    Option(
        "--max-connections",
        "N",
        f"Most connections the exporter opens to the database (1-{MAX_CONNECTIONS}), however "
        "many queries run, and never more than the enabled queries; queries that hold theirs "
        "long never take the last one (docs/custom-queries.md).",
        parse_connections,
        default=str(DEFAULT_MAX_CONNECTIONS),
    ),
)

QUERY_OPTIONS = (
    Option(
        "--query-timeout",
        "SECONDS",
        "Per-query deadline, enforced by PostgreSQL (statement_timeout) and by the client; "
        "must not exceed the interval.",
        parse_seconds,
        default_doc=f"{DEFAULT_QUERY_TIMEOUT_CAP:g} or the interval, whichever is smaller",
    ),
    _top_n_option("--top-users", "N", "top users by followers"),
    Option("--trending-days", "D", "Trending hashtags window in days.", parse_days, default="7"),
    _top_n_option("--trending-limit", "K", "trending hashtags"),
    Option("--stats-days", "D", "Platform stats window in days.", parse_days, default="7"),
    Option(
        "--max-label-length",
        "BYTES",
        "Longest label value exported, in UTF-8 bytes; a longer username or tag is shortened "
        "to a prefix plus a hash of the whole value (docs/label-values.md). Keep it at or below "
        "Prometheus' label_value_length_limit.",
        parse_label_length,
        default=str(DEFAULT_MAX_LABEL_LENGTH),
    ),
)

INTERVAL_OPTION = Option(
    "--interval",
    "SECONDS",
    "Collection interval: how often the queries run and business values refresh.",
    parse_seconds,
    default="30",
)

SERVE_OPTIONS = (
    Option(
        "--listen",
        "HOST:PORT",
        "Address for /metrics, /healthz and /readyz.",
        parse_listen,
        default=DEFAULT_LISTEN,
    ),
    INTERVAL_OPTION,
    Option(
        "--max-staleness",
        "SECONDS",
        "How long a failing query's last good series are still served before they are "
        "dropped; must be >= the interval.",
        parse_seconds,
        default_doc=f"{STALENESS_INTERVALS} x interval",
    ),
    Option(
        "--web-config-file",
        "PATH",
        "Prometheus exporter-toolkit web config (TLS, basic auth, headers) for the HTTP server.",
        parse_existing_file,
    ),
    Option(
        "--web-header-timeout",
        "SECONDS",
        "A new connection must finish its TLS handshake and start a request within this, and "
        "each request's headers must arrive within this of its first byte; also how long a "
        "response may wait unread. Slower clients are disconnected (see docs/http-limits.md).",
        parse_seconds,
        default=f"{WEB_HEADER_TIMEOUT:g}",
    ),
    Option(
        "--web-idle-timeout",
        "SECONDS",
        "Keep-alive connections idle longer than this are closed.",
        parse_seconds,
        default=f"{WEB_IDLE_TIMEOUT:g}",
    ),
    Option(
        "--web-max-connections",
        "N",
        f"Open HTTP connections, TLS handshakes included (1-{MAX_CONNECTIONS}); when full, the "
        "one that has made the least progress for the longest is closed to admit a new one.",
        parse_connections,
        default=str(WEB_MAX_CONNECTIONS),
    ),
)

HA_OPTIONS = (
    Option(
        "--ha",
        "BOOL",
        "High availability: replicas elect one leader through a PostgreSQL advisory lock; "
        "only the leader runs the queries (docs/high-availability.md).",
        parse_bool,
        default="false",
        switch=True,
    ),
    Option(
        "--ha-group",
        "NAME",
        "Replicas with the same group name and lock database elect one leader; the lock key "
        "is the first 8 bytes of sha256('tw-exporter:' + NAME) as a bigint.",
        parse_group,
        default="tw-exporter",
    ),
    Option(
        "--ha-dsn",
        "URI",
        "PostgreSQL URI of the primary that holds the leader's lock (not a standby, not a "
        "transaction pooler; a multi-host URI needs target_session_attrs=read-write).",
        parse_dsn,
        default_doc="the --dsn value",
        secret=True,
    ),
    Option(
        "--ha-dsn-file",
        "PATH",
        "File whose content is the --ha-dsn URI, one line; followed like --dsn-file (read "
        "again when it changes, on SIGHUP and when the server rejects the password).",
        parse_existing_file,
        default_doc="(none): the --ha-dsn value",
    ),
    Option(
        "--ha-lease",
        "SECONDS",
        "A leader silent this long (frozen, cut off) loses the lock: PostgreSQL ends its lock "
        f"session; must exceed the query timeout by at least {HA_LEASE_MARGIN:g}.",
        parse_seconds,
        default_doc=f"{DEFAULT_HA_LEASE:g}, or the query timeout + {2 * HA_LEASE_MARGIN:g} if "
        "longer",
    ),
)


LIFECYCLE_OPTION = Option(
    "--web-enable-lifecycle",
    "",
    "Accept POST /-/reload (re-reads the queries file and the web config, like SIGHUP).",
    parse_bool,
    default="false",
    takes_value=False,
)

QUERIES_FILE_OPTION = Option(
    "--queries-file",
    "PATH",
    "YAML file of custom queries and per-query schedules (docs/custom-queries.md); its "
    "settings win over the flags.",
    parse_existing_file,
)

LOG_OPTIONS = (
    Option(
        "--log-level",
        "LEVEL",
        "One of " + ", ".join(LOG_LEVELS) + ".",
        parse_choice(LOG_LEVELS),
        default="info",
    ),
    Option("--log-format", "FORMAT", "text or json.", parse_choice(LOG_FORMATS), default="text"),
)

RUN_OPTIONS = (
    CONNECTION_OPTIONS
    + POOL_OPTIONS
    + SERVE_OPTIONS
    + (LIFECYCLE_OPTION,)
    + QUERY_OPTIONS
    + (QUERIES_FILE_OPTION,)
    + HA_OPTIONS
    + LOG_OPTIONS
)
CHECK_OPTIONS = (
    *CONNECTION_OPTIONS,
    *POOL_OPTIONS,
    INTERVAL_OPTION,
    *QUERY_OPTIONS,
    QUERIES_FILE_OPTION,
    *LOG_OPTIONS,
)
DEMO_OPTIONS = SERVE_OPTIONS + QUERY_OPTIONS + (QUERIES_FILE_OPTION,) + LOG_OPTIONS
ALL_OPTIONS = RUN_OPTIONS

DEFAULTS: Mapping[str, Any] = {
    option.dest: option.parse(option.default) for option in ALL_OPTIONS if option.default
}
DEFAULT_INTERVAL: float = DEFAULTS["interval"]


# ---------------------------------------------------------------- parser plumbing


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints usage plus a message; a wrong flag here gets one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str) -> NoReturn:
    # A value the user typed may hold a line break or another control character (argparse
    # quotes unknown arguments raw): escape them, so the error stays one line.
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    sys.stderr.write(f"{PROG}: error: {shown}\n")
    raise SystemExit(2)


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    for option in options:
        if not option.takes_value:
            parser.add_argument(
                option.flag,
                dest=option.dest,
                action="store_const",
                const="true",
                default=None,
                help=f"{option.help} [env: {option.env}=true]",
            )
            continue
        help_text = f"{option.help} Default: {option.shown_default}. [env: {option.env}]"
        if option.switch:
            parser.add_argument(
                option.flag,
                metavar=option.metavar,
                dest=option.dest,
                default=None,
                nargs="?",
                const="true",
                help=help_text,
            )
        else:
            parser.add_argument(
                option.flag, metavar=option.metavar, dest=option.dest, default=None, help=help_text
            )


def _shown(option: Option, raw: str) -> str:
    return redact_dsn(raw) if option.secret else raw


def resolve(
    namespace: argparse.Namespace, options: Sequence[Option], environ: Mapping[str, str]
) -> dict[str, Any]:
    """Pick each option's raw text (flag, then env) and parse it; unset options are absent."""
    values: dict[str, Any] = {}
    for option in options:
        raw = getattr(namespace, option.dest, None)
        source = option.flag
        if raw is None and option.env in environ:
            raw, source = environ[option.env], option.env
        if raw is None:
            continue
        try:
            values[option.dest] = option.parse(raw)
        except ValueError as error:
            raise SettingsError(
                f"{source}: invalid value {_shown(option, raw)!r}: {error}"
            ) from None
        values[f"{option.dest}__source"] = source
    return values


def _uri_or_file(values: Mapping[str, Any], dest: str) -> tuple[str, Path | None] | None:
    """A URI option (``dsn``, ``ha_dsn``) or its ``*_file`` twin, whichever was given, with
    the file it came from; None when neither was. Both from the same layer (two flags, two
    variables) is an error; across layers the flag wins, as for every option."""
    file_dest = f"{dest}_file"
    flag = "--" + dest.replace("_", "-")
    uri_source = values.get(f"{dest}__source", flag)
    file_source = values.get(f"{file_dest}__source", f"{flag}-file")
    use_file = file_dest in values
    if use_file and dest in values:
        if uri_source.startswith("--") == file_source.startswith("--"):
            raise SettingsError(f"{uri_source} and {file_source} are mutually exclusive: give one")
        use_file = file_source.startswith("--")
    if use_file:
        path: Path = values[file_dest]
        try:
            return dsn_uri.read_dsn_file(path), path
        except dsn_uri.DsnError as error:
            raise SettingsError(f"{file_source}: {error}") from None
    if dest in values:
        return str(values[dest]), None
    return None


def _read_dsn(values: Mapping[str, Any], required: bool) -> tuple[str, Path | None]:
    """The DSN, and the file it came from (``--dsn-file``), if any."""
    found = _uri_or_file(values, "dsn")
    if found is not None:
        return found
    if required:
        raise SettingsError(
            "a database is required: give --dsn URI or --dsn-file PATH "
            "(or TW_EXPORTER_DSN / TW_EXPORTER_DSN_FILE)"
        )
    return "", None


def _read_ha_dsn(
    values: Mapping[str, Any], dsn: str, dsn_file: Path | None
) -> tuple[str, Path | None]:
    """The HA lock's DSN and the file it follows: --ha-dsn-file, --ha-dsn, else the queries'
    (whose file, if any, it then follows too)."""
    return _uri_or_file(values, "ha_dsn") or (dsn, dsn_file)


def build_settings(values: Mapping[str, Any], *, dsn_required: bool = True) -> Settings:
    """Apply defaults and cross-field rules to parsed values."""
    merged = {**DEFAULTS, **{k: v for k, v in values.items() if "__" not in k}}
    interval: float = merged["interval"]
    query_timeout: float = values.get("query_timeout", default_query_timeout(interval))
    max_staleness: float = values.get("max_staleness", default_max_staleness(interval))
    conflicts = schedule_conflicts(interval, query_timeout, max_staleness)
    # Only a given value can conflict: the defaults are derived from the interval to fit it.
    if "timeout" in conflicts:
        raise SettingsError(
            f"{values['query_timeout__source']}: invalid value {query_timeout:g}: expected "
            f"a number of seconds <= the interval ({interval:g}), so cycles cannot overlap"
        )
    if "max_staleness" in conflicts:
        raise SettingsError(
            f"{values['max_staleness__source']}: invalid value {max_staleness:g}: expected "
            f"a number of seconds >= the interval ({interval:g})"
        )
    host, port = merged["listen"]
    dsn, dsn_file = _read_dsn(values, dsn_required)
    ha_dsn, ha_dsn_file = _read_ha_dsn(values, dsn, dsn_file)
    ha_lease = _ha_lease(values, query_timeout)
    if merged["ha"] and ha_dsn and dsn_hosts(ha_dsn) > 1 and not requires_primary(ha_dsn):
        source = (
            values.get("ha_dsn_file__source")
            or values.get("ha_dsn__source")
            or values.get("dsn_file__source")
            or values.get("dsn__source")
            or "--dsn"
        )
        raise SettingsError(
            f"{source}: invalid value {redact_dsn(ha_dsn)!r} for the HA lock: expected a "
            "multi-host URI with target_session_attrs=read-write, so the lock is taken on the "
            "primary (advisory locks are per server)"
        )
    derived: dict[str, Any] = {
        "dsn": dsn,
        "dsn_file": dsn_file,
        "ha_dsn": ha_dsn,
        "ha_dsn_file": ha_dsn_file,
        "listen_host": host,
        "listen_port": port,
        "query_timeout": query_timeout,
        "max_staleness": max_staleness,
        "ha_lease": ha_lease,
        "sources": {k.removesuffix("__source"): v for k, v in values.items() if "__" in k},
    }
    # Every other field is its option's value, given or defaulted; an option without a
    # default (a file) is None when not given, and a field no option fills is a KeyError.
    optional = {option.dest for option in ALL_OPTIONS if option.default is None}
    plain: dict[str, Any] = {
        f.name: merged.get(f.name) if f.name in optional else merged[f.name]
        for f in dataclasses.fields(Settings)
        if f.name not in derived
    }
    return Settings(**plain, **derived)


def _ha_lease(values: Mapping[str, Any], query_timeout: float) -> float:
    floor = query_timeout + HA_LEASE_MARGIN
    if "ha_lease" not in values:
        return max(DEFAULT_HA_LEASE, query_timeout + 2 * HA_LEASE_MARGIN)
    lease: float = values["ha_lease"]
    if lease < floor:
        raise SettingsError(
            f"{values['ha_lease__source']}: invalid value {lease:g}: expected a number of "
            f"seconds >= the query timeout + {HA_LEASE_MARGIN:g} ({floor:g}), so a query a "
            "frozen leader started has ended before another replica can take the lock"
        )
    return lease


def settings_from(
    namespace: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    *,
    dsn_required: bool = True,
    options: Sequence[Option] = ALL_OPTIONS,
) -> Settings:
    env = os.environ if environ is None else environ
    return build_settings(resolve(namespace, options, env), dsn_required=dsn_required)


def query_params(**overrides: Any) -> Settings:
    """Settings with every default and no DSN, for code that runs the queries without the
    command line (tests, benchmarks); keyword arguments override single fields."""
    return dataclasses.replace(build_settings({}, dsn_required=False), **overrides)


def version_string() -> str:
    return f"{PROG} {__version__}"
