"""Side by side on this CPU: airbench (its PyPI package, adapted only in device and precision)
against budgetnet's fast presets, on the same JPEG copy of CIFAR-10, one run after another.

    pip install -e '.[bench]'          # airbench==0.1.8
    python benchmarks/cpu_vs_airbench.py --data ../shared/data/cifar10 --seeds 0 1 2 \\
        --airbench 94 --presets fast --log docs/benchmarks/cpu_vs_airbench.log

Every system trains on the 50,000 training images (our presets with --val-size 0: a fixed
schedule, the final weights, nothing chosen on any split) and is scored on the 10,000 test
images with TTA level 2. Each run is its own process; its whole-process wall time is measured
from outside. Training seconds are timed as airbench times them: the whitening init plus the
epochs, without per-epoch evaluation (airbench's own timer; budgetnet's `train_seconds`).
Keep the machine otherwise idle while this runs. Prints one Markdown table (mean +- std of the
test accuracy over the seeds, median seconds, and each system's training-time ratio to the
first airbench version named) and appends every run's output to --log.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "code"))

from budgetnet.data.sources import load_split  # noqa: E402
from budgetnet.models.complexity import count_flops, count_params  # noqa: E402
from budgetnet.models.spec import ResNetSpec  # noqa: E402
from budgetnet.runs import read_config, read_json  # noqa: E402
from budgetnet.runtime import cpu_count, cpu_model, precision_name  # noqa: E402
from budgetnet.tables import markdown_table  # noqa: E402

TTA = 2
# A run below this test accuracy is a broken adaptation (chance is 10%), never a result: its
# row is refused rather than printed beside working systems.
CHANCE_FLOOR = 0.3


def write_airbench_data(data: str, workdir: Path) -> int:
    """train.pt / test.pt in airbench's format (uint8 NHWC images, labels, class names); returns
    the number of training images."""
    (workdir / "cifar10").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "test"):
        images = load_split(data, split)
        torch.save(
            {
                "images": torch.from_numpy(images.images),
                "labels": torch.from_numpy(images.labels),
                "classes": list(images.classes),
            },
            workdir / "cifar10" / f"{split}.pt",
        )
        counts[split] = len(images.labels)
    return counts["train"]


def run(command: list[str], log) -> tuple[str, float]:
    """Run a command to completion; returns its stdout and whole-process seconds."""
    log.write(f"\n$ {' '.join(command)}\n")
    log.flush()
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    log.write(result.stdout + result.stderr.replace("\r", "\n")[-20000:])
    log.write(f"[exit {result.returncode}, {seconds:.1f} s whole process]\n")
    log.flush()
    if result.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-2000:]}")
    return result.stdout, seconds


def airbench_run(version: str, seed: int, workdir: Path, log, mallopt: bool = False) -> dict:
    script = str(REPO / "benchmarks" / "airbench_cpu.py")
    out, seconds = run(
        [sys.executable, script, "--version", version, "--seed", str(seed), "--workdir",
         str(workdir), *(["--mallopt"] if mallopt else [])],
        log,
    )  # fmt: skip
    row = json.loads(out.strip().splitlines()[-1])
    return checked({**row, "process_seconds": seconds}, log)


def checked(row: dict, log) -> dict:
    """`row`, unless its accuracy is near chance: then one line, and the benchmark stops."""
    accuracy = row[f"test_acc_tta{TTA}"]
    if accuracy < CHANCE_FLOOR:
        message = (
            f"refused: {row['system']} seed {row['seed']} reached {100 * accuracy:.2f}% (TTA "
            f"{TTA}), near chance; its adaptation is broken, so no row or ratio is printed"
        )
        log.write(message + "\n")
        sys.exit(message)
    return row


def preset_run(preset: str, seed: int, data: str, runs: Path, log, extra=()) -> dict:
    """A preset trained on all training images (`extra`: more train.py flags), as a row."""
    run_dir = runs / f"{preset}-seed{seed}"
    _, seconds = run(
        [sys.executable, "code/train.py", "--preset", preset, "--data", data, "--val-size", "0",
         "--seed", str(seed), "--tta", str(TTA), "--run-dir", str(run_dir), *extra],
        log,
    )  # fmt: skip
    results = read_json(run_dir / "results.json")
    spec = ResNetSpec.from_dict(read_config(run_dir)["model"])
    row = {
        "system": f"budgetnet {preset}",
        "seed": seed,
        "test_acc_tta0": results["test_acc_tta0"],
        f"test_acc_tta{TTA}": results[f"test_acc_tta{TTA}"],
        "train_seconds": results["train_seconds"],
        "process_seconds": seconds,
        "params": count_params(spec),
        "flops": count_flops(spec).flops,
    }
    return checked(row, log)


def summarise(rows: list[dict], reference: str) -> str:
    systems = list(dict.fromkeys(row["system"] for row in rows))

    def median(system: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["system"] == system)

    table = []
    for system in sorted(systems, key=lambda name: name != reference):
        mine = [r for r in rows if r["system"] == system]
        accs = [100 * r[f"test_acc_tta{TTA}"] for r in mine]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        table.append(
            (
                system,
                len(mine),
                f"{statistics.mean(accs):.2f} ± {spread:.2f}",
                f"{statistics.mean(100 * r['test_acc_tta0'] for r in mine):.2f}",
                round(median(system, "train_seconds")),
                round(median(system, "process_seconds")),
                mine[0]["params"],
                mine[0]["flops"],
                f"{median(system, 'train_seconds') / median(reference, 'train_seconds'):.2f}",
            )
        )
    header = [
        "system", "seeds", f"test acc TTA {TTA} (%)", "TTA 0 (%)", "train s (median)",
        "whole process s", "parameters", "FLOPs/image", f"train time / {reference}",
    ]  # fmt: skip
    return markdown_table(header, table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--airbench", nargs="*", default=["94"], choices=("94", "95", "96"))
    parser.add_argument("--presets", nargs="*", default=["fast"])
    parser.add_argument(
        "--heap-reuse-seeds", type=int, nargs="*", default=[],
        help="also run the first airbench version with budgetnet's allocator setting (its own "
        "row) for these seeds: how much of the ratio the allocator accounts for",
    )  # fmt: skip
    parser.add_argument("--log", type=Path, default=Path("docs/benchmarks/cpu_vs_airbench.log"))
    parser.add_argument("--rows", type=Path, help="also write every run's row here (JSON)")
    parser.add_argument(
        "--runs", type=Path,
        help="keep the presets' run directories here (default: a temporary folder)",
    )  # fmt: skip
    args = parser.parse_args()
    if not args.airbench:
        parser.error("name at least one airbench version: the ratios are taken to the first")
    args.log.parent.mkdir(parents=True, exist_ok=True)
    precision = precision_name(torch.device("cpu"))
    header = (
        f"{datetime.date.today()}, {cpu_model()}, {cpu_count()} cores, torch {torch.__version__},"
        f" {precision}; seeds {args.seeds}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp, args.log.open("a") as log:
        log.write(f"\n# {' '.join(sys.argv)}\n# {header}\n")
        workdir = Path(tmp)
        write_airbench_data(args.data, workdir)
        runs = args.runs or workdir / "runs"
        for seed in args.seeds:  # seed-major, so a long run still covers every system
            for preset in args.presets:
                rows.append(preset_run(preset, seed, args.data, runs, log))
                print(json.dumps(rows[-1]), flush=True)
            for version in args.airbench:
                rows.append(airbench_run(version, seed, workdir, log))
                print(json.dumps(rows[-1]), flush=True)
            if seed in args.heap_reuse_seeds:
                rows.append(airbench_run(args.airbench[0], seed, workdir, log, mallopt=True))
                print(json.dumps(rows[-1]), flush=True)
        table = summarise(rows, f"airbench{args.airbench[0]}")
        log.write(f"\n{header}\n{table}\n")
    if args.rows:
        args.rows.write_text(json.dumps(rows, indent=1))
    print(f"\n{header}\n\n{table}")


if __name__ == "__main__":
    main()
