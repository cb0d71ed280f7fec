"""Candidate recipes at full scale, side by side with airbench on this machine: which preset for
how much training time, and what survives a shift.

    python benchmarks/recipes.py --data ../shared/data/cifar10 --presets fast fast_deep_noise \\
        --seeds 0 1 --airbench 94 --out docs/benchmarks/recipes

Each preset trains through code/train.py on the 50,000 training images with its default
validation split (5,000) held out, and its release is the epoch of best validation accuracy;
the test split (10,000) is scored once at TTA 0 and 2, and the corruption sweep (every
corruption of budgetnet.evaluation.corruptions at severities 1, 3, 5, at TTA 0) runs on a
stratified sample of --corruption-images test images. airbench (its package, through
airbench_cpu.py) trains on all 50,000 as its authors do; it has no validation or corruption
columns. Training seconds are timed as airbench times them. Keep the machine otherwise idle.

Writes OUT.md (one table: mean +- std over the seeds, medians of seconds, the time ratio to the
first airbench version), OUT.png (test accuracy against training minutes) and OUT.json (every
run's row); each run's output is appended to OUT.log. All three are rewritten after every run,
so an interrupted benchmark keeps what it finished: `--resume` runs only the missing (system,
seed) pairs, and with `--runs DIR` a preset run found finished there is scored again rather
than retrained, one found unfinished continues with train.py's exact `--resume`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent / "code"))
sys.path.insert(0, str(BENCHMARKS))

from budgetnet.data.sources import load_split  # noqa: E402
from budgetnet.evaluation.corruptions import CORRUPTIONS, DEFAULT_SEVERITIES  # noqa: E402
from budgetnet.evaluation.ensemble import load_ensemble  # noqa: E402
from budgetnet.evaluation.figures import save_figure  # noqa: E402
from budgetnet.evaluation.report import corruption_report  # noqa: E402
from budgetnet.files import atomic_write  # noqa: E402
from budgetnet.models.complexity import count_flops, count_params  # noqa: E402
from budgetnet.models.spec import ResNetSpec  # noqa: E402
from budgetnet.runs import SETTINGS_KEY, read_config, read_json  # noqa: E402
from budgetnet.runtime import cpu_count, cpu_model, precision_name  # noqa: E402
from budgetnet.tables import markdown_table  # noqa: E402
from cpu_vs_airbench import TTA, airbench_run, checked, run, write_airbench_data  # noqa: E402

NOISES = [name for name in CORRUPTIONS if name.endswith("_noise")]


def preset_row(preset: str, seed: int, args, test, runs: Path, log) -> dict:
    """Train `preset` with `seed`; its validation, test and corruption scores (the sweep on
    `test`, the test split) and its cost."""
    run_dir = runs / f"{preset}-seed{seed}"
    seconds = None  # a run finished before this benchmark started has no process time here
    if not (run_dir / "results.json").is_file():
        # An interrupted run continues exactly where it stopped (train.py's --resume).
        command = (
            ["--resume", str(run_dir)] if (run_dir / "last.pt").is_file()
            else ["--preset", preset, "--data", args.data, "--seed", str(seed), "--tta",
                  str(TTA), "--run-dir", str(run_dir), *args.train_flags]
        )  # fmt: skip
        _, seconds = run([sys.executable, "code/train.py", *command], log)
    results = read_json(run_dir / "results.json")
    record = read_config(run_dir)
    spec = ResNetSpec.from_dict(record["model"])
    cpu = torch.device("cpu")
    ensemble = load_ensemble([run_dir], cpu)
    sweep = corruption_report(
        ensemble, test, list(CORRUPTIONS), list(DEFAULT_SEVERITIES),
        sample_size=args.corruption_images, seed=0, tta=0, batch_size=500, device=cpu,
    )  # fmt: skip
    row = {
        "system": f"budgetnet {preset}",
        "seed": seed,
        "epochs": record[SETTINGS_KEY]["epochs"],
        "val_acc": results["val_acc"],
        "test_acc_tta0": results["test_acc_tta0"],
        f"test_acc_tta{TTA}": results[f"test_acc_tta{TTA}"],
        "corruption_mean": sweep.mean_acc,
        **{name: sweep.mean_by_corruption()[name] for name in NOISES},
        "train_seconds": results["train_seconds"],
        "process_seconds": seconds,
        "precision": "bf16 autocast"
        if "bf16" in precision_name(torch.device("cpu"))
        else "float32",
        "params": count_params(spec),
        "flops": count_flops(spec).flops,
    }
    return checked(row, log)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def summarise(rows: list[dict], reference: str) -> str:
    systems = list(dict.fromkeys(row["system"] for row in rows))
    seconds = {
        s: statistics.median(r["train_seconds"] for r in rows if r["system"] == s) for s in systems
    }

    def ratio(system: str) -> str:  # a partial benchmark may not have its reference yet
        return f"{seconds[system] / seconds[reference]:.2f}" if reference in seconds else "—"

    def column(mine: list[dict], key: str) -> str:
        return _mean_std([100 * r[key] for r in mine if r.get(key) is not None])

    table = []
    for system in sorted(systems, key=lambda name: name != reference):
        mine = [r for r in rows if r["system"] == system]
        table.append(
            (system, len(mine), mine[0]["epochs"], column(mine, "val_acc"),
             column(mine, "test_acc_tta0"), column(mine, f"test_acc_tta{TTA}"),
             column(mine, "corruption_mean"), *(column(mine, name) for name in NOISES),
             round(seconds[system]), mine[0]["precision"], f"{mine[0]['params']:,}",
             f"{mine[0]['flops'] / 1e6:.0f}M", ratio(system))
        )  # fmt: skip
    header = [
        "system", "seeds", "epochs", "val acc (%)", "test TTA 0 (%)", f"test TTA {TTA} (%)",
        "corruption mean (%)", *(f"{name} (%)" for name in NOISES), "train s (median)",
        "precision", "parameters", "FLOPs/image", f"train time / {reference}",
    ]  # fmt: skip
    return markdown_table(header, table)


def time_figure(rows: list[dict]):
    """Test accuracy (TTA 2, mean and std over seeds) against median training minutes."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4.5))
    ax = figure.subplots()
    for system in dict.fromkeys(r["system"] for r in rows):
        mine = [r for r in rows if r["system"] == system]
        accs = [100 * r[f"test_acc_tta{TTA}"] for r in mine]
        minutes = statistics.median(r["train_seconds"] for r in mine) / 60
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        ax.errorbar(minutes, statistics.mean(accs), yerr=spread, fmt="o", capsize=4, label=system)
    ax.set_xlabel("training minutes (median over seeds)")
    ax.set_ylabel(f"test accuracy, TTA {TTA} (%)")
    ax.set_title("Which recipe for how much time (this machine)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10")
    parser.add_argument("--presets", nargs="+", default=["fast", "fast_deep_noise"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--airbench", nargs="*", default=["94"], choices=("94", "95", "96"),
        help="airbench versions to run beside the presets (none: presets only, e.g. to resume "
        "later); the first is the time ratio's reference",
    )  # fmt: skip
    parser.add_argument("--corruption-images", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/recipes"))
    parser.add_argument("--runs", type=Path, help="keep the run directories here")
    parser.add_argument(
        "--resume", action="store_true",
        help="keep OUT.json's rows and run only the missing (system, seed) pairs; with --runs, "
        "finished run directories are scored again and interrupted ones continue",
    )  # fmt: skip
    parser.add_argument(
        "--max-new", type=int, metavar="N",
        help="stop after N new runs (with --resume: a long benchmark in steps)",
    )  # fmt: skip
    parser.add_argument(
        "--train-flags", nargs=argparse.REMAINDER, default=[],
        help="passed to every train.py run (last; e.g. --epochs 1 for a smoke test)",
    )  # fmt: skip
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"{datetime.date.today()}, {cpu_model()}, {cpu_count()} cores, torch {torch.__version__},"
        f" {precision_name(torch.device('cpu'))}"
    )
    done_file = args.out.with_suffix(".json")
    rows = read_json(done_file)["rows"] if args.resume and done_file.is_file() else []
    done = {(row["system"], row["seed"]) for row in rows}
    reference = f"airbench{(args.airbench or ['94'])[0]}"
    with tempfile.TemporaryDirectory() as tmp, args.out.with_suffix(".log").open("a") as log:
        log.write(f"\n# {' '.join(sys.argv)}\n# {header}\n")
        write_airbench_data(args.data, Path(tmp))
        test = load_split(args.data, "test")
        runs = args.runs or Path(tmp) / "runs"
        pending = [
            (system, seed)
            for seed in args.seeds  # seed-major, so a long run still covers every system
            for system in [
                *(f"budgetnet {p}" for p in args.presets),
                *(f"airbench{v}" for v in args.airbench),
            ]  # fmt: skip
            if (system, seed) not in done
        ]
        for system, seed in pending[: args.max_new]:
            if system.startswith("airbench"):
                rows.append(airbench_run(system.removeprefix("airbench"), seed, Path(tmp), log))
            else:
                rows.append(
                    preset_row(system.removeprefix("budgetnet "), seed, args, test, runs, log)
                )
            report(rows, reference, header, args.out)
    print(f"\n{header}\n\n{summarise(rows, reference)}")


def report(rows: list[dict], reference: str, header: str, out: Path) -> None:
    """The newest row on stdout; OUT.json, OUT.md and OUT.png rewritten, each whole under a
    temporary name and renamed, so that an interrupted benchmark keeps every finished row."""
    print(json.dumps(rows[-1]), flush=True)
    for suffix, text in ((".json", json.dumps({"machine": header, "rows": rows}, indent=1)),
                         (".md", f"{header}\n\n{summarise(rows, reference)}\n")):  # fmt: skip
        with atomic_write(out.with_suffix(suffix)) as handle:
            handle.write(text)
    save_figure(time_figure(rows), out.with_suffix(".png"))


if __name__ == "__main__":
    main()
