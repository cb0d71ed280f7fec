"""Every training hyperparameter in one place, with units, grouped by what it sets.

Defaults are the recipe of the 4.9M-parameter ResNet-24 Kaggle project (95%+ on CIFAR-10):
SGD + momentum, cosine annealing with linear warmup, random crop + flip, RandAugment,
RandomErasing, label smoothing 0.05. Values are resolved in this order, later wins:

    defaults  <  --preset NAME (configs/NAME.yaml)  <  --config FILE.yaml  <  flags

`TrainConfig` is a frozen composition of groups, each a dataclass that checks itself when it
is built (its fields' types and ranges, then the settings within it that depend on each
other); TrainConfig checks the settings that span groups:

    dataset     data, max_per_class, val_size, train_splits, normalize
    optimizer   batch_size, opt, lr, lr_base_size, momentum, nesterov, weight_decay, ...
    schedule    epochs, time_budget, sched, warmup_epochs, ..., whiten_bias_epochs
    augment     crop_padding, hflip, altflip, aa, color_jitter, ..., reprob, mixup, cutmix
    loss        smoothing, jsd_loss
    filtering   filter_keep, filter_proxy, filter_every
    distill     teacher, kd_alpha, kd_temperature
    averaging   ema, ema_decay, lookahead, lookahead_decay, swa, swa_start, swa_lr
    runtime     seed, device, amp, channels_last, threads, mallopt, compile, device_data, workers
    evaluation  tta, patience, min_delta
    outputs     run_dir, plots_dir, release_half, tensorboard, mlflow

Code reads `config.optimizer.lr`; everything outside it names a setting by its flat name,
unique across groups (`lr`, `reprob`): config files and `model:`, flags, `merge`, a study's
space, and the run directory's config.yaml (`TrainConfig.flat()` / `from_flat`). An unknown
key is an error, so a typo never silently trains the default. budgetnet.cli turns command
lines into these settings.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from budgetnet.data.sources import IMAGE_SIZE, parse_train_splits
from budgetnet.errors import UserError, brief, reject_unknown, shorten, shown
from budgetnet.files import read_yaml
from budgetnet.models.zoo import MODELS
from budgetnet.runs import REPO_ROOT
from budgetnet.runtime import MAX_THREADS

# `--mlflow` without a URI: MLFLOW_TRACKING_URI if set, else MLflow's local default store
# (./mlruns with MLflow 2; ./mlflow.db with MLflow 3, which retired the file store).
MLFLOW_DEFAULT = "default"


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a number setting may take, low to high; an `open` end is excluded."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    unit: str = ""  # what the number counts, for messages ("pixels")

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def text(self, integer: bool) -> str:
        """ "at least 1 and at most 1024" for whole numbers, "in [0, 1)" for the others."""
        unit = f" {self.unit}" if self.unit else ""
        if integer:
            low = f"greater than {self.low}" if self.low_open else f"at least {self.low}"
            high = f"less than {self.high}" if self.high_open else f"at most {self.high}"
            return f"{low} and {high}{unit}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}{unit}"


def number(default: float | None, low: float, high: float, unit: str = "", **ends: bool) -> Any:
    """A number setting's field: its default and its Range (`low_open`, `high_open`)."""
    return dataclasses.field(
        default=default, metadata={"range": Range(low, high, unit=unit, **ends)}
    )


def one_of(default: Any, choices: tuple) -> Any:
    """A setting's field that takes one of `choices` (also the flag's argparse choices)."""
    return dataclasses.field(default=default, metadata={"choices": choices})


def text(default: str | None, max_length: int = 0, pattern: str = "", words: str = "") -> Any:
    """A text setting's field with a tighter limit than MAX_TEXT, or a pattern to match (which
    `words` describe)."""
    metadata = {"max_length": max_length} if max_length else {}
    if pattern:
        metadata.update(pattern=pattern, words=words or pattern)
    return dataclasses.field(default=default, metadata=metadata)


# Limits far beyond any sensible run that keep every number a config file can give (a huge
# integer, a negative count) from reaching torch, numpy or the filesystem.
MAX_EPOCHS = 100_000
MAX_MINUTES = 100_000.0  # time_budget
MAX_BATCH = 1 << 20  # images per step (batch_size, lr_base_size)
MAX_IMAGES = 10_000_000  # max_per_class, val_size
MAX_STEPS = 1_000_000  # lookahead's period
MAX_LR = 1e4  # any learning rate or decay factor (decoupled units reach 10 and more)
MAX_WORKERS = 256  # DataLoader worker processes
MAX_SEED = 2**32 - 1  # numpy's legacy seed range; torch takes more
MAX_TEXT = 4096  # characters of any text setting (paths, URIs, names)
MAX_TEACHERS = 64  # models in a distillation ensemble
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d{1,4})?"


