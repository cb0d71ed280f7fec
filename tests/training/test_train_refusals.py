"""code/train.py and the training engine on clumsy input: a broken resume state or
config.yaml, a fractional epoch count, a warmup longer than the run, an LR range test that
would make no full batch."""

from __future__ import annotations

import pytest
import torch

from budgetnet.data.sources import load_splits
from budgetnet.training import engine
from budgetnet.training.config import TrainConfig, short_run_warmup
from budgetnet.training.lr_range import lr_range_test

from refusals import refused
from tiny import TINY_SPEC, TRAIN_FLAGS, tiny_config


def test_broken_resume_state_and_config_are_one_line(cifar, tmp_path):
    from train import main as train_main

    config = tiny_config(cifar, tmp_path, epochs=1, warmup_epochs=0.5, patience=3)
    engine.fit(config, TINY_SPEC, log=lambda line: None)
    run = tmp_path / "run"
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["patience_left"] == 3  # saved, so a resumed run stops where it would have
    torch.save({"model": state["model"]}, run / "last.pt")
    refused(lambda: train_main(["--resume", str(run)]), "not a resume state of this run")
    (run / "config.yaml").write_text("config: {}\n")
    refused(lambda: train_main(["--resume", str(run)]), "has no model settings")


def test_train_refuses_a_fractional_epoch_count_in_one_line(cifar, tmp_path, run_main):
    result = run_main("code/train.py", "--data", str(cifar), *TRAIN_FLAGS, "--epochs", "1.5")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_a_short_run_shortens_its_warmup_and_says_so(cifar, tmp_path):
    config, note = short_run_warmup(TrainConfig().with_values(epochs=1))
    assert (
        config.schedule.warmup_epochs == pytest.approx(0.2) and "warming up for 0.2 epochs" in note
    )
    assert short_run_warmup(TrainConfig().with_values(epochs=10, warmup_epochs=2)) == (
        TrainConfig().with_values(epochs=10, warmup_epochs=2),
        None,
    )
    lines = []
    engine.fit(
        tiny_config(cifar, tmp_path, epochs=1, warmup_epochs=5.0), TINY_SPEC, log=lines.append
    )
    assert any(line.startswith("note: warmup_epochs 5") for line in lines)


def test_lr_range_test_without_a_full_batch_is_refused(cifar):
    splits = load_splits(cifar, val_size=0)
    config = TrainConfig().with_values(batch_size=4096, aa=None, reprob=0.0, device="cpu")
    refused(lambda: lr_range_test(config, TINY_SPEC, splits, steps=5), "make no batch")
