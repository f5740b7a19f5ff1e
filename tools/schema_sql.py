"""Writes ``exporter/sql/schema.sql`` from the code (``exporter.ops.schema_file.annotated_schema``).

``python -m tools.schema_sql`` rewrites it; ``--check`` exits 1 when the file is out of date
(``tests/test_newcomer.py`` runs the same comparison).
"""

from __future__ import annotations

import sys

from exporter.ops.schema_file import SCHEMA_PATH, annotated_schema


def main(argv: list[str]) -> int:
    path = SCHEMA_PATH
    wanted = annotated_schema()
    if "--check" in argv:
        if not path.is_file() or path.read_text(encoding="utf-8") != wanted:
            print(f"{path} is out of date: run python -m tools.schema_sql", file=sys.stderr)
            return 1
        return 0
    path.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