# --------------------------------------------------------------------------------------------
# A field's resolved type, and the base every group shares: checked when built


@dataclasses.dataclass(frozen=True)
class Kind:
    """A setting's type as its annotation resolves (`list[float] | None`): the values it takes
    are `base` (bool, int, float or str), or a list of them when `many`; None when
    `optional`."""

    base: type
    optional: bool = False
    many: bool = False

    @classmethod
    def of(cls, annotation: Any) -> Kind:
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        parts = typing.get_args(annotation) if union else (annotation,)
        (inner,) = [part for part in parts if part is not type(None)]
        many = typing.get_origin(inner) is list
        base = typing.get_args(inner)[0] if many else inner
        if base not in (bool, int, float, str):
            raise TypeError(f"a setting is a bool, int, float or str (or a list of them): {base}")
        return cls(base, type(None) in parts, many)


@functools.cache
def kinds(group: type) -> dict[str, Kind]:
    """The Kind of each field of a group class, from its resolved annotations."""
    hints = typing.get_type_hints(group)
    return {field.name: Kind.of(hints[field.name]) for field in dataclasses.fields(group)}


class Group:
    """A frozen dataclass of settings, each declared with its type and range (`number`,
    `one_of`, `text`; bools and paths need none beyond their type). Built, it holds each value
    as its field's type and within its range (a one-line UserError naming the setting
    otherwise); a group whose settings depend on each other checks that next."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            kind = kinds(type(self))[field.name]
            value = _typed(field.name, kind, getattr(self, field.name))
            object.__setattr__(self, field.name, value)  # frozen: set once, here, typed
            if value is not None:
                _in_range(field, kind, value)


# --------------------------------------------------------------------------------------------
# The groups


@dataclasses.dataclass(frozen=True)
class DataConfig(Group):
    """Which images train, and how they are normalized."""

    # any source budgetnet.data.sources reads (None: $BUDGETNET_DATA, ./data)
    data: str | None = None
    max_per_class: int | None = number(None, 1, MAX_IMAGES)  # the first N train images per class
    # images held out from train for validation (0 = none; None: a tenth of them, at most 5000;
    # a run records the count it held out)
    val_size: int | None = number(None, 0, MAX_IMAGES)
    # the splits the model trains on, joined by +: "train+test" trains on every labeled image
    # (for the model you submit; no test accuracy is then reported)
    train_splits: str = text("train", max_length=64)
    # per-channel mean/std: data (of the training images) | imagenet
    normalize: str = one_of("data", ("data", "imagenet"))

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_train_splits(self.train_splits)  # train first, then known splits, each once


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(Group):
    """The optimizer and its step: batch, learning rate, momentum, weight decay, Muon."""

    batch_size: int = number(128, 1, MAX_BATCH)  # images per optimizer step, over all processes
    # sgd | adam | adamw | muon (Muon for conv filters, SGD for the rest)
    opt: str = one_of("sgd", ("sgd", "adam", "adamw", "muon"))
    # peak learning rate per `lr_base_size` images in a batch (linear scaling)
    lr: float = number(0.1, 0, MAX_LR, low_open=True)
    lr_base_size: int = number(128, 1, MAX_BATCH)
    momentum: float = number(0.9, 0, 1, high_open=True)  # SGD momentum (Adam: beta1)
    nesterov: bool = False  # SGD (and Muon's SGD part): needs a momentum above 0
    # not applied to BatchNorm weights and biases (see bias_decay)
    weight_decay: float = number(5e-4, 0, MAX_LR)
    # airbench's decoupled units: lr per lr_base_size images with the step size independent of
    # the momentum (the optimizer gets lr * batch / lr_base_size / (1 + 1 / (1 - momentum))),
    # and weight_decay independent of lr (the optimizer gets weight_decay / lr), so that each
    # step shrinks the weights by weight_decay * batch / lr_base_size / (1 + 1 / (1 - momentum))
    # at the peak
    decoupled: bool = False
    # lr multiplier of BatchNorm biases (their decay per step kept)
    bias_lr_scale: float = number(1.0, 0, MAX_LR, low_open=True)
    bias_decay: bool = False  # weight decay on BatchNorm weights and biases too (airbench)
    # opt muon: the filters' step size (per step; updates are orthogonal)
    muon_lr: float = number(0.24, 0, MAX_LR)
    # opt muon: the filters' Nesterov momentum
    muon_momentum: float = number(0.6, 0, 1, high_open=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_decoupled_units()
        self._check_nesterov()

    def _check_decoupled_units(self) -> None:
        if self.decoupled and self.opt not in ("sgd", "muon"):
            raise UserError(f"decoupled units are for SGD (or Muon's SGD part), got opt {self.opt}")

    def _check_nesterov(self) -> None:
        if self.nesterov and self.opt in ("sgd", "muon") and not self.momentum > 0:
            raise UserError("nesterov needs a momentum above 0 (SGD's Nesterov momentum)")

    @property
    def effective_lr(self) -> float:
        """The optimizer's peak learning rate (torch's units, for the mean loss of a batch)."""
        lr = self.lr * self.batch_size / self.lr_base_size
        return lr / (1 + 1 / (1 - self.momentum)) if self.decoupled else lr

    @property
    def effective_weight_decay(self) -> float:
        """The optimizer's weight_decay (torch's units: added to the gradient, times the lr)."""
        return self.weight_decay / self.lr if self.decoupled else self.weight_decay


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(Group):
    """How long the run trains and how the learning rate moves through it."""

    epochs: int = number(200, 1, MAX_EPOCHS)
    # minutes the run may take (None = off): the step rate is measured on the first steps and
    # `epochs` set to end inside it (budgetnet.training.budget); config.yaml records the epochs
    time_budget: float | None = number(None, 0, MAX_MINUTES, "minutes", low_open=True)
    # cosine (linear warmup, then cosine) | onecycle | constant | linear (piecewise linear:
    # lr_start_factor x peak at step 0, the peak at warmup_epochs, lr_end_factor x peak at the end)
    sched: str = one_of("cosine", ("cosine", "onecycle", "constant", "linear"))
    # cosine: linear warmup from 0; linear: where the peak is
    warmup_epochs: float = number(5.0, 0, MAX_EPOCHS, "epochs")
    min_lr: float = number(0.0, 0, MAX_LR)  # cosine: learning rate at the last step, absolute
    # linear: the first and the last step's lr, as a fraction of the peak
    lr_start_factor: float = number(0.2, 0, 1)
    lr_end_factor: float = number(0.07, 0, 1)
    # onecycle: fraction of steps rising to the peak (epoch 5 of 24)
    onecycle_pct: float = number(5 / 24, 0, 1, low_open=True, high_open=True)
    # a whitening stem's bias trains for this many epochs only
    whiten_bias_epochs: float = number(3.0, 0, MAX_EPOCHS, "epochs")
    # Progressive resizing: the batches of the first `progressive_until` of the epochs are
    # downscaled, growing linearly from `progressive_size` pixels to the full size; the rest
    # train at the full size, so the statistics BatchNorm keeps are those of the test images.
    progressive_size: int = number(0, 0, 1024, "pixels")  # 0 = off
    progressive_until: float = number(0.5, 0, 1, high_open=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_progressive_share()

    def _check_progressive_share(self) -> None:
        if self.progressive_size and not self.progressive_until:
            raise UserError("progressive_size needs a share of the epochs (--progressive-until)")


@dataclasses.dataclass(frozen=True)
class AugmentConfig(Group):
    """What each training image goes through: crop, flip, policies, erasing, noise, mixing."""

    # random crop after padding by this many pixels (0 = off; reflect padding needs less than
    # the image side)
    crop_padding: int = number(4, 0, IMAGE_SIZE, "pixels", high_open=True)
    # the crop's padding: constant (zeros) | reflect
    padding_mode: str = one_of("constant", ("constant", "reflect"))
    hflip: float = number(0.5, 0, 1)  # probability of a horizontal flip
    # alternating flip (airbench): each image is mirrored or not at random once, and every
    # other epoch the whole set is mirrored, so each image is seen both ways in turn (hflip is
    # then unused)
    altflip: bool = False
    # per-image automatic augmentation (None = off): timm RandAugment "rand-m9-n2-mstd0.5", timm
    # AugMix "augmix-m3-w3", torchvision "trivialaugment" (TrivialAugmentWide) or
    # "autoaugment-cifar10" (AutoAugment's CIFAR-10 policy); checked by `aa_sections`
    aa: str | None = text("rand-m9-n2-mstd0.5", max_length=200)
    # torchvision ColorJitter strengths: one value for brightness, contrast and saturation (as
    # timm's --color-jitter), or 3 values, or 4 (+ hue, at most 0.5)
    color_jitter: list[float] | None = dataclasses.field(
        default=None, metadata={"range": Range(0, 10), "lengths": (1, 3, 4)}
    )
    color_jitter_prob: float = number(1.0, 0, 1)  # probability of jittering an image
    grayscale_prob: float = number(0.0, 0, 1)  # probability of turning an image grey
    # RandomAffine: rotate by up to +- this many degrees,
    affine_degrees: float = number(0.0, 0, 180, "degrees")
    affine_translate: float = number(0.0, 0, 1)  # shift by up to +- this fraction of the side,
    # and zoom by a factor in [1 - this, 1 + this] (0 = off)
    affine_scale: float = number(0.0, 0, 1, high_open=True)
    reprob: float = number(0.25, 0, 1)  # RandomErasing probability per image
    # RandomErasing fill: const (the mean colour) | rand | pixel
    remode: str = one_of("pixel", ("const", "rand", "pixel"))
    # erase a cutout x cutout pixel square instead of a random rectangle (0 = off)
    cutout: int = number(0, 0, IMAGE_SIZE, "pixels", high_open=True)
    # Gaussian-noise augmentation (shift robustness): this fraction of every batch gets pixel
    # noise of a standard deviation drawn per image from U(0, noise_std), in [0, 1] pixel units
    noise_prob: float = number(0.0, 0, 1)
    noise_std: float = number(0.1, 0, 1)
    mixup: float = number(0.0, 0, 100)  # Mixup alpha (0 = off)
    cutmix: float = number(0.0, 0, 100)  # CutMix alpha (0 = off)
    mixup_prob: float = number(1.0, 0, 1)  # probability of applying Mixup/CutMix to a batch
    # probability of CutMix rather than Mixup when both are on
    mixup_switch_prob: float = number(0.5, 0, 1)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_cutout()
        self._check_aa_policy()
        self._check_hue()

    def _check_cutout(self) -> None:
        if self.cutout and not self.reprob:
            raise UserError(
                "cutout is the shape RandomErasing cuts: give it a probability (--reprob)"
            )

    def _check_aa_policy(self) -> None:
        if self.aa and self.aa not in AA_NAMES:
            aa_sections(self.aa)  # a timm policy: each section known and in range

    def _check_hue(self) -> None:
        jitter = self.color_jitter
        if jitter is not None and len(jitter) == 4 and not jitter[3] <= 0.5:
            raise UserError(
                f"color_jitter's hue (the 4th value) must be in [0, 0.5], got {jitter[3]:g}"
            )

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (Mixup or CutMix): pairs of images, soft targets."""
        return bool(self.mixup or self.cutmix)


