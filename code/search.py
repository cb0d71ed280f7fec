"""Rank every ResNet of a grid that fits a parameter budget (analytic counts, no training).

    python code/search.py --max-params 5e6
    python code/search.py --max-params 5e6 --config my_grid.yaml --kernels 3 --top 30

Grid flags override the YAML file's keys (stages, blocks, widths, kernels, pools, block,
shortcut, num_classes, input_size); writes candidates.csv (all that fit) and candidates.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from budgetnet.errors import UserError, run_cli
from budgetnet.search import Grid, format_markdown, load_grid, search, write_csv, write_markdown


def main(argv: list[str] | None = None) -> int:
    default = Grid()
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=f"default grid ({len(default):,} candidates): {default}",
    )
    parser.add_argument("--max-params", type=float, default=5e6, help="parameter budget")
    parser.add_argument("--config", help="YAML file of grid keys")
    grid_args = parser.add_argument_group("grid (each flag overrides the YAML file's key)")
    grid_args.add_argument("--stages", type=int, help="number of stages")
    grid_args.add_argument("--blocks", type=int, nargs="+", help="unit counts tried in every stage")
    grid_args.add_argument(
        "--widths", type=int, nargs="+", help="first-stage channels (then doubling)"
    )
    grid_args.add_argument("--kernels", type=int, nargs="+", help="kernel sizes (odd)")
    grid_args.add_argument("--pools", type=int, nargs="+", help="head pool windows (0 = global)")
    grid_args.add_argument("--block", help="unit type: basic, bottleneck, preact or res9")
    grid_args.add_argument("--shortcut", help="projection or identity")
    grid_args.add_argument("--num-classes", type=int)
    grid_args.add_argument("--input-size", type=int)
    parser.add_argument("--top", type=int, default=20, help="rows to print and write as Markdown")
    parser.add_argument("--out", default="runs/search", help="folder for the CSV and Markdown")
    args = parser.parse_args(argv)

    if args.max_params < 1 or args.max_params != int(args.max_params):
        raise UserError(f"--max-params must be a whole number >= 1, got {args.max_params:g}")
    if args.top < 0:
        raise UserError(f"--top must be >= 0, got {args.top}")
    keys = load_grid(args.config) if args.config else {}
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(Grid)}
    grid = Grid.from_dict({**keys, **{k: v for k, v in flags.items() if v is not None}})
    max_params = int(args.max_params)

    candidates = search(grid, max_params)
    text = format_markdown(candidates, grid, max_params, args.top)
    out = Path(args.out)
    write_csv(out / "candidates.csv", candidates)
    write_markdown(out / "candidates.md", text)
    print(text)
    print(f"\nwrote {out / 'candidates.csv'} and {out / 'candidates.md'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
