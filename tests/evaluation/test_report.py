"""Metrics, the evaluation report and its plots, checked against models whose predictions are
known and against scikit-learn computed independently."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, log_loss

from budgetnet import runs
from budgetnet.data.sources import load_splits
from budgetnet.errors import UserError
from budgetnet.evaluation import ensemble as ensemble_module
from budgetnet.evaluation.ensemble import labeled_split, load_ensemble
from budgetnet.evaluation.infer import infer
from budgetnet.evaluation.metrics import ECE_BINS, metrics, per_class_metrics, reliability
from budgetnet.evaluation.report import (
    EvaluationReport,
    corruption_report,
    evaluate_ensemble,
    markdown_report,
)
from budgetnet.models.builder import build
from budgetnet.models.checkpoint import save_release
from budgetnet.models.complexity import count_params
from budgetnet.models.spec import ResNetSpec

from cifar_files import CIFAR10_CLASSES, write_cifar10
from conftest import REPO
from tiny import PREPROCESSING, TINY_SPEC, save_random_release

COMMITTED_REPORTS = sorted((REPO / "docs" / "results").rglob("evaluation-*.json"))
FAVOURITE = 3  # the class the constant model always predicts
# Its logits: 2 for the favourite, 0 elsewhere (exact in bf16), so every image gets this top
# probability whatever the precision.
CONFIDENCE = math.exp(2) / (math.exp(2) + len(CIFAR10_CLASSES) - 1)


def save_constant_release(folder, provenance=None, classes=CIFAR10_CLASSES):
    """A network that ignores its input: zero convolutions make every feature 0, so the
    logits are the classifier's bias and it predicts FAVOURITE with CONFIDENCE."""
    model = build(TINY_SPEC)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.zero_()
        model.head.fc.bias.zero_()
        model.head.fc.bias[FAVOURITE] = 2.0
    return save_release(folder, model, classes, PREPROCESSING, {}, provenance or {})


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar")
    write_cifar10(folder, per_batch=20, test_count=30)  # 100 train, 30 test (3 per class)
    return folder


def test_ece_and_reliability_bins_match_a_hand_computation():
    probs = np.array(
        [
            [0.9, 0.05, 0.03, 0.02],  # right, confidence 0.9
            [0.9, 0.05, 0.03, 0.02],  # wrong, 0.9
            [0.2, 0.65, 0.1, 0.05],  # right, 0.65
            [0.35, 0.25, 0.2, 0.2],
        ],
        np.float32,
    )  # right, 0.35
    labels = np.array([0, 1, 1, 0])
    curve = reliability(probs, labels)
    assert len(curve.count) == ECE_BINS and curve.count.sum() == 4
    # (lo, hi] bins of width 1/15: 0.9 in bin 13, 0.65 in bin 9, 0.35 in bin 5
    assert curve.count[13] == 2 and curve.count[9] == 1 and curve.count[5] == 1
    assert curve.acc[13] == 0.5 and curve.confidence[13] == pytest.approx(0.9)
    expected = 2 / 4 * abs(0.5 - 0.9) + 1 / 4 * abs(1 - 0.65) + 1 / 4 * abs(1 - 0.35)
    assert curve.ece == pytest.approx(expected)


def test_metrics_and_per_class_metrics_agree_with_sklearn():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=200).astype(np.float32)
    labels = rng.integers(0, 4, 200)  # class 4 never occurs
    scored = metrics(probs, labels)
    assert scored["acc"] == pytest.approx((probs.argmax(1) == labels).mean())
    assert scored["loss"] == pytest.approx(log_loss(labels, probs, labels=range(5)), rel=1e-5)
    present = [average_precision_score(labels == c, probs[:, c]) for c in range(4)]
    assert scored["macro_map"] == pytest.approx(np.mean(present))
    assert scored["ece"] == pytest.approx(reliability(probs, labels).ece)
    assert "top5" not in scored  # five classes: five guesses are always right
    rows = per_class_metrics(probs, labels, list("abcde"))
    assert [r.name for r in rows] == list("abcde")
    assert [r.support for r in rows] == np.bincount(labels, minlength=5).tolist()
    assert rows[4].average_precision is None and rows[4].recall == 0
    predicted = probs.argmax(1)
    for c, row in enumerate(rows[:4]):
        assert row.recall == pytest.approx((predicted[labels == c] == c).mean())
        assert row.precision == pytest.approx((labels[predicted == c] == c).mean())
        assert row.average_precision == pytest.approx(present[c])