@dataclasses.dataclass(frozen=True)
class LossConfig(Group):
    """The task loss: label smoothing, AugMix's consistency term."""

    smoothing: float = number(0.05, 0, 1)  # label smoothing of the cross-entropy
    # AugMix's Jensen-Shannon consistency loss: every image is seen clean and through two
    # `aa augmix-...` chains (3x the compute per image); timm JsdCrossEntropy
    jsd_loss: bool = False


@dataclasses.dataclass(frozen=True)
class FilterConfig(Group):
    """Data filtering (airbench96_faster, Jordan 2024; budgetnet.training.filtering): a small
    proxy network, trained beside the model on the same batches, ranks each batch's images by
    its loss, and the model steps on the hardest share only, at about that share of the cost."""

    # the share of each batch the model trains on (1 = off): the images the proxy finds hardest
    filter_keep: float = number(1.0, 0, 1, low_open=True)
    # the proxy: a registered model (python code/summary.py --list), much smaller than the model
    filter_proxy: str = text("fastres_proxy", max_length=200)
    # the proxy ranks every batch but steps on one in this many (airbench96_faster: 4)
    filter_every: int = number(4, 1, MAX_STEPS, "steps")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.filter_keep < 1 and self.filter_proxy not in MODELS:
            raise UserError(
                f"unknown filter_proxy {shown(self.filter_proxy, 80)}; known: {', '.join(MODELS)}"
            )

    @property
    def active(self) -> bool:
        return self.filter_keep < 1


