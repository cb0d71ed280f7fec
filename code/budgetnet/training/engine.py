"""The trainer: `fit(config, spec)` trains one network and leaves a complete run directory.

One short function over four steps, no framework:

    setup        data, model, EMA, optimizer, schedule, batches: a `Session` built from
                 `build_data`, `build_model` and `build_optimization` (the LR range test
                 shares it)
    train_epoch  per step: this step's lr, augment the batch on the device, forward under
                 autocast, backward, step, Lookahead, EMA
    end_epoch    validate with the shared `infer()`, keep the best model as a release, count
                 patience, write history.csv and the resume state
    finish       the test split, once, reported separately; results.json and the plots

The run record (config.yaml: settings, model, data, provenance) is built once in memory and
passed down. A `budgetnet.training.tracking.Tracker` reports along the way (the Markdown log,
TensorBoard, MLflow).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from budgetnet import runs
from budgetnet.data.normalization import Preprocessing
from budgetnet.data.sources import DataSplits, ImageSet, load_splits
from budgetnet.errors import UserError, shorten
from budgetnet.evaluation.figures import confusion_figure, save_figure, write_history_plots
from budgetnet.evaluation.infer import infer
from budgetnet.evaluation.metrics import confusion_matrix, metrics
from budgetnet.models import checkpoint
from budgetnet.models.builder import build
from budgetnet.models.spec import ResNetSpec
from budgetnet.models.whitening import init_model, whitened_stem
from budgetnet.runtime import amp_dtype, autocast, configure_cpu, precision_name, resolve_device
from budgetnet.training import budget, distributed
from budgetnet.training.augment import (
    BatchAugment,
    augmented_samples,
    make_batches,
    uses_device_batches,
)
from budgetnet.training.config import TrainConfig, short_run_warmup
from budgetnet.training.filtering import DataFilter, make_filter
from budgetnet.training.lookahead import Lookahead
from budgetnet.training.objective import Objective, Teacher
from budgetnet.training.optim import make_optimizer
from budgetnet.training.schedule import image_size_at, make_schedule
from budgetnet.training.swa import WeightAverage
from budgetnet.training.tracking import Tracker

CONFUSION_FILE = "confusion_matrix.png"  # of the test split, at the end
SAMPLES_FILE = "augmentations.png"  # training images as the model gets them


class Diverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# --------------------------------------------------------------------------------------------
# Pieces


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Python, NumPy and torch RNG states as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": np_state[2],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0)
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def validate(model: nn.Module, images: ImageSet, session: Session, tta: int = 0) -> dict:
    """`metrics` of the probabilities of the shared `infer()` on a labeled split."""
    probs = infer(
        model, images.images, session.preprocessing, tta=tta,
        device=session.device, amp=session.config.runtime.amp,
    )  # fmt: skip
    return metrics(probs.numpy(), images.labels)


class Step(NamedTuple):
    """What one optimizer step trained on and got: the mean task loss over the images the model
    saw, their logits (with --jsd-loss those of the clean view) and their labels."""

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    augment: BatchAugment,
    objective: Objective,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    amp: bool,
    frozen: list[nn.Parameter] | tuple = (),
    *,
    data_filter: DataFilter | None = None,
    step: int = 0,
) -> Step:
    """One optimizer step on a uint8 batch. `frozen` parameters sit this step out: their
    gradients are dropped before the step (this works under DDP, where turning requires_grad
    off mid-run does not), so the optimizer skips them, decay included. With a `data_filter`
    the model trains on the part of the augmented batch it selects (`step` drives its proxy),
    the loss scaled to that share of the batch, as budgetnet.training.filtering explains."""
    x, target = augment(images, labels)
    share = 1.0
    if data_filter is not None:
        kept = data_filter.select(x, target, step)
        share = len(kept) / len(x)
        x, target, labels = x[kept], target[kept], labels[kept]
    with autocast(device, amp):
        logits = model(x)
    loss = objective(logits.float(), target, x)  # in float32 whatever autocast chose
    optimizer.zero_grad(set_to_none=True)
    (loss * share).backward()  # the kept images' sum over the whole batch
    for p in frozen:
        p.grad = None
    optimizer.step()
    return Step(loss, logits[: len(labels)], labels)


def model_name(spec: ResNetSpec) -> str:
    """A short name for run directories: block type, B, C, F and P."""
    return (
        f"{spec.block}-b{''.join(map(str, spec.blocks))}-c{'-'.join(map(str, spec.channels))}"
        f"-k{spec.kernel}-p{spec.pool}"
    )


# --------------------------------------------------------------------------------------------
# setup: everything a run needs, made once


@dataclass(frozen=True, kw_only=True)
class Network:
    """The model a run trains, as `build_model` makes it."""

    spec: ResNetSpec  # num_classes from the data
    model: nn.Module  # the network itself: its state is saved and resumed
    trained: nn.Module  # what steps: the model, wrapped by DDP and torch.compile if asked
    ema: nn.Module | None  # timm ModelEmaV3
    stem: nn.Conv2d | None  # a whitening stem, whose bias trains for whiten_bias_epochs only
    init_seconds: float  # the data-dependent initialisation's, counted as training time


@dataclass(frozen=True, kw_only=True)
class Optimization:
    """How the model's weights move, as `build_optimization` makes it."""

    optimizer: torch.optim.Optimizer
    set_lr: Callable[[int], float]  # sets and returns the learning rate of a step
    lookahead: Lookahead | None
    average: WeightAverage | None  # --swa


