"""The command-line entry points on small real files: one round trip as a user runs it (new
processes), the refusals in this process."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from budgetnet.data.kaggle import read_unlabeled_pickle
from budgetnet.submission.csv_file import read_submission, write_submission

from cifar_files import write_cifar10


def assert_one_line_error(result, fragment):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines


def test_made_pickle_passes_the_check_and_scores_the_rows_it_got_right(tmp_path, run_script):
    # New processes: the real command lines of the three tools (check_submission.py's end to
    # end test); the refusals below run in this process.
    write_cifar10(tmp_path / "cifar", per_batch=10, test_count=30)
    pkl, key = tmp_path / "k" / "test.pkl", tmp_path / "k" / "key.csv"
    made = run_script(
        "code/make_kaggle_pickle.py",
        "--data",
        str(tmp_path / "cifar"),
        "--out",
        str(pkl),
        "--key",
        str(key),
        "--layout",
        "flat",
        "--seed",
        "3",
    )
    assert made.returncode == 0, made.stderr
    test = read_unlabeled_pickle(pkl)
    key_ids, key_labels = read_submission(key)
    np.testing.assert_array_equal(test.ids, key_ids)
    assert pickle.loads(pkl.read_bytes())[b"data"].shape == (30, 3072)

    # A submission that gets the first 20 rows right.
    guess = key_labels.copy()
    guess[20:] = (guess[20:] + 1) % 10
    sub = write_submission(tmp_path / "sub.csv", key_ids, guess)
    checked = run_script("code/check_submission.py", str(sub), "--pkl", str(pkl))
    assert checked.returncode == 0 and checked.stdout.startswith("OK "), checked.stderr
    scored = run_script("code/score_submission.py", str(sub), "--key", str(key))
    assert scored.returncode == 0 and scored.stdout.startswith("accuracy 0.6667 (20/30)")


def test_check_submission_rejects_row_numbers_as_ids(tmp_path, run_main):
    write_cifar10(tmp_path / "cifar", per_batch=2, test_count=12)
    pkl = tmp_path / "test.pkl"
    run_main(
        "code/make_kaggle_pickle.py",
        "--data",
        str(tmp_path / "cifar"),
        "--out",
        str(pkl),
        "--key",
        str(tmp_path / "key.csv"),
    )
    sub = write_submission(tmp_path / "sub.csv", np.arange(12), np.zeros(12, np.int64))
    result = run_main("code/check_submission.py", str(sub), "--pkl", str(pkl))
    assert_one_line_error(result, "ids of the test set are missing")


def test_bad_inputs_end_with_one_line_and_write_nothing(tmp_path, run_main):
    (tmp_path / "evil.pkl").write_bytes(b"cos\nsystem\n(S'touch pwned'\ntR.")
    out = tmp_path / "out.csv"
    result = run_main("inference.py", "--pkl", str(tmp_path / "evil.pkl"), "--out", str(out))
    assert_one_line_error(result, "not safe to load: it refers to os.system")
    assert not out.exists()

    result = run_main(
        "code/make_kaggle_pickle.py",
        "--data",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "t.pkl"),
        "--key",
        str(tmp_path / "k.csv"),
    )
    assert_one_line_error(result, "no such file or directory")
    assert not (tmp_path / "t.pkl").exists() and not (tmp_path / "k.csv").exists()

    result = run_main(
        "code/score_submission.py", str(tmp_path / "nope.csv"), "--key", str(tmp_path / "nope.csv")
    )
    assert_one_line_error(result, "no such file")


def test_inference_validates_the_pickle_before_anything(tmp_path, run_main):
    pkl = tmp_path / "t.pkl"
    pkl.write_bytes(
        pickle.dumps({b"data": np.zeros((4, 32, 32, 3), np.uint8), b"ids": np.array([1, 1, 2, 3])})
    )
    result = run_main("inference.py", "--pkl", str(pkl), "--out", str(tmp_path / "s.csv"))
    assert_one_line_error(result, "1 duplicates")
    assert not (tmp_path / "s.csv").exists()
    missing = run_main("inference.py")
    assert missing.returncode == 2 and "--pkl" in missing.stderr


def test_flag_refusals_come_before_any_work(tmp_path, run_main):
    # Each of these would otherwise read data or a run first, or crash inside numpy.
    write_cifar10(tmp_path / "cifar", per_batch=2, test_count=12)
    same = tmp_path / "same"
    result = run_main(
        "code/make_kaggle_pickle.py",
        "--data",
        str(tmp_path / "cifar"),
        "--out",
        str(same),
        "--key",
        str(same),
    )
    assert_one_line_error(result, "name the same file")
    assert not same.exists()

    result = run_main("code/publish.py", str(tmp_path / "run"), "--corruption-images", "5")
    assert_one_line_error(result, "at least 10")

    lr_find = [
        "code/lr_find.py",
        "--data",
        str(tmp_path / "cifar"),
        "--out",
        str(tmp_path / "l.png"),
    ]
    assert_one_line_error(run_main(*lr_find, "--steps", "0"), "--steps")
    assert_one_line_error(run_main(*lr_find, "--start-lr", "0"), "0 < start lr < end lr")
    assert_one_line_error(run_main(*lr_find, "--start-lr", "1", "--end-lr", "0.1"), "end lr")
    assert not (tmp_path / "l.png").exists()


def test_evaluate_takes_its_tta_levels_under_the_old_spelling_with_a_one_line_note(capsys):
    # --tta is one level in every script; evaluate.py, which reports several, names its flag
    # --tta-levels and keeps the spelling scripts may still type.
    import evaluate

    parse = evaluate.make_parser().parse_args
    assert parse([]).tta_levels == [0, 1, 2] and parse(["--tta-levels", "1"]).tta_levels == [1]
    assert capsys.readouterr().err == ""
    assert parse(["--tta", "0", "2"]).tta_levels == [0, 2]
    assert capsys.readouterr().err.splitlines() == ["note: --tta is now spelled --tta-levels"]
    with pytest.raises(SystemExit):
        parse(["--tta", "3"])  # the old spelling takes the same values
    assert "invalid choice: 3" in capsys.readouterr().err
