"""Time one training step of a fastres network (`--block fast`) under the CPU settings the
engine chooses between: glibc heap reuse (`--mallopt`), torch.compile, channels_last, batch
size, and the optimizer (Nesterov SGD, or Muon for the convolution filters, `--opt muon`);
and, for comparison, the same step on airbench94's own network from its package.

    python benchmarks/cpu_step_speed.py --model fastres_s --rounds 3

Each variant runs in its own process (the allocator setting cannot be undone inside one), the
variants take turns for `--rounds` rounds so that drift in the machine's speed hits them all
alike, and each reports the median of its timed steps after warm-up steps (the compile happens
there). Printed: images/s per variant (median over rounds) and the ratio to the first variant.
Keep the machine otherwise idle while this runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "code"))

# name -> (heap reuse, torch.compile, channels_last, batch size, Muon, airbench94's own network)
VARIANTS = {
    "eager, default allocator": (False, False, True, 1024, False, False),
    "eager, heap reuse": (True, False, True, 1024, False, False),
    "compiled, heap reuse": (True, True, True, 1024, False, False),
    "eager, heap reuse, NCHW": (True, False, False, 1024, False, False),
    "eager, heap reuse, batch 512": (True, False, True, 512, False, False),
    "eager, heap reuse, Muon": (True, False, True, 1024, True, False),
    # The peer's network from its package, as airbench_cpu.py runs it (float32 weights, each
    # forward under the same autocast): is our step slower than the network it came from?
    "airbench94's network, heap reuse": (True, False, True, 1024, False, True),
}


def worker(model_name: str, variant: str, steps: int, warmup: int) -> None:
    import torch
    import torch.nn.functional as F

    from budgetnet.models.zoo import create_model
    from budgetnet.runtime import autocast, configure_cpu
    from budgetnet.training.config import merge, recipe_config
    from budgetnet.training.optim import make_optimizer

    mallopt, compiled, channels_last, batch, muon, peer = VARIANTS[variant]
    configure_cpu(0, allocator=mallopt)
    torch.manual_seed(0)
    model = airbench94_network() if peer else create_model(model_name)
    x = torch.randn(batch, 3, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    # The fast preset's optimizer, its filters handed to Muon in the Muon variant.
    config = merge(recipe_config("fast"), {"opt": "muon" if muon else "sgd"}, "variant")
    optimizer = make_optimizer(config, model)
    run = torch.compile(model) if compiled else model
    cpu = torch.device("cpu")

    def step() -> None:
        with autocast(cpu, True):
            out = run(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=0.2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    print(json.dumps({"images_per_s": batch / statistics.median(times)}))


def airbench94_network():
    """airbench94's `make_net94` from the `airbench` package, built on the CPU in float32."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from airbench_cpu import adapt_to_cpu

    adapt_to_cpu()
    from airbench.lib_airbench94 import make_net94

    return make_net94()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fastres_s")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.model, args.worker, args.steps, args.warmup)
        return
    rates: dict[str, list[float]] = {v: [] for v in args.variants}
    for _ in range(args.rounds):
        for variant in args.variants:
            out = subprocess.run(
                [sys.executable, __file__, "--model", args.model, "--worker", variant,
                 "--steps", str(args.steps), "--warmup", str(args.warmup)],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            rates[variant].append(json.loads(out.strip().splitlines()[-1])["images_per_s"])
    import torch

    from budgetnet.runtime import precision_name

    precision = precision_name(torch.device("cpu"))
    print(f"{args.model}, one training step, {precision}, torch {torch.__version__}")
    base = statistics.median(rates[args.variants[0]])
    for variant, values in rates.items():
        median = statistics.median(values)
        print(
            f"{variant:32s} {median:7.1f} images/s  x{median / base:.2f}  "
            f"(rounds: {', '.join(f'{v:.1f}' for v in values)})"
        )


if __name__ == "__main__":
    main()