@dataclasses.dataclass(frozen=True)
class DistillConfig(Group):
    """Knowledge distillation (budgetnet.training.objective)."""

    # releases or run directories of models trained by this project (one, or an ensemble of up
    # to MAX_TEACHERS) that the student learns
    teacher: list[str] | None = dataclasses.field(
        default=None, metadata={"lengths": range(1, MAX_TEACHERS + 1)}
    )
    # weight of the distillation term (1 - kd_alpha: the labels' loss)
    kd_alpha: float = number(0.5, 0, 1)
    # softmax temperature of teacher and student in that term
    kd_temperature: float = number(4.0, 0, 100, low_open=True)


@dataclasses.dataclass(frozen=True)
class AveragingConfig(Group):
    """Averages of the weights: EMA, Lookahead, SWA."""

    ema: bool = False  # keep an exponential moving average of the weights; it is evaluated
    ema_decay: float = number(0.9998, 0, 1)  # per optimizer step (timm ModelEmaV3, with warmup)
    # Lookahead-style averaging (airbench): every this many steps a slow copy of the weights
    # moves toward them and the network is reset to it (0 = off); budgetnet.training.lookahead
    lookahead: int = number(0, 0, MAX_STEPS, "steps")
    # the slow copy's decay at the last step (ramps up as t^3)
    lookahead_decay: float = number(0.95**5, 0, 1, high_open=True)
    # stochastic weight averaging (budgetnet.training.swa): from epoch swa_start x epochs on,
    # average the weights after every epoch, at lr swa_lr (per lr_base_size images, as lr; None:
    # keep the schedule's), then recompute BatchNorm statistics and release the average
    swa: bool = False
    swa_start: float = number(0.75, 0, 1, high_open=True)  # a fraction of the epochs
    swa_lr: float | None = number(None, 0, MAX_LR, low_open=True)


