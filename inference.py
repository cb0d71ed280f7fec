"""Label a Kaggle test pickle with a trained model and write the submission CSV.

    python inference.py --pkl cifar_test_nolabel.pkl

This release validates the pickle (safely: it is never unpickled with plain pickle.load) and
the arguments; the prediction step arrives with the inference issue.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "code"))  # works without pip install

from budgetnet.errors import UserError, run_cli  # noqa: E402
from budgetnet.kaggle import read_unlabeled_pickle  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pkl", required=True, help="the competition's unlabeled test pickle")
    parser.add_argument("--out", default="submissions/submission.csv",
                        help="where to write the CSV (ID,Labels)")
    parser.add_argument("--checkpoint", default="trained_model",
                        help="a run directory or a release folder/file")
    args = parser.parse_args(argv)
    test = read_unlabeled_pickle(args.pkl)
    print(f"{args.pkl}: {len(test)} images, ids {test.ids.min()}..{test.ids.max()}: valid")
    raise UserError(f"cannot write {args.out} yet: this version only validates the pickle "
                    "(model loading arrives with the inference issue)")


if __name__ == "__main__":
    run_cli(main)