def test_evaluate_reports_the_metrics_of_infer(cifar, tmp_path):
    """A model with arbitrary predictions: the report holds what infer() and scikit-learn give."""
    ensemble = load_ensemble([save_random_release(tmp_path / "r", seed=1)], torch.device("cpu"))
    images = labeled_split(ensemble, "test", str(cifar))
    result = evaluate_ensemble(
        ensemble, images, split="test", tta_levels=[0, 2], batch_size=7, device=torch.device("cpu")
    )
    report, release = result.report, ensemble.releases[0]
    for row in report.tta:
        probs = infer(release.model, images.images, release.preprocessing, tta=row.level).numpy()
        assert row.acc == pytest.approx((probs.argmax(1) == images.labels).mean())
        assert row.ece == pytest.approx(reliability(probs, images.labels).ece)
    assert report.main_tta == 2 and report.main is report.tta[-1] and report.tta[1].views == 6
    np.testing.assert_allclose(result.probs, probs)
    matrix = report.confusion_matrix
    assert matrix.sum() == 30 and np.trace(matrix) == (probs.argmax(1) == images.labels).sum()
    assert report.reliability.ece == pytest.approx(report.main.ece)


def test_a_report_reads_back_from_its_json_as_it_was(cifar, tmp_path):
    ensemble = load_ensemble([save_random_release(tmp_path / "r", seed=1)], torch.device("cpu"))
    images = labeled_split(ensemble, "test", str(cifar))
    report = evaluate_ensemble(
        ensemble, images, split="test", tta_levels=[1, 0], batch_size=16,
        device=torch.device("cpu"), corruptions=["fog"], severities=[3, 1],
    ).report  # fmt: skip
    # and the parts only some reports have: top-5 accuracy (above ten classes), no sweep
    top5 = replace(report, tta=tuple(replace(r, top5=0.5) for r in report.tta), corruptions=None)
    for original in (report, top5):
        loaded = EvaluationReport.from_json(json.loads(json.dumps(original.to_json())))
        assert loaded.to_json() == original.to_json()
        assert loaded.tta == original.tta and loaded.main == original.main
        assert loaded.per_class == original.per_class
        assert loaded.corruptions == original.corruptions
        np.testing.assert_array_equal(loaded.confusion_matrix, original.confusion_matrix)
        np.testing.assert_array_equal(loaded.reliability.count, original.reliability.count)
        assert loaded.reliability.ece == original.reliability.ece
    assert list(report.corruptions.acc["fog"]) == [3, 1]  # severities as asked, as numbers
    assert "corruptions" not in top5.to_json()
    assert list(top5.to_json()["tta"][0])[3:5] == ["acc", "top5"]
    assert "| top-5 % |" in markdown_report(top5, {}, tmp_path)
    with pytest.raises(ValueError, match="no TTA level 5"):
        replace(report, main_tta=5)


@pytest.mark.parametrize("path", COMMITTED_REPORTS, ids=lambda p: str(p.relative_to(REPO)))
def test_committed_reports_read_back_and_are_written_as_they_were(path, tmp_path):
    """The typed report keeps the files' format: JSON and Markdown come out byte for byte."""
    report = EvaluationReport.from_json(runs.read_json(path))
    runs.write_json(tmp_path / path.name, report.to_json())
    assert (tmp_path / path.name).read_text() == path.read_text()
    markdown = path.with_suffix(".md").read_text()
    links = re.findall(r"!\[(.+?)\]\((.+?)\)", markdown)
    plots = {name: path.parent / link for name, link in links}
    assert len(plots) == 4 and markdown_report(report, plots, path.parent) == markdown