@dataclasses.dataclass(frozen=True)
class RuntimeConfig(Group):
    """Where and how fast it runs, and its seed: what may differ between equal recipes."""

    seed: int = number(0, 0, MAX_SEED)
    device: str = text(
        "auto", pattern=DEVICE_PATTERN, words="auto, cpu, mps, cuda or cuda:N"
    )  # auto | cpu | cuda | cuda:N | mps
    amp: bool = True  # bf16 autocast where the device computes bf16 natively (else float32)
    channels_last: bool = True
    # CPU threads (0 = every core this process may use); checked before torch sees it
    threads: int = number(0, 0, MAX_THREADS)
    mallopt: bool = True  # CPU: keep freed memory for reuse (budgetnet.runtime.tune_allocator)
    compile: bool = False  # torch.compile the model
    # keep uint8 data on the device and augment batches there: auto (when no per-image PIL
    # augmentation is asked) | on | off
    device_data: str = one_of("auto", ("auto", "on", "off"))
    # DataLoader worker processes for the PIL augmentation path (0 = in this process)
    workers: int = number(2, 0, MAX_WORKERS)


@dataclasses.dataclass(frozen=True)
class EvaluationConfig(Group):
    """The final test report's TTA, and early stopping on validation accuracy."""

    tta: int = one_of(1, (0, 1, 2))  # test-time augmentation level for the final test report
    # stop after this many epochs without a better val accuracy (0 = never)
    patience: int = number(0, 0, MAX_EPOCHS, "epochs")
    min_delta: float = number(0.0, 0, 1)  # smallest val accuracy gain that counts as better


@dataclasses.dataclass(frozen=True)
class OutputConfig(Group):
    """What the run leaves besides its run directory's record, and where."""

    run_dir: str | None = None  # default runs/<time>-<model>
    plots_dir: str | None = None  # also publish the curves here (e.g. plots/)
    release_half: bool = True  # save the release weights in float16 (half the size)
    # tracking (budgetnet.training.tracking; the Markdown log training_log.md is always written)
    tensorboard: bool = False  # TensorBoard event files in the run directory
    # MLflow tracking URI to log to (None = off); `--mlflow` alone means MLFLOW_DEFAULT.
    mlflow: str | None = dataclasses.field(default=None, metadata={"bare": MLFLOW_DEFAULT})


# --------------------------------------------------------------------------------------------
# The whole config: its groups, and the settings that span them


