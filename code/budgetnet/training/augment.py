"""Training batches, two ways, both yielding uint8 (B, 3, H, W) images and int64 labels on
the training device; normalisation, RandomErasing and Mixup/CutMix then run on the batch in
`BatchAugment`, whichever way the images came.

- `DeviceBatches` (as airbench does): the whole uint8 data set lives on the device; random
  crop (zero or reflect padding) and flip are done on whole batches there. No workers, no PIL.
  Used whenever no per-image PIL augmentation is asked for.
- `WorkerBatches`: a DataLoader with worker processes running per-image PIL transforms
  (random crop, flip, RandomAffine, ColorJitter, RandomGrayscale, timm's RandAugment), for
  recipes that need them.

The order of images each epoch comes from `epoch_order(seed, epoch, ...)`, a pure function, so a
resumed run sees exactly the batches an uninterrupted one would, and every process of a
distributed run takes its own slice of the same order. The alternating flip (`altflip_mask` of
`altflip_base`) is a pure function of (seed, epoch, image index) too, and is applied to the batch by both sources.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from budgetnet.data.normalization import (
    Normalization,
    Preprocessing,
    as_uint8_nchw,
    channel_statistics,
)
from budgetnet.data.sources import IMAGE_SIZE
from budgetnet.errors import UserError
from budgetnet.training.config import JSD_SPLITS, TrainConfig


def epoch_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7919 + rank)


def altflip_base(seed: int, count: int) -> torch.Tensor:
    """The fixed random half of `count` images that the alternating flip mirrors in even
    epochs (on the CPU); it does not depend on the epoch, so batch sources draw it once."""
    return torch.rand(count, generator=torch.Generator().manual_seed(seed + 0x5EED)) < 0.5


def altflip_mask(base: torch.Tensor, epoch: int, index: torch.Tensor) -> torch.Tensor:
    """Whether images `index` are mirrored in `epoch` under the alternating flip: the half
    `base` (from `altflip_base`) in even epochs, the other half in odd ones. On base's device."""
    return base[index.to(base.device, non_blocking=True)] ^ bool(epoch % 2)


