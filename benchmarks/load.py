"""Create (or reuse) the benchmark databases: ``python -m benchmarks.load 100k 1m 10m``."""

from __future__ import annotations

import argparse
import asyncio

from benchmarks.common import SCALES, drop_dataset, ensure_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scales", nargs="+", choices=sorted(SCALES))
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--drop", action="store_true", help="drop the databases instead")
    args = parser.parse_args()
    for scale in args.scales:
        if args.drop:
            asyncio.run(drop_dataset(scale))
        else:
            asyncio.run(ensure_dataset(scale, rebuild=args.rebuild))


if __name__ == "__main__":
    main()