@pytest.mark.slow
def test_evaluate_command_reports_and_plots_the_known_scores_of_a_constant_model(
    cifar, tmp_path, run_script
):
    release = save_constant_release(tmp_path / "constant")
    outputs = ["--report-dir", tmp_path / "reports", "--plots-dir", tmp_path / "plots"]
    sweep = ["--corruptions", "gaussian_noise", "fog", "--severities", 1, 5]
    args = ["--checkpoint", release, "--data", cifar, "--tta-levels", 0, 1, *outputs, *sweep]
    result = run_script("code/evaluate.py", *map(str, args))  # the real command line, end to end
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "reports" / "evaluation-test.json").read_text())
    share = 3 / 30  # the test split holds 3 images of the favourite class
    for row in report["tta"]:
        assert row["acc"] == pytest.approx(share)
        assert row["ece"] == pytest.approx(CONFIDENCE - share, abs=1e-5)
        # Constant scores tie every image: each class's AP is its share of the images.
        assert row["macro_map"] == pytest.approx(share)
    recall = [c["recall"] for c in report["per_class"]]
    assert recall == [float(c == FAVOURITE) for c in range(10)]
    assert report["per_class"][FAVOURITE]["precision"] == pytest.approx(share)
    assert all(c["support"] == 3 for c in report["per_class"])
    matrix = np.array(report["confusion_matrix"])
    assert (matrix[:, FAVOURITE] == 3).all() and matrix.sum() == 30
    sweep = report["corruptions"]
    assert sweep["acc"] == {name: {"1": share, "5": share} for name in ("gaussian_noise", "fog")}
    assert sweep["clean_acc"] == pytest.approx(share) and sweep["images"] == 30

    markdown = (tmp_path / "reports" / "evaluation-test.md").read_text()
    rows = " ".join(markdown.split())  # the tables' cells, without their padding
    assert "| 0 | 1 | 10.00 | 10.00 |" in rows and "| fog | 10.00 | 10.00 | 10.00 |" in rows
    for name in ("confusion", "misclassified", "per-class-accuracy", "reliability"):
        png = tmp_path / "plots" / f"test-{name}.png"
        assert png.read_bytes().startswith(b"\x89PNG")
        assert f"](../plots/test-{name}.png)" in markdown
    assert "TTA 1: accuracy 10.00%" in result.stdout


def test_val_split_is_the_one_training_held_out(cifar, tmp_path):
    notes = load_splits(cifar, val_size=20, seed=4, cache_dir=False).provenance.to_dict()
    release = save_constant_release(tmp_path / "r", provenance={"data": notes})
    ensemble = load_ensemble([release], torch.device("cpu"))
    images = labeled_split(ensemble, "val")
    expected = load_splits(cifar, val_size=20, seed=4, cache_dir=False).val
    np.testing.assert_array_equal(images.images, expected.images)
    assert "validation split of 20 (seed 4)" in images.source


def test_mismatched_classes_and_validation_splits_are_refused(cifar, tmp_path):
    bare = load_ensemble([save_constant_release(tmp_path / "bare")], torch.device("cpu"))
    with pytest.raises(UserError, match="does not record how its validation split"):
        labeled_split(bare, "val", str(cifar))
    other = save_constant_release(tmp_path / "other", classes=[f"c{i}" for i in range(10)])
    with pytest.raises(UserError, match="differ from the model's"):
        labeled_split(load_ensemble([other], torch.device("cpu")), "test", str(cifar))
    with pytest.raises(UserError, match="models averaged together must label the same classes"):
        load_ensemble([tmp_path / "bare", other], torch.device("cpu"))
    seeds = [
        {"data": {"source": str(cifar), "val_size": 20, "seed": s, "max_per_class": None}}
        for s in (1, 2)
    ]
    pair = [save_constant_release(tmp_path / f"s{i}", provenance=p) for i, p in enumerate(seeds)]
    with pytest.raises(UserError, match="held out different validation splits"):
        labeled_split(load_ensemble(pair, torch.device("cpu")), "val")


