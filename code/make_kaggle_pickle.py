"""Turn a labeled split into a Kaggle-style unlabeled test pickle plus its answer key.

    python code/make_kaggle_pickle.py --data ../shared/data/cifar10 --split test \
        --out runs/kaggle/test_nolabel.pkl --key runs/kaggle/test_key.csv

Rows are shuffled and ids drawn at random (seeded), as an unseen competition file would be;
score a submission against the key with `code/score_submission.py`.
"""

from __future__ import annotations

from budgetnet.data.kaggle import LAYOUTS, kaggle_style, write_unlabeled_pickle
from budgetnet.data.sources import SPLITS, load_split
from budgetnet.errors import ArgumentParser, run_cli
from budgetnet.files import check_output_file, distinct_paths
from budgetnet.submission.csv_file import write_submission


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="any source budgetnet.data.sources reads")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--out", required=True, help="the unlabeled pickle to write")
    parser.add_argument("--key", required=True, help="the answer key CSV (ID,Labels) to write")
    parser.add_argument(
        "--layout",
        choices=list(LAYOUTS),
        default="hwc",
        help="b'data' as (N,32,32,3) hwc [the current competition], (N,3072) "
        "flat CIFAR rows, or (N,3,32,32) chw",
    )
    parser.add_argument(
        "--max-per-class", type=int, default=None, help="keep the first N per class"
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the row order and the ids")
    args = parser.parse_args(argv)
    distinct_paths({"--out": args.out, "--key": args.key})
    check_output_file(args.out, "--out")  # before the data loads, not after it
    check_output_file(args.key, "--key")
    labeled = load_split(args.data, args.split, max_per_class=args.max_per_class)
    images, ids, labels = kaggle_style(labeled, args.seed)
    write_unlabeled_pickle(args.out, images, ids, args.layout)
    write_submission(args.key, ids, labels)
    print(
        f"wrote {args.out} ({len(ids)} images, layout {args.layout}) and {args.key} "
        f"from {labeled.source}"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