def _group(kind: type) -> Any:
    return dataclasses.field(default_factory=kind)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting, by group (`config.optimizer.lr`); each group checked when it is built, and
    the settings across groups here, so a config built in code is held to the same limits as
    one read from a file or flags. Outside code names settings flat (`flat`, `from_flat`,
    `with_values`, `merge`)."""

    dataset: DataConfig = _group(DataConfig)
    optimizer: OptimizerConfig = _group(OptimizerConfig)
    schedule: ScheduleConfig = _group(ScheduleConfig)
    augment: AugmentConfig = _group(AugmentConfig)
    loss: LossConfig = _group(LossConfig)
    filtering: FilterConfig = _group(FilterConfig)
    distill: DistillConfig = _group(DistillConfig)
    averaging: AveragingConfig = _group(AveragingConfig)
    runtime: RuntimeConfig = _group(RuntimeConfig)
    evaluation: EvaluationConfig = _group(EvaluationConfig)
    outputs: OutputConfig = _group(OutputConfig)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # a group, not a mapping of its settings
            kind = field.default_factory
            if not isinstance(getattr(self, field.name), kind):
                raise TypeError(f"TrainConfig.{field.name} must be a {kind.__name__}")
        self._check_muon_schedule()
        self._check_mixup_pairs()
        self._check_jsd_views()

    def _check_muon_schedule(self) -> None:
        if self.optimizer.opt == "muon" and self.schedule.sched == "onecycle":
            raise UserError(
                "opt muon pairs two optimizers, which onecycle cannot drive: use another sched"
            )

    def _check_mixup_pairs(self) -> None:
        if self.augment.mixes and self.optimizer.batch_size % 2:
            raise UserError("Mixup/CutMix pair each batch with its reverse: use an even batch size")

    def _check_jsd_views(self) -> None:
        """The JSD loss compares a clean view with two AugMix views of the same image."""
        if not self.loss.jsd_loss:
            return
        augment = self.augment
        if not (augment.aa or "").startswith("augmix"):
            raise UserError("jsd_loss compares AugMix views: give an --aa augmix-... policy")
        if augment.mixes or augment.altflip or self.distill.teacher:
            raise UserError("jsd_loss does not combine with mixup, cutmix, altflip or a teacher")
        if self.filtering.active:
            raise UserError("jsd_loss keeps an image's three views together: no filter_keep")

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name: what config.yaml, checkpoints and trackers record."""
        return {
            name: value
            for field in dataclasses.fields(self)
            for name, value in dataclasses.asdict(getattr(self, field.name)).items()
        }

    def with_values(self, **values: Any) -> TrainConfig:
        """This config with settings replaced by flat name (`lr=0.2`): the groups they belong
        to are rebuilt, and so checked, then the whole; an unknown name is an error."""
        reject_unknown(values, SETTINGS, "setting")
        changed: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            changed.setdefault(SETTINGS[name].group, {})[name] = value
        groups = {key: dataclasses.replace(getattr(self, key), **v) for key, v in changed.items()}
        return dataclasses.replace(self, **groups)

    @classmethod
    def from_flat(cls, values: Mapping[str, Any], where: str) -> TrainConfig:
        """The defaults with flat `values` over them (a config file, a run's config.yaml of any
        version: a setting it lacks takes its default); errors name `where`."""
        return merge(cls(), values, where)


class Setting(NamedTuple):
    """Where a flat name lives: TrainConfig's group attribute, the field, its resolved type."""

    group: str
    field: dataclasses.Field
    kind: Kind


GROUPS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(TrainConfig)}
SETTINGS: dict[str, Setting] = {
    field.name: Setting(group, field, kinds(kind)[field.name])
    for group, kind in GROUPS.items()
    for field in dataclasses.fields(kind)
}
if len(SETTINGS) != sum(len(dataclasses.fields(kind)) for kind in GROUPS.values()):
    raise TypeError("a flat setting name appears in two groups")  # flat names must stay unique


# Named recipes are YAML files in configs/ (`--preset NAME` is `--config configs/NAME.yaml`).
RECIPES_DIR = REPO_ROOT / "configs"


def recipe_file(name: str) -> Path:
    """The config file of recipe `name` ("cpu-quick" and "cpu_quick" name the same file)."""
    path = RECIPES_DIR / f"{name.replace('-', '_')}.yaml"
    if "/" in name or "\0" in name or len(name) > 200 or not path.is_file():
        raise UserError(
            f"unknown preset {shown(name, 80)}; known: {', '.join(list_recipes())} "
            "(the files in configs/; a model is --model NAME)"
        )
    return path


