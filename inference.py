"""Label a Kaggle test pickle with trained models and write the submission CSV.

    python inference.py --pkl cifar_test_nolabel.pkl
    python inference.py --pkl cifar_test_nolabel.pkl --checkpoint runs/a runs/b --tta 2 \
        --save-probs --submit -m "ResNet-24, TTA 2"

The models are rebuilt from the spec stored with their weights and fed through the same
preprocessing and prediction function as in training and evaluation (`budgetnet.evaluation.infer.infer`).
The CSV is written atomically and checked against the pickle before anything is uploaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "code"))  # works without pip install

import numpy as np  # noqa: E402

from budgetnet.cli import add_release_arguments, device_from_arg  # noqa: E402
from budgetnet.data.kaggle import read_unlabeled_pickle  # noqa: E402
from budgetnet.errors import ArgumentParser, run_cli  # noqa: E402
from budgetnet.evaluation.ensemble import load_ensemble  # noqa: E402
from budgetnet.evaluation.infer import TTA_LEVELS, check_finite_probs, view_count  # noqa: E402
from budgetnet.files import atomic_write, check_output_file, distinct_paths  # noqa: E402
from budgetnet.runtime import precision_name  # noqa: E402
from budgetnet.submission.csv_file import check_submission, write_submission  # noqa: E402
from budgetnet.submission.upload import COMPETITION_ENV, submit  # noqa: E402


def write_probs(path: Path, probs: np.ndarray, ids: np.ndarray, classes: list[str]) -> None:
    """probs (N, C) float32 in the pickle's row order, its ids and the class names; plain
    arrays, so `np.load(path)` reads them without allow_pickle."""
    with atomic_write(path, "wb") as handle:
        np.savez(handle, probs=probs, ids=ids, classes=np.array(classes))


def make_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pkl", required=True, help="the competition's unlabeled test pickle")
    parser.add_argument(
        "--out", default="submissions/submission.csv", help="where to write the CSV (ID,Labels)"
    )
    add_release_arguments(parser, default_checkpoint="trained_model")
    parser.add_argument(
        "--tta",
        type=int,
        choices=TTA_LEVELS,
        default=1,
        help="test-time augmentation: 0 none, 1 + horizontal flip (default), "
        "2 flip and 1 px translations (6 views)",
    )
    parser.add_argument(
        "--save-probs",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="also write the class probabilities, ids and class names (.npz, "
        "default beside the CSV) for ensembling",
    )
    parser.add_argument(
        "--submit",
        action="store_true",
        help="upload the CSV with the official kaggle tool once it is checked",
    )
    parser.add_argument("-m", "--message", help="the submission's description (with --submit)")
    parser.add_argument(
        "--competition",
        default=os.environ.get(COMPETITION_ENV),
        help=f"the competition's slug (default ${COMPETITION_ENV})",
    )
    return parser


def output_paths(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The CSV and the optional probabilities file, refused before any model runs when they
    collide with each other or the pickle, or name a directory."""
    out = Path(args.out)
    probs_path = None
    if args.save_probs is not None:
        probs_path = Path(args.save_probs) if args.save_probs else out.with_suffix(".probs.npz")
    distinct_paths({"--pkl": args.pkl, "--out": out, "--save-probs": probs_path})
    # Refused before the models run: a directory, a name longer than the file
    # system allows, a path through a file or a link loop.
    check_output_file(out, "--out")
    if probs_path is not None:
        check_output_file(probs_path, "--save-probs")
    return out, probs_path


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.submit and not args.message:
        parser.error("--submit needs -m MESSAGE, the submission's description on Kaggle")
    out, probs_path = output_paths(args)
    test = read_unlabeled_pickle(args.pkl)
    device = device_from_arg(args.device)
    ensemble = load_ensemble(args.checkpoint, device, args.max_params)
    start = time.perf_counter()
    probs = ensemble.probs(
        test.images, tta=args.tta, batch_size=args.batch_size, device=device, amp=not args.fp32
    )
    seconds = time.perf_counter() - start

    check_finite_probs(probs, ensemble.describe())  # as Ensemble.probs checks each member's
    labels = probs.argmax(axis=1)
    # Checked before it replaces anything: a CSV that fails never reaches --out.
    write_submission(
        out,
        test.ids,
        labels,
        check=lambda written: check_submission(
            written, test.ids, num_classes=len(ensemble.classes)
        ),
    )
    if probs_path is not None:
        write_probs(probs_path, probs, test.ids, ensemble.classes)

    counts = np.bincount(labels, minlength=len(ensemble.classes))
    views = view_count(args.tta)
    precision = precision_name(device, not args.fp32)
    print(
        f"labelled {len(test)} images of {args.pkl} in {seconds:.1f} s "
        f"({len(test) / seconds:.0f} images/s) with {ensemble.describe()}: TTA {args.tta} "
        f"({views} view{'s' if views > 1 else ''}), {precision} on {device}"
    )
    print(
        f"wrote {out}: {len(labels)} rows, checked against the pickle's ids"
        + (f"; probabilities in {probs_path}" if probs_path else "")
    )
    print(
        "predicted per class: "
        + ", ".join(f"{name} {n}" for name, n in zip(ensemble.classes, counts, strict=True))
    )
    if args.submit:
        submit(out, args.message, args.competition)
    return 0


if __name__ == "__main__":
    run_cli(main)