def epoch_order(
    seed: int, epoch: int, count: int, batch_size: int, rank: int = 0, world: int = 1
) -> torch.Tensor:
    """This process's image indices for `epoch`: a seeded permutation cut to whole global
    batches (the last partial batch is dropped, as usual for BatchNorm), then sliced by rank."""
    order = torch.randperm(count, generator=epoch_generator(seed, epoch))
    order = order[: count // batch_size * batch_size]
    return order.view(-1, world, batch_size // world)[:, rank].reshape(-1)


class _Batches:
    """What both batch sources share: where they run, and this process's slice of the
    per-epoch order."""

    def __init__(
        self,
        labels: np.ndarray,
        config: TrainConfig,
        device: torch.device,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.count = len(labels)
        self.config, self.device, self.rank, self.world = config, device, rank, world
        self.per_process = config.optimizer.batch_size // world
        # On the device once: redrawing it per batch and copying it there costs a sync.
        self.flip_base = (
            altflip_base(config.runtime.seed, self.count).to(device)
            if config.augment.altflip
            else None
        )

    def __len__(self) -> int:
        return self.count // self.config.optimizer.batch_size

    def order(self, epoch: int) -> torch.Tensor:
        seed, batch = self.config.runtime.seed, self.config.optimizer.batch_size
        return epoch_order(seed, epoch, self.count, batch, self.rank, self.world)

    def altflip(self, x: torch.Tensor, epoch: int, index: torch.Tensor) -> torch.Tensor:
        """The batch of images `index` with the alternating flip applied (if it is on)."""
        if not self.config.augment.altflip:
            return x
        flip = altflip_mask(self.flip_base, epoch, index)
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


class DeviceBatches(_Batches):
    def __init__(self, images: np.ndarray, labels: np.ndarray, *args, **kwargs) -> None:
        super().__init__(labels, *args, **kwargs)
        self.images = as_uint8_nchw(images).to(self.device)
        self.labels = torch.from_numpy(labels).to(self.device)

    def epoch(self, epoch: int):
        augment = self.config.augment
        order = self.order(epoch).to(self.device)
        gen = epoch_generator(self.config.runtime.seed, epoch, self.rank + 1)
        pad = augment.crop_padding
        for start in range(0, len(order), self.per_process):
            index = order[start : start + self.per_process]
            x = self.images[index]
            if pad:
                x = random_crop(x, pad, gen, augment.padding_mode)
            if augment.altflip:
                x = self.altflip(x, epoch, index)
            elif augment.hflip:
                flip = (torch.rand(len(x), generator=gen) < augment.hflip).to(
                    self.device, non_blocking=True
                )
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            yield x, self.labels[index]


def random_crop(
    x: torch.Tensor, pad: int, gen: torch.Generator, padding_mode: str = "constant"
) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding=pad, padding_mode=...) for a whole batch: pad
    (zeros or a reflection), then cut each image at its own random offset."""
    n, _, h, w = x.shape
    mode = "reflect" if padding_mode == "reflect" else "constant"
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode=mode)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device, non_blocking=True)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device, non_blocking=True)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def per_image_augmentations(config: TrainConfig, image_size: int) -> list:
    """The augmentations that work on one PIL image at a time; they follow the crop and flip
    (as in timm's pipeline): RandomAffine, ColorJitter, RandomGrayscale, then the `aa` policy
    (with --jsd-loss the policy makes the extra views instead, `pil_transform`)."""
    from torchvision import transforms

    augment, steps = config.augment, []
    if augment.affine_degrees or augment.affine_translate or augment.affine_scale:
        shift, zoom = augment.affine_translate, augment.affine_scale
        steps.append(
            transforms.RandomAffine(
                augment.affine_degrees,
                translate=(shift, shift) if shift else None,
                scale=(1 - zoom, 1 + zoom) if zoom else None,
            )
        )
    if augment.color_jitter and any(augment.color_jitter):
        jitter = augment.color_jitter
        strengths = jitter * 3 if len(jitter) == 1 else jitter  # one value: as timm expands it
        steps.append(
            transforms.RandomApply(
                [transforms.ColorJitter(*strengths)], p=augment.color_jitter_prob
            )
        )
    if augment.grayscale_prob:
        steps.append(transforms.RandomGrayscale(augment.grayscale_prob))
    if augment.aa and not config.loss.jsd_loss:
        steps.append(auto_augment(augment.aa, image_size))
    return steps


def auto_augment(policy: str, image_size: int):
    """An `aa` policy as a PIL transform: timm's RandAugment ("rand-...") or AugMix
    ("augmix-..."), torchvision's TrivialAugmentWide or AutoAugment's CIFAR-10 policy."""
    from timm.data import auto_augment as timm_aa
    from torchvision import transforms

    if policy == "trivialaugment":
        return transforms.TrivialAugmentWide()
    if policy == "autoaugment-cifar10":
        return transforms.AutoAugment(transforms.AutoAugmentPolicy.CIFAR10)
    # timm scales translations to the image (45% of its side), as it does for ImageNet; on
    # 32 px images that is 14 px, not ImageNet's 100.
    hparams = {"translate_const": int(image_size * 0.45)}
    if policy.startswith("augmix"):
        return timm_aa.augment_and_mix_transform(policy, hparams)
    return timm_aa.rand_augment_transform(policy, hparams)


class JsdViews:
    """--jsd-loss: the image after `base`, and JSD_SPLITS - 1 more views through the AugMix
    policy, as uint8 tensors stacked (JSD_SPLITS, 3, H, W) (timm's AugMixDataset, per image)."""

    def __init__(self, base, policy, to_tensor) -> None:
        self.base, self.policy, self.to_tensor = base, policy, to_tensor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        clean = self.base(image)
        views = [clean] + [self.policy(clean) for _ in range(JSD_SPLITS - 1)]
        return torch.stack([self.to_tensor(view) for view in views])


def pil_transform(config: TrainConfig, image_size: int):
    """Per-image PIL pipeline: random crop, flip, the per-image augmentations, to a uint8
    tensor."""
    from torchvision import transforms

    augment, steps = config.augment, []
    if augment.crop_padding:
        steps.append(
            transforms.RandomCrop(
                image_size, padding=augment.crop_padding, padding_mode=augment.padding_mode
            )
        )
    if augment.hflip and not augment.altflip:  # the alternating flip is applied to the batch
        steps.append(transforms.RandomHorizontalFlip(augment.hflip))
    steps += per_image_augmentations(config, image_size)
    if config.loss.jsd_loss:
        policy = auto_augment(augment.aa, image_size)
        return JsdViews(transforms.Compose(steps), policy, transforms.PILToTensor())
    steps.append(transforms.PILToTensor())
    return transforms.Compose(steps)


class _PILImages(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class WorkerBatches(_Batches):
    def __init__(self, images: np.ndarray, labels: np.ndarray, *args, **kwargs) -> None:
        super().__init__(labels, *args, **kwargs)
        self.dataset = _PILImages(images, labels, pil_transform(self.config, images.shape[1]))

    def epoch(self, epoch: int):
        order = self.order(epoch).tolist()
        # Workers seed Python, NumPy and torch from this generator: augmentations are a function
        # of (seed, epoch, rank) too.
        loader = DataLoader(
            self.dataset,
            batch_size=self.per_process,
            sampler=order,
            num_workers=self.config.runtime.workers,
            generator=epoch_generator(self.config.runtime.seed, epoch, self.rank + 1),
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for start, (x, y) in zip(range(0, len(order), self.per_process), loader, strict=True):
            if x.ndim == 5:  # JSD views (B, splits, 3, H, W) -> every clean image first
                x = x.transpose(0, 1).reshape(-1, *x.shape[2:])
            x = x.to(self.device, non_blocking=True)
            index = torch.tensor(order[start : start + self.per_process])
            yield self.altflip(x, epoch, index), y.to(self.device, non_blocking=True)


def uses_device_batches(config: TrainConfig) -> bool:
    """Device-resident batches unless a per-image PIL augmentation needs workers."""
    if config.runtime.device_data == "auto":
        return not _needs_workers(config)
    return config.runtime.device_data == "on"


def _needs_workers(config: TrainConfig) -> bool:
    return config.loss.jsd_loss or bool(per_image_augmentations(config, IMAGE_SIZE))


def make_batches(
    images: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
):
    kind = DeviceBatches if uses_device_batches(config) else WorkerBatches
    if kind is DeviceBatches and _needs_workers(config):
        raise UserError(
            "--device-data on cannot apply per-image augmentations (RandAugment, colour "
            "jitter, grayscale, affine): use --device-data auto or off"
        )
    batch = config.optimizer.batch_size
    if batch % world:
        raise ValueError(f"batch size {batch} must divide by {world} processes")
    return kind(images, labels, config, device, rank, world)


def gaussian_noise(
    x: torch.Tensor, fraction: float, max_std: float, normalization: Normalization
) -> torch.Tensor:
    """Gaussian-noise augmentation on a normalised batch: `round(fraction * B)` images, chosen
    at random, get pixel noise of a standard deviation drawn per image from U(0, max_std) (in
    [0, 1] pixel units, so one setting means the same whatever the normalisation), and are
    clipped to the valid pixel range as a noisy photograph is. The rest stay clean, so clean
    accuracy is still learned (Rusak et al. 2020 train on half-clean batches). Draws from the
    global RNG, whose state the resume checkpoint keeps."""
    count = round(fraction * len(x))
    if not count or not max_std:
        return x
    mean, std = channel_statistics(normalization, x.device, x.dtype)
    chosen = torch.randperm(len(x), device=x.device)[:count]
    sigma = torch.rand(count, 1, 1, 1, device=x.device, dtype=x.dtype) * max_std
    pixels = x[chosen] * std + mean
    noisy = (pixels + sigma * torch.randn_like(pixels)).clamp_(0, 1)
    out = x.clone()  # keeps x's memory order
    out[chosen] = (noisy - mean) / std
    return out


class BatchAugment:
    """What happens to every training batch on the device: normalise (the shared function),
    Gaussian noise on a fraction of it, RandomErasing (timm) and Mixup/CutMix (timm), which
    also turn labels into soft targets."""

    def __init__(
        self,
        config: TrainConfig,
        preprocessing: Preprocessing,
        num_classes: int,
        device: torch.device,
    ) -> None:
        from timm.data import Mixup
        from timm.data.random_erasing import RandomErasing

        augment = config.augment
        # The model's: its size replaced epoch by epoch under progressive resizing.
        self.preprocessing = preprocessing
        self.noise = (augment.noise_prob, augment.noise_std)
        self.erase = None
        if augment.reprob:
            # Cutout (albumentations' CoarseDropout with one hole) is RandomErasing of a fixed
            # square: one area, aspect ratio 1. As a share of the image it survives resizing.
            area = (augment.cutout / IMAGE_SIZE) ** 2
            square = {"min_area": area, "max_area": area, "min_aspect": 1.0}
            self.erase = RandomErasing(
                augment.reprob,
                mode=augment.remode,
                device=str(device),
                num_splits=JSD_SPLITS if config.loss.jsd_loss else 0,  # the clean view stays clean
                **(square if augment.cutout else {}),
            )
        self.mix = (
            Mixup(
                mixup_alpha=augment.mixup,
                cutmix_alpha=augment.cutmix,
                prob=augment.mixup_prob,
                switch_prob=augment.mixup_switch_prob,
                label_smoothing=config.loss.smoothing,
                num_classes=num_classes,
            )
            if augment.mixes
            else None
        )

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        x = self.preprocessing(images)
        if self.noise[0]:
            x = gaussian_noise(x, *self.noise, self.preprocessing.normalization)
        if self.erase is not None:
            x = self.erase(x)
        if self.mix is not None:
            x, labels = self.mix(x, labels)
        return x, labels


def augmented_samples(batches, augment: BatchAugment, count: int = 32) -> torch.Tensor:
    """The first `count` training images of epoch 0 as the model gets them (augmented,
    resized), with the normalisation undone: float (count, 3, H, W) in [0, 1], on the CPU.

    Drawing them uses the global RNGs (RandomErasing, Mixup): call it after training."""
    images, labels = next(iter(batches.epoch(0)))
    x, _ = augment(images[:count], labels[:count])
    normalization = augment.preprocessing.normalization
    mean = torch.tensor(normalization.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(normalization.std, device=x.device).view(1, 3, 1, 1)
    return (x.float() * std + mean).clamp(0, 1).cpu()
