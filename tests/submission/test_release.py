"""The fast preset end to end at tiny size, publishing a run, and the release shipped in
trained_model/ (it loads, is what inference.py uses by default, and labels real test images)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from budgetnet.data.kaggle import kaggle_style, write_unlabeled_pickle
from budgetnet.data.sources import load_split
from budgetnet.evaluation.corruptions import CORRUPTIONS
from budgetnet.models.checkpoint import load_release
from budgetnet.models.complexity import count_params
from budgetnet.submission.csv_file import read_submission
from publish import main as publish_main

from conftest import REPO, run_in_process

SHIPPED = REPO / "trained_model"
# The fast preset with narrow stages and a short schedule: every part of the recipe still runs
# (whitening init, frozen stem bias after one epoch, Lookahead, altflip, TTA 2).
TINY_FAST = [
    "--preset", "fast", "--channels", "8", "16", "16", "--epochs", "2", "--batch-size", "32",
    "--val-size", "40", "--warmup-epochs", "0.5", "--whiten-bias-epochs", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def fast_run(cifar, tmp_path_factory):
    """A finished tiny run of the fast preset (shared by the publishing tests)."""
    run = tmp_path_factory.mktemp("runs") / "fast-tiny"
    args = [*TINY_FAST, "--data", str(cifar), "--run-dir", str(run)]
    result = run_in_process("code/train.py", *args, cache=tmp_path_factory.mktemp("cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    return run, result.stdout


def test_fast_preset_runs_its_whole_recipe(fast_run):
    run, stdout = fast_run
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["stem"] == "whiten" and config["model"]["block"] == "fast"
    assert config["settings"]["lookahead"] == 5 and config["settings"]["altflip"]
    results = json.loads((run / "results.json").read_text())
    assert results["epochs_run"] == 2 and results["init_seconds"] > 0
    assert results["train_seconds"] >= results["init_seconds"]
    assert {"test_acc_tta0", "test_acc_tta2", "val_acc"} <= results.keys()
    assert "CPU thread" in stdout  # the setup line: threads, allocator, precision
    release = load_release(run)
    stem = release.model.stem.conv
    assert not stem.weight.requires_grad  # the whitening filters stay as initialised
    assert release.meta["provenance"]["cpu"]


def test_publish_makes_the_release_plots_and_results_table(fast_run, cifar, tmp_path):
    run, _ = fast_run
    out, plots, results = tmp_path / "trained_model", tmp_path / "plots", tmp_path / "results.md"
    common = ["--out", str(out), "--plots-dir", str(plots), "--results", str(results)]
    assert publish_main([str(run), *common, "--corruption-images", "20"]) == 0
    release = load_release(out)
    assert release.meta["weights_dtype"] == "float16"
    assert release.meta["provenance"]["published"]["from_run"] == "fast-tiny"
    assert "test_acc_tta2" in release.meta["metrics"]
    for name in ("loss_curve.png", "accuracy_curve.png", "lr_curve.png", "test-confusion.png"):
        assert (plots / name).stat().st_size > 0, name
    folder = tmp_path / "results"
    assert {"config.yaml", "history.csv", "evaluation-test.json", "runs.json"} <= {
        p.name for p in folder.iterdir()
    }
    rows = json.loads((folder / "runs.json").read_text())
    report = json.loads((folder / "evaluation-test.json").read_text())
    assert len(rows) == 1 and rows[0]["test_acc"]["2"] == report["tta"][-1]["acc"]
    assert len(rows[0]["corruptions"]) == len(CORRUPTIONS) and rows[0]["corruption_images"] == 20
    text = results.read_text()
    assert "The release in `trained_model/` is **fast-tiny**" in text and "| fast-tiny" in text

    # Publishing again replaces the release and keeps one row per run; --row-only adds a row.
    assert publish_main([str(run), *common, "--corruption-images", "20"]) == 0
    other = tmp_path / "copy"
    shutil.copytree(run, other)
    assert publish_main([str(other), *common, "--corruption-images", "20", "--row-only"]) == 0
    assert [r["run"] for r in json.loads((folder / "runs.json").read_text())] == [
        "fast-tiny",
        "copy",
    ]
    assert load_release(out).meta["provenance"]["published"]["from_run"] == "fast-tiny"
    assert not list(tmp_path.glob(".trained_model*"))  # no staged folder left behind


def test_a_run_that_records_its_settings_under_config_still_publishes(fast_run, tmp_path):
    from budgetnet.submission.results_page import check_run

    run = tmp_path / "old"
    shutil.copytree(fast_run[0], run)
    record = yaml.safe_load((run / "config.yaml").read_text())
    old = {"config" if key == "settings" else key: value for key, value in record.items()}
    (run / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    finished = check_run(run)
    assert finished.record == record and finished.record["settings"]["lookahead"] == 5


def test_publish_refuses_an_unfinished_run(tmp_path, run_main):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("config: {}\n")
    result = run_main("code/publish.py", str(tmp_path / "run"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "not a finished run" in result.stderr and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "results, message",
    [
        ('{"epochs_run": 2, "train_sec', "results.json: not valid JSON"),
        ("[1, 2]", "results.json: holds list [1, 2], expected an object"),
        ('{"epochs_run": 2}', "results.json has no number for train_seconds"),
    ],
)
def test_publish_refuses_bad_run_files_before_evaluating(
    tmp_path, run_main, monkeypatch, results, message
):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "config.yaml").write_text("settings: {val_size: 0, seed: 0}\nmodel: {}\n")
    (run / "history.csv").write_text("epoch\n")
    (run / "best" / "model.json").write_text("{}")
    (run / "results.json").write_text(results)

    def never(*args, **kwargs):
        raise AssertionError("a bad run reached the evaluation")

    monkeypatch.setattr("budgetnet.submission.release.evaluate_release", never)
    monkeypatch.setattr("budgetnet.models.checkpoint.load_release", never)
    result = run_main("code/publish.py", str(run), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr and not (tmp_path / "o").exists()


def test_shipped_release_is_fp16_within_budget_and_used_by_default(tmp_path, run_main):
    release = load_release(SHIPPED)
    assert release.meta["weights_dtype"] == "float16"
    assert count_params(release.model.spec) <= 5_000_000
    provenance = release.meta["provenance"]
    assert provenance["git_revision"] and provenance["command"] and provenance["published"]["cpu"]
    ids = np.array([7, 3, 11, 5])
    pkl = tmp_path / "test.pkl"
    images = np.broadcast_to(np.arange(4, dtype=np.uint8)[:, None, None, None] * 60, (4, 32, 32, 3))
    write_unlabeled_pickle(pkl, np.ascontiguousarray(images), ids)
    out = tmp_path / "submission.csv"
    result = run_main("inference.py", "--pkl", str(pkl), "--out", str(out))  # no --checkpoint
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained_model" in result.stdout
    assert list(read_submission(out)[0]) == list(ids)


@pytest.mark.data
def test_shipped_release_labels_real_test_images(shared_cifar10, tmp_path, run_main):
    test = load_split(shared_cifar10, "test")
    images, ids, labels = kaggle_style(test.subset(np.arange(0, len(test), 20)), seed=0)
    pkl, out = tmp_path / "test.pkl", tmp_path / "submission.csv"
    write_unlabeled_pickle(pkl, images, ids)
    result = run_main("inference.py", "--pkl", str(pkl), "--out", str(out), "--tta", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    written_ids, predicted = read_submission(out)
    assert list(written_ids) == list(ids)
    accuracy = float((np.asarray(predicted) == labels).mean())
    assert accuracy > 0.85, accuracy  # 500 test images; the release scores about 90% at TTA 0


def test_results_table_keeps_rows_measured_before_a_corruption_joined_the_sweep():
    from budgetnet.submission.results_page import results_markdown

    def row(name, corruptions):
        return {
            "run": name, "model": "m", "parameters": 1, "flops": 1, "epochs": 1,
            "train_seconds": 1.0, "device": "cpu", "val_size": 0, "test_acc": {"0": 0.5},
            "corruption_images": 10, "corruption_clean": 0.9, "corruptions": corruptions,
            "seed": 0, "git_revision": "abc", "command": "train.py",
        }  # fmt: skip

    old = row("old", {"fog": 0.5, "jpeg": 0.7})
    new = row("new", {"fog": 0.6, "shot_noise": 0.2, "jpeg": 0.8})
    text = results_markdown([old, new], "new", ["publish.py"])
    header = next(line for line in text.splitlines() if line.startswith("| run ") and "fog" in line)
    assert [c.strip() for c in header.strip("|").split("|")][3:] == [
        "fog", "jpeg", "shot_noise", "mean (of the 2 every row has)"
    ]  # fmt: skip
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")][3:]
        for line in text.splitlines()
        if line.startswith(("| old ", "| new ")) and "cpu" not in line
    }
    assert cells == {
        "old": ["50.00", "70.00", "n/a", "60.00"],
        "new": ["60.00", "80.00", "20.00", "70.00"],
    }
