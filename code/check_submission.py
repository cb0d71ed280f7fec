"""Check a submission CSV against the test pickle it answers, before you upload it.

python code/check_submission.py submissions/submission.csv --pkl cifar_test_nolabel.pkl
"""

from __future__ import annotations

from budgetnet.data.kaggle import read_unlabeled_pickle
from budgetnet.errors import ArgumentParser, run_cli
from budgetnet.submission.csv_file import check_submission


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="the submission file (ID,Labels)")
    parser.add_argument("--pkl", required=True, help="the unlabeled test pickle it answers")
    parser.add_argument("--num-classes", type=int, default=10, help="labels must be 0..N-1")
    args = parser.parse_args(argv)
    test = read_unlabeled_pickle(args.pkl)
    checked = check_submission(args.csv, test.ids, args.num_classes)
    print(f"OK {args.csv}: {checked.summary(args.num_classes)}; every id of {args.pkl} once")
    return 0


if __name__ == "__main__":
    run_cli(main)
