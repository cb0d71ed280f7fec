"""Time to accuracy of the `cpu-quick` training preset on this machine's CPU: trains it on the
full training set (minus the validation split) for each seed and reports test accuracy (with
the preset's TTA) and wall time, mean +- std. Target on 2 cores: >= 80% test accuracy in at
most 10 minutes per run.

    python benchmarks/cpu_quick.py --data ../shared/data/cifar10 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=os.environ.get("BUDGETNET_DATA", "../shared/data/cifar10")
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="cpu-quick")
    parser.add_argument("--keep", type=Path, help="keep the run directories under this folder")
    parser.add_argument("extra", nargs="*", help="more code/train.py flags, after --")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        base = args.keep or Path(scratch)
        for seed in args.seeds:
            run = base / f"{args.preset}-seed{seed}"
            command = [
                sys.executable,
                str(REPO / "code" / "train.py"),
                "--preset",
                args.preset,
                "--data",
                args.data,
                "--seed",
                str(seed),
                "--run-dir",
                str(run),
                *args.extra,
            ]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"seed {seed} failed:\n{done.stderr[-3000:]}")
            wall = time.perf_counter() - started
            results = json.loads((run / "results.json").read_text())
            tta = max(
                int(k.removeprefix("test_acc_tta")) for k in results if k.startswith("test_acc_tta")
            )
            rows.append(
                (
                    seed,
                    results["test_acc_tta0"],
                    results[f"test_acc_tta{tta}"],
                    results["train_seconds"],
                    wall,
                )
            )
            print(
                f"seed {seed}: test {rows[-1][1]:.4f} (TTA{tta} {rows[-1][2]:.4f}), training "
                f"{rows[-1][3]:.0f} s, whole command {wall:.0f} s",
                flush=True,
            )

    def summary(i: int, fmt: str) -> str:
        values = [row[i] for row in rows]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{format(statistics.mean(values), fmt)} +- {format(spread, fmt)}"

    print(
        f"\n{args.preset} on {os.cpu_count()} CPU cores, {len(rows)} seeds "
        f"{' '.join(map(str, args.seeds))}, data {args.data} (test split, 10,000 images)"
    )
    print(f"test accuracy         {summary(1, '.4f')}")
    print(f"test accuracy, TTA{tta}   {summary(2, '.4f')}")
    print(f"training seconds      {summary(3, '.0f')}")
    print(f"whole command seconds {summary(4, '.0f')} (target <= 600 s, >= 0.80 accuracy)")


if __name__ == "__main__":
    main()