@dataclass(kw_only=True)
class Session:
    """What `setup` makes and every later step uses."""

    config: TrainConfig
    splits: DataSplits
    preprocessing: Preprocessing  # what validation feeds the model; the release stores it
    device: torch.device
    ddp: distributed.Distributed
    network: Network  # its init_seconds replaced on resume, by those the first start saved
    optimization: Optimization
    batches: object  # budgetnet.training.augment's device or worker batches
    augment: BatchAugment
    objective: Objective
    runtime: str  # threads, allocator and precision, for the log
    data_filter: DataFilter | None  # --filter-keep: the proxy that picks the images
    log: Callable[[str], None] = print

    @property
    def spec(self) -> ResNetSpec:
        return self.network.spec

    @property
    def evaluated(self) -> nn.Module:
        """What is validated and released: the EMA weights when there are any."""
        ema = self.network.ema
        return ema.module if ema is not None else self.network.model

    @property
    def stem_steps(self) -> int:
        return round(self.config.schedule.whiten_bias_epochs * len(self.batches))


def setup(
    config: TrainConfig,
    spec: ResNetSpec,
    splits: DataSplits | None = None,
    *,
    initialise: bool = True,
    log: Callable[[str], None] = print,
    ddp: distributed.Distributed | None = None,
) -> Session:
    """Data (loaded unless given), the model (data-dependent initialisation unless resuming),
    its EMA, optimizer, schedule, batches and augmentation, on the configured device. `ddp`:
    the process group a caller has already joined (fit does, before its tracker)."""
    ddp = ddp if ddp is not None else distributed.init_distributed(config.runtime.device)
    device = _device(config, ddp)
    runtime = _runtime(config, device)  # threads and allocator first: they speed up the rest
    seed_everything(config.runtime.seed + ddp.rank)
    splits = build_data(config, splits)
    if config.dataset.val_size is None:  # the run records the count the default held out
        config = config.with_values(val_size=splits.provenance.val_size)
    network = build_model(config, spec, splits, device, ddp, initialise=initialise, log=log)
    spec = network.spec
    batches = _batches(config, splits, device, ddp)
    optimization = build_optimization(config, network.model, len(batches))
    data_filter = make_filter(
        config, splits, spec.num_classes, spec.input_size, device, len(batches)
    )
    if data_filter is not None and initialise:  # resume restores the first start's seconds
        network = replace(network, init_seconds=network.init_seconds + data_filter.init_seconds)
    preprocessing = Preprocessing(
        spec.input_size, config.runtime.channels_last, splits.normalization
    )
    return Session(
        config=config,
        splits=splits,
        preprocessing=preprocessing,
        device=device,
        ddp=ddp,
        network=network,
        optimization=optimization,
        batches=batches,
        augment=BatchAugment(config, preprocessing, spec.num_classes, device),
        objective=Objective(config, _teacher(config, splits, spec.input_size, device)),
        runtime=runtime,
        data_filter=data_filter,
        log=log,
    )


