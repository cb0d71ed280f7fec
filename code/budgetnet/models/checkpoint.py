"""Checkpoints: the release format that inference loads, and the resume state of a run.

A *release* is a folder with two files:
  model.safetensors  the weights (fp16 or fp32; safetensors cannot run code when loaded)
  model.json         format tag, the model's spec (to rebuild it exactly), the class names,
                     the preprocessing used in training (input size and memory order under
                     "preprocessing", the normalisation under "normalization"), metrics and
                     provenance
A run directory keeps its best model as a release in `best/`; publishing it is copying that
folder to `trained_model/`.

The *resume state* `last.pt` holds everything needed to continue a run bit for bit (model,
EMA, Lookahead, optimizer, RNG states, epoch, best accuracy, patience left; the learning rate
needs no state, it is a closed-form function of the step). It is read with `torch.load(weights_only=True)`:
only tensors and plain containers, so a tampered file cannot run code either.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from budgetnet.data.normalization import Normalization, Preprocessing
from budgetnet.errors import UserError, brief, shorten
from budgetnet.files import atomic_write, check_regular_file, read_regular_file
from budgetnet.models.builder import ResNet, build
from budgetnet.models.complexity import count_params
from budgetnet.models.spec import ResNetSpec

FORMAT = "budgetnet-release"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
BEST_DIR = "best"
LAST_FILE = "last.pt"


@dataclass
class Release:
    model: ResNet  # in the memory order `preprocessing` feeds it
    classes: list[str]
    preprocessing: Preprocessing
    meta: dict  # the whole model.json
    path: Path  # the folder it came from

    @property
    def normalization(self) -> Normalization:
        return self.preprocessing.normalization


def save_release(
    folder: str | Path,
    model: nn.Module,
    classes: list[str],
    preprocessing: Preprocessing,
    metrics: dict,
    provenance: dict,
    *,
    half: bool = False,
) -> Path:
    """Write model.safetensors and model.json into `folder`, each atomically."""
    from safetensors.torch import save
    from timm.utils import unwrap_model  # here: importing timm costs inference a second

    model = unwrap_model(model)  # the plain module under DDP and torch.compile
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
        "preprocessing": preprocessing.layout(),
        "normalization": preprocessing.normalization.to_dict(),
        "weights_dtype": str(dtype).removeprefix("torch."),
        "metrics": metrics,
        "provenance": provenance,
    }
    with atomic_write(folder / META_FILE) as handle:
        json.dump(meta, handle, indent=2)
    return folder


def update_release_metrics(release: Release, metrics: dict) -> None:
    """Replace the metrics in a loaded release's model.json (the weights stay as they are):
    the rest is the model.json `load_release` read and checked, so it is not read again."""
    with atomic_write(release.path / META_FILE) as handle:
        json.dump({**release.meta, "metrics": metrics}, handle, indent=2)


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


MAX_META_BYTES = 1 << 20  # model.json
MAX_WEIGHTS_BYTES = 1 << 30  # model.safetensors (the zoo's largest, ResNet-101, is 170 MB)


def _read_meta(meta_path: Path) -> dict:
    raw = read_regular_file(meta_path, MAX_META_BYTES, "release model.json")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(f"{meta_path}: not valid JSON ({shorten(str(exc))})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{meta_path}: not a budgetnet release (format tag missing)")
    if meta.get("version") != FORMAT_VERSION:
        raise UserError(
            f"{meta_path}: release format version {brief(meta.get('version'))}, this code "
            f"reads version {FORMAT_VERSION}"
        )
    return meta


# The dtypes a weight may be stored in: a floating tensor of the spec's network in float32,
# float16 or bfloat16 (float8, float64 or complex weights are refused from the header, before
# any is read), an integer buffer (BatchNorm's num_batches_tracked) exactly as the spec plans it.
FLOAT_WEIGHT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_INTEGER_DTYPES = {
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


def _check_weights_header(weights_path: Path, handle, expected: dict[str, torch.Tensor]) -> None:
    """Compare the tensor names, shapes and dtypes in the safetensors header (`handle`, an open
    `safe_open`) with the network the spec plans (built on the meta device: nothing allocated)
    before any weight is read."""
    header = {}
    for key in handle.keys():  # noqa: SIM118 (a safe_open handle is no dict)
        tensor = handle.get_slice(key)
        header[key] = (tuple(tensor.get_shape()), tensor.get_dtype())
    wrong = sorted(k for k in expected.keys() & header.keys() if expected[k].shape != header[k][0])
    if expected.keys() != header.keys() or wrong:
        missing = sorted(expected.keys() - header.keys())
        extra = sorted(header.keys() - expected.keys())
        raise UserError(
            f"{weights_path}: weights do not fit the spec in {META_FILE} (missing "
            f"{shorten(str(missing[:3]))}, unexpected {shorten(str(extra[:3]))}, wrong shape "
            f"{shorten(str(wrong[:3]))})"
        )
    for key in sorted(header):
        dtype, planned = header[key][1], expected[key].dtype
        if planned.is_floating_point:
            allowed, wanted = FLOAT_WEIGHT_DTYPES, "float32, float16 or bfloat16"
        else:
            allowed, wanted = (_INTEGER_DTYPES.get(planned),), str(planned).removeprefix("torch.")
        if dtype not in allowed:
            raise UserError(
                f"{weights_path}: {shorten(key)} is stored as {shorten(str(dtype), 20)}, "
                f"expected {wanted} (the dtypes a release may hold)"
            )


def _read_spec(path: str | Path) -> tuple[Path, dict, ResNetSpec, list[str], Preprocessing]:
    """A release's folder, its model.json and what it describes (spec, classes,
    preprocessing), checked; no weight is read."""
    folder = _release_folder(Path(path))
    meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.exists():
        raise UserError(
            f"{folder}: not a budgetnet release (needs {META_FILE} and "
            f"{WEIGHTS_FILE}; train one with `python code/train.py`)"
        )
    meta = _read_meta(meta_path)
    try:
        spec = ResNetSpec.from_dict(meta["spec"])
        classes = [str(c) for c in meta["classes"]]
        normalization = Normalization.from_dict(meta["normalization"])
        preprocessing = Preprocessing.from_layout(
            meta.get("preprocessing"), normalization, spec.input_size
        )
    except UserError as exc:
        raise UserError(f"{meta_path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{meta_path}: incomplete release metadata ({brief(exc, 80)})") from None
    if len(classes) != spec.num_classes:
        raise UserError(
            f"{meta_path}: {len(classes)} class names for a {spec.num_classes}-class model"
        )
    return folder, meta, spec, classes, preprocessing


def release_parameters(path: str | Path) -> tuple[Path, int]:
    """A release's folder and the parameters its spec plans (the closed-form count, exactly
    what the built network holds), from model.json alone: a budget is checked with it before
    anything is built or any weight read."""
    folder, _, spec, _, _ = _read_spec(path)
    return folder, count_params(spec)


def load_release(
    path: str | Path, device: torch.device | str = "cpu", *, max_params: int | None = None
) -> Release:
    """Rebuild the network from the spec stored with the weights and load them (as float32).

    Everything is checked before it is trusted, each check before the memory it guards is
    spent: the metadata's size and fields, the spec's limits, the parameters it plans against
    `max_params` (None: no budget), the weights' names, shapes and dtypes against the spec
    (read from the file's header), and that every weight is finite."""
    from safetensors import SafetensorError, safe_open

    folder, meta, spec, classes, preprocessing = _read_spec(path)
    meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
    params = count_params(spec)
    if max_params is not None and params > max_params:
        raise UserError(
            f"{meta_path}: the spec asks for {params:,} parameters, over the budget of "
            f"{max(max_params, 0):,}; refused before the network is built"
        )
    with torch.device("meta"):
        planned = build(spec).state_dict()
    check_regular_file(weights_path, MAX_WEIGHTS_BYTES, "weights file")
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            _check_weights_header(weights_path, handle, planned)
            model = build(spec)
            # One tensor at a time, straight into the network: no second copy of the weights.
            target, bad = model.state_dict(), []
            with torch.no_grad():
                for key in planned:
                    value = handle.get_tensor(key)
                    if value.is_floating_point() and not value.isfinite().all():
                        bad.append(key)
                    elif not bad:
                        target[key].copy_(value)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{weights_path}: cannot read weights ({shorten(str(exc))})") from None
    except RuntimeError as exc:
        raise UserError(f"{weights_path}: weights do not load ({shorten(str(exc))})") from None
    if bad:
        raise UserError(f"{weights_path}: non-finite weights in {shorten(str(bad[:3]))}")
    model = model.to(device, memory_format=preprocessing.memory_format).eval()
    return Release(model, classes, preprocessing, meta, folder)


def save_state(path: str | Path, state: dict) -> None:
    """The resume state, written atomically so a run killed mid-save keeps its previous one."""
    with atomic_write(path, "wb") as handle:
        torch.save(state, handle)


# last.pt: model, EMA, Lookahead, SWA and optimizer states, a few times the weights' cap
MAX_STATE_BYTES = 4 << 30


def load_state(path: str | Path) -> dict:
    """The resume state, read only from a regular file of at most MAX_STATE_BYTES (a named
    pipe or a device is refused before anything is read, rather than waited on forever)."""
    from budgetnet.files import open_regular_file

    path = Path(path)
    try:
        missing = not (path.exists() or path.is_symlink())
    except OSError as exc:  # a name longer than the file system allows
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    if missing:
        raise UserError(f"{path}: no resume state (was the run started with this version?)")
    with open_regular_file(path, MAX_STATE_BYTES, "resume state") as handle:
        try:
            return torch.load(handle, map_location="cpu", weights_only=True)
        except (
            RuntimeError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError,
            IndexError, pickle.UnpicklingError,
        ) as exc:  # fmt: skip
            raise UserError(f"{path}: unreadable resume state ({shorten(str(exc))})") from None
