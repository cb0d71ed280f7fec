"""Experiment tracking: the Markdown log of every run, TensorBoard event files, an MLflow run
in a local store, and the one-line error when a tracking library is missing."""

from __future__ import annotations

import sys

import pytest

from budgetnet import runs
from budgetnet.errors import UserError
from budgetnet.models.spec import ResNetSpec
from budgetnet.training import engine, tracking
from budgetnet.training.config import TrainConfig

SPEC = ResNetSpec((1,), (8,))


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A local MLflow store (sqlite, MLflow's default backend) shared by this module's tests:
    creating its tables takes seconds. Its artifacts go to ./mlruns, so tests run in there."""
    pytest.importorskip("mlflow", reason="the tracking extra: pip install -e '.[tracking]'")
    folder = tmp_path_factory.mktemp("mlflow")
    return folder, f"sqlite:///{folder / 'mlflow.db'}"


# Two epochs of five batches on the CPU, without RandAugment or erasing.
QUICK = {"epochs": 2, "batch_size": 32, "val_size": 40, "warmup_epochs": 0.5, "device": "cpu"}


def _config(cifar, run_dir, **overrides) -> TrainConfig:
    settings = {**QUICK, "aa": None, "reprob": 0, **overrides}
    return TrainConfig().with_values(data=str(cifar), run_dir=str(run_dir), **settings)


def _fit(config, **kwargs) -> dict:
    return engine.fit(config, SPEC, log=lambda line: None, **kwargs)


def test_markdown_log_has_settings_epochs_results_and_plots(cifar, tmp_path):
    run = tmp_path / "run"
    results = _fit(_config(cifar, run))
    text = (run / tracking.LOG_FILE).read_text()
    assert text.startswith("# Training log: run\n")
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()]
    header = list(runs.HISTORY_COLUMNS)
    assert header in rows
    assert sum(row[0].startswith("**") for row in rows) == 1  # one best epoch, in bold
    assert ["test_acc_tta1", f"{100 * results['test_acc_tta1']:.2f}%"] in rows
    for png in ("loss_curve", "accuracy_curve", "lr_curve", "confusion_matrix", "augmentations"):
        assert f"![{png}]({png}.png)" in text and (run / f"{png}.png").exists()
    assert ["warmup_epochs", "`0.5`"] in rows and ["model.channels", "`[8]`"] in rows


@pytest.mark.parametrize(
    "flag, blocked",
    [("tensorboard", ("tensorboard", "torch.utils.tensorboard")), ("mlflow", ("mlflow",))],
)
def test_missing_library_is_one_line_before_any_work(cifar, tmp_path, monkeypatch, flag, blocked):
    for module in blocked:
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    config = _config(cifar, tmp_path / "run", **{flag: True if flag == "tensorboard" else "x"})
    with pytest.raises(UserError, match=rf"--{flag} needs the \w+ package: pip install") as error:
        _fit(config)
    assert "\n" not in str(error.value) and "[tracking]" in str(error.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_tensorboard_scalars_images_and_hyperparameters(cifar, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the tracking extra: pip install -e '.[tracking]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setattr(tracking, "STEP_EVERY", 2)  # 5 steps per epoch: points at 0, 2, 4
    run = tmp_path / "run"
    _fit(_config(cifar, run, tensorboard=True))
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"step/train_loss", "step/lr", "step/images_per_s"} <= set(tags["scalars"])
    for column in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s"):
        assert [e.step for e in events.Scalars(f"epoch/{column}")] == [1, 2]
    assert [e.step for e in events.Scalars("step/train_loss")] == [0, 2, 4, 6, 8]
    assert "final/test_acc_tta1" in tags["scalars"]
    assert {"images/confusion_matrix", "images/augmentations", "images/loss_curve"} <= set(
        tags["images"]
    )
    assert "config.yaml/text_summary" in tags["tensors"]
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


@pytest.mark.slow
def test_mlflow_params_metrics_artifacts_and_resume(cifar, tmp_path, monkeypatch, mlflow_store):
    from mlflow.tracking import MlflowClient

    folder, uri = mlflow_store
    monkeypatch.chdir(folder)
    run = tmp_path / "run"
    _fit(_config(cifar, run, epochs=1, mlflow=uri))
    run_id = (run / tracking.MLFLOW_RUN_FILE).read_text().strip()
    client = MlflowClient(uri)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "run"
    assert logged.data.params["lr"] == "0.1" and logged.data.params["model.channels"] == "[8]"
    assert logged.data.metrics["final/test_acc_tta0"] >= 0
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "results.json", "history.csv", tracking.LOG_FILE} <= artifacts
    assert {"plots", "release"} <= artifacts
    release = {a.path for a in client.list_artifacts(run_id, "release")}
    assert release == {"release/model.json", "release/model.safetensors"}
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/augmentations.png"} <= plots

    # A resumed run goes on logging into the same MLflow run.
    _fit(_config(cifar, run, epochs=2, mlflow=uri), resume=run)
    assert (run / tracking.MLFLOW_RUN_FILE).read_text().strip() == run_id
    history = client.get_metric_history(run_id, "val_acc")
    assert [m.step for m in history] == [1, 2]


@pytest.mark.slow
def test_failed_run_is_marked_failed_in_mlflow(cifar, tmp_path, monkeypatch, mlflow_store):
    from mlflow.tracking import MlflowClient

    folder, uri = mlflow_store
    monkeypatch.chdir(folder)

    def diverge(config, teacher=None):
        return lambda logits, target, inputs: logits.sum() * float("nan")

    monkeypatch.setattr(engine, "Objective", diverge)
    run = tmp_path / "run"
    with pytest.raises(engine.Diverged):
        _fit(_config(cifar, run, mlflow=uri))
    run_id = (run / tracking.MLFLOW_RUN_FILE).read_text().strip()
    assert MlflowClient(uri).get_run(run_id).info.status == "FAILED"
