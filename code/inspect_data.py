"""Show what budgetnet.data.sources reads from a source (and warm its cache): splits, classes, counts,
the held-out validation split and the normalisation statistics training would use.

    python code/inspect_data.py --data ../shared/data/cifar10
"""

from __future__ import annotations

import time

from budgetnet.data.sources import load_splits
from budgetnet.errors import ArgumentParser, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="a path, 'cifar10' or 'cifar100'")
    parser.add_argument(
        "--val-size",
        type=float,
        default=5000,
        help="validation images held out from train (a count, or a fraction < 1)",
    )
    parser.add_argument("--max-per-class", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    val_size = args.val_size if args.val_size < 1 else int(args.val_size)
    start = time.perf_counter()
    splits = load_splits(
        args.data, val_size=val_size, max_per_class=args.max_per_class, seed=args.seed
    )
    print(
        f"loaded in {time.perf_counter() - start:.2f} s: {splits.provenance.kind} "
        f"at {splits.provenance.source}"
    )
    print(f"classes ({len(splits.train.classes)}): {', '.join(splits.train.classes)}")
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        if part is not None:
            print(f"{name:5s} {len(part):6d} images, per class {part.class_counts().tolist()}")
    norm = splits.normalization
    print(f"mean {[round(m, 4) for m in norm.mean]} std {[round(s, 4) for s in norm.std]}")
    print(f"  ({norm.source})")
    return 0


if __name__ == "__main__":
    run_cli(main)
