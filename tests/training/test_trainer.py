"""The training engine and code/train.py on small synthetic data, on the CPU."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from budgetnet import runs
from budgetnet.data.normalization import Preprocessing
from budgetnet.data.sources import load_splits
from budgetnet.errors import ArgumentParser, UserError
from budgetnet.evaluation.infer import infer
from budgetnet.evaluation.metrics import metrics
from budgetnet.models import checkpoint
from budgetnet.models.spec import ResNetSpec
from budgetnet.models.zoo import model_spec
from budgetnet.training import engine, optim, schedule
from budgetnet.training.augment import BatchAugment, DeviceBatches, WorkerBatches, epoch_order
from budgetnet.training.config import TrainConfig
from budgetnet.training.objective import Objective

from cifar_files import write_cifar10
from conftest import REPO
from tiny import PREPROCESSING, TRAIN_FLAGS, tiny_config


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar")
    write_cifar10(folder, per_batch=40, test_count=50)  # 200 train, 50 test images
    return folder


def epoch_flags(cifar, run, epochs: int = 1) -> list[str]:
    """train.py flags for `epochs` epochs on the tiny data into `run`."""
    return ["--data", str(cifar), "--epochs", str(epochs), "--run-dir", str(run)]


def test_one_epoch_writes_every_artifact(cifar, tmp_path, run_main):
    run = tmp_path / "run"
    result = run_main(
        "code/train.py",
        *epoch_flags(cifar, run),
        "--seed",
        "3",
        *TRAIN_FLAGS,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["settings"]["seed"] == 3 and config["settings"]["epochs"] == 1
    assert config["model"]["channels"] == [8, 16]
    assert config["provenance"]["command"].startswith("train.py --data")
    assert "git_revision" in config["provenance"] and config["data"]["val_size"] == 40
    assert list(config["data"]) == [
        "source", "kind", "val_size", "max_per_class", "seed", "train_splits"
    ]  # fmt: skip
    header, row = (run / "history.csv").read_text().splitlines()
    assert header == "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds,images_per_s"
    assert row.startswith("0,") and len(row.split(",")) == 8
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and set(state) >= {"model", "optimizer", "ema", "rng"}
    meta = json.loads((run / "best" / "model.json").read_text())
    assert meta["classes"][0] == "airplane" and meta["spec"]["blocks"] == [1, 1]
    assert meta["normalization"]["source"].startswith("per-channel mean/std of 160 training")
    assert meta["preprocessing"] == {"size": 32, "channels_last": True}
    assert {"val_acc", "test_acc_tta0", "test_acc_tta1"} <= set(meta["metrics"])
    assert meta["provenance"]["seed"] == 3 and meta["weights_dtype"] == "float16"
    results = json.loads((run / "results.json").read_text())
    assert results["test_acc_tta0"] == meta["metrics"]["test_acc_tta0"]
    for png in ("loss_curve.png", "accuracy_curve.png", "lr_curve.png"):
        assert (run / png).read_bytes().startswith(b"\x89PNG")
    release = checkpoint.load_release(run)
    assert release.model.spec.channels == (8, 16)
    assert "epoch 1/1" in result.stdout and "results:" in result.stdout


def _train_until_killed(cifar, run, env):
    """Start a run and SIGKILL it as soon as its first epoch's resume state exists."""
    process = subprocess.Popen(
        [
            sys.executable,
            "code/train.py",
            *epoch_flags(cifar, run, epochs=4),
            "--ema",
            *TRAIN_FLAGS,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not (run / "last.pt").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return torch.load(run / "last.pt", weights_only=True)["epoch"]


@pytest.mark.slow
def test_killed_and_resumed_run_ends_with_identical_weights(cifar, tmp_path, run_script):
    env = {**os.environ, "BUDGETNET_CACHE": str(tmp_path / "cache")}
    straight = run_script(
        "code/train.py",
        *epoch_flags(cifar, tmp_path / "a", epochs=4),
        "--ema",
        *TRAIN_FLAGS,
    )
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed_after = _train_until_killed(cifar, tmp_path / "b", env)
    assert killed_after < 3, "the run finished before it could be killed"
    resumed = run_script("code/train.py", "--resume", str(tmp_path / "b"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {tmp_path / 'b'} after epoch {killed_after + 1}" in resumed.stdout
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for part in ("model", "ema"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), (part, key)
    history_a = (tmp_path / "a" / "history.csv").read_text().splitlines()
    history_b = (tmp_path / "b" / "history.csv").read_text().splitlines()
    assert len(history_b) == 5
    strip = [line.split(",")[:6] for line in history_a], [line.split(",")[:6] for line in history_b]
    assert strip[0] == strip[1]  # everything but the timings


def test_resume_refuses_other_settings(cifar, tmp_path, run_main):
    result = run_main("code/train.py", "--resume", str(tmp_path), "--lr", "0.5")
    assert result.returncode == 2 and "drop --lr" in result.stderr
    result = run_main("code/train.py", "--resume", str(tmp_path))
    assert result.returncode == 2 and "not a run directory" in result.stderr


def _optimizer(config):
    model = torch.nn.Linear(2, 2)
    return optim.make_optimizer(config, model)


def test_cosine_schedule_warms_up_peaks_and_decays_at_exact_steps():
    config = TrainConfig().with_values(
        epochs=10, warmup_epochs=2, lr=0.1, batch_size=256, lr_base_size=128, min_lr=0.001
    )
    optimizer = _optimizer(config)
    set_lr = schedule.make_schedule(config, optimizer, steps_per_epoch=100)
    peak = 0.2  # lr per 128 images, at 256 per batch
    assert set_lr(0) == pytest.approx(0.0)
    assert set_lr(100) == pytest.approx(peak / 2)  # halfway through the warmup
    assert set_lr(200) == pytest.approx(peak)  # end of warmup: the peak
    assert set_lr(600) == pytest.approx((peak + 0.001) / 2)  # cosine midpoint
    last = 0.001 + (peak - 0.001) * (1 + math.cos(math.pi * 799 / 800)) / 2
    assert set_lr(999) == pytest.approx(last) and last < 0.0011
    assert set_lr(200) == pytest.approx(peak)  # a pure function of the step
    assert optimizer.param_groups[1]["lr"] == pytest.approx(peak)


def test_onecycle_schedule_peaks_at_epoch_5_of_24():
    config = TrainConfig().with_values(
        epochs=24, sched="onecycle", opt="adam", lr=0.01, batch_size=128
    )
    optimizer = _optimizer(config)
    set_lr = schedule.make_schedule(config, optimizer, steps_per_epoch=10)
    lrs = [set_lr(step) for step in range(240)]
    assert int(np.argmax(lrs)) == 49  # 5/24 of 240 steps, counted from 0
    assert max(lrs) == pytest.approx(0.01)
    assert lrs[0] == pytest.approx(0.01 / 25) and lrs[-1] < 1e-5
    assert set_lr(49) == pytest.approx(0.01)


def test_no_weight_decay_on_batchnorm_and_biases():
    from budgetnet.models.builder import build

    model = build(ResNetSpec((1,), (8,)))
    groups = optim.make_optimizer(TrainConfig(), model).param_groups
    assert all(p.ndim > 1 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 5e-4
    assert all(p.ndim == 1 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0


def test_epoch_order_is_seeded_and_sharded():
    full = epoch_order(0, 3, 100, 20)
    assert len(full) == 100 and torch.equal(full, epoch_order(0, 3, 100, 20))
    assert not torch.equal(full, epoch_order(0, 4, 100, 20))
    shards = [epoch_order(0, 3, 100, 20, rank, 2) for rank in range(2)]
    assert sorted(torch.cat(shards).tolist()) == list(range(100))
    assert len(epoch_order(0, 0, 105, 20)) == 100  # the partial batch is dropped


def test_device_and_worker_batches_hold_every_image_once_as_uint8_nchw():
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(64) % 10
    for kind, config in (
        (DeviceBatches, TrainConfig().with_values(batch_size=16, aa=None)),
        (WorkerBatches, TrainConfig().with_values(batch_size=16, workers=0)),
    ):
        batches = kind(images, labels, config, torch.device("cpu"))
        got = list(batches.epoch(0))
        assert len(got) == len(batches) == 4
        for x, y in got:
            assert x.dtype == torch.uint8 and x.shape == (16, 3, 32, 32) and y.dtype == torch.int64
        seen = torch.cat([y for _, y in got])
        assert sorted(seen.tolist()) == sorted(labels.tolist())
    # No augmentation: batches are exactly the images in epoch order.
    plain = TrainConfig().with_values(batch_size=16, aa=None, crop_padding=0, hflip=0)
    x, _ = next(DeviceBatches(images, labels, plain, torch.device("cpu")).epoch(0))
    first = epoch_order(0, 0, 64, 16)[:16]
    assert torch.equal(x, torch.from_numpy(images[first.numpy()]).permute(0, 3, 1, 2))


def test_random_crop_matches_a_padded_window():
    from budgetnet.training.augment import random_crop

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    out = random_crop(x, 2, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_batch_augment_normalises_erases_and_mixes():
    images = torch.full((8, 3, 32, 32), 128, dtype=torch.uint8)
    labels = torch.arange(8)
    plain = BatchAugment(
        TrainConfig().with_values(reprob=0), PREPROCESSING, 10, torch.device("cpu")
    )
    x, y = plain(images, labels)
    assert torch.allclose(x, torch.full_like(x, (128 / 255 - 0.5) / 0.25), atol=1e-6)
    assert torch.equal(y, labels) and x.is_contiguous(memory_format=torch.channels_last)
    erased, _ = BatchAugment(
        TrainConfig().with_values(reprob=1.0), PREPROCESSING, 10, torch.device("cpu")
    )(images, labels)
    assert (erased != x).any(dim=(1, 2, 3)).all()  # every image got a patch
    mixed = BatchAugment(
        TrainConfig().with_values(mixup=0.8, smoothing=0.1), PREPROCESSING, 10, torch.device("cpu")
    )
    _, soft = mixed(images, labels)
    assert soft.shape == (8, 10) and torch.allclose(soft.sum(1), torch.ones(8))
    assert (soft.min(1).values >= 0.1 / 10 - 1e-6).all()  # smoothing mass on every class


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last", "no-channels-last"])
def test_channels_last_setting_decides_the_memory_order_of_batches_model_and_inference(
    cifar, tmp_path, channels_last
):
    """--no-channels-last matters: training batches, the model's convolution weights, the
    inputs infer() feeds it and the release's preprocessing are all NCHW-contiguous; by
    default all are channels_last."""
    wanted, other = torch.channels_last, torch.contiguous_format
    if not channels_last:
        wanted, other = other, wanted
    config = tiny_config(cifar, tmp_path, epochs=1, channels_last=channels_last)
    splits = load_splits(cifar, val_size=40, cache_dir=False)
    session = engine.setup(config, ResNetSpec((1, 1), (8, 16)), splits, log=lambda line: None)
    assert session.preprocessing == Preprocessing(32, channels_last, splits.normalization)

    images, labels = next(iter(session.batches.epoch(0)))
    x, _ = session.augment(images, labels)
    assert x.is_contiguous(memory_format=wanted) and not x.is_contiguous(memory_format=other)

    convs = [m for m in session.network.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(conv.weight.is_contiguous(memory_format=wanted) for conv in convs)
    spatial = [conv for conv in convs if conv.kernel_size != (1, 1)]  # 1x1: both orders at once
    assert spatial and not any(conv.weight.is_contiguous(memory_format=other) for conv in spatial)

    fed = []
    hook = convs[0].register_forward_pre_hook(lambda module, args: fed.append(args[0]))
    try:
        infer(session.network.model, splits.test.images[:4], session.preprocessing, tta=0)
    finally:
        hook.remove()
    assert len(fed) == 1 and fed[0].shape == (4, 3, 32, 32)
    assert fed[0].is_contiguous(memory_format=wanted)
    assert not fed[0].is_contiguous(memory_format=other)

    record = {"provenance": {}, "data": splits.provenance.to_dict()}
    engine._save_release(session, session.network.model, {}, tmp_path, record)
    release = checkpoint.load_release(tmp_path)
    assert release.preprocessing == session.preprocessing
    assert release.model.stem.conv.weight.is_contiguous(memory_format=wanted)
    assert not release.model.stem.conv.weight.is_contiguous(memory_format=other)


def test_label_smoothing_loss_matches_the_smoothed_cross_entropy_by_hand():
    loss = Objective(TrainConfig().with_values(smoothing=0.1))
    logits, inputs = torch.tensor([[10.0, 0.0, 0.0]]), torch.zeros(1, 3, 4, 4)
    log_p = logits.log_softmax(1)
    expected = -(0.9 + 0.1 / 3) * log_p[0, 0] - (0.1 / 3) * (log_p[0, 1] + log_p[0, 2])
    assert loss(logits, torch.tensor([0]), inputs).item() == pytest.approx(expected.item())
    soft = Objective(TrainConfig().with_values(mixup=0.2))
    target = torch.tensor([[0.5, 0.5, 0.0]])
    expected = -(0.5 * log_p[0, :2]).sum().item()
    assert soft(logits, target, inputs).item() == pytest.approx(expected)


def test_with_ema_the_averaged_weights_are_what_is_validated_and_released(cifar, tmp_path):
    config = tiny_config(cifar, tmp_path, epochs=1, ema=True, ema_decay=0.9)
    session = engine.setup(config, ResNetSpec((1,), (8,)), log=lambda line: None)
    engine.train_epoch(session, 0, _Silent())
    averaged, raw = session.evaluated.state_dict(), session.network.model.state_dict()
    assert session.evaluated is session.network.ema.module
    weights = [k for k, v in raw.items() if v.is_floating_point() and "running" not in k]
    assert any(not torch.equal(averaged[k], raw[k]) for k in weights)  # it lags the weights


class _Silent:
    def step(self, *args) -> None:
        pass


def test_nan_loss_stops_and_keeps_last_good_checkpoint(cifar, tmp_path, monkeypatch):
    calls = {"n": 0}

    def poisoned(config, teacher=None):
        inner = Objective(config, teacher)

        def loss(logits, target, inputs):
            calls["n"] += 1
            value = inner(logits, target, inputs)
            return value * float("nan") if calls["n"] > 5 else value  # 5 steps = epoch 1

        return loss

    monkeypatch.setattr(engine, "Objective", poisoned)
    config = tiny_config(cifar, tmp_path, epochs=3, warmup_epochs=0.5)
    with pytest.raises(engine.Diverged, match="the loss became nan in epoch 2; .*kept"):
        engine.fit(config, ResNetSpec((1,), (8,)), log=lambda line: None)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_early_stopping_ends_the_run_when_val_accuracy_stops_improving(cifar, tmp_path):
    # No epoch can gain a whole 100%.
    config = tiny_config(cifar, tmp_path, epochs=20, warmup_epochs=0, patience=1, min_delta=1.0)
    results = engine.fit(config, ResNetSpec((1,), (8,)), log=lambda line: None)
    assert results["epochs_run"] == 2


def test_fit_joins_the_process_group_once_and_hands_it_to_setup(cifar, tmp_path, monkeypatch):
    joined = []
    init_distributed = engine.distributed.init_distributed

    def counting(device_name):
        joined.append(init_distributed(device_name))
        return joined[-1]

    monkeypatch.setattr(engine.distributed, "init_distributed", counting)
    config = tiny_config(cifar, tmp_path, epochs=1, tta=0)
    engine.fit(config, ResNetSpec((1,), (8,)), log=lambda line: None)
    assert len(joined) == 1
    splits = load_splits(cifar, val_size=40, cache_dir=False)
    session = engine.setup(config, ResNetSpec((1,), (8,)), splits, log=lambda line: None)
    assert len(joined) == 2 and session.ddp == joined[-1]  # on its own, setup joins it


def test_config_file_names_a_model_and_unknown_keys_are_refused(cifar, tmp_path, run_main):
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "epochs": 1,
                "batch_size": 32,
                "aa": None,
                "reprob": 0,
                "warmup_epochs": 0,
                "val_size": 40,
                "device": "cpu",
                "model": {"name": "resnet20", "channels": [4, 8, 16]},
            }
        )
    )
    result = run_main(
        "code/train.py",
        "--config",
        str(config),
        "--data",
        str(cifar),
        "--run-dir",
        str(tmp_path / "r"),
        "--blocks",
        "1",
        "1",
        "1",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["model"]["blocks"] == [1, 1, 1] and saved["model"]["channels"] == [4, 8, 16]
    assert saved["model"]["shortcut"] == "identity"  # from the resnet20 preset
    config.write_text("epochs: 1\nlearning_rate: 0.1\n")
    result = run_main("code/train.py", "--config", str(config))
    assert result.returncode == 2 and "unknown setting(s) learning_rate" in result.stderr
    result = run_main("code/train.py", "--preset", "no-such-thing", "--data", str(cifar))
    assert result.returncode == 2 and "unknown preset" in result.stderr


def test_preset_is_the_recipe_file_and_flags_win():
    from budgetnet.cli import add_training_arguments, resolve_training
    from budgetnet.training.config import read_config_file, recipe_file

    parser = ArgumentParser()
    add_training_arguments(parser)
    recipe = read_config_file(recipe_file("cpu_quick"))
    config, spec = resolve_training(parser.parse_args(["--preset", "cpu-quick", "--epochs", "3"]))
    assert config.schedule.epochs == 3 and config.optimizer.batch_size == recipe["batch_size"]
    assert list(spec.channels) == recipe["model"]["channels"]
    same, _ = resolve_training(parser.parse_args(["--config", str(recipe_file("cpu_quick"))]))
    assert same == config.with_values(epochs=recipe["epochs"])
    _, other = resolve_training(parser.parse_args(["--preset", "cpu-quick", "--model", "resnet20"]))
    assert other == model_spec("resnet20")  # --model names another network: the file's fields go


def _free_port() -> int:
    """A port nothing listens on now (a fixed one collides with a concurrent run)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_run_keeps_one_rng_state_per_rank_and_only_rank_0_reports(cifar, tmp_path):
    if shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None:
        pytest.skip("torchrun is not installed beside this Python")
    run = tmp_path / "ddp"
    result = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            "code/train.py",
            *epoch_flags(cifar, run),
            "--ema",
            *TRAIN_FLAGS,
        ],
        cwd=REPO,
        env={**os.environ, "BUDGETNET_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(run / "last.pt", weights_only=True)
    assert len(state["rng"]) == 2  # one RNG state per process
    rows = (run / "history.csv").read_text().splitlines()
    assert len(rows) == 2 and (run / "best" / "model.json").exists()
    assert result.stdout.count("epoch 1/1 ") == 1  # only rank 0 reports


def test_resume_state_loads_only_tensors(tmp_path):
    checkpoint.save_state(tmp_path / "last.pt", {"x": torch.ones(2), "epoch": 1})
    assert checkpoint.load_state(tmp_path / "last.pt")["epoch"] == 1

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="unreadable resume state"):
        checkpoint.load_state(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_unreadable_history_is_a_user_error(tmp_path):
    """A resumed run reads history.csv: garbage or a non-file there is one clear line."""
    runs.write_history(tmp_path, [dict.fromkeys(runs.HISTORY_COLUMNS, 1)])
    assert runs.read_history(tmp_path)[0]["epoch"] == 1
    for garbage in (b"epoch,train_loss\nnot-a-number,1\n", b"epoch\n\xff\xfe\n"):
        (tmp_path / "history.csv").write_bytes(garbage)
        with pytest.raises(UserError, match="history.csv: unreadable history"):
            runs.read_history(tmp_path)
    (tmp_path / "history.csv").unlink()
    (tmp_path / "history.csv").mkdir()
    with pytest.raises(UserError, match="is a directory, expected a history.csv"):
        runs.read_history(tmp_path)


def test_search_ranks_top_candidates_by_short_training(cifar, tmp_path, run_main):
    settings = tmp_path / "train.yaml"
    settings.write_text("val_size: 40\nbatch_size: 32\naa: null\nreprob: 0\ndevice: cpu\n")
    result = run_main(
        "code/search.py",
        "--max-params",
        "3e4",
        "--widths",  # >= 8: oneDNN's AVX2 1x1 strided conv backward crashes on fewer inputs
        "8",
        "16",
        "--blocks",
        "1",
        "--kernels",
        "3",
        "--pools",
        "0",
        "--stages",
        "2",
        "--train-top",
        "2",
        "--epochs",
        "1",
        "--data",
        str(cifar),
        "--train-config",
        str(settings),
        "--out",
        str(tmp_path / "s"),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = (tmp_path / "s" / "trained.csv").read_text().splitlines()
    assert rows[0] == "rank,blocks,channels,kernel,pool,params,flops,val_acc" and len(rows) == 3
    accuracies = [float(row.split(",")[-1]) for row in rows[1:]]
    assert accuracies == sorted(accuracies, reverse=True)
    assert len(list((tmp_path / "s" / "train").iterdir())) == 2  # one run directory each


def test_lr_range_test_finds_a_descent_and_plots(cifar, tmp_path, run_main):
    out = tmp_path / "lr.png"
    result = run_main(
        "code/lr_find.py",
        "--data",
        str(cifar),
        *TRAIN_FLAGS,
        "--steps",
        "30",
        "--start-lr",
        "1e-4",
        "--end-lr",
        "100",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes().startswith(b"\x89PNG")
    rows = out.with_suffix(".csv").read_text().splitlines()
    assert rows[0] == "lr,loss,smoothed" and 3 < len(rows) <= 31
    lrs = [float(row.split(",")[0]) for row in rows[1:]]
    assert lrs[0] == pytest.approx(1e-4) and all(b > a for a, b in zip(lrs, lrs[1:], strict=False))
    assert "steepest descent at lr" in result.stdout


def test_per_image_augmentations_need_workers():
    from budgetnet.training.augment import make_batches, pil_transform, uses_device_batches

    images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(16) % 10

    plain = TrainConfig().with_values(aa=None)
    assert uses_device_batches(plain)
    for extra in (
        {"color_jitter": [0.4]},
        {"grayscale_prob": 0.5},
        {"affine_degrees": 15.0, "affine_translate": 0.1, "affine_scale": 0.1},
    ):
        config = TrainConfig().with_values(aa=None, batch_size=8, workers=0, **extra)
        assert not uses_device_batches(config), extra
        x, _ = next(make_batches(images, labels, config, torch.device("cpu")).epoch(0))
        assert x.dtype == torch.uint8 and x.shape == (8, 3, 32, 32)
        with pytest.raises(UserError, match="--device-data on cannot apply"):
            make_batches(
                images,
                labels,
                TrainConfig().with_values(aa=None, device_data="on", **extra),
                torch.device("cpu"),
            )
    # One ColorJitter strength means brightness, contrast and saturation, as in timm.
    jitter = pil_transform(TrainConfig().with_values(aa=None, color_jitter=[0.4]), 32).transforms[2]
    assert jitter.p == 1.0 and tuple(jitter.transforms[0].saturation) == pytest.approx((0.6, 1.4))
    assert jitter.transforms[0].hue is None
    grey = pil_transform(
        TrainConfig().with_values(aa=None, grayscale_prob=1.0, hflip=0, crop_padding=0), 32
    )
    out = grey(Image.fromarray(images[0]))
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_cutout_erases_one_fixed_square_with_the_mean_colour():
    images = torch.full((4, 3, 32, 32), 200, dtype=torch.uint8)
    config = TrainConfig().with_values(reprob=1.0, remode="const", cutout=16)
    x, _ = BatchAugment(config, PREPROCESSING, 10, torch.device("cpu"))(images, torch.arange(4))
    for image in x:
        hole = (image == 0).all(dim=0)  # zero after normalisation: the mean colour
        rows, cols = hole.any(dim=1).nonzero(), hole.any(dim=0).nonzero()
        assert hole.sum() == 16 * 16 and len(rows) == len(cols) == 16
    resized = BatchAugment(
        config, dataclasses.replace(PREPROCESSING, size=64), 10, torch.device("cpu")
    )(images, torch.arange(4))[0]
    assert (resized[0] == 0).all(dim=0).sum() == 32 * 32  # the same share of a resized image


def test_augmentation_and_tracking_settings_are_checked_and_parsed():
    from budgetnet.cli import add_config_arguments
    from budgetnet.training.config import MLFLOW_DEFAULT, merge

    assert merge(TrainConfig(), {"color_jitter": 0.4}, "f").augment.color_jitter == [0.4]
    for bad in (
        {"color_jitter": [0.1, 0.2]},
        {"cutout": 16, "reprob": 0},
        {"cutout": 32},
        {"grayscale_prob": 2},
        {"affine_scale": 1.0},
        {"normalize": "cifar"},
    ):
        with pytest.raises(UserError):
            merge(TrainConfig(), bad, "f")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    assert parser.parse_args(["--mlflow"]).mlflow == MLFLOW_DEFAULT
    args = parser.parse_args(["--mlflow", "sqlite:///m.db", "--color-jitter", "0.2", "0.2", "0.2"])
    assert args.mlflow == "sqlite:///m.db" and args.color_jitter == [0.2, 0.2, 0.2]
    assert not hasattr(parser.parse_args([]), "mlflow")  # untyped flags leave the config alone


def test_constant_schedule_holds_the_lr():
    config = TrainConfig().with_values(
        sched="constant", opt="adam", lr=1e-3, batch_size=32, lr_base_size=32
    )
    set_lr = schedule.make_schedule(config, _optimizer(config), steps_per_epoch=10)
    assert [set_lr(step) for step in (0, 55, 199)] == pytest.approx([1e-3] * 3)


def test_imagenet_normalisation_is_used_when_asked_also_for_splits_loaded_beforehand(
    cifar, tmp_path
):
    from timm.data import IMAGENET_DEFAULT_MEAN

    config = tiny_config(cifar, tmp_path, normalize="imagenet")
    own = load_splits(cifar, val_size=40, cache_dir=False)  # one load shared by many runs
    for splits in (None, own):
        session = engine.setup(config, ResNetSpec((1,), (8,)), splits, log=lambda line: None)
        normalization = session.preprocessing.normalization
        assert normalization.mean == IMAGENET_DEFAULT_MEAN and "ImageNet" in normalization.source
        assert (
            session.augment.preprocessing.normalization
            == normalization
            == session.splits.normalization
        )
    plain = engine.setup(tiny_config(cifar, tmp_path), ResNetSpec((1,), (8,)), own)
    assert plain.splits is own and plain.preprocessing.normalization == own.normalization


def test_a_session_and_its_parts_are_built_by_keyword_only(cifar, tmp_path):
    """Two fields of one type (lookahead and average, model and trained) cannot be swapped
    by position."""
    for built in (engine.Session, engine.Network, engine.Optimization):
        assert all(field.kw_only for field in dataclasses.fields(built)), built
        with pytest.raises(TypeError, match="positional argument"):
            built(*[None] * len(dataclasses.fields(built)))
    config = tiny_config(cifar, tmp_path, lookahead=5, swa=True)
    session = engine.setup(config, ResNetSpec((1,), (8,)), log=lambda line: None)
    assert isinstance(session.optimization.lookahead, engine.Lookahead)
    assert isinstance(session.optimization.average, engine.WeightAverage)


def test_top5_is_scored_for_more_than_ten_classes():
    probs = torch.eye(20)[[0, 1, 2]] * 0.5 + torch.linspace(0.02, 0.01, 20) / 2
    labels = np.array([0, 3, 19])  # the first guess, the fourth, not among the first five
    got = metrics(probs.numpy(), labels)
    assert got["acc"] == pytest.approx(1 / 3) and got["top5"] == pytest.approx(2 / 3)
    assert "top5" not in metrics(np.eye(10)[[0, 1]], np.array([0, 1]))