def build_data(config: TrainConfig, splits: DataSplits | None = None) -> DataSplits:
    """The splits `config` asks for (train, validation held out from it, test), normalised as
    it says; `splits` already loaded (one load for many runs) are only renormalised."""
    if splits is not None:
        return splits.normalized(config.dataset.normalize)
    dataset = config.dataset
    return load_splits(
        dataset.data,
        val_size=dataset.val_size,
        max_per_class=dataset.max_per_class,
        seed=config.runtime.seed,
        train_splits=dataset.train_splits,
        normalize=dataset.normalize,
    )


def build_model(
    config: TrainConfig,
    spec: ResNetSpec,
    splits: DataSplits,
    device: torch.device,
    ddp: distributed.Distributed,
    *,
    initialise: bool = True,
    log: Callable[[str], None] = print,
) -> Network:
    """`spec`'s network for the data's classes, initialised from the training images unless
    resuming (`initialise` False: the weights will be loaded), on `device` in the configured
    memory order, with its EMA and its training wrapper."""
    if spec.num_classes != len(splits.train.classes):
        log(f"model: num_classes set to {len(splits.train.classes)} from the data")
        spec = replace(spec, num_classes=len(splits.train.classes))
    _check_progressive(config, spec)
    model = build(spec)
    init_seconds = init_model(model, spec, splits, config.runtime.seed) if initialise else 0.0
    model = model.to(device, memory_format=_memory_format(config))
    return Network(
        spec=spec,
        model=model,
        trained=_wrap(model, config, ddp, device),
        ema=_ema(model, config),
        stem=whitened_stem(model, spec),
        init_seconds=init_seconds,
    )


def build_optimization(config: TrainConfig, model: nn.Module, steps_per_epoch: int) -> Optimization:
    """The optimizer of `model`, its learning-rate schedule, Lookahead and SWA as configured."""
    optimizer = make_optimizer(config, model)
    return Optimization(
        optimizer=optimizer,
        set_lr=make_schedule(config, optimizer, steps_per_epoch),
        lookahead=_lookahead(model, config, steps_per_epoch),
        average=WeightAverage(model, config) if config.averaging.swa else None,
    )


def _device(config: TrainConfig, ddp: distributed.Distributed) -> torch.device:
    """The configured device; under DDP on CUDA, this process's own GPU."""
    device = resolve_device(config.runtime.device)
    if device.type == "cuda" and ddp.world > 1:
        device = torch.device("cuda", ddp.local_rank)
    return device


def _batches(config: TrainConfig, splits: DataSplits, device: torch.device, ddp):
    """This process's share of the training images, batched, on the device or from workers."""
    batches = make_batches(
        splits.train.images, splits.train.labels, config, device, ddp.rank, ddp.world
    )
    if len(batches) == 0:
        raise UserError(
            f"{len(splits.train)} training images make no batch of {config.optimizer.batch_size}; "
            "lower --batch-size"
        )
    return batches


def _check_progressive(config: TrainConfig, spec: ResNetSpec) -> None:
    """Progressive resizing shrinks the images: the network must take the smallest ones."""
    start = config.schedule.progressive_size
    if not start:
        return
    if start >= spec.input_size:
        raise UserError(
            f"progressive_size {start} must be below the model's input size {spec.input_size}"
        )
    try:
        replace(spec, input_size=start).plan  # noqa: B018 - laying out checks the map sizes
    except UserError as error:
        raise UserError(f"progressive_size {start} is too small for this model: {error}") from None


def _runtime(config: TrainConfig, device: torch.device) -> str:
    """Threads, allocator and precision, for the log (and the CPU set up on the way)."""
    run = config.runtime
    parts = [configure_cpu(run.threads, run.mallopt)] if device.type == "cpu" else []
    parts.append(precision_name(device, run.amp))
    if run.amp and amp_dtype(device) is None:
        parts[-1] += f" (this {device.type.upper()} has no native bf16)"
    return ", ".join(parts)


def _memory_format(config: TrainConfig) -> torch.memory_format:
    """The model's and its inputs' memory order (BatchAugment follows the same setting)."""
    return torch.channels_last if config.runtime.channels_last else torch.contiguous_format


