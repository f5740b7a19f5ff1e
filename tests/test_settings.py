"""Flags, environment variables, defaults and their errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exporter.cli import build_parser, main
from exporter.config import settings as cfg

DSN = "postgresql://tw@db:5432/app"

# Each test here takes milliseconds; a validation that lets a bad flag through would start a
# real exporter in-process and run until the suite's own 300 s limit, so fail much sooner.
pytestmark = pytest.mark.timeout(20)


def parse(argv: list[str], env: dict[str, str] | None = None) -> cfg.Settings:
    args = build_parser().parse_args(["run", *argv])
    return cfg.settings_from(args, env or {})


def error_line(
    argv: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str] | None = None,
) -> str:
    for key in list(os.environ):
        if key.startswith(cfg.ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, val in (env or {}).items():
        monkeypatch.setenv(key, val)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tw-exporter: error: ")
    return lines[0]


def test_defaults() -> None:
    settings = parse(["--dsn", DSN])
    assert settings.listen == f"0.0.0.0:{cfg.DEFAULT_PORT}"
    assert settings.interval == 30
    assert settings.query_timeout == 10
    assert settings.max_staleness == 90
    assert (
        settings.top_users,
        settings.trending_days,
        settings.trending_limit,
        settings.stats_days,
    ) == (10, 7, 10, 7)
    assert (settings.log_level, settings.log_format) == ("info", "text")
    assert settings.web_config_file is None


def test_query_timeout_defaults_to_interval_when_smaller() -> None:
    settings = parse(["--dsn", DSN, "--interval", "2.5"])
    assert settings.query_timeout == 2.5
    assert settings.max_staleness == 7.5


def test_flags_win_over_env_and_env_over_defaults() -> None:
    env = {
        "TW_EXPORTER_INTERVAL": "12",
        "TW_EXPORTER_TOP_USERS": "3",
        "TW_EXPORTER_DSN": "postgresql://env@h/db",
        "TW_EXPORTER_LOG_FORMAT": "JSON",
    }
    settings = parse(["--top-users", "7"], env)
    assert settings.interval == 12
    assert settings.top_users == 7
    assert settings.dsn == "postgresql://env@h/db"
    assert settings.log_format == "json"


def test_dsn_file_and_ipv6_listen(tmp_path: Path) -> None:
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(DSN + "\n")
    settings = parse(["--dsn-file", str(dsn_file), "--listen", "[::1]:9999"])
    assert settings.dsn == DSN
    assert (settings.listen_host, settings.listen_port) == ("::1", 9999)
    # A flag for the file wins over a DSN from the environment.
    assert (
        parse(["--dsn-file", str(dsn_file)], {"TW_EXPORTER_DSN": "postgresql://x@y/z"}).dsn == DSN
    )


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--interval", "0"], ["--interval", "'0'", "seconds"]),
        (["--interval", "nan"], ["--interval", "'nan'"]),
        (["--interval", "5", "--query-timeout", "6"], ["--query-timeout", "6", "interval"]),
        (["--query-timeout", "-1"], ["--query-timeout", "'-1'"]),
        (["--top-users", "0"], ["--top-users", "'0'", "1 to 1000"]),
        (["--top-users", "1001"], ["--top-users", "'1001'"]),
        (["--trending-limit", "x"], ["--trending-limit", "'x'"]),
        (["--trending-days", "0"], ["--trending-days", "'0'"]),
        (["--stats-days", "1.5"], ["--stats-days", "'1.5'"]),
        (["--listen", "localhost"], ["--listen", "'localhost'", "HOST:PORT"]),
        (["--listen", "1.2.3.4:70000"], ["--listen", "70000"]),
        (["--max-staleness", "1"], ["--max-staleness", "interval"]),
        (["--log-level", "loud"], ["--log-level", "'loud'", "debug"]),
        (["--log-format", "xml"], ["--log-format", "'xml'", "text, json"]),
        (["--web-config-file", "/nonexistent/web.yml"], ["--web-config-file", "/nonexistent"]),
        (["--dsn-file", "/nonexistent/dsn"], ["--dsn-file", "/nonexistent/dsn"]),
        (["--bogus"], ["unrecognized arguments: --bogus"]),
    ],
)
def test_each_bad_flag_exits_2_with_one_line(
    argv: list[str],
    names: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dsn_args = [] if any(a.startswith("--dsn") for a in argv) else ["--dsn", DSN]
    line = error_line(["run", *dsn_args, *argv], capsys, monkeypatch)
    for name in names:
        assert name in line


def test_bad_env_value_names_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    line = error_line(
        ["run", "--dsn", DSN], capsys, monkeypatch, {"TW_EXPORTER_TRENDING_LIMIT": "lots"}
    )
    assert "TW_EXPORTER_TRENDING_LIMIT" in line and "'lots'" in line


def test_missing_dsn_and_conflicting_dsn_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "--dsn" in error_line(["run"], capsys, monkeypatch)
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(DSN)
    line = error_line(["run", "--dsn", DSN, "--dsn-file", str(dsn_file)], capsys, monkeypatch)
    assert "mutually exclusive" in line
    dsn_file.write_text("not a uri")
    line = error_line(["run", "--dsn-file", str(dsn_file)], capsys, monkeypatch)
    assert str(dsn_file) in line and "PostgreSQL URI" in line


@pytest.mark.parametrize("option", ["--dsn", "--ha-dsn"])
def test_a_uri_and_its_file_follow_one_rule(option: str, tmp_path: Path) -> None:
    """--dsn/--dsn-file and --ha-dsn/--ha-dsn-file: two of the same layer clash, across
    layers the flag wins (the lock's pair once refused a flag beside a variable)."""
    uri, from_file = "postgresql://tw@flag/app", "postgresql://tw@file/app"
    path = tmp_path / "uri"
    path.write_text(from_file + "\n")
    variable = cfg.ENV_PREFIX + option.removeprefix("--").replace("-", "_").upper()
    base = [] if option == "--dsn" else ["--dsn", DSN]

    def resolved(argv: list[str], env: dict[str, str]) -> str:
        settings = parse(base + argv, env)
        return settings.dsn if option == "--dsn" else settings.ha_dsn

    assert resolved([option, uri], {variable + "_FILE": str(path)}) == uri
    assert resolved([f"{option}-file", str(path)], {variable: uri}) == from_file
    for argv, env in (
        ([option, uri, f"{option}-file", str(path)], {}),
        ([], {variable: uri, variable + "_FILE": str(path)}),
    ):
        with pytest.raises(cfg.SettingsError, match="mutually exclusive"):
            parse(base + argv, env)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u@h1:5432,h2:5433/db?target_session_attrs=prefer-standby",
        "postgresql://u:pw@db-a,db-b:6432/app?target_session_attrs=read-write",
        "postgres://u@[::1]:5432,[fe80::1%25eth0]:5433,10.0.0.3/db",
    ],
)
def test_multi_host_dsns_are_accepted(dsn: str) -> None:
    assert parse(["--dsn", dsn]).dsn == dsn


