"""Weight averaging: Lookahead (budgetnet.training.lookahead) and stochastic weight averaging
(budgetnet.training.swa): the averages, BatchNorm recomputed, the SWA learning rate, the best
epoch's release where the average never started, and a resumed average."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from budgetnet.errors import UserError
from budgetnet.models import checkpoint
from budgetnet.models.spec import ResNetSpec
from budgetnet.training import engine, lookahead
from budgetnet.training.config import TrainConfig, merge
from budgetnet.training.schedule import make_schedule, swa_start_epoch
from budgetnet.training.swa import WeightAverage

from tiny import interrupted_and_resumed, tiny_config, tiny_release_run

CPU = torch.device("cpu")


def test_lookahead_pulls_every_k_steps_with_a_ramped_decay():
    model = torch.nn.Linear(1, 1, bias=False)
    model.weight.data.fill_(0.0)
    averaging = lookahead.Lookahead(model, every=5, final_decay=0.5, total_steps=10)
    for step in range(1, 11):
        model.weight.data += 1.0  # one "optimizer step"
        before = model.weight.item()
        averaging.after_step(model, step)
        if step == 5:
            decay = 0.5 * (5 / 10) ** 3
            assert lookahead.decay_at(5, 10, 0.5) == pytest.approx(decay)
            assert model.weight.item() == pytest.approx((1 - decay) * 5.0)  # slow was 0
        elif step != 10:
            assert model.weight.item() == before  # untouched between pulls
    slow_at_5 = (1 - 0.5 / 8) * 5.0
    fast_at_10 = slow_at_5 + 5.0
    expected = 0.5 * slow_at_5 + 0.5 * fast_at_10  # decay 0.5 at the last step, then kept
    assert model.weight.item() == pytest.approx(expected)
    assert averaging.state_dict()["weight"].item() == pytest.approx(expected)


def test_weight_average_is_the_mean_of_epoch_weights_and_bn_is_recomputed():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    config = TrainConfig().with_values(epochs=4, swa=True, swa_start=0.5)
    assert swa_start_epoch(config) == 2
    average = WeightAverage(model, config)
    snapshots = []
    for epoch in range(4):
        with torch.no_grad():
            model[0].weight.fill_(float(epoch))
        average.after_epoch(model, epoch)
        snapshots.append(float(epoch))
    assert average.count == 2
    inputs = [torch.randn(8, 3, 5, 5) + 3 for _ in range(3)]
    averaged = average.finish(iter(inputs), CPU)
    assert torch.allclose(averaged[0].weight, torch.full_like(averaged[0].weight, 2.5))
    features = torch.cat([averaged[0](x) for x in inputs]).detach()
    expected_mean = features.mean(dim=(0, 2, 3))
    torch.testing.assert_close(averaged[1].running_mean, expected_mean, rtol=1e-4, atol=1e-4)
    assert not averaged.training


def test_swa_lr_holds_from_the_start_epoch_with_each_group_ratio():
    config = TrainConfig().with_values(
        epochs=4, sched="cosine", warmup_epochs=0, swa=True, swa_lr=0.05
    )
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(
        [{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.4}], lr=0.1
    )
    set_lr = make_schedule(config, optimizer, steps_per_epoch=10)
    assert set_lr(29) < 0.1 and set_lr(29) != pytest.approx(0.05)  # still cosine before epoch 3
    assert set_lr(30) == pytest.approx(0.05) and set_lr(39) == pytest.approx(0.05)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.2)


def test_an_swa_start_at_the_end_is_refused():
    with pytest.raises(UserError):
        merge(TrainConfig(), {"swa_start": 1.0}, "test")


@pytest.mark.slow
def test_a_tiny_swa_run_releases_the_average(cifar, tmp_path):
    meta = tiny_release_run(cifar, tmp_path, swa=True, swa_start=0.5, swa_lr=0.05)
    assert meta["metrics"]["swa_epochs"] == 1  # epoch 2 of 2


def _released_weights_equal(run, state: dict) -> bool:
    """Whether the release in `run` holds `state` (as the float16 release stores it)."""
    released = checkpoint.load_release(run).model.state_dict()
    return all(
        torch.equal(released[k], v.half().float() if v.is_floating_point() else v)
        for k, v in state.items()
    )


def test_swa_that_never_started_leaves_the_best_epochs_release(cifar, tmp_path, monkeypatch):
    saved, save_release = [], engine._save_release

    def recording(s, model, scores, run_dir, record):
        saved.append((scores, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        save_release(s, model, scores, run_dir, record)

    monkeypatch.setattr(engine, "_save_release", recording)
    # No epoch can gain a whole 100%: patience ends the run after 2 of 20 epochs, long before
    # the average would start (epoch 10).
    config = tiny_config(
        cifar, tmp_path, epochs=20, warmup_epochs=0, patience=1, min_delta=1.0, swa=True,
        swa_start=0.5, tta=0,
    )  # fmt: skip
    lines = []
    results = engine.fit(config, ResNetSpec((1,), (8,)), log=lines.append)
    assert results["epochs_run"] == 2
    assert "SWA: no epoch reached --swa-start; the best epoch's release stays" in lines
    meta = json.loads((tmp_path / "run" / "best" / "model.json").read_text())
    assert "swa_epochs" not in meta["metrics"] and meta["metrics"]["epoch"] == 1
    assert [scores["epoch"] for scores, _ in saved] == [1]
    assert _released_weights_equal(tmp_path / "run", saved[0][1])


@pytest.mark.slow
def test_a_resumed_swa_run_carries_on_the_saved_average(cifar, tmp_path):
    # The average takes both epochs; the interrupted run stops after the first with one epoch
    # averaged, which the resumed run must carry on from its last.pt.
    flags = dict(epochs=2, warmup_epochs=0.5, swa=True, swa_start=0.0, tta=0)

    def one_epoch_averaged(s):
        assert s.optimization.average.count == 1

    a, b = interrupted_and_resumed(cifar, tmp_path, flags, on_stop=one_epoch_averaged)
    assert int(a["swa"]["n_averaged"]) == int(b["swa"]["n_averaged"]) == 2
    for key, value in a["swa"].items():
        assert torch.equal(value, b["swa"][key]), key
    for run in (tmp_path / "a" / "run", tmp_path / "b" / "run"):
        meta = json.loads((run / "best" / "model.json").read_text())
        assert meta["metrics"]["swa_epochs"] == 2
    straight = checkpoint.load_release(tmp_path / "a" / "run").model.state_dict()
    assert _released_weights_equal(tmp_path / "b" / "run", straight)