def _wrap(model: nn.Module, config: TrainConfig, ddp, device: torch.device) -> nn.Module:
    trained = model
    if ddp.world > 1:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return torch.compile(trained) if config.runtime.compile else trained


def _ema(model: nn.Module, config: TrainConfig) -> nn.Module | None:
    from timm.utils import ModelEmaV3

    averaging = config.averaging
    return ModelEmaV3(model, decay=averaging.ema_decay, use_warmup=True) if averaging.ema else None


def _teacher(
    config: TrainConfig, splits: DataSplits, input_size: int, device: torch.device
) -> Teacher | None:
    if config.distill.teacher is None:
        return None
    return Teacher(
        config.distill.teacher, splits.normalization, config.distill.kd_temperature, device,
        config.runtime.amp,
        classes=splits.train.classes, input_size=input_size,
    )  # fmt: skip


def _lookahead(model: nn.Module, config: TrainConfig, steps_per_epoch: int) -> Lookahead | None:
    averaging = config.averaging
    if not averaging.lookahead:
        return None
    total = config.schedule.epochs * steps_per_epoch
    return Lookahead(model, averaging.lookahead, averaging.lookahead_decay, total)


# --------------------------------------------------------------------------------------------
# The run record and the progress through the epochs


@dataclass
class Progress:
    """Where the run is: the next epoch, the best validation score, patience, the history."""

    epoch: int = 0
    best_acc: float = -1.0
    patience_left: int = 0
    history: list[dict] = field(default_factory=list)


def run_record(session: Session, argv: list[str] | None) -> dict:
    """config.yaml's content: the settings, the model, the data and its provenance."""
    return {
        runs.SETTINGS_KEY: session.config.flat(),
        "model": session.spec.to_dict(),
        "data": session.splits.provenance.to_dict(),
        "normalization": session.splits.normalization.to_dict(),
        "provenance": runs.provenance(session.config.runtime.seed, argv),
    }


def resume_progress(session: Session, run_dir: Path) -> Progress:
    """Model, optimizer, EMA, Lookahead and RNG states from last.pt; the epochs it ran."""
    state = checkpoint.load_state(run_dir / checkpoint.LAST_FILE)
    s = session
    try:
        net, opt = s.network, s.optimization
        net.model.load_state_dict(state["model"])
        opt.optimizer.load_state_dict(state["optimizer"])
        if net.ema is not None:
            net.ema.module.load_state_dict(state["ema"])
        if opt.lookahead is not None:
            opt.lookahead.load_state_dict(state["lookahead"])
        if opt.average is not None:
            opt.average.load_state_dict(state["swa"])
        if s.data_filter is not None:
            s.data_filter.load_state_dict(state["filter"])
        set_rng_state(state["rng"][min(s.ddp.rank, len(state["rng"]) - 1)])
        progress = Progress(
            int(state["epoch"]) + 1,
            float(state["best_acc"]),
            int(state.get("patience_left", s.config.evaluation.patience)),
        )
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise UserError(
            f"{run_dir / checkpoint.LAST_FILE}: not a resume state of this run "
            f"({shorten(' '.join(str(exc).split()))})"
        ) from None
    s.network = replace(s.network, init_seconds=state.get("init_seconds", 0.0))
    progress.history = [r for r in runs.read_history(run_dir) if r["epoch"] < progress.epoch]
    return progress


# --------------------------------------------------------------------------------------------
# The epochs


