"""The competition's rules at the edges of the pipeline: a model or ensemble over the parameter
budget never labels a submission, and a model trained on the test split never reports a test
accuracy."""

from __future__ import annotations

import json

import inference
import numpy as np
import pytest
import torch

from budgetnet.data.kaggle import write_unlabeled_pickle
from budgetnet.data.sources import load_splits, parse_train_splits
from budgetnet.errors import UserError
from budgetnet.evaluation.ensemble import labeled_split, load_ensemble
from budgetnet.models.complexity import PARAMETER_BUDGET, count_params
from budgetnet.models.zoo import model_spec
from budgetnet.training.engine import fit

from cifar_files import random_images
from tiny import TINY_SPEC, save_random_release, tiny_config


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return save_random_release(tmp_path_factory.mktemp("release") / "m", seed=1)


def test_the_default_budget_is_the_competitions_and_our_default_model_fits_it():
    assert PARAMETER_BUDGET == 5_000_000
    assert count_params(model_spec("resnet24_b343")) <= PARAMETER_BUDGET


def test_an_ensemble_counts_every_member_against_the_budget(release):
    cpu = torch.device("cpu")
    one = load_ensemble([release], cpu)
    size = one.parameters
    assert size == count_params(TINY_SPEC)
    assert load_ensemble([release, release], cpu, max_params=2 * size).parameters == 2 * size
    with pytest.raises(UserError, match=rf"2 models hold {2 * size:,} parameters, over the budget"):
        load_ensemble([release, release], cpu, max_params=2 * size - 1)
    with pytest.raises(UserError, match=rf"the model holds {size:,} parameters"):
        load_ensemble([release], cpu, max_params=size - 1)
    assert load_ensemble([release, release], cpu, max_params=0).parameters == 2 * size


def test_inference_refuses_an_ensemble_over_max_params_before_writing(release, tmp_path, capsys):
    pkl, out = tmp_path / "test.pkl", tmp_path / "submission.csv"
    write_unlabeled_pickle(pkl, random_images(8, seed=2), np.arange(8))
    base = ["--pkl", str(pkl), "--out", str(out), "--checkpoint", str(release), str(release)]
    size = count_params(TINY_SPEC)
    with pytest.raises(SystemExit) as exit_info:
        inference.run_cli(inference.main, [*base, "--max-params", str(2 * size - 1)])
    assert exit_info.value.code == 2 and not out.exists()
    assert f"hold {2 * size:,} parameters" in capsys.readouterr().err
    assert inference.main([*base, "--max-params", "0", "--tta", "0"]) == 0 and out.exists()
    with pytest.raises(SystemExit) as exit_info:
        inference.run_cli(inference.main, [*base, "--max-params", "-1"])
    assert exit_info.value.code == 2


def test_train_splits_are_train_first_then_other_splits_once():
    assert parse_train_splits("train") == ("train",)
    assert parse_train_splits("train+test") == ("train", "test")
    for bad in ("test", "train+train", "train+val", "train+test+test", ""):
        with pytest.raises(UserError, match="train_splits"):
            parse_train_splits(bad)


def test_training_on_train_plus_test_joins_the_test_split_and_keeps_validation(cifar):
    plain = load_splits(cifar, val_size=40, seed=0)
    joined = load_splits(cifar, val_size=40, seed=0, train_splits="train+test")
    assert joined.test is None and joined.provenance.train_splits == "train+test"
    assert len(joined.train) == len(plain.train) + len(plain.test)
    assert np.array_equal(joined.train.images[: len(plain.train)], plain.train.images)
    assert np.array_equal(joined.train.labels[len(plain.train) :], plain.test.labels)
    assert np.array_equal(joined.val.images, plain.val.images)  # the same held-out draw


@pytest.mark.slow
def test_a_run_on_train_plus_test_reports_no_test_accuracy(cifar, tmp_path):
    config = tiny_config(cifar, tmp_path, epochs=1, train_splits="train+test", tta=0)
    results = fit(config, TINY_SPEC, log=lambda line: None)
    assert results["train_splits"] == "train+test"
    assert not any(key.startswith("test_") for key in results)
    meta = json.loads((tmp_path / "run" / "best" / "model.json").read_text())
    assert meta["provenance"]["data"]["train_splits"] == "train+test"
    ensemble = load_ensemble([tmp_path / "run"], torch.device("cpu"))
    with pytest.raises(UserError, match="trained on the test split"):
        labeled_split(ensemble, "test")
    assert len(labeled_split(ensemble, "val")) == 40  # choosing checkpoints still works
