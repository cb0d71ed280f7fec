"""Run airbench's own `train94`/`train95`/`train96` (the PyPI package, unmodified) on CUDA.

    python benchmarks/airbench_gpu.py --version 95 --seed 0 --workdir W [--warmup]

`W/cifar10/train.pt` and `test.pt` hold the data (cpu_vs_airbench.py's `write_airbench_data`
writes them from our JPEG copy in airbench's format). Nothing of the package is changed: its
CUDA events are observed, not replaced, so the seconds are the intervals airbench's own timer
adds up (the whitening init plus the epochs, as it reports them). `--warmup` first trains one
untimed run in the same process, as airbench's own scripts do before they time, so that cuDNN's
autotuning and CUDA's start-up are not counted. Prints the JSON row of airbench_cpu.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from airbench_cpu import INTERVALS, result_row, run_parser  # noqa: E402


class ObservedEvent(torch.cuda.Event):
    """torch.cuda.Event that also records each interval airbench reads from it."""

    def elapsed_time(self, end_event) -> float:
        milliseconds = super().elapsed_time(end_event)
        INTERVALS.append(milliseconds / 1e3)
        return milliseconds


def main() -> None:
    parser = run_parser(__doc__.splitlines()[0])
    parser.add_argument("--warmup", action="store_true", help="one untimed run first")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("airbench_gpu.py needs a CUDA device (airbench_cpu.py runs on the CPU)")
    torch.cuda.Event = ObservedEvent
    import airbench

    os.chdir(args.workdir)  # airbench reads ./cifar10/train.pt and test.pt
    train = getattr(airbench, f"train{args.version}")
    if args.warmup:
        train(verbose=False)
        INTERVALS.clear()
    torch.manual_seed(args.seed)
    model = train(verbose=False)
    system = f"airbench{args.version}"
    row = result_row(airbench, args.version, args.seed, model, system, "fp16 (airbench's own)")
    print(json.dumps({**row, "device": torch.cuda.get_device_name()}))


if __name__ == "__main__":
    main()