def train_epoch(s: Session, epoch: int, tracker: Tracker) -> dict:
    """One pass over the training batches; the history row's training columns."""
    from tqdm import tqdm

    net, opt = s.network, s.optimization
    net.model.train()
    s.augment.preprocessing = replace(
        s.preprocessing, size=image_size_at(s.config, epoch, s.spec.input_size)
    )
    started = time.perf_counter()
    totals = torch.zeros(2, dtype=torch.float64, device=s.device)  # loss sum, correct
    seen = trained = 0  # the batches' images, and those the model trained on (filtering)
    steps = len(s.batches)
    progress = tqdm(
        s.batches.epoch(epoch), total=steps, leave=False, mininterval=1,
        desc=f"epoch {epoch + 1}/{s.config.schedule.epochs}", disable=not s.ddp.main,
    )  # fmt: skip
    for i, (images, labels) in enumerate(progress):
        step = epoch * steps + i
        lr = opt.set_lr(step)
        frozen = [net.stem.bias] if net.stem is not None and step >= s.stem_steps else []
        loss, logits, labels_seen = train_step(
            net.trained, opt.optimizer, s.augment, s.objective, images, labels, s.device,
            s.config.runtime.amp, frozen, data_filter=s.data_filter, step=step,
        )  # fmt: skip
        if opt.lookahead is not None:
            opt.lookahead.after_step(net.model, step + 1)
        if net.ema is not None:
            net.ema.update(net.model, step=step)
        seen += len(labels)  # Python counts: a new device tensor per step would cost a copy
        trained += len(labels_seen)
        correct = (logits.argmax(1) == labels_seen).sum().double()
        totals += torch.stack([loss.detach().double() * len(labels_seen), correct])
        tracker.step(step, loss, lr)
        if i % 20 == 0 and not math.isfinite(totals[0].item()):
            break
    loss_sum, correct, seen, trained = distributed.reduce(
        [*totals.tolist(), float(seen), float(trained)], s.device, s.ddp.world
    )
    if not math.isfinite(loss_sum):
        raise Diverged(
            f"the loss became {loss_sum} in epoch {epoch + 1}; stopped, and kept the last "
            "good checkpoint (try a lower --lr)"
        )
    seconds = time.perf_counter() - started
    return {
        "epoch": epoch, "train_loss": loss_sum / trained, "train_acc": correct / trained,
        "lr": lr, "seconds": seconds, "images_per_s": seen / seconds,
    }  # fmt: skip


def end_epoch(
    s: Session, progress: Progress, row: dict, run_dir: Path, record: dict, tracker: Tracker
) -> bool:
    """Validate, keep the best model as a release, write history.csv and last.pt; True when
    patience has run out."""
    val = validate(s.evaluated, s.splits.val, s) if s.splits.val is not None else {}
    row = {**row, "val_loss": val.get("loss"), "val_acc": val.get("acc")}
    row = {k: row[k] for k in runs.HISTORY_COLUMNS}
    progress.history.append(row)
    # history.csv keeps its columns; top-5 goes to the console, the release and the trackers.
    reported = {**row, **({"val_top5": val["top5"]} if "top5" in val else {})}
    score = row["val_acc"] if row["val_acc"] is not None else row["epoch"]  # no val: the last
    stopping = s.config.evaluation
    improved = score > progress.best_acc + stopping.min_delta
    progress.best_acc = max(progress.best_acc, score) if improved else progress.best_acc
    progress.patience_left = stopping.patience if improved else progress.patience_left - 1
    progress.epoch = row["epoch"] + 1
    best = None
    if s.ddp.main:
        s.log(_epoch_line(reported, s.config.schedule.epochs, improved))
        if improved:
            best = _save_best(s, reported, run_dir, record)
        runs.write_history(run_dir, progress.history)
    tracker.epoch(reported, best)
    if s.optimization.average is not None:
        s.optimization.average.after_epoch(s.network.model, row["epoch"])
    _save_state(s, progress, run_dir)
    stop = bool(stopping.patience) and progress.patience_left <= 0
    if stop and s.ddp.main:
        s.log(
            f"early stop: no val accuracy gain over {stopping.min_delta} in "
            f"{stopping.patience} epochs"
        )
    return stop


def _save_best(s: Session, reported: dict, run_dir: Path, record: dict) -> dict:
    """The model of the best epoch so far, as a release; returns the metrics it records."""
    best = {"epoch": reported["epoch"] + 1}
    best |= {k: v for k, v in reported.items() if k.startswith("val_")}
    _save_release(s, s.evaluated, best, run_dir, record)
    return best


