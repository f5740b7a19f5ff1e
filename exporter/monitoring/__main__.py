"""``python -m exporter.monitoring``: write the generated files; ``--check`` fails on stale ones."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from exporter.monitoring.files import stale_files, write_files
from exporter.monitoring.paths import ROOT


def main(argv: Sequence[str] | None = None) -> int:
    """Write the generated files, or with ``--check`` only report the stale ones (exit 1)."""
    parser = argparse.ArgumentParser(
        prog="python -m exporter.monitoring",
        description="Generate tw-exporter's alert rules, Helm rule template and dashboard.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a generated file is missing or out of date",
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.root)
        for path in stale:
            print(f"out of date: {path} (run: python -m exporter.monitoring)", file=sys.stderr)
        return 1 if stale else 0
    for path in write_files(args.root):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