def test_val_split_is_rebuilt_identically_without_loading_the_rest(cifar, tmp_path, monkeypatch):
    splits = load_splits(cifar, val_size=30, max_per_class=8, seed=7, cache_dir=False)
    release = save_constant_release(
        tmp_path / "r", provenance={"data": splits.provenance.to_dict()}
    )
    read, original = [], ensemble_module.load_split

    def load_split(source, split, **options):
        read.append(split)
        return original(source, split, **options)

    monkeypatch.setattr(ensemble_module, "load_split", load_split)
    images = labeled_split(load_ensemble([release], torch.device("cpu")), "val")
    assert read == ["train"]  # neither the test split nor normalisation statistics
    expected = splits.val
    np.testing.assert_array_equal(images.images, expected.images)
    np.testing.assert_array_equal(images.labels, expected.labels)
    assert images.source == expected.source and images.classes == expected.classes
    assert images.coarse_labels is None and expected.coarse_labels is None


DATA_NOTES = {"val_size": 20, "seed": 4, "max_per_class": None}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("source", [1, 2], r"invalid source \(list \[1, 2\]\); name the data with --data"),
        ("val_size", "abc", r"invalid val_size \(str 'abc'\); evaluate with --split test"),
        ("val_size", -1, "invalid val_size"),
        ("val_size", 2.5, "invalid val_size"),
        ("seed", "x", r"invalid seed \(str 'x'\)"),
        ("seed", True, r"invalid seed \(bool True\)"),
        ("seed", -3, "invalid seed"),
        ("max_per_class", "x", r"invalid max_per_class \(str 'x'\)"),
        ("max_per_class", 0, "invalid max_per_class"),
        ("max_per_class", False, "invalid max_per_class"),
    ],
)
def test_damaged_validation_notes_are_refused_in_one_line(cifar, tmp_path, key, value, message):
    notes = {"source": str(cifar), **DATA_NOTES, key: value}
    release = save_constant_release(tmp_path / "r", provenance={"data": notes})
    with pytest.raises(UserError, match=message) as caught:
        labeled_split(load_ensemble([release], torch.device("cpu")), "val")
    assert str(caught.value).startswith(f"{release}: model.json records an invalid {key} (")
    assert "\n" not in str(caught.value)


def test_ensemble_parameters_are_those_of_its_built_networks(tmp_path):
    wide = ResNetSpec((1, 2), (8, 24), block="bottleneck")
    paths = [save_random_release(tmp_path / "a", seed=0),
             save_random_release(tmp_path / "b", seed=1, spec=wide)]  # fmt: skip
    ensemble = load_ensemble(paths, torch.device("cpu"))
    built = sum(p.numel() for r in ensemble.releases for p in r.model.parameters())
    assert ensemble.parameters == built == count_params(TINY_SPEC) + count_params(wide)


@pytest.mark.parametrize("sample", [None, 10])
def test_the_sweeps_clean_accuracy_is_the_one_an_own_pass_gives(cifar, tmp_path, sample):
    ensemble = load_ensemble([save_random_release(tmp_path / "r", seed=2)], torch.device("cpu"))
    images = labeled_split(ensemble, "test", str(cifar))
    run = {"batch_size": 7, "device": torch.device("cpu"), "amp": True}
    result = evaluate_ensemble(
        ensemble, images, split="test", tta_levels=[0, 1], corruptions=["fog"], severities=[1],
        corruption_images=sample, seed=3, **run,
    )  # fmt: skip
    own = corruption_report(
        ensemble, images, ["fog"], [1], sample_size=sample, seed=3, tta=1, **run
    )
    assert result.report.corruptions == own  # the reused accuracy is the recomputed one
    if sample is None:
        assert own.clean_acc == result.report.main.acc
    # a sample drawn inside ignores the caller's accuracy of all the images
    given = corruption_report(
        ensemble, images, ["fog"], [1], sample_size=sample, seed=3, tta=1, clean_acc=-1.0, **run
    )
    assert (given.clean_acc == -1.0) == (sample is None)


def test_evaluate_refuses_an_unknown_corruption_in_one_line(tmp_path, run_main):
    result = run_main("code/evaluate.py", "--checkpoint", str(tmp_path), "--corruptions", "snow")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown corruption 'snow'; known: gaussian_noise, shot_noise, impulse_noise, "
        "gaussian_blur, contrast, brightness, pixelate, jpeg, fog, saturate"
    ]