def release_average(s: Session, progress: Progress, run_dir: Path, record: dict) -> None:
    """--swa: the averaged weights, their BatchNorm statistics recomputed over the training
    images, validated and released in place of the best epoch's model."""
    if not s.ddp.main:
        return
    average = s.optimization.average
    if average.count == 0:  # it would hold the starting weights: nothing trained is in it
        s.log("SWA: no epoch reached --swa-start; the best epoch's release stays")
        return
    inputs = (s.preprocessing(images) for images, _ in s.batches.epoch(progress.epoch))
    model = average.finish(inputs, s.device)
    val = validate(model, s.splits.val, s) if s.splits.val is not None else {}
    scores = {"epoch": progress.epoch, "swa_epochs": average.count}
    scores |= {f"val_{k}": val[k] for k in ("loss", "acc", "top5") if k in val}
    _save_release(s, model, scores, run_dir, record)
    shown = f"val acc {val['acc']:.4f}" if val else "no validation split"
    s.log(f"SWA: the average of {average.count} epochs, BatchNorm recomputed: {shown}")


def _save_release(s: Session, model: nn.Module, scores: dict, run_dir: Path, record: dict) -> None:
    provenance = {
        **record["provenance"], "run_dir": str(run_dir), "config": s.config.flat(),
        "data": record["data"],
    }  # fmt: skip
    checkpoint.save_release(
        run_dir / checkpoint.BEST_DIR, model, s.splits.train.classes,
        s.preprocessing, scores, provenance, half=s.config.outputs.release_half,
    )  # fmt: skip


def _save_state(s: Session, progress: Progress, run_dir: Path) -> None:
    """last.pt: everything `resume_progress` needs to continue after this epoch."""
    rng = [rng_state()] if s.ddp.world == 1 else distributed.gather(rng_state(), s.ddp.world)
    if not s.ddp.main:
        return
    net, opt = s.network, s.optimization
    checkpoint.save_state(
        run_dir / checkpoint.LAST_FILE,
        {
            "model": net.model.state_dict(),
            "optimizer": opt.optimizer.state_dict(),
            "ema": net.ema.module.state_dict() if net.ema is not None else None,
            "lookahead": opt.lookahead.state_dict() if opt.lookahead is not None else None,
            "swa": opt.average.state_dict() if opt.average is not None else None,
            "filter": s.data_filter.state_dict() if s.data_filter is not None else None,
            "rng": rng,
            "epoch": progress.epoch - 1,
            "best_acc": progress.best_acc,
            "patience_left": progress.patience_left,
            "init_seconds": net.init_seconds,
        },
    )


def _epoch_line(row: dict, epochs: int, improved: bool) -> str:
    line = (
        f"epoch {row['epoch'] + 1}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.4f}"
    )
    if row["val_acc"] is not None:
        line += f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"
    if "val_top5" in row:
        line += f" top-5 {row['val_top5']:.4f}"
    line += f"  lr {row['lr']:.4g}  {row['seconds']:.1f} s  {row['images_per_s']:.0f} img/s"
    return line + ("  *" if improved else "")


# --------------------------------------------------------------------------------------------
# finish: the test split, once


def finish(s: Session, progress: Progress, run_dir: Path) -> dict:
    """The test split, once, on the released weights (exactly what inference will load), with
    and without TTA; then results.json, the release's metrics, the plots and the test split's
    confusion matrix (at the configured TTA level)."""
    release = checkpoint.load_release(run_dir, s.device)
    scores = dict(release.meta["metrics"])
    if s.splits.test is not None:
        for tta in sorted({0, s.config.evaluation.tta}):  # the configured level last
            probs = infer(
                release.model, s.splits.test.images, release.preprocessing, tta=tta,
                device=s.device, amp=s.config.runtime.amp,
            )  # fmt: skip
            scored = metrics(probs.numpy(), s.splits.test.labels)
            scores[f"test_acc_tta{tta}"] = scored["acc"]
            if "top5" in scored:
                scores[f"test_top5_tta{tta}"] = scored["top5"]
        matrix = confusion_matrix(probs.numpy(), s.splits.test.labels)
        save_figure(confusion_figure(matrix, release.classes), run_dir / CONFUSION_FILE)
    checkpoint.update_release_metrics(release, scores)
    results = {
        "run_dir": str(run_dir),
        "epochs_run": len(progress.history),
        # as airbench times it: the data-dependent initialisation plus the epochs, without the
        # per-epoch validation and checkpoints
        "train_seconds": s.network.init_seconds + sum(row["seconds"] for row in progress.history),
        "init_seconds": s.network.init_seconds,
        "train_splits": s.config.dataset.train_splits,  # "train+test": no test accuracy is reported
        **scores,
    }
    runs.write_json(run_dir / "results.json", results)
    for out in filter(None, (run_dir, s.config.outputs.plots_dir)):
        write_history_plots(progress.history, out, f"({model_name(release.model.spec)})")
    s.log(
        "results: "
        + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in results.items()
        )
    )
    return results


