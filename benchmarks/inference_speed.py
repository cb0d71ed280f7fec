"""Time labelling images through the shared `infer()`: bf16 autocast against the fp32 eager
baseline in the same run, how often they agree, and optionally torch.compile.

Target on 2 CPU cores: the 4.9M-parameter ResNet-24 (preset resnet24_b343) labels the
10,000-image test pickle at 500 images/s or more without TTA. Variants are timed in turns,
round after round, so a busy machine slows them alike; the figures are medians over rounds.
The bf16 matrix-multiply peak, measured before and after (a drop means other work shared the
cores meanwhile), puts the throughput in proportion.

    python benchmarks/inference_speed.py                                 # random weights
    python benchmarks/inference_speed.py --checkpoint trained_model --data ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "code"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from budgetnet.data.normalization import Normalization, Preprocessing  # noqa: E402
from budgetnet.data.sources import load_split  # noqa: E402
from budgetnet.evaluation.infer import infer  # noqa: E402
from budgetnet.models.checkpoint import load_release  # noqa: E402
from budgetnet.models.complexity import count_flops  # noqa: E402
from budgetnet.models.zoo import create_model  # noqa: E402
from budgetnet.tables import markdown_table  # noqa: E402

TARGET = 500  # images/s, bf16, no TTA, 2 CPU cores


def matmul_peak(side: int = 2048, repeats: int = 5) -> float:
    """The best bf16 matrix-multiply rate of a few tries, in FLOP/s."""
    a, b = (
        torch.randn(side, side, dtype=torch.bfloat16),
        torch.randn(side, side, dtype=torch.bfloat16),
    )
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * side**3 / best


def model_and_images(args) -> tuple[torch.nn.Module, Preprocessing, np.ndarray, str]:
    if args.checkpoint:
        release = load_release(args.checkpoint)
        model, preprocessing, weights = release.model, release.preprocessing, str(release.path)
    else:
        torch.manual_seed(0)
        model = create_model(args.preset).eval()
        normalization = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "fixed")
        # create_model leaves the weights in contiguous order: the inputs follow
        preprocessing = Preprocessing(model.spec.input_size, False, normalization)
        weights = f"random {args.preset} weights"
    if args.data:
        images = load_split(args.data, "test").images[: args.images]
        source = f"{len(images)} test images of {args.data}"
    else:
        images = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), np.uint8)
        source = f"{len(images)} random images"
    return model, preprocessing, images, f"{weights}, {source}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="resnet24_b343", help="model preset (random weights)")
    parser.add_argument("--checkpoint", help="time a trained release instead of random weights")
    parser.add_argument("--data", help="use this source's test images instead of random ones")
    parser.add_argument("--images", type=int, default=2000, help="images per timed pass")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 500])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile (inductor, weights frozen) in bf16",
    )
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, preprocessing, images, what = model_and_images(args)
    flops = count_flops(model.spec).flops
    peak_before = matmul_peak()
    variants = {}  # name -> (model, batch size, bf16?)
    batch = args.batch_sizes[0]  # where bf16 meets the fp32 baseline (and torch.compile)
    baseline, bf16_name = f"fp32 eager, batch {batch}", f"bf16 autocast, batch {batch}"
    variants[baseline] = (model, batch, False)
    for size in args.batch_sizes:
        variants[f"bf16 autocast, batch {size}"] = (model, size, True)
    if args.compile:
        from torch._inductor import config as inductor_config

        inductor_config.freezing = True  # constant weights: fold BN, pre-pack for oneDNN
        compiled = torch.compile(model)
        start = time.perf_counter()
        infer(compiled, images, preprocessing, batch_size=batch)
        print(f"torch.compile: first pass (compiling) {time.perf_counter() - start:.1f} s")
        variants[f"bf16 torch.compile, batch {batch}"] = (compiled, batch, True)

    outputs = {}  # name -> the probabilities of its last pass

    def timed(name: str) -> float:
        net, size, bf16 = variants[name]
        start = time.perf_counter()
        outputs[name] = infer(net, images, preprocessing, batch_size=size, amp=bf16)
        return len(images) / (time.perf_counter() - start)

    for name in variants:  # warm up: oneDNN picks and caches its kernels on first use
        timed(name)
    rates = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name in variants:
            rates[name].append(timed(name))

    peak_after = matmul_peak()
    peak = max(peak_before, peak_after)
    print(
        f"{what}; {flops / 1e9:.2f} GFLOP per image; {torch.get_num_threads()} threads on "
        f"{os.cpu_count()} cores; torch {torch.__version__}; bf16 matmul peak "
        f"{peak_before / 1e12:.2f} TFLOP/s before, {peak_after / 1e12:.2f} after"
    )
    rows = []
    for name, values in rates.items():
        rate = statistics.median(values)
        rows.append([name, round(rate), round(max(values)), f"{rate * flops / 1e12:.3f}",
                     f"{100 * rate * flops / peak:.0f}%"])  # fmt: skip
    print(markdown_table(["variant", "median images/s", "best", "TFLOP/s", "of matmul peak"],
                         rows))  # fmt: skip
    ratio = statistics.median(b / f for b, f in zip(rates[bf16_name], rates[baseline], strict=True))
    print(f"batch {batch}: bf16 / fp32 eager = {ratio:.2f}x (median of per-round ratios)")

    fp32, bf16 = outputs[baseline], outputs[bf16_name]
    agree = (fp32.argmax(1) == bf16.argmax(1)).float().mean().item()
    print(
        f"bf16 vs fp32 on these images: top-1 agreement {100 * agree:.2f}%, probabilities "
        f"differ by at most {(fp32 - bf16).abs().max():.4f} (mean "
        f"{(fp32 - bf16).abs().mean():.5f})"
    )
    best = max(statistics.median(v) for n, v in rates.items() if n.startswith("bf16"))
    verdict = "meets" if best >= TARGET else "is below"
    print(
        f"best bf16 median {best:.0f} images/s {verdict} the {TARGET} images/s target; "
        f"{TARGET} images/s needs {TARGET * flops / 1e12:.2f} TFLOP/s"
    )


if __name__ == "__main__":
    main()
