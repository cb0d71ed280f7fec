"""Time to accuracy on one GPU: airbench94, 95 and 96 (the PyPI package, unmodified on CUDA,
fed our JPEG copy) against budgetnet's presets, several seeds each, one table.

    python benchmarks/gpu_vs_airbench.py --data ../shared/data/cifar10 --airbench 94 95 96 \\
        --presets fast fast_wide_noise --seeds 0 1 2 --out docs/benchmarks/gpu_vs_airbench

Every system trains on the 50,000 training images (our presets with --val-size 0: a fixed
schedule, the final weights) and is scored on the 10,000 test images at TTA 2. airbench is
timed by its own timer after one untimed warm-up run in its process (airbench_gpu.py); our
presets by train.py's `train_seconds` (the whitening init plus the epochs, the same span).
Each system's time ratio is taken to the airbench version whose mean accuracy is the highest
at or below the system's own (a recipe is only compared with one it is at least as accurate
as). The FLOP floor is the seconds the training's matrix work would take at the device's
measured bf16 matmul rate: 3 x forward FLOPs x training images x epochs (a filtered preset's
skipped images counted too) over the rate of an N x N x N bf16 product. `--device cpu` rehearses the
whole benchmark at tiny size on a machine without a GPU (airbench then runs through
airbench_cpu.py's adaptation). Writes OUT.md (table), OUT.json (rows) and OUT.log (every
run's output), each rewritten after every run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent / "code"))
sys.path.insert(0, str(BENCHMARKS))

from budgetnet.files import atomic_write  # noqa: E402
from budgetnet.runs import read_json  # noqa: E402
from budgetnet.tables import markdown_table  # noqa: E402
from cpu_vs_airbench import TTA, checked, preset_run, run, write_airbench_data  # noqa: E402


def matmul_rate(device: torch.device, size: int, repeats: int = 10) -> float:
    """FLOP/s of a size x size x size bf16 matrix product on `device` (mean of `repeats`
    after three warm-ups), the floor's yardstick."""
    a, b = (torch.randn(size, size, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from budgetnet.runtime import cpu_count, cpu_model

    return f"{cpu_model()}, {cpu_count()} cores"


def floor_seconds(row: dict, rate: float, images: int) -> float:
    return 3 * row["flops"] * images * row["epochs"] / rate


def reference_for(accuracy: float, airbench: dict[str, float]) -> str | None:
    """The airbench system with the highest mean accuracy at or below `accuracy` (None: every
    airbench version is more accurate)."""
    below = {system: acc for system, acc in airbench.items() if acc <= accuracy}
    return max(below, key=below.get) if below else None


def summarise(rows: list[dict], rate: float, images: int) -> str:
    """The table; `images`: the training images per epoch, for the FLOP floor."""
    systems = list(dict.fromkeys(row["system"] for row in rows))

    def mine(system: str) -> list[dict]:
        return [r for r in rows if r["system"] == system]

    accuracy = {s: statistics.mean(100 * r[f"test_acc_tta{TTA}"] for r in mine(s)) for s in systems}
    seconds = {s: statistics.median(r["train_seconds"] for r in mine(s)) for s in systems}
    airbench = {s: accuracy[s] for s in systems if s.startswith("airbench")}
    table = []
    for system in sorted(systems, key=lambda s: (not s.startswith("airbench"), s)):
        runs = mine(system)
        accs = [100 * r[f"test_acc_tta{TTA}"] for r in runs]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        reference = reference_for(accuracy[system], airbench)
        ratio = f"{seconds[system] / seconds[reference]:.2f} ({reference})" if reference else "—"
        table.append(
            (system, len(runs), runs[0]["epochs"], f"{accuracy[system]:.2f} ± {spread:.2f}",
             f"{statistics.mean(100 * r['test_acc_tta0'] for r in runs):.2f}",
             f"{seconds[system]:.2f}", f"{floor_seconds(runs[0], rate, images):.2f}",
             f"{runs[0]['params']:,}", f"{runs[0]['flops'] / 1e6:.0f}M", ratio)
        )  # fmt: skip
    header = [
        "system", "seeds", "epochs", f"test TTA {TTA} (%)", "TTA 0 (%)", "train s (median)",
        "FLOP floor s", "parameters", "FLOPs/image", "time / airbench of equal or lower acc",
    ]  # fmt: skip
    return markdown_table(header, table)


def airbench_row(version: str, seed: int, workdir: Path, device: torch.device, log) -> dict:
    script = "airbench_gpu.py" if device.type == "cuda" else "airbench_cpu.py"
    warmup = ["--warmup"] if device.type == "cuda" else []
    out, seconds = run(
        [sys.executable, str(BENCHMARKS / script), "--version", version, "--seed", str(seed),
         "--workdir", str(workdir), *warmup],
        log,
    )  # fmt: skip
    return checked({**json.loads(out.strip().splitlines()[-1]), "process_seconds": seconds}, log)


def preset_row(preset: str, seed: int, args, runs: Path, log) -> dict:
    row = preset_run(
        preset, seed, args.data, runs, log, extra=["--device", args.device, *args.preset_flags]
    )
    results = read_json(runs / f"{preset}-seed{seed}" / "results.json")
    return {**row, "epochs": results["epochs_run"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10")
    parser.add_argument(
        "--airbench", nargs="+", default=["94", "95", "96"], choices=("94", "95", "96")
    )
    parser.add_argument("--presets", nargs="*", default=["fast", "fast_wide_noise"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument(
        "--preset-flags", nargs=argparse.REMAINDER, default=[],
        help="train.py flags for every preset run (last: everything after it is theirs)",
    )  # fmt: skip
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--runs", type=Path, help="keep the presets' run directories here")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/gpu_vs_airbench"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_vs_airbench.py: no CUDA device (rehearse with --device cpu)")
    rate = matmul_rate(device, args.matmul_size)
    header = (
        f"{datetime.date.today()}, {device_name(device)}, torch {torch.__version__}, bf16 matmul "
        f"{rate / 1e12:.1f} TFLOP/s ({args.matmul_size}^3); seeds {args.seeds}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, args.out.with_suffix(".log").open("a") as log:
        log.write(f"\n# {' '.join(sys.argv)}\n# {header}\n")
        workdir = Path(tmp)
        write_airbench_data(args.data, workdir)
        train = torch.load(
            workdir / "cifar10" / "train.pt", weights_only=True
        )  # ours, just written
        images = len(train["labels"])
        runs = args.runs or workdir / "runs"
        for seed in args.seeds:  # seed-major: an interrupted run still covers every system
            for version in args.airbench:
                rows.append(airbench_row(version, seed, workdir, device, log))
                report(rows, rate, images, header, args.out)
            for preset in args.presets:
                rows.append(preset_row(preset, seed, args, runs, log))
                report(rows, rate, images, header, args.out)
    print(f"\n{header}\n\n{summarise(rows, rate, images)}")


def report(rows: list[dict], rate: float, images: int, header: str, out: Path) -> None:
    """The newest row on stdout; OUT.json and OUT.md rewritten under temporary names."""
    print(json.dumps(rows[-1]), flush=True)
    for suffix, text in ((".json", json.dumps({"machine": header, "rows": rows}, indent=1)),
                         (".md", f"{header}\n\n{summarise(rows, rate, images)}\n")):  # fmt: skip
        with atomic_write(out.with_suffix(suffix)) as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