def recipe_config(name: str) -> TrainConfig:
    """Recipe `name`'s training settings over the defaults (its `model:` is the caller's)."""
    path = recipe_file(name)
    values = read_config_file(path)
    values.pop("model", None)
    return TrainConfig.from_flat(values, str(path))


def list_recipes() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


# --------------------------------------------------------------------------------------------
# Types and ranges, checked and described


def range_text(name: str) -> str:
    """What setting `name` accepts, in words ("at least 0 and at most 256", "in [0, 1]")."""
    setting = SETTINGS[name]
    return _range_words(setting.field, setting.kind)


def _range_words(field: dataclasses.Field, kind: Kind) -> str:
    if "choices" in field.metadata:
        return "one of " + ", ".join(map(str, field.metadata["choices"]))
    words = []
    if "lengths" in field.metadata:
        lengths = field.metadata["lengths"]
        count = (
            f"{lengths.start} to {lengths.stop - 1}"
            if isinstance(lengths, range)
            else ", ".join(map(str, lengths[:-1])) + f" or {lengths[-1]}"
        )
        words.append(f"{count} values")
    if "range" in field.metadata:
        words.append(field.metadata["range"].text(kind.base is int))
    if kind.base is str:
        if "words" in field.metadata:
            words.append(field.metadata["words"])
        else:
            words.append(f"text of at most {field.metadata.get('max_length', MAX_TEXT)} characters")
    if kind.base is bool:
        words.append("true or false")
    return ", each ".join(words) + (" (or none)" if kind.optional else "")


def _in_range(field: dataclasses.Field, kind: Kind, value: Any) -> None:
    """`value` (already of the field's type, not None) within the field's declared limits."""
    name, meta = field.name, field.metadata
    if "choices" in meta and value not in meta["choices"]:
        raise UserError(f"{name} must be {_range_words(field, kind)}, got {shown(value)}")
    items = value if isinstance(value, list) else [value]
    if "lengths" in meta and len(items) not in meta["lengths"]:
        raise UserError(
            f"{name} takes {_range_words(field, kind)}, got {len(items)}: {shown(value)}"
        )
    for item in items:
        if isinstance(item, str):
            _check_text(field, kind, item)
        elif "range" in meta and isinstance(item, int | float) and item not in meta["range"]:
            raise UserError(f"{name} must be {_range_words(field, kind)}, got {shown(value)}")


def _check_text(field: dataclasses.Field, kind: Kind, value: str) -> None:
    name, limit = field.name, field.metadata.get("max_length", MAX_TEXT)
    if len(value) > limit:
        raise UserError(f"{name} is {len(value)} characters long; at most {limit}: {shown(value)}")
    if "\0" in value:
        raise UserError(f"{name} holds a NUL character: {shown(value)}")
    pattern = field.metadata.get("pattern")
    if pattern and not re.fullmatch(pattern, value):
        raise UserError(f"{name} must be {_range_words(field, kind)}, got {shown(value)}")


def _typed(name: str, kind: Kind, value: Any) -> Any:
    """`value` as a setting of `kind`, or a one-line error: no silent coercion of "10" or 12.5
    to an integer, no NaN or infinity, and "none" for an optional text setting is None. Lists:
    each item so (one number for a list of numbers is a list of one)."""
    if value is None or (
        kind.optional
        and kind.base is str
        and isinstance(value, str)
        and value.lower() in ("none", "null")
    ):
        if kind.optional:
            return None
        raise UserError(f"{name} needs a value, got None")
    if not kind.many:
        return _typed_item(name, kind.base, value)
    if kind.base is float and _is_number(value):
        value = [value]  # color_jitter: 0.4, as timm's --color-jitter takes it
    if not isinstance(value, list | tuple):
        expected = "numbers" if kind.base is float else "paths"
        raise UserError(f"{name} must be a list of {expected}, got {brief(value)}")
    return [_typed_item(f"{name}[{i}]", kind.base, item) for i, item in enumerate(value)]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _typed_item(name: str, base: type, value: Any) -> Any:
    if base is bool:
        ok, expected = isinstance(value, bool), "true or false"
    elif base is int:
        ok, expected = _is_number(value) and isinstance(value, int), "an integer"
    elif base is float:
        try:
            ok = _is_number(value) and math.isfinite(value)
        except OverflowError:  # an integer too large for a float
            ok = False
        expected = "a finite number"
        value = float(value) if ok else value
    else:
        ok, expected = isinstance(value, str), "text"
    if not ok:
        hint = ""
        if isinstance(value, str) and base is float and _looks_numeric(value):
            hint = " (YAML reads 1e-3 as text: write 1.0e-3)"
        raise UserError(f"{name} must be {expected}, got {brief(value)}{hint}")
    return value


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except (ValueError, OverflowError):
        return False
    return True


