"""The trainer: `fit(config, spec)` trains one network and leaves a complete run directory.

One short function and its helpers, no framework. Per step: set the learning rate of this step,
augment the batch on the device, forward under bf16 autocast, backward, step, update the EMA.
Per epoch: validate on the held-out split with the shared `infer()`, write history.csv, the
best model (a release) and the resume state. At the end: the test split, once, reported
separately, and the plots. A `budgetnet.training.tracking.Tracker` reports along the way (the Markdown
log, TensorBoard, MLflow).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from budgetnet import runs
from budgetnet.data.normalization import Normalization
from budgetnet.data.sources import DataSplits, load_splits
from budgetnet.errors import UserError, shorten
from budgetnet.evaluation.history_plots import plot_history
from budgetnet.evaluation.infer import infer
from budgetnet.models import checkpoint
from budgetnet.models.resnet import ResNetSpec, build
from budgetnet.models.whitening import init_whitening, sample_images
from budgetnet.runtime import amp_dtype, autocast, configure_cpu, precision_name, resolve_device
from budgetnet.training.augment import (
    BatchAugment,
    augmented_samples,
    make_batches,
    uses_device_batches,
)
from budgetnet.training.config import TrainConfig, short_run_warmup
from budgetnet.training.lookahead import Lookahead
from budgetnet.training.optim import make_optimizer, make_schedule
from budgetnet.training.tracking import Tracker

# Top-5 accuracy is reported above this many classes: with CIFAR-10's ten, five guesses cover
# half of the classes and the number says little.
TOP5_ABOVE_CLASSES = 10
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


def make_loss(config: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Label-smoothed cross-entropy; under Mixup/CutMix the targets are already soft (timm's
    Mixup smooths them) and the loss is the soft-target cross-entropy."""
    if config.mixup or config.cutmix:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(label_smoothing=config.smoothing)


