"""Time loading every image of an image-folder data set: cold (decode + cache write) and warm
(cache hit), median of several runs each. Targets on 2 cores for the 60,000 shared CIFAR-10
images: cold under 15 s, warm under 1 s.

    python benchmarks/data_load.py --data ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "code"))

from budgetnet.data.sources import SPLITS, load_split  # noqa: E402


def load_all(source: str, cache: Path) -> tuple[float, int]:
    start = time.perf_counter()
    count = sum(len(load_split(source, split, cache_dir=cache)) for split in SPLITS)
    return time.perf_counter() - start, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=os.environ.get("BUDGETNET_DATA", "../shared/data/cifar10")
    )
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--warm-runs", type=int, default=7)
    args = parser.parse_args()
    cold, warm = [], []
    for _ in range(args.cold_runs):
        with tempfile.TemporaryDirectory() as cache:
            seconds, count = load_all(args.data, Path(cache))
            cold.append(seconds)
            warm.extend(load_all(args.data, Path(cache))[0] for _ in range(args.warm_runs))
    print(f"{count} images from {args.data} on {os.cpu_count()} cores")
    print(
        f"cold load (decode + write cache): median {statistics.median(cold):.2f} s "
        f"over {len(cold)} runs (target < 15 s)"
    )
    print(
        f"warm load (cache hit):            median {statistics.median(warm):.3f} s "
        f"over {len(warm)} runs (target < 1 s)"
    )


if __name__ == "__main__":
    main()
