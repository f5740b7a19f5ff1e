"""The ``tw-exporter`` command: ``run``, ``check`` and ``demo``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from exporter import settings as cfg
from exporter.secrets import dsn_password

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

    run = commands.add_parser("run", help="run the exporter", description=DESCRIPTION)
    cfg.add_options(run, cfg.RUN_OPTIONS)

    check = commands.add_parser(
        "check",
        help="check settings, connection, schema and queries once; exit 0 when all is well",
    )
    cfg.add_options(check, cfg.CHECK_OPTIONS)

    demo = commands.add_parser(
        "demo",
        help="run the exporter on an embedded PostgreSQL with live synthetic data",
    )
    from exporter.demo import add_demo_options

    add_demo_options(demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "check":
            return _check(args)
        from exporter.demo import run_demo

        return run_demo(args)
    except cfg.SettingsError as error:
        cfg.fail(str(error))
    except KeyboardInterrupt:
        return 130


def _secrets(*dsns: str) -> tuple[str, ...]:
    passwords = (dsn_password(dsn) if dsn else None for dsn in dsns)
    return tuple(dict.fromkeys(p for p in passwords if p))


def _run(args: argparse.Namespace) -> int:
    from exporter.app import StartupError, load_http_security, run
    from exporter.logs import configure_logging

    settings = cfg.settings_from(args)
    configure_logging(
        settings.log_level, settings.log_format, _secrets(settings.dsn, settings.ha_dsn)
    )
    try:
        security = load_http_security(settings)
    except ValueError as error:  # WebConfigError
        cfg.fail(f"--web-config-file: {error}")
    try:
        run(settings, security)
    except StartupError as error:
        log.error("%s", error)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    from exporter.check import run_check
    from exporter.logs import configure_logging

    settings = cfg.settings_from(args, options=cfg.CHECK_OPTIONS)
    configure_logging(settings.log_level, settings.log_format, _secrets(settings.dsn))
    return run_check(settings)


if __name__ == "__main__":
    sys.exit(main())