# --------------------------------------------------------------------------------------------
# The trainer


def fit(
    config: TrainConfig,
    spec: ResNetSpec,
    *,
    resume: Path | None = None,
    argv: list[str] | None = None,
    splits: DataSplits | None = None,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train `spec` with `config`; returns the final results (also in results.json).

    `resume`: a run directory to continue from its last.pt. `splits`: already loaded data
    (the budget search reuses one load for many runs). `on_epoch`: called with each epoch's
    history row once it is saved; an exception it raises ends the run there (a study's
    pruner)."""
    from torchvision.utils import save_image

    started = time.perf_counter()
    ddp = distributed.init_distributed(config.runtime.device)
    tracker = Tracker(config, enabled=ddp.main)  # a missing tracking library stops us here
    if config.schedule.time_budget is not None and resume is None:
        splits = build_data(config, splits)
        config = _fit_budget(config, spec, splits, ddp, started, log)
    config, note = short_run_warmup(config)
    if note:
        log(note)
    s = setup(config, spec, splits, initialise=resume is None, log=log, ddp=ddp)
    run_dir = Path(resume or config.outputs.run_dir or runs.default_run_dir(model_name(s.spec)))
    if resume is not None:
        progress, record = resume_progress(s, run_dir), runs.read_config(run_dir)
        log(f"resuming {run_dir} after epoch {progress.epoch} of {config.schedule.epochs}")
    else:
        progress, record = Progress(patience_left=config.evaluation.patience), run_record(s, argv)
        if s.ddp.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            runs.write_config(run_dir, record)
    parameters = sum(p.numel() for p in s.network.model.parameters())
    if s.ddp.main:
        log(_start_line(s, parameters, run_dir))
    with tracker.run(run_dir, record, progress.history, parameters, resumed=resume is not None):
        for epoch in range(progress.epoch, config.schedule.epochs):
            row = train_epoch(s, epoch, tracker)
            stop = end_epoch(s, progress, row, run_dir, record, tracker)
            if on_epoch is not None:
                on_epoch(progress.history[-1])
            if stop:
                break
        if s.optimization.average is not None:
            release_average(s, progress, run_dir, record)
        results = {}
        if s.ddp.main:
            results = finish(s, progress, run_dir)
            # Drawn after training: the augmentations use the global RNGs, whose state the
            # resume checkpoint has already saved.
            save_image(augmented_samples(s.batches, s.augment), run_dir / SAMPLES_FILE, nrow=8)
            tracker.finish(results)
    distributed.teardown(s.ddp.world)
    return results


def _fit_budget(
    config: TrainConfig, spec: ResNetSpec, splits: DataSplits, ddp, started: float, log
) -> TrainConfig:
    """`config` with the epochs that fit its time budget, timed on a scratch session that is
    then dropped (the real run is seeded afresh, so it trains as `--epochs N` would)."""
    quiet = lambda line: None  # noqa: E731 - the real setup says it all once
    scratch = setup(config, spec, splits, initialise=False, log=quiet, ddp=ddp)
    resolved = budget.resolve_epochs(scratch, train_step, started, log=log if ddp.main else quiet)
    del scratch
    return resolved


def _start_line(s: Session, parameters: int, run_dir: Path) -> str:
    """What is about to train, where, and how (threads, allocator, precision)."""
    config = s.config
    batches = "device-resident" if uses_device_batches(config) else "worker"
    filtering = config.filtering
    kept = (
        f", the {filtering.filter_keep:.0%} of each batch that {filtering.filter_proxy} finds "
        "hardest"
        if s.data_filter is not None
        else ""
    )
    return (
        f"training {model_name(s.spec)} ({parameters:,} parameters) on {s.device} for "
        f"{config.schedule.epochs} epochs: {len(s.splits.train)} train / "
        f"{len(s.splits.val) if s.splits.val else 0} val images{kept}, {batches} batches, "
        f"{s.runtime}; run directory {run_dir}"
    )
