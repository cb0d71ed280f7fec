"""Every training hyperparameter in one place, with units, and how they are set.

Defaults are the recipe of the 4.9M-parameter ResNet-24 Kaggle project (95%+ on CIFAR-10):
SGD + momentum, cosine annealing with linear warmup, random crop + flip, RandAugment,
RandomErasing, label smoothing 0.05. Values are resolved in this order, later wins:

    defaults  <  --preset NAME (configs/NAME.yaml)  <  --config FILE.yaml  <  flags

A config file holds these keys plus `model:` (a registered model's name, or a mapping of spec
fields with an optional `name:`); an unknown key anywhere is an error, so a typo never
silently trains the default. budgetnet.cli turns command lines into these settings.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from budgetnet.data.sources import IMAGE_SIZE, parse_train_splits
from budgetnet.errors import UserError, brief, reject_unknown, shorten
from budgetnet.files import read_yaml
from budgetnet.runs import REPO_ROOT

# `--mlflow` without a URI: MLFLOW_TRACKING_URI if set, else MLflow's local default store
# (./mlruns with MLflow 2; ./mlflow.db with MLflow 3, which retired the file store).
MLFLOW_DEFAULT = "default"


@dataclasses.dataclass
class TrainConfig:
    # data
    data: str | None = (
        None  # any source budgetnet.data.sources reads (None: $BUDGETNET_DATA, ./data)
    )
    max_per_class: int | None = None  # keep the first N training images of each class
    # images held out from train for validation (0 = none; None: a tenth of them, at most 5000;
    # a run records the count it held out)
    val_size: int | None = None
    # the splits the model trains on, joined by +: "train+test" trains on every labeled image
    # (for the model you submit; no test accuracy is then reported)
    train_splits: str = "train"
    normalize: str = "data"  # per-channel mean/std: data (of the training images) | imagenet
    # schedule
    epochs: int = 200
    # minutes the run may take (None = off): the step rate is measured on the first steps and
    # `epochs` set to end inside it (budgetnet.training.budget); config.yaml records the epochs
    time_budget: float | None = None
    batch_size: int = 128  # images per optimizer step, over all processes
    opt: str = "sgd"  # sgd | adam | adamw | muon (Muon for conv filters, SGD for the rest)
    lr: float = 0.1  # peak learning rate per `lr_base_size` images in a batch (linear scaling)
    lr_base_size: int = 128
    momentum: float = 0.9  # SGD momentum (Adam: beta1)
    nesterov: bool = False
    weight_decay: float = 5e-4  # not applied to BatchNorm weights and biases (see bias_decay)
    # airbench's decoupled units: lr per lr_base_size images with the step size independent of
    # the momentum (the optimizer gets lr * batch / lr_base_size / (1 + 1 / (1 - momentum))),
    # and weight_decay independent of lr (the optimizer gets weight_decay / lr), so that each
    # step shrinks the weights by weight_decay * batch / lr_base_size / (1 + 1 / (1 - momentum))
    # at the peak
    decoupled: bool = False
    bias_lr_scale: float = 1.0  # lr multiplier of BatchNorm biases (their decay per step kept)
    bias_decay: bool = False  # weight decay on BatchNorm weights and biases too (airbench)
    muon_lr: float = 0.24  # opt muon: the filters' step size (per step; updates are orthogonal)
    muon_momentum: float = 0.6  # opt muon: the filters' Nesterov momentum
    # cosine (linear warmup, then cosine) | onecycle | constant | linear (piecewise linear:
    # lr_start_factor x peak at step 0, the peak at warmup_epochs, lr_end_factor x peak at the end)
    sched: str = "cosine"
    warmup_epochs: float = 5.0  # cosine: linear warmup from 0; linear: where the peak is
    min_lr: float = 0.0  # cosine: learning rate at the last step, absolute
    lr_start_factor: float = 0.2  # linear: the first step's lr, as a fraction of the peak
    lr_end_factor: float = 0.07  # linear: the last step's lr, as a fraction of the peak
    onecycle_pct: float = 5 / 24  # onecycle: fraction of steps rising to the peak (epoch 5 of 24)
    # augmentation
    crop_padding: int = 4  # random crop after padding by this many pixels (0 = off)
    padding_mode: str = "constant"  # the crop's padding: constant (zeros) | reflect
    hflip: float = 0.5  # probability of a horizontal flip
    # alternating flip (airbench): each image is mirrored or not at random once, and every
    # other epoch the whole set is mirrored, so each image is seen both ways in turn (hflip is
    # then unused)
    altflip: bool = False
    # per-image automatic augmentation (None = off): timm RandAugment "rand-m9-n2-mstd0.5", timm
    # AugMix "augmix-m3-w3", torchvision "trivialaugment" (TrivialAugmentWide) or
    # "autoaugment-cifar10" (AutoAugment's CIFAR-10 policy)
    aa: str | None = "rand-m9-n2-mstd0.5"
    color_jitter: list[float] | None = None  # torchvision ColorJitter strengths: one value for
    #                            brightness, contrast and saturation (as timm's --color-jitter),
    #                            or 3 values, or 4 (+ hue)
    color_jitter_prob: float = 1.0  # probability of jittering an image
    grayscale_prob: float = 0.0  # probability of turning an image grey
    affine_degrees: float = 0.0  # RandomAffine: rotate by up to +- this many degrees,
    affine_translate: float = 0.0  # shift by up to +- this fraction of the side,
    affine_scale: float = 0.0  # and zoom by a factor in [1 - this, 1 + this] (0 = off)
    reprob: float = 0.25  # RandomErasing probability per image
    remode: str = "pixel"  # RandomErasing fill: const (the mean colour) | rand | pixel
    cutout: int = 0  # erase a cutout x cutout pixel square instead of a random rectangle (0 = off)
    # Gaussian-noise augmentation (shift robustness): this fraction of every batch gets pixel
    # noise of a standard deviation drawn per image from U(0, noise_std), in [0, 1] pixel units
    noise_prob: float = 0.0
    noise_std: float = 0.1
    mixup: float = 0.0  # Mixup alpha (0 = off)
    cutmix: float = 0.0  # CutMix alpha (0 = off)
    mixup_prob: float = 1.0  # probability of applying Mixup/CutMix to a batch
    mixup_switch_prob: float = 0.5  # probability of CutMix rather than Mixup when both are on
    smoothing: float = 0.05  # label smoothing of the cross-entropy
    # AugMix's Jensen-Shannon consistency loss: every image is seen clean and through two
    # `aa augmix-...` chains (3x the compute per image); timm JsdCrossEntropy
    jsd_loss: bool = False
    # knowledge distillation (budgetnet.training.objective): releases or run directories of
    # models trained by this project (one, or an ensemble of any size) that the student learns
    teacher: list[str] | None = None
    kd_alpha: float = 0.5  # weight of the distillation term (1 - kd_alpha: the labels' loss)
    kd_temperature: float = 4.0  # softmax temperature of teacher and student in that term
    # weights
    ema: bool = False  # keep an exponential moving average of the weights; it is evaluated
    ema_decay: float = 0.9998  # per optimizer step (timm ModelEmaV3, with warmup)
    # Lookahead-style averaging (airbench): every this many steps a slow copy of the weights
    # moves toward them and the network is reset to it (0 = off); budgetnet.training.lookahead
    lookahead: int = 0
    lookahead_decay: float = 0.95**5  # the slow copy's decay at the last step (ramps up as t^3)
    whiten_bias_epochs: float = 3.0  # a whitening stem's bias trains for this many epochs only
    # stochastic weight averaging (budgetnet.training.swa): from epoch swa_start x epochs on,
    # average the weights after every epoch, at lr swa_lr (per lr_base_size images, as lr; None:
    # keep the schedule's), then recompute BatchNorm statistics and release the average
    swa: bool = False
    swa_start: float = 0.75
    swa_lr: float | None = None
    # speed
    amp: bool = True  # bf16 autocast where the device computes bf16 natively (else float32)
    channels_last: bool = True
    threads: int = 0  # CPU threads (0 = every core this process may use)
    mallopt: bool = True  # CPU: keep freed memory for reuse (budgetnet.runtime.tune_allocator)
    compile: bool = False  # torch.compile the model
    device_data: str = "auto"  # keep uint8 data on the device and augment batches there:
    #                            auto (when no per-image PIL augmentation is asked) | on | off
    workers: int = 2  # DataLoader worker processes for the PIL augmentation path
    # evaluation and stopping
    tta: int = 1  # test-time augmentation level for the final test report (0, 1, 2)
    patience: int = 0  # stop after this many epochs without a better val accuracy (0 = never)
    min_delta: float = 0.0  # smallest val accuracy gain that counts as better
    # run
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    run_dir: str | None = None  # default runs/<time>-<model>
    plots_dir: str | None = None  # also publish the curves here (e.g. plots/)
    release_half: bool = True  # save the release weights in float16 (half the size)
    # tracking (budgetnet.training.tracking; the Markdown log training_log.md is always written)
    tensorboard: bool = False  # TensorBoard event files in the run directory
    # MLflow tracking URI to log to (None = off); `--mlflow` alone means MLFLOW_DEFAULT.
    mlflow: str | None = dataclasses.field(default=None, metadata={"bare": MLFLOW_DEFAULT})

    @property
    def effective_lr(self) -> float:
        """The optimizer's peak learning rate (torch's units, for the mean loss of a batch)."""
        lr = self.lr * self.batch_size / self.lr_base_size
        return lr / (1 + 1 / (1 - self.momentum)) if self.decoupled else lr

    @property
    def effective_weight_decay(self) -> float:
        """The optimizer's weight_decay (torch's units: added to the gradient, times the lr)."""
        return self.weight_decay / self.lr if self.decoupled else self.weight_decay

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES = {
    "opt": ("sgd", "adam", "adamw", "muon"),
    "sched": ("cosine", "onecycle", "constant", "linear"),
    "padding_mode": ("constant", "reflect"),
    "remode": ("const", "rand", "pixel"),
    "device_data": ("auto", "on", "off"),
    "tta": (0, 1, 2),
    "normalize": ("data", "imagenet"),
}

# Named recipes are YAML files in configs/ (`--preset NAME` is `--config configs/NAME.yaml`).
RECIPES_DIR = REPO_ROOT / "configs"


def recipe_file(name: str) -> Path:
    """The config file of recipe `name` ("cpu-quick" and "cpu_quick" name the same file)."""
    path = RECIPES_DIR / f"{name.replace('-', '_')}.yaml"
    if "/" in name or not path.is_file():
        raise UserError(
            f"unknown preset {shorten(repr(name))}; known: {', '.join(list_recipes())} "
            "(the files in configs/; a model is --model NAME)"
        )
    return path


def recipe_config(name: str) -> TrainConfig:
    """Recipe `name`'s training settings over the defaults (its `model:` is the caller's)."""
    path = recipe_file(name)
    values = read_config_file(path)
    values.pop("model", None)
    return merge(TrainConfig(), values, str(path))


def list_recipes() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def _check(config: TrainConfig) -> TrainConfig:
    for key, allowed in CHOICES.items():
        if getattr(config, key) not in allowed:
            raise UserError(
                f"{key} must be one of {', '.join(map(str, allowed))}, got {getattr(config, key)!r}"
            )
    for key in ("epochs", "batch_size", "lr_base_size"):
        if getattr(config, key) < 1:
            raise UserError(f"{key} must be at least 1, got {getattr(config, key)}")
    for key in (
        "reprob",
        "hflip",
        "smoothing",
        "mixup_prob",
        "mixup_switch_prob",
        "color_jitter_prob",
        "grayscale_prob",
        "affine_translate",
        "noise_prob",
        "noise_std",
    ):
        if not 0 <= getattr(config, key) <= 1:
            raise UserError(f"{key} must be in [0, 1], got {getattr(config, key)}")
    if config.affine_degrees < 0 or not 0 <= config.affine_scale < 1:
        raise UserError("affine_degrees must be non-negative and affine_scale in [0, 1)")
    if not 0 <= config.cutout < IMAGE_SIZE:
        raise UserError(f"cutout must be in [0, {IMAGE_SIZE}) pixels, got {config.cutout}")
    if config.cutout and not config.reprob:
        raise UserError("cutout is the shape RandomErasing cuts: give it a probability (--reprob)")
    if config.time_budget is not None and not 0 < config.time_budget <= 100_000:
        raise UserError(f"time_budget must be in (0, 100000] minutes, got {config.time_budget}")
    if config.lr <= 0 or config.weight_decay < 0 or config.warmup_epochs < 0:
        raise UserError("lr must be positive, weight_decay and warmup_epochs non-negative")
    parse_train_splits(config.train_splits)
    _check_fast_track(config)
    _check_kaggle_techniques(config)
    if (config.mixup or config.cutmix) and config.batch_size % 2:
        raise UserError("Mixup/CutMix pair each batch with its reverse: use an even batch size")
    if not 0 < config.onecycle_pct < 1:
        raise UserError(f"onecycle_pct must be in (0, 1), got {config.onecycle_pct}")
    return _check_color_jitter(config)


def short_run_warmup(config: TrainConfig) -> tuple[TrainConfig, str | None]:
    """A warmup that does not fit the run (the default 5 epochs when --epochs 1) becomes a
    fifth of the run; returns the config and a one-line note saying so (None if unchanged)."""
    too_long = config.warmup_epochs >= config.epochs and config.sched == "cosine"
    too_long |= config.warmup_epochs > config.epochs and config.sched == "linear"
    if not too_long:
        return config, None
    warmup = config.epochs / 5
    note = (
        f"note: warmup_epochs {config.warmup_epochs:g} does not fit a {config.epochs}-epoch "
        f"run; warming up for {warmup:g} epochs instead"
    )
    return dataclasses.replace(config, warmup_epochs=warmup), note


def _check_fast_track(config: TrainConfig) -> None:
    """The settings of the fast-track recipe: decoupled units, schedule, Muon, lookahead."""
    if config.decoupled and (config.opt not in ("sgd", "muon") or not 0 <= config.momentum < 1):
        raise UserError(
            f"decoupled units are for SGD (or Muon's SGD part) with a momentum in [0, 1), got "
            f"opt {config.opt}, momentum {config.momentum}"
        )
    for key in ("lr_start_factor", "lr_end_factor", "whiten_bias_epochs", "muon_lr"):
        if not getattr(config, key) >= 0:
            raise UserError(f"{key} must be non-negative, got {getattr(config, key)}")
    if not config.bias_lr_scale > 0:
        raise UserError(f"bias_lr_scale must be positive, got {config.bias_lr_scale}")
    if not 0 <= config.muon_momentum < 1 or not 0 <= config.lookahead_decay < 1:
        raise UserError("muon_momentum and lookahead_decay must be in [0, 1)")
    if config.opt == "muon" and config.sched == "onecycle":
        raise UserError(
            "opt muon pairs two optimizers, which onecycle cannot drive: use another sched"
        )
    if config.lookahead < 0 or config.threads < 0:
        raise UserError("lookahead (steps) and threads must be non-negative")


AA_NAMES = ("trivialaugment", "autoaugment-cifar10")  # torchvision's policies, by name
AA_PREFIXES = ("rand", "augmix")  # timm's configurable policies: rand-m9-n2, augmix-m3-w3
JSD_SPLITS = 3  # --jsd-loss: the clean view and two AugMix views of every image


def _check_kaggle_techniques(config: TrainConfig) -> None:
    """Augmentation policies, the JSD loss, distillation and SWA."""
    aa = config.aa
    if aa and aa not in AA_NAMES and aa.split("-")[0] not in AA_PREFIXES:
        raise UserError(
            f"aa {shorten(repr(aa))}: a timm rand-... or augmix-... policy, or one of "
            f"{', '.join(AA_NAMES)} (none = off)"
        )
    if config.jsd_loss and not (aa or "").startswith("augmix"):
        raise UserError("jsd_loss compares AugMix views: give an --aa augmix-... policy")
    if config.jsd_loss and (config.mixup or config.cutmix or config.altflip or config.teacher):
        raise UserError("jsd_loss does not combine with mixup, cutmix, altflip or a teacher")
    if config.teacher is not None and (
        not isinstance(config.teacher, list)
        or not config.teacher
        or not all(isinstance(path, str) for path in config.teacher)
    ):
        raise UserError(f"teacher must be a list of paths, got {brief(config.teacher)}")
    if not 0 <= config.kd_alpha <= 1 or not config.kd_temperature > 0:
        raise UserError("kd_alpha must be in [0, 1] and kd_temperature positive")
    if not 0 <= config.swa_start < 1 or (config.swa_lr is not None and not config.swa_lr > 0):
        raise UserError("swa_start must be in [0, 1) (a fraction of the epochs), swa_lr positive")


def _check_color_jitter(config: TrainConfig) -> TrainConfig:
    """A single number (as timm's --color-jitter takes in a config file) becomes a list."""
    jitter = config.color_jitter
    if jitter is None:
        return config
    if isinstance(jitter, int | float):
        jitter = [jitter]
    if (
        not isinstance(jitter, list | tuple)
        or len(jitter) not in (1, 3, 4)
        or not all(isinstance(v, int | float) and v >= 0 for v in jitter)
    ):
        raise UserError(
            "color_jitter takes 1, 3 or 4 non-negative strengths (brightness, contrast, "
            f"saturation, hue), got {config.color_jitter!r}"
        )
    return dataclasses.replace(config, color_jitter=[float(v) for v in jitter])


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _typed(name: str, value: Any, where: str) -> Any:
    """`value` as field `name`'s type, or a one-line error: no silent coercion of "10" or
    12.5 to an integer, no NaN or infinity, and "none" for an optional text setting is None."""
    kind = str(FIELDS[name].type)
    optional = "None" in kind
    if value is None or (optional and "str" in kind and str(value).lower() in ("none", "null")):
        if optional:
            return None
        raise UserError(f"{where}: {name} needs a value, got None")
    if kind.startswith("list"):  # color_jitter: checked by _check_color_jitter
        return value
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind.startswith("bool"):
        ok, expected = isinstance(value, bool), "true or false"
    elif kind.startswith("int"):
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif kind.startswith("float"):
        ok, expected = is_number and math.isfinite(value), "a finite number"
        value = float(value) if ok else value
    else:
        ok, expected = isinstance(value, str), "text"
    if not ok:
        hint = ""
        if isinstance(value, str) and kind.startswith("float") and _looks_numeric(value):
            hint = " (YAML reads 1e-3 as text: write 1.0e-3)"
        raise UserError(f"{where}: {name} must be {expected}, got {brief(value)}{hint}")
    return value


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def merge(config: TrainConfig, overrides: dict[str, Any], where: str) -> TrainConfig:
    """`config` with `overrides` applied; unknown keys and values of the wrong type are errors
    naming `where`."""
    reject_unknown(overrides, FIELDS, "setting", where)
    typed = {name: _typed(name, value, where) for name, value in overrides.items()}
    return _check(dataclasses.replace(config, **typed))


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
