"""Time the budget search on the default grid: candidates counted and ranked per second.

The first run fills the unit caches (a fresh process pays it once); the median is over the runs
after it. Target on 2 cores: the default grid (25,000 candidates) in about a second.

    python benchmarks/search_speed.py --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "code"))

from budgetnet.models.search import Grid, search  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-params", type=float, default=5e6)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs after the first")
    args = parser.parse_args()
    grid = Grid()
    seconds = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        kept = search(grid, int(args.max_params))
        seconds.append(time.perf_counter() - start)
    first, median = seconds[0], statistics.median(seconds[1:])
    print(
        f"default grid: {len(grid):,} candidates, {len(kept):,} under {args.max_params:,.0f} "
        f"parameters, on {os.cpu_count()} cores"
    )
    print(f"first run (empty caches): {first:.3f} s = {len(grid) / first:,.0f} candidates/s")
    print(
        f"median of {args.repeats} more:     {median:.3f} s = {len(grid) / median:,.0f} "
        "candidates/s (target: about 1 s)"
    )


if __name__ == "__main__":
    main()
