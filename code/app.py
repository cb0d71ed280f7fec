"""Web demo: upload an image, or pick one of the test split, and see a model's top-5 classes.

    python code/app.py --checkpoint trained_model/
    python code/app.py --checkpoint runs/a runs/b --data ../shared/data/cifar10 --examples 20

It runs on the CPU and labels through the same function as inference.py. Needs the `app`
extra: pip install -e '.[app]'.
"""

from __future__ import annotations

from budgetnet.errors import ArgumentParser, UserError, run_cli
from budgetnet.evaluation.ensemble import load_ensemble
from budgetnet.evaluation.infer import TTA_LEVELS


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        nargs="+",
        default=["trained_model"],
        metavar="PATH",
        help="run directories (their best model) or release folders/files; several are "
        "averaged, as by inference.py (default trained_model)",
    )
    parser.add_argument(
        "--tta", type=int, choices=TTA_LEVELS, default=1, help="as inference.py's (default 1)"
    )
    parser.add_argument(
        "--data",
        help="where the example images come from: any source budgetnet.data.sources reads "
        "(default $BUDGETNET_DATA or ./data when there; else no examples)",
    )
    parser.add_argument(
        "--examples", type=int, default=10, help="test images offered as examples (0 = none)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (0.0.0.0: the whole network)"
    )
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    if args.examples < 0:
        parser.error(f"--examples must be 0 or more, got {args.examples}")

    try:
        from budgetnet.evaluation import web_app
    except ModuleNotFoundError as exc:
        if exc.name != "gradio":
            raise
        raise UserError("the web demo needs gradio: pip install -e '.[app]'") from None

    ensemble = load_ensemble(args.checkpoint, web_app.CPU)
    examples = web_app.load_examples(args.data, args.examples, ensemble.classes)
    if examples is None and args.examples:
        print("no test split at $BUDGETNET_DATA or ./data: no examples (name one with --data)")
    page = web_app.build_page(web_app.Classifier(ensemble, args.tta), examples)
    try:
        page.launch(server_name=args.host, server_port=args.port)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise UserError(
            f"cannot serve on {args.host}:{args.port} (is the port taken? --port picks "
            f"another): {exc}"
        ) from None
    return 0


if __name__ == "__main__":
    run_cli(main)
