"""Score a submission CSV against an answer key, as Kaggle would (accuracy).

python code/score_submission.py submissions/submission.csv --key runs/kaggle/test_key.csv
"""

from __future__ import annotations

from budgetnet.errors import ArgumentParser, run_cli
from budgetnet.submission.csv_file import score_submission


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", help="the submission file (ID,Labels)")
    parser.add_argument("--key", required=True, help="the answer key (ID,Labels)")
    args = parser.parse_args(argv)
    accuracy, correct, total = score_submission(args.csv, args.key)
    print(f"accuracy {accuracy:.4f} ({correct}/{total}) {args.csv}")
    return 0


if __name__ == "__main__":
    run_cli(main)
