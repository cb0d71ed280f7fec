"""Experiment tracking: what a training run reports as it goes, to a Markdown log (always),
to TensorBoard (`--tensorboard`) and to MLflow (`--mlflow [URI]`).

`engine.fit` holds one `Tracker` and calls it at these points:

    tracker = Tracker(config)             imports what the flags need; a missing library is
                                          one line that says what to install, before any work
    with tracker.run(run_dir, ...):       start: hyperparameters and the resolved config; an
                                          error on the way out marks the MLflow run FAILED
        tracker.step(step, loss, lr)      per optimizer step (TensorBoard, every STEP_EVERY)
        tracker.epoch(row)                per epoch: metrics; the Markdown log on a best epoch
        tracker.finish(results)           the end: final metrics, the run's PNGs as images,
                                          artifacts (release, plots, config), the Markdown log

TensorBoard and MLflow are optional extras: `pip install -e '.[tracking]'`.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from budgetnet import runs
from budgetnet.errors import UserError
from budgetnet.files import atomic_write, read_regular_file
from budgetnet.models import checkpoint
from budgetnet.tables import markdown_table
from budgetnet.training.config import MLFLOW_DEFAULT, TrainConfig

LOG_FILE = "training_log.md"
MLFLOW_RUN_FILE = "mlflow_run_id.txt"  # lets a resumed run continue its MLflow run
# Optimizer steps between TensorBoard's per-step points: each one waits for the GPU (.item()).
STEP_EVERY = 20
INSTALL = "pip install -e '.[tracking]'"


def _require(module: str, flag: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"--{flag} needs the {package} package: {INSTALL} (or pip install {package})"
        ) from None


def _flat(written: dict, parameters: int) -> dict:
    """The hyperparameters as one flat mapping of scalars: training settings by their names,
    model spec fields as model.<name>."""
    values = {
        **written[runs.SETTINGS_KEY],
        **{f"model.{k}": v for k, v in written["model"].items()},
    }
    values["model.parameters"] = parameters
    return {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in values.items()}


def _numbers(values: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


class Tracker:
    """The run's reporters; `enabled=False` (the other processes of a distributed run) makes
    every call do nothing."""

    def __init__(self, config: TrainConfig, enabled: bool = True) -> None:
        self.config, self.enabled = config, enabled
        self.tensorboard = self.mlflow = None  # the modules, when asked for
        if enabled and config.outputs.tensorboard:
            self.tensorboard = _require("torch.utils.tensorboard", "tensorboard", "tensorboard")
        if enabled and config.outputs.mlflow:
            self.mlflow = _require("mlflow", "mlflow", "mlflow")
        self.run_dir = self.hparams = self.writer = self.log = None  # set by run()
        self.last_step: tuple[int, float] | None = None  # (step, time) of the last step point

    @contextlib.contextmanager
    def run(
        self, run_dir: Path, written: dict, history: list[dict], parameters: int, resumed: bool
    ) -> Iterator[Tracker]:
        """Start reporting on `run_dir`; `written`: the run record (config.yaml's content),
        `history`: epochs already run (a resumed run). Ends the TensorBoard file and the MLflow
        run however it ends."""
        if not self.enabled:
            yield self
            return
        self.run_dir, self.hparams = run_dir, _flat(written, parameters)
        self.log = TrainingLog(run_dir, written, parameters, history)
        if self.mlflow is not None:
            self._start_mlflow(resumed)
        if self.tensorboard is not None:
            self.writer = self.tensorboard.SummaryWriter(str(run_dir))
            text = yaml.safe_dump(written, sort_keys=False)  # indented: a Markdown code block
            self.writer.add_text("config.yaml", "    " + text.replace("\n", "\n    "))
        failed = True
        try:
            yield self
            failed = False
        finally:
            if self.writer is not None:
                self.writer.close()
            if self.mlflow is not None:
                self.mlflow.end_run("FAILED" if failed else "FINISHED")

    def _start_mlflow(self, resumed: bool) -> None:
        mlflow, uri = self.mlflow, self.config.outputs.mlflow
        if uri != MLFLOW_DEFAULT:
            mlflow.set_tracking_uri(uri)
        id_file = self.run_dir / MLFLOW_RUN_FILE
        run_id = (
            read_regular_file(id_file, 4096, "MLflow run id file")
            .decode("ascii", "replace")
            .strip()
            if resumed and id_file.exists()
            else None
        )
        try:
            active = mlflow.start_run(run_id=run_id, run_name=self.run_dir.name)
        except mlflow.exceptions.MlflowException as exc:
            raise UserError(f"--mlflow {uri}: {exc.message}") from None
        id_file.write_text(active.info.run_id + "\n")
        if run_id is None:  # a resumed run has them already (MLflow refuses to change them)
            mlflow.log_params(self.hparams)
            mlflow.log_artifact(str(self.run_dir / "config.yaml"))

    def step(self, step: int, loss: torch.Tensor, lr: float) -> None:
        """Per-step scalars for TensorBoard, every STEP_EVERY steps; throughput is measured
        between two points of the same epoch."""
        if self.writer is None or step % STEP_EVERY:
            return
        now = time.perf_counter()
        self.writer.add_scalar("step/train_loss", loss.item(), step)
        self.writer.add_scalar("step/lr", lr, step)
        if self.last_step is not None:
            images = (step - self.last_step[0]) * self.config.optimizer.batch_size
            self.writer.add_scalar("step/images_per_s", images / (now - self.last_step[1]), step)
        self.last_step = (step, now)

    def epoch(self, row: dict, best: dict | None = None) -> None:
        """One epoch's metrics (a history row, perhaps with more columns); `best`: the metrics
        of the release this epoch made (a new best), which rewrites the Markdown log."""
        if not self.enabled:
            return
        self.last_step = None  # the next interval would include validation
        metrics = _numbers({k: v for k, v in row.items() if k != "epoch"})
        epoch = row["epoch"] + 1  # as the console counts them
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"epoch/{key}", value, epoch)
            self.writer.flush()  # a run that stops later keeps its curves
        if self.mlflow is not None:
            self.mlflow.log_metrics(metrics, step=epoch)
        self.log.add(row, best)

    def finish(self, results: dict) -> None:
        """The end: final metrics, every PNG of the run directory (curves, confusion matrix,
        augmented samples), the release and the config files."""
        if not self.enabled:
            return
        self.log.write(results)
        final = {f"final/{k}": v for k, v in _numbers(results).items()}
        pngs = sorted(self.run_dir.glob("*.png"))
        if self.writer is not None:
            for png in pngs:
                image = np.asarray(Image.open(png).convert("RGB"))
                self.writer.add_image(f"images/{png.stem}", image, dataformats="HWC")
            # run_name ".": the hyperparameters belong to this run's own directory
            self.writer.add_hparams(self.hparams, final, run_name=".")
        if self.mlflow is not None:
            self.mlflow.log_metrics(final)
            for png in pngs:
                self.mlflow.log_artifact(str(png), "plots")
            self.mlflow.log_artifacts(str(self.run_dir / checkpoint.BEST_DIR), "release")
            for name in ("results.json", "history.csv", LOG_FILE):
                self.mlflow.log_artifact(str(self.run_dir / name))


class TrainingLog:
    """runs/<name>/training_log.md, like the ResNet-44 v2 project's logs_RESNET.md: what ran,
    every setting, a row per epoch, the best and final metrics and the plots. Rewritten on
    every best epoch and at the end, so a stopped run still has one."""

    def __init__(self, run_dir: Path, written: dict, parameters: int, history: list[dict]):
        self.path = run_dir / LOG_FILE
        self.run_dir, self.written, self.parameters = run_dir, written, parameters
        self.rows = list(history)
        self.best = _released_metrics(run_dir)  # a resumed run's best so far

    def add(self, row: dict, best: dict | None = None) -> None:
        self.rows.append(row)
        if best is not None:
            self.best = best
            self.write()

    def write(self, results: dict | None = None) -> None:
        with atomic_write(self.path) as handle:
            handle.write(self.markdown(results))

    def markdown(self, results: dict | None) -> str:
        """The log; before the end (`results` None) it shows the best epoch so far."""
        w, best = self.written, self.best
        model, data, made = w["model"], w["data"], w["provenance"]
        lines = [
            f"# Training log: {self.run_dir.name}",
            "",
            f"- model: {model['block']} blocks {model['blocks']}, channels {model['channels']}, "
            f"{model['input_size']} px input, {self.parameters:,} parameters",
            f"- data: {data['source']} ({data['kind']}), {data['val_size']} training images "
            "held out for validation",
            f"- normalisation: {w['normalization']['source']}",
            f"- command: `{made['command']}`",
            f"- started {made['created']} at git revision {made['git_revision']}, torch "
            f"{made['torch']}, Python {made['python']}, {made['machine']}",
            "",
            "## Epochs",
            "",
            *self._epochs(best.get("epoch")),
            "",
        ]
        if results is None and best:
            lines += ["## Best epoch so far", "", *_metrics_table(best), ""]
        if results is not None:
            pngs = sorted(self.run_dir.glob("*.png"))
            lines += ["## Results (results.json)", "", *_metrics_table(results), ""]
            lines += ["## Plots", "", *[f"![{png.stem}]({png.name})" for png in pngs], ""]
        settings = {**w[runs.SETTINGS_KEY], **{f"model.{k}": v for k, v in model.items()}}
        lines += [
            "## Settings",
            "",
            markdown_table(["setting", "value"], [[k, f"`{v}`"] for k, v in settings.items()]),
        ]
        return "\n".join(lines) + "\n"

    def _epochs(self, best_epoch: int | None) -> list[str]:
        columns = []
        for row in self.rows:  # rows read back from history.csv lack top-5
            columns += [k for k in row if k not in columns and k != "epoch"]
        rows = [
            [f"**{row['epoch'] + 1}**" if row["epoch"] + 1 == best_epoch else row["epoch"] + 1]
            + [_format(k, row.get(k)) for k in columns]
            for row in self.rows
        ]
        table = markdown_table(["epoch", *columns], rows)
        return [table, "", "The best epoch (released) is in bold."]


def _format(key: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if "acc" in key or "top5" in key:
            return f"{100 * value:.2f}%"
        if key == "lr":
            return f"{value:.4g}"
        return f"{value:.4f}" if "loss" in key else f"{value:.1f}"
    return str(value)


def _metrics_table(metrics: dict) -> list[str]:
    return [markdown_table(["metric", "value"], [[k, _format(k, v)] for k, v in metrics.items()])]


def _released_metrics(run_dir: Path) -> dict:
    """The metrics of a release already in the run (a resumed run's best epoch), else {}."""
    meta = run_dir / checkpoint.BEST_DIR / checkpoint.META_FILE
    return runs.read_json(meta).get("metrics", {}) if meta.exists() else {}
