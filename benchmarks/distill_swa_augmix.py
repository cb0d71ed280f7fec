"""What distillation, SWA and AugMix + JSD gain over a baseline: distillation from an ensemble
of two larger teachers, stochastic weight averaging and AugMix with the Jensen-Shannon loss,
each on the same small budgeted ResNet, a short schedule and a subset of the training images,
several seeds each; clean test accuracy and accuracy under the eight corruptions of
budgetnet.evaluation.corruptions. A proof at small scale on the CPU, not a leaderboard figure.

    python benchmarks/distill_swa_augmix.py --data ../shared/data/cifar10 --seeds 0 1 2 \\
        --epochs 5 --teacher-epochs 15 --per-class 300 --val-size 500 --corruption-images 1000 \\
        --runs /tmp/techniques --log docs/benchmarks/distill_swa_augmix.log

The table and its analysis are in docs/techniques.md.

Run it on a quiet machine: it times every run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "code"))

from budgetnet.data.sources import load_splits  # noqa: E402
from budgetnet.evaluation.corruptions import CORRUPTIONS  # noqa: E402
from budgetnet.evaluation.ensemble import load_ensemble  # noqa: E402
from budgetnet.evaluation.report import corruption_report  # noqa: E402
from budgetnet.files import atomic_write  # noqa: E402
from budgetnet.models.complexity import count_params  # noqa: E402
from budgetnet.models.spec import ResNetSpec  # noqa: E402
from budgetnet.runtime import cpu_model, precision_name  # noqa: E402
from budgetnet.tables import markdown_table  # noqa: E402
from budgetnet.training.config import TrainConfig, merge, recipe_config  # noqa: E402
from budgetnet.training.engine import fit  # noqa: E402

STUDENT = ResNetSpec((1, 1, 1), (32, 64, 128))  # cpu-quick's network
TEACHER = ResNetSpec((1, 1, 1), (64, 128, 256))  # 4x the student's FLOPs, trained longer
TEACHER_SEEDS = (100, 101)
# Each technique: TrainConfig settings over the cpu-quick recipe ("teachers" filled in below).
VARIANTS = {
    "baseline": {},
    "distillation": {"kd_alpha": 0.5, "kd_temperature": 4.0},
    "swa": {"swa": True, "swa_start": 0.5, "swa_lr": 0.05},
    "augmix+jsd": {"aa": "augmix-m3-w3", "jsd_loss": True, "workers": 2},
}
SEVERITIES = [1, 3, 5]


def base_config(
    args: argparse.Namespace, run_dir: Path, seed: int, epochs: int | None = None
) -> TrainConfig:
    """The cpu-quick recipe on a per-class subset, for a few epochs, with a validation split."""
    settings = {
        "data": args.data, "max_per_class": args.per_class, "val_size": args.val_size,
        "epochs": epochs or args.epochs, "warmup_epochs": 1.0, "seed": seed,
        "run_dir": str(run_dir),
        "tta": 0, "device": "cpu",
    }  # fmt: skip
    return merge(recipe_config("cpu-quick"), settings, "benchmark")


def train(config: TrainConfig, spec: ResNetSpec, splits, log) -> dict:
    if (Path(config.outputs.run_dir) / "results.json").exists():  # finished before: reuse it
        return json.loads((Path(config.outputs.run_dir) / "results.json").read_text())
    started = time.perf_counter()
    results = fit(config, spec, splits=splits, log=lambda line: None)
    results["wall_seconds"] = time.perf_counter() - started
    log(f"{config.outputs.run_dir}: {json.dumps(results)}")
    return results


def robustness(run_dir: Path, test, args) -> dict:
    ensemble = load_ensemble([run_dir], torch.device("cpu"), max_params=0)
    sweep = corruption_report(
        ensemble, test, list(CORRUPTIONS), SEVERITIES, sample_size=args.corruption_images,
        seed=0, tta=0, batch_size=256, device=torch.device("cpu"), amp=True,
    )  # fmt: skip
    return {
        "corrupted": sweep.mean_acc,
        "noise": sweep.mean_by_corruption()["gaussian_noise"],
    }


def run_all(args: argparse.Namespace, log) -> dict[str, list[dict]]:
    splits = load_splits(args.data, val_size=args.val_size, max_per_class=args.per_class, seed=0)
    teachers, teacher_results = [], []
    for seed in TEACHER_SEEDS:
        run = args.runs / f"teacher-{seed}-e{args.teacher_epochs}"
        config = base_config(args, run, seed, args.teacher_epochs)
        teacher_results.append(train(config, TEACHER, splits, log))
        teachers.append(str(config.outputs.run_dir))
    rows: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for seed in args.seeds:
        for name, settings in VARIANTS.items():
            run = args.runs / f"{name}-seed{seed}"
            if name == "distillation":
                settings = {**settings, "teacher": teachers}
                run = args.runs / f"{name}-e{args.teacher_epochs}-seed{seed}"
            config = merge(base_config(args, run, seed), settings, name)
            results = train(config, STUDENT, splits, log)
            rows[name].append({**results, **robustness(run, splits.test, args)})
    rows["teachers (each)"] = [
        {**r, **robustness(Path(r["run_dir"]), splits.test, args)} for r in teacher_results
    ]
    return rows


def table(rows: dict[str, list[dict]]) -> str:
    def cell(values: list[float]) -> str:
        return f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f}"

    body = []
    for name, runs in rows.items():
        base = rows["baseline"]
        gain = np.mean([r["test_acc_tta0"] for r in runs]) - np.mean(
            [r["test_acc_tta0"] for r in base]
        )
        body.append([
            name, cell([r["test_acc_tta0"] for r in runs]), f"{100 * gain:+.2f}",
            cell([r["corrupted"] for r in runs]), cell([r["noise"] for r in runs]),
            f"{np.median([r['train_seconds'] for r in runs]):.0f}",
        ])  # fmt: skip
    header = [
        "technique",
        "clean test acc %",
        "vs baseline",
        "corrupted acc %",
        "gaussian noise acc %",
        "train s (median)",
    ]
    return markdown_table(header, body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--per-class", type=int, default=500, help="training images per class")
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--corruption-images", type=int, default=1000)
    parser.add_argument("--runs", type=Path, default=Path("runs/techniques"))
    parser.add_argument("--out", type=Path, help="write the table here (Markdown)")
    parser.add_argument("--log", type=Path, help="append the raw results here")
    args = parser.parse_args()
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    started = time.time()
    rows = run_all(args, log)
    text = table(rows)
    device = torch.device("cpu")
    info = (
        f"{len(args.seeds)} seeds ({' '.join(map(str, args.seeds))}), {args.epochs} epochs on "
        f"{10 * args.per_class - args.val_size:,} training images (teachers "
        f"{args.teacher_epochs} epochs), {precision_name(device)} on "
        f"{cpu_model()} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"Python {platform.python_version()}; student {count_params(STUDENT):,} parameters, "
        f"teachers 2 x {count_params(TEACHER):,}; {time.time() - started:.0f} s in all"
    )
    print(text + "\n\n" + info)
    if args.log:
        with args.log.open("a") as handle:
            handle.write("\n".join([*lines, text, info, ""]))
    if args.out:
        with atomic_write(args.out) as handle:
            handle.write(text + "\n\n" + info + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
