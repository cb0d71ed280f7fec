"""Evaluate trained models on a labeled split: accuracy per TTA level, per-class metrics, macro
mAP, calibration, robustness to corruptions; a Markdown and a JSON report, and plots.

    python code/evaluate.py --checkpoint runs/r24 --split val
    python code/evaluate.py --checkpoint runs/r24 --split test --tta-levels 0 1
    python code/evaluate.py --split test --corruptions --corruption-images 2000

`--split val` rebuilds the validation split the run held out (data, size, seed and per-class
cap are stored in model.json); `--split test` is the data's test split. `--data` overrides
the source.
"""

from __future__ import annotations

from budgetnet.cli import add_release_arguments, device_from_arg
from budgetnet.errors import ArgumentParser, UserError, add_old_spelling, run_cli
from budgetnet.evaluation.corruptions import CORRUPTIONS, DEFAULT_SEVERITIES, check_corruptions
from budgetnet.evaluation.ensemble import labeled_split, load_ensemble
from budgetnet.evaluation.infer import TTA_LEVELS
from budgetnet.evaluation.report import EvaluationReport, evaluate_ensemble, write_report
from budgetnet.files import check_output_dir


def make_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    add_release_arguments(parser, default_checkpoint="trained_model")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument(
        "--data",
        default=None,
        help="any source budgetnet.data.sources reads (default: the training data)",
    )
    levels = {"type": int, "nargs": "+", "choices": TTA_LEVELS, "metavar": "LEVEL"}
    parser.add_argument(
        "--tta-levels",
        default=list(TTA_LEVELS),
        help="TTA levels to report; the highest gives the per-class table, "
        "plots and corruption sweep (default: all)",
        **levels,
    )
    add_old_spelling(parser, "--tta", "--tta-levels", **levels)
    parser.add_argument(
        "--report-dir", default="reports", help="where evaluation-<split>.md and .json go"
    )
    parser.add_argument("--plots-dir", default="plots", help="where the <split>-*.png plots go")
    parser.add_argument(
        "--corruptions",
        nargs="*",
        metavar="NAME",
        default=None,
        help=f"also measure accuracy under corruptions (none named: all of "
        f"{', '.join(CORRUPTIONS)})",
    )
    parser.add_argument(
        "--severities",
        type=int,
        nargs="+",
        default=list(DEFAULT_SEVERITIES),
        help="corruption severities, 1 (mild) to 5",
    )
    parser.add_argument(
        "--corruption-images",
        type=int,
        default=None,
        metavar="N",
        help="run the corruption sweep on a stratified sample of N images "
        "(default: the whole split)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the corruptions and sample")
    return parser


def print_summary(report: EvaluationReport) -> None:
    for row in report.tta:
        print(
            f"TTA {row.level}: accuracy {100 * row.acc:.2f}%, macro mAP "
            f"{100 * row.macro_map:.2f}%, ECE {100 * row.ece:.2f}% "
            f"({row.images_per_second:.0f} images/s)"
        )
    sweep = report.corruptions
    if sweep is not None:
        print(
            f"corruptions: mean accuracy {100 * sweep.mean_acc:.2f}% "
            f"(clean {100 * sweep.clean_acc:.2f}%) on {sweep.images} images"
        )


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    if args.corruptions is not None:
        check_corruptions(args.corruptions, args.severities)
        if args.corruption_images is not None and args.corruption_images < 1:
            raise UserError(f"--corruption-images must be positive, got {args.corruption_images}")

    check_output_dir(args.report_dir, "--report-dir")  # before the evaluation, not after it
    check_output_dir(args.plots_dir, "--plots-dir")
    device = device_from_arg(args.device)
    ensemble = load_ensemble(args.checkpoint, device, args.max_params)
    images = labeled_split(ensemble, args.split, args.data)
    print(f"evaluating {ensemble.describe()} on {len(images)} images: {images.source}")
    result = evaluate_ensemble(
        ensemble,
        images,
        split=args.split,
        tta_levels=args.tta_levels,
        batch_size=args.batch_size,
        device=device,
        amp=not args.fp32,
        corruptions=args.corruptions,
        severities=args.severities,
        corruption_images=args.corruption_images,
        seed=args.seed,
    )
    written = write_report(result, args.report_dir, args.plots_dir)
    print_summary(result.report)
    print(
        f"wrote {written.markdown}, {written.json} and {len(written.plots)} plots in "
        f"{args.plots_dir}/"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
