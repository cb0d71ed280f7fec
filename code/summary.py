"""Per-layer table, totals and receptive field of a ResNet, from our own analytic counts.

python code/summary.py --list
python code/summary.py --model resnet24_b343
python code/summary.py --blocks 2 2 2 --channels 64 128 256 --pool 0
"""

from __future__ import annotations

from budgetnet.cli import add_model_arguments, spec_from_args
from budgetnet.errors import ArgumentParser, run_cli
from budgetnet.models.complexity import count_flops, count_params, format_summary
from budgetnet.models.zoo import MODELS
from budgetnet.tables import markdown_table


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the model zoo and exit")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if args.list:
        header = ["model", "params", "FLOPs", "input", "layout", "source"]
        rows = [
            (
                name,
                count_params(p.spec),
                count_flops(p.spec).flops,
                p.spec.input_size,
                p.description,
                p.source,
            )  # fmt: skip
            for name, p in MODELS.items()
        ]
        print(markdown_table(header, rows))
        return 0
    print(format_summary(spec_from_args(args)))
    return 0


if __name__ == "__main__":
    run_cli(main)