def test_a_bad_host_in_a_multi_host_dsn_is_named_without_the_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    line = error_line(
        ["run", "--dsn", "postgresql://u:hunter2pw@h1:5432,h2:fivefour/db"], capsys, monkeypatch
    )
    assert "hunter2pw" not in line and "***" in line
    assert "'h2:fivefour'" in line and "host1:port1,host2:port2" in line
    line = error_line(["run", "--dsn", "postgresql://u:hunter2pw@h1:70000/db"], capsys, monkeypatch)
    assert "hunter2pw" not in line and "65535" in line


def test_password_is_masked_in_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    line = error_line(["run", "--dsn", "mysql://u:hunter2pw@h/db"], capsys, monkeypatch)
    assert "hunter2pw" not in line and "***" in line
    line = error_line(
        ["run", "--dsn", "postgresql://u:hunter2pw@h:notaport/db"], capsys, monkeypatch
    )
    assert "hunter2pw" not in line
    line = error_line(["run"], capsys, monkeypatch, {"TW_EXPORTER_DSN": "x://u:hunter2pw@h/db"})
    assert "hunter2pw" not in line and "TW_EXPORTER_DSN" in line


def test_help_never_shows_a_password_from_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TW_EXPORTER_DSN", "postgresql://u:hunter2pw@h/db")
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "hunter2pw" not in capsys.readouterr().out


def test_the_http_servers_own_limits_are_the_flags_defaults() -> None:
    """``ServerLimits()`` (what tests and benchmarks serve with) writes the --web-* defaults
    again; the option table is their source, so the two must agree."""
    from exporter.expose.http import ServerLimits

    limits, settings = ServerLimits(), cfg.query_params()
    assert (limits.header_timeout, limits.idle_timeout, limits.max_connections) == (
        settings.web_header_timeout,
        settings.web_idle_timeout,
        settings.web_max_connections,
    )
