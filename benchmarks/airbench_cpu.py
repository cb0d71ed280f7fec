"""Run airbench's own `train94`/`train95`/`train96` (the PyPI package, unmodified) on the CPU.

    python benchmarks/airbench_cpu.py --version 94 --seed 0 --workdir W

`W/cifar10/train.pt` and `test.pt` hold the data (cpu_vs_airbench.py writes them from our JPEG
copy in airbench's format). The package is written for CUDA; the only adaptations are those
of device and precision, made from outside by patching torch in this process:
  - `.cuda()` and `map_location` become the CPU; CUDA events become wall-clock timers (and
    synchronisation a no-op), so airbench still times exactly what it times on a GPU: the
    whitening init plus the epochs;
  - weights and data stay float32 (`.half()` is a no-op); where the CPU computes bf16 natively
    (the same rule as budgetnet's `amp`) each forward pass of the network runs under bf16
    autocast, its logits returned in float32, as a CPU training loop is written; else float32.
    The autocast region opens and closes with every forward pass because autocast keeps its
    bf16 copies of the weights until the outermost region exits: one region around the whole
    of `train()` ran every step on the first step's weights (10% accuracy), and put the
    whitening covariance and its eigenvectors in bf16 too (airbench computes them in float32).
`--mallopt` adds one thing that is not airbench's: budgetnet's allocator setting
(`budgetnet.runtime.tune_allocator`), to show how much of a time ratio it accounts for; such a
run is reported as its own system, never as airbench.
Prints one JSON line: test accuracy at TTA 0 and 2 (airbench's `evaluate`), airbench's training
seconds, parameters and forward FLOPs per image.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "code"))

from budgetnet.runtime import amp_dtype, tune_allocator  # noqa: E402

INTERVALS: list[float] = []  # every interval airbench adds to its total, in seconds


class WallClockEvent:
    """torch.cuda.Event's timing interface on the CPU's clock."""

    def __init__(self, enable_timing: bool = True) -> None:
        self.time = 0.0

    def record(self, stream=None) -> None:
        self.time = time.perf_counter()

    def elapsed_time(self, end: WallClockEvent) -> float:
        INTERVALS.append(end.time - self.time)
        return 1e3 * (end.time - self.time)  # milliseconds, as CUDA's


def adapt_to_cpu() -> None:
    """Device and precision, nothing else (see the module docstring)."""
    real_load = torch.load

    def load_on_cpu(*args, **kwargs):
        kwargs["map_location"] = "cpu"
        return real_load(*args, **kwargs)

    torch.load = load_on_cpu
    torch.cuda.Event = WallClockEvent
    torch.cuda.synchronize = lambda *args, **kwargs: None
    nn.Module.cuda = lambda self, *args, **kwargs: self
    nn.Module.half = lambda self: self
    torch.Tensor.half = lambda self, *args, **kwargs: self.float()


class AutocastSequential(nn.Sequential):
    """airbench's network (an nn.Sequential, indexed by its training code) with each forward
    pass under bf16 autocast and float32 logits out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = super().forward(x)
        return out.float()


def autocast_net(make_net):
    """`make_net` whose networks run their forward passes under bf16 autocast."""

    def make() -> nn.Module:
        net = make_net()
        net.__class__ = AutocastSequential  # same modules, names and indices
        return net

    return make


def forward_flops(model: nn.Module) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        weight = next(model.parameters())  # float32 on the CPU, half on CUDA
        x = torch.zeros(1, 3, 32, 32, device=weight.device, dtype=weight.dtype)
        model(x.contiguous(memory_format=torch.channels_last))
    return counter.get_total_flops()


def run_parser(description: str) -> argparse.ArgumentParser:
    """The flags of one airbench run, on either device: version, seed, data folder."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--version", choices=("94", "95", "96"), default="94")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, required=True, help="holds cifar10/*.pt")
    return parser


def main() -> None:
    parser = run_parser(__doc__.splitlines()[0])
    parser.add_argument("--mallopt", action="store_true", help="budgetnet's allocator setting")
    args = parser.parse_args()
    adapt_to_cpu()
    if args.mallopt and not tune_allocator():
        sys.exit("--mallopt: this C library is not glibc")
    import airbench

    os.chdir(args.workdir)  # airbench reads ./cifar10/train.pt and test.pt
    torch.manual_seed(args.seed)
    bf16 = amp_dtype(torch.device("cpu")) is not None
    train = getattr(airbench, f"train{args.version}")
    make_net = getattr(airbench, f"make_net{args.version}")
    model = train(make_net=autocast_net(make_net) if bf16 else make_net, verbose=False)
    system = f"airbench{args.version}" + (" + heap reuse" if args.mallopt else "")
    precision = "bf16 autocast" if bf16 else "float32"
    print(json.dumps(result_row(airbench, args.version, args.seed, model, system, precision)))


def result_row(airbench, version: str, seed: int, model: nn.Module, system: str, precision: str):
    """The run's JSON row: test accuracy at TTA 0 and 2 (airbench's `evaluate`), airbench's
    training seconds (the intervals its own timer added), parameters and forward FLOPs."""
    test = airbench.CifarLoader("cifar10", train=False, batch_size=2000)
    accuracy = {f"test_acc_tta{t}": airbench.evaluate(model, test, tta_level=t) for t in (0, 2)}
    make_net = getattr(airbench, f"make_net{version}")
    return {
        "system": system,
        "seed": seed,
        "epochs": getattr(airbench, f"lib_airbench{version}").hyp["opt"]["train_epochs"],
        **accuracy,
        "train_seconds": sum(INTERVALS),
        "params": sum(p.numel() for p in model.parameters()),
        "flops": forward_flops(make_net()),
        "precision": precision,
        "airbench": importlib.metadata.version("airbench"),
    }


if __name__ == "__main__":
    main()
