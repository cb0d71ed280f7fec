"""Every command that scores a model refuses non-finite probabilities
(budgetnet.evaluation.infer.check_finite_probs, through Ensemble.probs): evaluate.py,
inference.py, an ensemble and the corruption sweep, with nothing written."""

from __future__ import annotations

import inference
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from budgetnet.data.sources import ImageSet
from budgetnet.evaluation.ensemble import Ensemble, load_ensemble
from budgetnet.evaluation.report import corruption_report
from budgetnet.models.builder import build
from budgetnet.models.checkpoint import WEIGHTS_FILE, save_release

from cifar_files import CIFAR10_CLASSES, random_images
from refusals import assert_one_line_refusal, refused
from tiny import PREPROCESSING, TINY_SPEC

CPU = torch.device("cpu")


def test_non_finite_probabilities_write_no_csv(tmp_path, release, pkl, monkeypatch):
    monkeypatch.setattr(
        Ensemble, "probs", lambda self, images, **kw: np.full((len(images), 10), np.nan)
    )
    out = tmp_path / "s.csv"
    args = ["--pkl", str(pkl), "--out", str(out), "--checkpoint", str(release)]
    refused(lambda: inference.main(args), "non-finite probabilities")
    assert not out.exists()


def _overflowing_release(folder):
    """Finite fp16 weights (60,000 each, under fp16's 65,504) whose activations overflow to
    inf within a few layers, then to NaN."""
    model = build(TINY_SPEC)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(60_000.0)
    return save_release(folder, model, CIFAR10_CLASSES, PREPROCESSING, {}, {}, half=True)


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory):
    folder = _overflowing_release(tmp_path_factory.mktemp("overflow") / "m")
    state = load_file(str(folder / WEIGHTS_FILE))
    assert all(v.isfinite().all() for v in state.values() if v.is_floating_point())
    return folder


def test_evaluate_refuses_nan_probabilities_and_writes_nothing(
    overflowing, cifar, tmp_path, run_main
):
    out = tmp_path / "out"
    result = run_main(
        "code/evaluate.py", "--checkpoint", str(overflowing), "--data", str(cifar),
        "--tta-levels", "0",
        "--report-dir", str(out / "reports"), "--plots-dir", str(out / "plots"),
    )  # fmt: skip
    assert_one_line_refusal(result, "non-finite probabilities for 50 of 50 images")
    assert str(overflowing) in result.stderr
    assert not out.exists()


def test_inference_refuses_the_same_release(overflowing, pkl, tmp_path, run_main):
    out = tmp_path / "s.csv"
    result = run_main("inference.py", "--pkl", str(pkl), "--out", str(out), "--checkpoint",
                      str(overflowing), "--save-probs")  # fmt: skip
    assert_one_line_refusal(result, "non-finite probabilities for 6 of 6 images")
    assert not out.exists() and not out.with_suffix(".probs.npz").exists()


def test_an_ensemble_names_the_member_that_overflows(overflowing, release):
    ensemble = load_ensemble([release, overflowing], CPU)
    images = random_images(4, seed=3)
    message = refused(lambda: ensemble.probs(images, tta=1, batch_size=2, device=CPU), "non-finite")
    assert message.startswith(str(overflowing))
    # the corruption sweep (and the web demo) score through the same call
    labeled = ImageSet(images, np.zeros(len(images), dtype=np.int64), CIFAR10_CLASSES, "test")
    refused(
        lambda: corruption_report(
            ensemble, labeled, ["gaussian_noise"], [1], sample_size=None, seed=0, tta=0,
            batch_size=4, device=CPU,
        ),
        "non-finite",
    )  # fmt: skip
