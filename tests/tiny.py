"""Tiny settings, networks and releases that tests in several folders share (a test module
imports what it needs: `from tiny import ...`, as from `cifar_files`)."""

from __future__ import annotations

import json
import math

import torch

from budgetnet.data.normalization import Normalization, Preprocessing
from budgetnet.models.builder import build
from budgetnet.models.checkpoint import META_FILE, WEIGHTS_FILE, save_release
from budgetnet.models.spec import ResNetSpec
from budgetnet.training.config import TrainConfig

from cifar_files import CIFAR10_CLASSES

# Two stages of one residual unit: 8 channels at least, because oneDNN's AVX2 1x1 strided
# convolution backward crashes on fewer input channels.
TINY_SPEC = ResNetSpec((1, 1), (8, 16))
NORM = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "test")
# What a release of a 32 px network saves and inference feeds it: channels_last, NORM.
PREPROCESSING = Preprocessing(32, True, NORM)
# code/train.py flags for a run of seconds on the 200-image CIFAR fixture, on the CPU.
TRAIN_FLAGS = [
    "--blocks",
    "1",
    "1",
    "--channels",
    "8",
    "16",
    "--batch-size",
    "32",
    "--val-size",
    "40",
    "--aa",
    "",
    "--reprob",
    "0",
    "--warmup-epochs",
    "0.5",
    "--device",
    "cpu",
]


def tiny_config(cifar, tmp_path, **overrides) -> TrainConfig:
    """A TrainConfig for in-process runs on the tiny data set, on the CPU."""
    settings = dict(
        data=str(cifar),
        batch_size=32,
        val_size=40,
        aa=None,
        reprob=0,
        run_dir=str(tmp_path / "run"),
        device="cpu",
    )
    return TrainConfig().with_values(**{**settings, **overrides})


def tiny_release_run(cifar, tmp_path, **flags) -> dict:
    """Two epochs on the tiny data set with `flags` (no TTA), checked to test in [0, 1] and to
    record every flag in the release; the release's model.json."""
    from budgetnet.training import engine

    config = tiny_config(cifar, tmp_path, epochs=2, warmup_epochs=0.5, tta=0, **flags)
    results = engine.fit(config, TINY_SPEC, log=lambda line: None)
    assert 0 <= results["test_acc_tta0"] <= 1 and math.isfinite(results["val_acc"])
    meta = json.loads((tmp_path / "run" / "best" / "model.json").read_text())
    saved = meta["provenance"]["config"]
    assert all(saved[key] == value for key, value in flags.items())
    return meta


class Interrupted(Exception):
    """Raised by `interrupted_and_resumed` to stop a run after its first epoch."""


def interrupted_and_resumed(cifar, tmp_path, flags: dict, on_stop=None) -> tuple[dict, dict]:
    """Two tiny runs with `flags`: one straight through (tmp_path/a), one stopped after its
    first epoch (`on_stop(session)` called there) and resumed (tmp_path/b); their last.pt."""
    import pytest

    from budgetnet.training import engine

    engine.fit(tiny_config(cifar, tmp_path / "a", **flags), TINY_SPEC, log=lambda line: None)
    end_epoch = engine.end_epoch

    def end_then_stop(s, progress, row, *rest):
        stop = end_epoch(s, progress, row, *rest)
        if row["epoch"] == 0:
            if on_stop is not None:
                on_stop(s)
            raise Interrupted
        return stop

    config = tiny_config(cifar, tmp_path / "b", **flags)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "end_epoch", end_then_stop)
        with pytest.raises(Interrupted):
            engine.fit(config, TINY_SPEC, log=lambda line: None)
    engine.fit(config, TINY_SPEC, resume=tmp_path / "b" / "run", log=lambda line: None)
    a, b = (torch.load(tmp_path / x / "run" / "last.pt", weights_only=True) for x in "ab")
    return a, b


def save_random_release(folder, seed, classes=CIFAR10_CLASSES, spec=TINY_SPEC, provenance=None):
    """A release of a randomly initialised network, with BatchNorm statistics that differ from
    the identity's."""
    torch.manual_seed(seed)
    model = build(spec)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    preprocessing = Preprocessing(spec.input_size, True, NORM)
    return save_release(folder, model, classes, preprocessing, {}, provenance or {})


def edited_release(release, folder, edit):
    """A copy of `release` whose model.json went through `edit(meta)`."""
    folder.mkdir()
    (folder / WEIGHTS_FILE).write_bytes((release / WEIGHTS_FILE).read_bytes())
    meta = json.loads((release / META_FILE).read_text())
    edit(meta)
    (folder / META_FILE).write_text(json.dumps(meta))
    return folder
