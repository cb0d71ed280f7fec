"""Publish a finished run: its release becomes trained_model/, its figures go to plots/, and
docs/results.md gains its row (test accuracy at TTA 0/1/2 and under corruptions).

    python code/publish.py runs/<name> --data ../shared/data/cifar10
    python code/publish.py runs/<other> --row-only      # a row in the table, not the release
"""

from __future__ import annotations

import sys
from pathlib import Path

from budgetnet.errors import ArgumentParser, UserError, run_cli
from budgetnet.files import check_output_dir, check_output_file
from budgetnet.submission.release import publish


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory that code/train.py completed")
    parser.add_argument("--data", default=None, help="test data (default: the run's own)")
    parser.add_argument("--out", type=Path, default=Path("trained_model"))
    parser.add_argument("--plots-dir", type=Path, default=Path("plots"))
    parser.add_argument("--results", type=Path, default=Path("docs/results.md"))
    parser.add_argument(
        "--corruption-images", type=int, default=2000, metavar="N",
        help="stratified test images for the corruption sweep (default 2000)",
    )  # fmt: skip
    parser.add_argument(
        "--row-only", action="store_true",
        help="evaluate the run and add its row, but leave trained_model/ and plots/ as they are",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.corruption_images < 10:
        raise UserError(f"--corruption-images must be at least 10, got {args.corruption_images}")
    for flag, folder in (("--out", args.out), ("--plots-dir", args.plots_dir)):
        check_output_dir(folder, flag)  # before the evaluation, not after it
    check_output_file(args.results, "--results")
    rows = publish(
        args.run,
        out=args.out,
        plots_dir=args.plots_dir,
        results_md=args.results,
        data=args.data,
        corruption_images=args.corruption_images,
        row_only=args.row_only,
        argv=[
            "python",
            "code/publish.py",
            *(argv if argv is not None else sys.argv[1:]),
        ],
    )
    row = rows[-1]
    print(
        f"{row['run']}: test accuracy TTA 0/1/2 "
        + " / ".join(f"{100 * row['test_acc'][k]:.2f}%" for k in ("0", "1", "2"))
        + f"; {'row added to' if args.row_only else f'published to {args.out}/, row in'} "
        f"{args.results}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
