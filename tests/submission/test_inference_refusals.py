"""inference.py on clumsy paths and flags: nothing a user had is destroyed (the pickle as
--out, --save-probs as --out, a CSV that fails the check, a directory as --out), and a bad
--batch-size is one line."""

from __future__ import annotations

import inference

from budgetnet.errors import UserError

from refusals import refused


def test_out_equal_to_pkl_is_refused_and_the_pickle_kept(pkl, release):
    before = pkl.read_bytes()
    args = ["--pkl", str(pkl), "--out", str(pkl), "--checkpoint", str(release)]
    refused(lambda: inference.main(args), "--pkl and --out name the same file")
    assert pkl.read_bytes() == before


def test_save_probs_equal_to_out_is_refused(pkl, release, tmp_path):
    out = tmp_path / "s.csv"
    args = ["--pkl", str(pkl), "--out", str(out), "--save-probs", str(out)]
    refused(lambda: inference.main([*args, "--checkpoint", str(release)]), "same file")


def test_a_csv_that_fails_the_check_never_replaces_the_good_one(
    pkl, release, tmp_path, monkeypatch
):
    out = tmp_path / "s.csv"
    out.write_text("ID,Labels\n5,1\n")
    good = out.read_text()

    def failing_check(path, ids, num_classes):
        raise UserError("checker says no")

    monkeypatch.setattr(inference, "check_submission", failing_check)
    args = ["--pkl", str(pkl), "--out", str(out), "--checkpoint", str(release)]
    refused(lambda: inference.main(args), "checker says no")
    assert out.read_text() == good
    assert not list(tmp_path.glob(".s.csv.*"))  # its temporary file is gone too


def test_out_that_is_a_directory_is_refused(pkl, release, tmp_path):
    args = ["--pkl", str(pkl), "--out", str(tmp_path), "--checkpoint", str(release)]
    refused(lambda: inference.main(args), "is a directory")


def test_inference_refuses_batch_size_zero_in_one_line(pkl, release, tmp_path, run_main):
    result = run_main(
        "inference.py", "--pkl", str(pkl), "--out", str(tmp_path / "s.csv"),
        "--checkpoint", str(release), "--batch-size", "0",
    )  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "must be at least 1" in result.stderr
