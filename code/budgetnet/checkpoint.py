"""Checkpoints: the release format that inference loads, and the resume state of a run.

A *release* is a folder with two files:
  model.safetensors  the weights (fp16 or fp32; safetensors cannot run code when loaded)
  model.json         format tag, the model's spec (to rebuild it exactly), the class names,
                     the normalisation used in training, metrics and provenance
A run directory keeps its best model as a release in `best/`; publishing it is copying that
folder to `trained_model/`.

The *resume state* `last.pt` holds everything needed to continue a run bit for bit (model,
EMA, optimizer, scheduler, RNG states, epoch). It is read with `torch.load(weights_only=True)`:
only tensors and plain containers, so a tampered file cannot run code either.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from budgetnet.data import Normalization
from budgetnet.errors import UserError
from budgetnet.files import atomic_write
from budgetnet.models import ResNet, ResNetSpec, build

FORMAT = "budgetnet-release"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
BEST_DIR = "best"
LAST_FILE = "last.pt"


@dataclass
class Release:
    model: ResNet
    classes: list[str]
    normalization: Normalization
    meta: dict  # the whole model.json
    path: Path  # the folder it came from


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def save_release(
    folder: str | Path,
    model: nn.Module,
    classes: list[str],
    normalization: Normalization,
    metrics: dict,
    provenance: dict,
    *,
    half: bool = False,
) -> Path:
    """Write model.safetensors and model.json into `folder`, each atomically."""
    from safetensors.torch import save

    model = unwrap(model)
    spec: ResNetSpec = model.spec
    if len(classes) != spec.num_classes:
        raise ValueError(f"{len(classes)} class names for a {spec.num_classes}-class model")
    dtype = torch.float16 if half else torch.float32
    # BatchNorm's num_batches_tracked is an integer tensor: keep it as it is.
    state = {
        k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    folder = Path(folder)
    with atomic_write(folder / WEIGHTS_FILE, "wb") as handle:
        handle.write(save(state))
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "classes": list(classes),
        "normalization": normalization.to_dict(),
        "weights_dtype": str(dtype).removeprefix("torch."),
        "metrics": metrics,
        "provenance": provenance,
    }
    with atomic_write(folder / META_FILE) as handle:
        json.dump(meta, handle, indent=2)
    return folder


def update_release_metrics(folder: str | Path, metrics: dict) -> None:
    """Replace the metrics in a release's model.json (the weights stay as they are)."""
    path = Path(folder) / META_FILE
    meta = json.loads(path.read_text())
    meta["metrics"] = metrics
    with atomic_write(path) as handle:
        json.dump(meta, handle, indent=2)


def _release_folder(path: Path) -> Path:
    """A release folder, a run directory (its best/ release) or one of the two files."""
    if path.is_file():
        if path.name in (WEIGHTS_FILE, META_FILE):
            return path.parent
        raise UserError(
            f"{path}: not a budgetnet release (expected a folder with {META_FILE} "
            f"and {WEIGHTS_FILE}, a run directory, or one of those files); a "
            "checkpoint saved by another tool cannot be loaded"
        )
    if (path / BEST_DIR / META_FILE).is_file():
        return path / BEST_DIR
    if path.is_dir():
        return path
    raise UserError(
        f"{path}: no such checkpoint (give a run directory, a release folder such "
        f"as trained_model/, or its {META_FILE})"
    )


def load_release(path: str | Path, device: torch.device | str = "cpu") -> Release:
    """Rebuild the network from the spec stored with the weights and load them (as float32)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = _release_folder(Path(path))
    meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise UserError(
            f"{folder}: not a budgetnet release (needs {META_FILE} and "
            f"{WEIGHTS_FILE}; train one with `python code/train.py`)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{meta_path}: not a budgetnet release (format tag missing)")
    if meta.get("version") != FORMAT_VERSION:
        raise UserError(
            f"{meta_path}: release format version {meta.get('version')}, this "
            f"code reads version {FORMAT_VERSION}"
        )
    try:
        spec = ResNetSpec.from_dict(meta["spec"])
        classes = [str(c) for c in meta["classes"]]
        normalization = Normalization.from_dict(meta["normalization"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{meta_path}: incomplete release metadata ({exc!r})") from None
    if len(classes) != spec.num_classes:
        raise UserError(
            f"{meta_path}: {len(classes)} class names for a {spec.num_classes}-class model"
        )
    model = build(spec)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{weights_path}: cannot read weights ({exc})") from None
    expected = model.state_dict()
    wrong = sorted(k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape)
    if expected.keys() != state.keys() or wrong:
        missing = sorted(expected.keys() - state.keys())
        extra = sorted(state.keys() - expected.keys())
        raise UserError(
            f"{weights_path}: weights do not fit the spec in {META_FILE} "
            f"(missing {missing[:3]}, unexpected {extra[:3]}, wrong shape "
            f"{wrong[:3]})"
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return Release(model.to(device).eval(), classes, normalization, meta, folder)


def save_state(path: str | Path, state: dict) -> None:
    """The resume state, written atomically so a run killed mid-save keeps its previous one."""
    with atomic_write(path, "wb") as handle:
        torch.save(state, handle)


def load_state(path: str | Path) -> dict:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(
            f"{path}: no resume state (was the run started with this version?)"
        ) from None
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise UserError(f"{path}: unreadable resume state ({exc})") from None
