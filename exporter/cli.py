"""The ``tw-exporter`` command: ``run``, ``check``, ``monitoring``, ``demo`` and ``sample-data``.

Each command's ``help`` is also its row in docs/configuration.md's commands table
(``tools.readme_tables``), so every command and flag is described once, here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from exporter.config import settings as cfg
from exporter.config.secrets import dsn_password

log = logging.getLogger("exporter")

DESCRIPTION = (
    "Prometheus exporter for a Twitter-like platform's PostgreSQL database: runs the top-users, "
    "trending-hashtags and platform-stats queries every interval and serves the results on "
    "/metrics from memory."
)


def build_parser() -> argparse.ArgumentParser:
    parser = cfg.OneLineArgumentParser(prog=cfg.PROG, description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=cfg.version_string())
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=cfg.OneLineArgumentParser
    )

    run = commands.add_parser(
        "run",
        help="the exporter: runs the queries on their schedules and serves /metrics",
        description=DESCRIPTION,
    )
    cfg.add_options(run, cfg.RUN_OPTIONS)

    check = commands.add_parser(
        "check",
        help="connection, schema, privileges, plans and one run of each query; exits 0 only "
        "when the exporter would work (use it as an init container or CI step)",
    )
    cfg.add_options(check, cfg.CHECK_OPTIONS)

    monitoring = commands.add_parser(
        "monitoring",
        help="writes a Grafana dashboard and alert rules (with promtool tests) for the custom "
        "metrics of a queries file",
    )
    add_monitoring_options(monitoring)

    demo = commands.add_parser(
        "demo",
        help="the exporter on an embedded PostgreSQL with a live synthetic dataset",
    )
    from exporter.ops.demo import add_demo_options

    add_demo_options(demo)

    sample = commands.add_parser(
        "sample-data",
        help="creates the demo's tables in your database (or fills the empty ones "
        "exporter/sql/schema.sql made) and loads its data; --keep-adding keeps the numbers moving",
        description=SAMPLE_DATA_DESCRIPTION,
    )
    from exporter.ops.sample_data import add_sample_data_options

    add_sample_data_options(sample)
    return parser


SAMPLE_DATA_DESCRIPTION = (
    "Create the four tables of schema.sql (shipped in the package's sql/ directory) in the "
    "database --dsn names and fill them with the demo's synthetic data, once; with --keep-adding, "
    "keep adding tweets, likes and followers as the demo does until Ctrl-C. A database that "
    "already has the sample's tables (an earlier run, or schema.sql) is loaded only when they are "
    "empty; tables of another shape are refused and never changed."
)


def add_monitoring_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--queries-file",
        required=True,
        metavar="PATH",
        type=Path,
        help="YAML file of custom queries (docs/custom-queries.md) whose metrics get a panel "
        "each, and an alert each where they set alert: (required)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        type=Path,
        help="directory to write custom-dashboard.json, custom.rules.yml and "
        "custom.rules.test.yml to, created if missing (required)",
    )


#: Options the top level itself accepts; everything else belongs after a command.
TOP_LEVEL_FLAGS = ("-h", "--help", "--version")


def misplaced_option(argv: Sequence[str]) -> str | None:
    """The one-line error for an option given before the command, else None.

    argparse would say "the following arguments are required: COMMAND" for ``--bogus`` and
    "invalid choice: '5'" for ``--interval 5``: both true and both useless to a newcomer.
    """
    if not argv or not argv[0].startswith("-") or argv[0] in ("-", "--"):
        return None  # a command (or nothing) comes first: argparse handles the rest
    flag = argv[0].split("=", 1)[0]
    if any(known.startswith(flag) for known in TOP_LEVEL_FLAGS if flag.startswith("--")):
        return None  # --help, --version, or an abbreviation argparse accepts
    if flag in TOP_LEVEL_FLAGS:
        return None
    if flag in {option.flag for option in cfg.ALL_OPTIONS}:
        return (
            f"option {flag} given before the command: options go after the command, "
            f"e.g. {cfg.PROG} run {flag} ...; see {cfg.PROG} --help"
        )
    return (
        f"unknown option {flag}: options go after the command "
        f"({cfg.PROG} COMMAND [OPTIONS]); see {cfg.PROG} --help"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    message = misplaced_option(sys.argv[1:] if argv is None else argv)
    if message:
        cfg.fail(message)
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "check":
            return _check(args)
        if args.command == "monitoring":
            return _monitoring(args)
        if args.command == "sample-data":
            from exporter.ops.sample_data import run_sample_data

            return run_sample_data(args)
        from exporter.ops.demo import run_demo

        return run_demo(args)
    except cfg.SettingsError as error:
        cfg.fail(str(error))
    except KeyboardInterrupt:
        return 130


def _secrets(*dsns: str) -> tuple[str, ...]:
    passwords = (dsn_password(dsn) if dsn else None for dsn in dsns)
    return tuple(dict.fromkeys(p for p in passwords if p))


def _run(args: argparse.Namespace) -> int:
    from exporter.app import StartupError, run
    from exporter.config.http_security import load_http_security
    from exporter.config.queries_file import config_for
    from exporter.logs import configure_logging

    settings = cfg.settings_from(args)
    configure_logging(
        settings.log_level, settings.log_format, _secrets(settings.dsn, settings.ha_dsn)
    )
    config_for(settings)  # an invalid queries file: one line, exit 2, before anything starts
    try:
        security = load_http_security(settings)
    except ValueError as error:  # WebConfigError
        cfg.fail(f"--web-config-file: {error}")
    except RecursionError:  # YAML nested thousands deep: one line, not a traceback
        cfg.fail(f"--web-config-file: {settings.web_config_file}: nested too deeply to be read")
    try:
        run(settings, security)
    except StartupError as error:
        log.error("%s", error)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    from exporter.config.queries_file import config_for
    from exporter.logs import configure_logging
    from exporter.ops.check import run_check

    settings = cfg.settings_from(args, options=cfg.CHECK_OPTIONS)
    configure_logging(settings.log_level, settings.log_format, _secrets(settings.dsn))
    config_for(settings)  # an invalid queries file: one line, exit 2
    return run_check(settings)


def _monitoring(args: argparse.Namespace) -> int:
    from exporter.config.queries_file import load
    from exporter.monitoring.custom import write

    config = load(args.queries_file, cfg.query_params())  # an invalid file: exit 2
    for path in write(config, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