def scores(probs: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """Cross-entropy `loss`, accuracy `acc` and, above TOP5_ABOVE_CLASSES classes, `top5`."""
    target = torch.from_numpy(labels)
    out = {
        "loss": F.nll_loss(probs.clamp_min(1e-12).log(), target).item(),
        "acc": (probs.argmax(1) == target).float().mean().item(),
    }
    if probs.shape[1] > TOP5_ABOVE_CLASSES:
        top5 = probs.topk(5, dim=1).indices
        out["top5"] = (top5 == target[:, None]).any(dim=1).float().mean().item()
    return out


def evaluate(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    splits: DataSplits,
    device: torch.device,
    amp: bool,
    tta: int = 0,
) -> dict[str, float]:
    """`scores` of the probabilities of the shared `infer()`."""
    probs = infer(model, images, splits.normalization, tta=tta, device=device, amp=amp)
    return scores(probs, labels)


def normalization(config: TrainConfig, splits: DataSplits) -> Normalization:
    """The training images' own mean/std, or ImageNet's (`--normalize imagenet`, the 224 px
    recipes)."""
    if config.normalize == "data":
        return splits.normalization
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return Normalization(
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        "ImageNet mean/std, as torchvision's pretrained models use (timm IMAGENET_DEFAULT_*)",
    )


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    augment: BatchAugment,
    loss_fn: Callable,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    amp: bool,
    frozen: list[nn.Parameter] | tuple = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a uint8 batch; returns (loss, logits). `frozen` parameters sit this
    step out: their gradients are dropped before the step (this works under DDP, where turning
    requires_grad off mid-run does not), so the optimizer skips them, decay included."""
    x, target = augment(images, labels)
    with autocast(device, amp):
        logits = model(x)
    loss = loss_fn(logits.float(), target)  # the loss in float32 whatever autocast chose
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for p in frozen:
        p.grad = None
    optimizer.step()
    return loss, logits


def whitened_stem(model: nn.Module, spec: ResNetSpec) -> nn.Conv2d | None:
    return model.stem.conv if spec.stem == "whiten" else None


def init_model(model: nn.Module, spec: ResNetSpec, splits: DataSplits, seed: int) -> float:
    """Data-dependent initialisation of a new model (the whitening stem's filters from the
    training images); returns its seconds, which count as training time (as airbench's do)."""
    started = time.perf_counter()
    stem = whitened_stem(model, spec)
    if stem is not None:
        init_whitening(stem, sample_images(splits.train.images, seed), splits.normalization)
    return time.perf_counter() - started


def _setup_line(config: TrainConfig, device: torch.device) -> str:
    """Threads, allocator and precision, for the log (and the CPU set up on the way)."""
    parts = [configure_cpu(config.threads, config.mallopt)] if device.type == "cpu" else []
    parts.append(precision_name(device, config.amp))
    if config.amp and amp_dtype(device) is None:
        parts[-1] += f" (this {device.type.upper()} has no native bf16)"
    return ", ".join(parts)


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Distributed:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: NCCL on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    info = Distributed(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    gpu = resolve_device(device_name).type == "cuda"
    if gpu:
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo")
    return info


def _reduce(values: list[float], device: torch.device, world: int) -> list[float]:
    if world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# --------------------------------------------------------------------------------------------
# The trainer


def model_name(spec: ResNetSpec) -> str:
    """A short name for run directories: block type, B, C, F and P."""
    return (
        f"{spec.block}-b{''.join(map(str, spec.blocks))}-c{'-'.join(map(str, spec.channels))}"
        f"-k{spec.kernel}-p{spec.pool}"
    )


def fit(
    config: TrainConfig,
    spec: ResNetSpec,
    *,
    resume: Path | None = None,
    argv: list[str] | None = None,
    splits: DataSplits | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train `spec` with `config`; returns the final results (also in results.json).

    `resume`: a run directory to continue from its last.pt. `splits`: already loaded data
    (the budget search reuses one load for many runs)."""
    from timm.utils import ModelEmaV3
    from torchvision.utils import save_image
    from tqdm import tqdm

    config, note = short_run_warmup(config)
    if note:
        log(note)
    ddp = init_distributed(config.device)
    tracker = Tracker(config, enabled=ddp.main)  # a missing tracking library stops us here
    device = resolve_device(config.device)
    if device.type == "cuda" and ddp.world > 1:
        device = torch.device("cuda", ddp.local_rank)
    seed_everything(config.seed + ddp.rank)
    splits = splits or load_splits(
        config.data, val_size=config.val_size, max_per_class=config.max_per_class, seed=config.seed
    )
    splits = replace(splits, normalization=normalization(config, splits))
    classes = splits.train.classes
    if spec.num_classes != len(classes):
        log(f"model: num_classes set to {len(classes)} from the data")
        spec = replace(spec, num_classes=len(classes))

    run_dir = Path(resume or config.run_dir or runs.default_run_dir(model_name(spec)))
    setup = _setup_line(config, device)
    model = build(spec)
    init_seconds = init_model(model, spec, splits, config.seed) if resume is None else 0.0
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = ModelEmaV3(model, decay=config.ema_decay, use_warmup=True) if config.ema else None
    optimizer = make_optimizer(config, model)
    batches = make_batches(
        splits.train.images, splits.train.labels, config, device, ddp.rank, ddp.world
    )
    if len(batches) == 0:
        raise UserError(
            f"{len(splits.train)} training images make no batch of "
            f"{config.batch_size}; lower --batch-size"
        )
    total_steps = config.epochs * len(batches)
    set_lr = make_schedule(config, optimizer, len(batches))
    augment = BatchAugment(config, splits.normalization, spec.num_classes, spec.input_size, device)
    loss_fn = make_loss(config)
    lookahead = (
        Lookahead(model, config.lookahead, config.lookahead_decay, total_steps)
        if config.lookahead
        else None
    )
    stem = whitened_stem(model, spec)
    stem_steps = round(config.whiten_bias_epochs * len(batches))  # the stem's bias trains

    start_epoch, best_acc, history = 0, -1.0, []
    patience_left = config.patience
    if resume is not None:
        state = checkpoint.load_state(run_dir / checkpoint.LAST_FILE)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if ema is not None:
                ema.module.load_state_dict(state["ema"])
            if lookahead is not None:
                lookahead.load_state_dict(state["lookahead"])
            set_rng_state(state["rng"][min(ddp.rank, len(state["rng"]) - 1)])
            start_epoch, best_acc = int(state["epoch"]) + 1, float(state["best_acc"])
            patience_left = int(state.get("patience_left", config.patience))
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise UserError(
                f"{run_dir / checkpoint.LAST_FILE}: not a resume state of this run "
                f"({shorten(' '.join(str(exc).split()))})"
            ) from None
        init_seconds = state.get("init_seconds", 0.0)
        history = [row for row in runs.read_history(run_dir) if row["epoch"] < start_epoch]
        log(f"resuming {run_dir} after epoch {start_epoch} of {config.epochs}")
    elif ddp.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.write_config(
            run_dir,
            {
                "config": config.to_dict(),
                "model": spec.to_dict(),
                "data": splits.notes,
                "normalization": splits.normalization.to_dict(),
                "provenance": runs.provenance(config.seed, argv),
            },
        )
    trained = model
    if ddp.world > 1:
        trained = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        trained = torch.compile(trained)
    evaluated = ema.module if ema is not None else model
    parameters = sum(p.numel() for p in model.parameters())
    if ddp.main:
        log(
            f"training {model_name(spec)} ({parameters:,} parameters) on {device} for "
            f"{config.epochs} epochs: {len(splits.train)} train / "
            f"{len(splits.val) if splits.val else 0} val images, "
            f"{'device-resident' if uses_device_batches(config) else 'worker'} batches, "
            f"{setup}; run directory {run_dir}"
        )
    with tracker.run(run_dir, history, parameters, resumed=resume is not None):
        for epoch in range(start_epoch, config.epochs):
            model.train()
            started = time.perf_counter()
            totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, seen
            progress = tqdm(
                batches.epoch(epoch),
                total=len(batches),
                leave=False,
                mininterval=1,
                desc=f"epoch {epoch + 1}/{config.epochs}",
                disable=not ddp.main,
            )
            for i, (images, labels) in enumerate(progress):
                step = epoch * len(batches) + i
                lr = set_lr(step)
                frozen = [stem.bias] if stem is not None and step >= stem_steps else []
                loss, logits = train_step(
                    trained, optimizer, augment, loss_fn, images, labels, device, config.amp, frozen
                )
                if lookahead is not None:
                    lookahead.after_step(model, step + 1)
                if ema is not None:
                    ema.update(model, step=step)
                totals += torch.stack(
                    [
                        loss.detach().double() * len(labels),
                        (logits.argmax(1) == labels).sum().double(),
                        torch.tensor(float(len(labels)), device=device),
                    ]
                )
                tracker.step(step, loss, lr)
                if i % 20 == 0 and not math.isfinite(totals[0].item()):
                    break
            loss_sum, correct, seen = _reduce(totals.tolist(), device, ddp.world)
            if not math.isfinite(loss_sum):
                raise Diverged(
                    f"the loss became {loss_sum} in epoch {epoch + 1}; stopped, and kept "
                    f"the last good checkpoint in {run_dir} (try a lower --lr)"
                )
            seconds = time.perf_counter() - started
            val = {}
            if splits.val is not None:
                val = evaluate(
                    evaluated, splits.val.images, splits.val.labels, splits, device, config.amp
                )
            row = {
                "epoch": epoch,
                "train_loss": loss_sum / seen,
                "train_acc": correct / seen,
                "val_loss": val.get("loss"),
                "val_acc": val.get("acc"),
                "lr": lr,
                "seconds": seconds,
                "images_per_s": seen / seconds,
            }
            history.append(row)
            # history.csv keeps its columns; top-5 goes to the console, the release and the
            # trackers.
            reported = {**row, **({"val_top5": val["top5"]} if "top5" in val else {})}
            score = row["val_acc"] if row["val_acc"] is not None else epoch  # no val: the last
            improved = score > best_acc + config.min_delta
            if improved:
                best_acc = score
                patience_left = config.patience
            else:
                patience_left -= 1
            if ddp.main:
                log(_epoch_line(reported, config.epochs, improved))
                if improved:
                    checkpoint.save_release(
                        run_dir / checkpoint.BEST_DIR,
                        evaluated,
                        classes,
                        splits.normalization,
                        {
                            "epoch": epoch + 1,
                            **{k: v for k, v in reported.items() if k.startswith("val_")},
                        },
                        _release_provenance(run_dir, config),
                        half=config.release_half,
                    )
                runs.write_history(run_dir, history)
            tracker.epoch(reported)
            state_rng = [rng_state()] if ddp.world == 1 else _gather(rng_state(), ddp.world)
            if ddp.main:
                checkpoint.save_state(
                    run_dir / checkpoint.LAST_FILE,
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "ema": ema.module.state_dict() if ema is not None else None,
                        "lookahead": lookahead.state_dict() if lookahead is not None else None,
                        "rng": state_rng,
                        "epoch": epoch,
                        "best_acc": best_acc,
                        "patience_left": patience_left,
                        "init_seconds": init_seconds,
                    },
                )
            if config.patience and patience_left <= 0:
                if ddp.main:
                    log(
                        f"early stop: no val accuracy gain over {config.min_delta} in "
                        f"{config.patience} epochs"
                    )
                break

        results = {}
        if ddp.main:
            results = _finish(run_dir, config, splits, device, history, init_seconds, log)
            # Drawn after training: the augmentations use the global RNGs, whose state the
            # resume checkpoint has already saved.
            save_image(augmented_samples(batches, augment), run_dir / SAMPLES_FILE, nrow=8)
            tracker.finish(results)
    if ddp.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return results


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


def _gather(state: dict, world: int) -> list[dict]:
    gathered: list = [None] * world
    dist.all_gather_object(gathered, state)
    return gathered


def _release_provenance(run_dir: Path, config: TrainConfig) -> dict:
    written = runs.read_config(run_dir)
    return {
        **written["provenance"],
        "run_dir": str(run_dir),
        "config": config.to_dict(),
        "data": written["data"],
    }


def _finish(
    run_dir: Path,
    config: TrainConfig,
    splits: DataSplits,
    device: torch.device,
    history: list[dict],
    init_seconds: float,
    log: Callable[[str], None],
) -> dict:
    """The test split, once, on the released weights (exactly what inference will load), with
    and without TTA; then results.json, the release's metrics, the plots and the test split's
    confusion matrix (at the configured TTA level)."""
    from budgetnet.evaluation.figures import confusion_figure
    from budgetnet.evaluation.report import confusion_matrix

    release = checkpoint.load_release(run_dir, device)
    metrics = dict(release.meta["metrics"])
    if splits.test is not None:
        for tta in sorted({0, config.tta}):  # the configured level last
            probs = infer(
                release.model,
                splits.test.images,
                splits.normalization,
                tta=tta,
                device=device,
                amp=config.amp,
            )
            scored = scores(probs, splits.test.labels)
            metrics[f"test_acc_tta{tta}"] = scored["acc"]
            if "top5" in scored:
                metrics[f"test_top5_tta{tta}"] = scored["top5"]
        matrix = confusion_matrix(probs.numpy(), splits.test.labels)
        confusion_figure(matrix, release.classes).savefig(
            run_dir / CONFUSION_FILE, dpi=100, bbox_inches="tight"
        )
    checkpoint.update_release_metrics(release.path, metrics)
    results = {
        "run_dir": str(run_dir),
        "epochs_run": len(history),
        # as airbench times it: the data-dependent initialisation plus the epochs, without the
        # per-epoch validation and checkpoints
        "train_seconds": init_seconds + sum(row["seconds"] for row in history),
        "init_seconds": init_seconds,
        **metrics,
    }
    runs.write_json(run_dir / "results.json", results)
    for out in filter(None, (run_dir, config.plots_dir)):
        plot_history(history, out, f"({model_name(release.model.spec)})")
    log(
        "results: "
        + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in results.items()
        )
    )
    return results