def short_run_warmup(config: TrainConfig) -> tuple[TrainConfig, str | None]:
    """A warmup that does not fit the run (the default 5 epochs when --epochs 1) becomes a
    fifth of the run; returns the config and a one-line note saying so (None if unchanged)."""
    schedule = config.schedule
    too_long = schedule.warmup_epochs >= schedule.epochs and schedule.sched == "cosine"
    too_long |= schedule.warmup_epochs > schedule.epochs and schedule.sched == "linear"
    if not too_long:
        return config, None
    warmup = schedule.epochs / 5
    note = (
        f"note: warmup_epochs {schedule.warmup_epochs:g} does not fit a {schedule.epochs}-epoch "
        f"run; warming up for {warmup:g} epochs instead"
    )
    return config.with_values(warmup_epochs=warmup), note


# --------------------------------------------------------------------------------------------
# Augmentation policies: timm's, read as timm reads them

AA_NAMES = ("trivialaugment", "autoaugment-cifar10")  # torchvision's policies, by name
JSD_SPLITS = 3  # --jsd-loss: the clean view and two AugMix views of every image
# The sections timm reads after "rand-" and "augmix-" (timm.data.auto_augment), with the
# values it can use: magnitudes above 10 are clipped to mmax (at most timm's 10), and `t` names
# a transform set. A section timm would skip or assert on is refused here instead.
AA_SECTIONS = {
    "rand": {
        "m": (int, Range(0, 30)), "n": (int, Range(0, 16)), "p": (float, Range(0, 1)),
        "mstd": (float, Range(0, 1000)), "mmax": (int, Range(0, 10)), "inc": (int, Range(0, 1)),
        "t": (str, ("weights", "3aw", "3a")),
    },
    "augmix": {
        "m": (int, Range(0, 30)), "w": (int, Range(1, 16)), "d": (int, Range(0, 16)),
        "a": (float, Range(0, 100, low_open=True)), "b": (int, Range(0, 1)),
        "mstd": (float, Range(0, 1000)),
    },
}  # fmt: skip


def aa_sections(policy: str) -> dict[str, Any]:
    """The sections of a timm policy ("rand-m9-n2-mstd0.5" -> {"m": 9, "n": 2, "mstd": 0.5}),
    each known to timm and in range; a one-line error otherwise."""
    kind, *sections = policy.split("-")
    where = f"aa {shown(policy, 60)}"
    if kind not in AA_SECTIONS:
        raise UserError(
            f"{where}: a timm rand-... or augmix-... policy, or one of {', '.join(AA_NAMES)} "
            "(none = off)"
        )
    known, values = AA_SECTIONS[kind], {}
    for section in sections:
        if kind == "rand" and section.startswith("t"):
            key, raw = "t", section[1:]
        else:
            match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d+)?)", section)
            key, raw = match.groups() if match else (section, "")
        if key not in known or not raw or key in values:
            raise UserError(
                f"{where}: {shown(section, 20)} is no {kind} section of the form KEY + value, "
                f"each once (keys {', '.join(known)})"
            )
        kind_of, allowed = known[key]
        try:
            value = kind_of(raw)
        except ValueError:
            value = None
        if value is None or value not in allowed:
            limits = (
                allowed.text(kind_of is int)
                if isinstance(allowed, Range)
                else "one of " + ", ".join(allowed)
            )
            raise UserError(
                f"{where}: section {key} must be {'an integer ' if kind_of is int else ''}{limits}, got {shown(raw, 20)}"
            )
        values[key] = value
    return values


# --------------------------------------------------------------------------------------------
# Settings by flat name, from files and flags


def merge(config: TrainConfig, overrides: Mapping[str, Any], where: str) -> TrainConfig:
    """`config` with flat `overrides` applied; unknown keys and values of the wrong type or
    out of range are one-line errors naming `where`."""
    reject_unknown(overrides, SETTINGS, "setting", where)
    try:
        return config.with_values(**overrides)
    except UserError as exc:
        raise UserError(f"{shorten(str(where), 100)}: {exc}") from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such config file")
    content = read_yaml(path, "config file")
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise UserError(f"{path}: expected a mapping of settings, got {brief(content)}")
    return content
