"""Writes (or, with ``--check``, verifies) the published JSON Schema of the queries file.

The schema is generated from the pydantic model that validates the file at start-up, so the
editor's idea of a valid file and the exporter's cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from exporter.config.queries_file import json_schema

ROOT = Path(__file__).resolve().parent.parent
QUERIES_SCHEMA = Path("schemas/queries.schema.json")


def render_queries_schema() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate schemas/queries.schema.json.")
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args(argv)
    path = ROOT / QUERIES_SCHEMA
    wanted = render_queries_schema()
    if args.check:
        if not path.exists() or path.read_text(encoding="utf-8") != wanted:
            print(f"{QUERIES_SCHEMA} is out of date: run python -m tools.schemas", file=sys.stderr)
            return 1
        return 0
    path.write_text(wanted, encoding="utf-8")
    print(f"wrote {QUERIES_SCHEMA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
