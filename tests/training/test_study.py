"""The Optuna study (budgetnet.training.study, `code/search.py --trials`): sampling under the
budget, pruning, resuming, several workers on one storage, and its refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from budgetnet.errors import UserError
from budgetnet.models.complexity import count_params
from budgetnet.models.spec import ResNetSpec
from budgetnet.training import engine
from budgetnet.training import study as studies
from budgetnet.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
TINY_TRAINING = {"batch_size": 32, "val_size": 40, "aa": None, "reprob": 0, "warmup_epochs": 0.5}
TINY_SPACE = {
    "model": {"stages": 2, "units": {"low": 1, "high": 2}, "width": {"low": 8, "high": 16, "step": 8}},
    "recipe": {"lr": {"low": 0.01, "high": 0.5, "log": True}, "mixup": 0.0},
}  # fmt: skip


def write_yaml(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def fake_fit(trained: list, epochs: int = 3, interrupt_at: int | None = None):
    """engine.fit's stand-in: reports a validation accuracy that grows with the lr, so the
    pruner has something to rank, and records what it was asked to train."""

    def fit(config, spec, *, splits=None, log=print, on_epoch=None, **_):
        trained.append((spec, config))
        if interrupt_at is not None and len(trained) == interrupt_at:
            raise KeyboardInterrupt
        for epoch in range(epochs):
            on_epoch({"epoch": epoch, "val_acc": config.optimizer.lr * (epoch + 1) / epochs})
        return {"val_acc": config.optimizer.lr}

    return fit


def new_study(tmp_path, space, max_params=10**7, pruner=None, seed=0, name="s"):
    fingerprint = space.fingerprint({"max_params": max_params})
    url = f"sqlite:///{tmp_path / 'study.db'}"
    return studies.open_study(name, url, fingerprint, seed, pruner or optuna.pruners.NopPruner())


def test_study_samples_prunes_and_writes_results(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(engine, "fit", fake_fit(trained))
    base = TrainConfig().with_values(**TINY_TRAINING, epochs=3)
    space = studies.SearchSpace.load(write_yaml(tmp_path / "space.yaml", TINY_SPACE), base)
    pruner = studies.make_pruner("median", startup=2, epochs=3)
    study = new_study(tmp_path, space, pruner=pruner)
    lines = []
    studies.run_worker(study, space, base, None, 8, 10**7, tmp_path / "out", log=lines.append)

    states = [t.state for t in study.trials]
    assert len(trained) == 8 and states.count(TrialState.COMPLETE) >= 2
    assert TrialState.PRUNED in states  # below the median after some epoch: stopped there
    assert len(lines) == 8 and "ETA" in lines[-1] and "best" in lines[-1]
    assert any("pruned after epoch" in line for line in lines)
    for spec, config in trained:  # each trial trained what the space allows
        assert spec.blocks[0] in (1, 2) and len(spec.blocks) == 2 and spec.channels[0] in (8, 16)
        assert 0.01 <= config.optimizer.lr <= 0.5 and config.augment.mixup == 0.0
    out = tmp_path / "out"
    assert (out / "trials.csv").read_text().count("\n") == 9  # a header and 8 trials
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["lr"] == pytest.approx(study.best_params["lr"]) and best["mixup"] == 0.0
    assert ResNetSpec.from_dict(best["model"]).blocks == tuple(
        study.best_trial.user_attrs["spec"]["blocks"]
    )
    studies.write_results(study, base, out)  # the figures too, as search.py does at the end
    assert (out / "history.png").stat().st_size > 0 and (out / "importances.png").stat().st_size > 0


def test_infeasible_samples_never_reach_training(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(engine, "fit", fake_fit(trained, epochs=1))
    base = TrainConfig().with_values(**TINY_TRAINING, epochs=1)
    space = studies.SearchSpace.load(
        write_yaml(tmp_path / "space.yaml", {"model": {"width": {"low": 8, "high": 256, "step": 8}}}), base
    )  # fmt: skip
    budget = 60_000
    study = new_study(tmp_path, space, max_params=budget)
    studies.run_worker(study, space, base, None, 3, budget, tmp_path / "out", log=lambda line: None)
    assert len(trained) == 3 and all(count_params(spec) <= budget for spec, _ in trained)
    refused = [t for t in study.trials if "infeasible" in t.user_attrs]
    assert refused and all(t.state == TrialState.PRUNED for t in refused)
    assert all("> the budget of 60,000" in t.user_attrs["infeasible"] for t in refused)


def test_an_interrupted_study_resumes_with_its_trials_kept(tmp_path, monkeypatch):
    trained = []
    base = TrainConfig().with_values(**TINY_TRAINING, epochs=2)
    space = studies.SearchSpace.load(write_yaml(tmp_path / "space.yaml", TINY_SPACE), base)
    monkeypatch.setattr(engine, "fit", fake_fit(trained, epochs=2, interrupt_at=2))
    with pytest.raises(KeyboardInterrupt):
        studies.run_worker(new_study(tmp_path, space), space, base, None, 3, 10**7, tmp_path / "o")
    monkeypatch.setattr(engine, "fit", fake_fit(trained, epochs=2))
    study = new_study(tmp_path, space)  # the same name and storage: loaded, not made anew
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    studies.run_worker(study, space, base, None, 2, 10**7, tmp_path / "o", log=lambda line: None)
    states = [t.state for t in study.trials]
    assert len(states) == 4 and states.count(TrialState.COMPLETE) == 3  # the first one kept


def test_a_study_of_another_space_is_refused(tmp_path):
    base = TrainConfig().with_values(**TINY_TRAINING)
    space = studies.SearchSpace.load(write_yaml(tmp_path / "a.yaml", TINY_SPACE), base)
    new_study(tmp_path, space)
    other = studies.SearchSpace.load(
        write_yaml(tmp_path / "b.yaml", {**TINY_SPACE, "recipe": {"lr": {"low": 0.1, "high": 1.0}}}), base
    )  # fmt: skip
    with pytest.raises(UserError, match="made for another space .*recipe.lr"):
        new_study(tmp_path, other)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"recipe": {"lrr": {"low": 0.1, "high": 1.0}}}, "unknown recipe dimension"),
        ({"model": {"depth": [1, 2]}}, "unknown model dimension"),
        ({"recipe": {"lr": {"low": 1.0, "high": 0.1}}}, "empty range"),
        ({"recipe": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, "log needs low > 0"),
        ({"model": {"block": []}}, "non-empty list"),
        ({"recipe": {"smoothing": {"low": 0.0, "high": 3.0}}}, "smoothing"),
        ({"recipe": {"epochs": [1, 2]}}, "belong to the run"),
        ({"grid": {}}, "unknown space section"),
    ],
)
def test_bad_space_files_are_refused_in_one_line(tmp_path, content, message):
    with pytest.raises(UserError, match=message) as refused:
        studies.SearchSpace.load(write_yaml(tmp_path / "space.yaml", content), TrainConfig())
    assert "\n" not in str(refused.value)


def test_bad_study_input_exits_2_in_one_line_and_writes_nothing(tmp_path, run_main, cifar):
    space = write_yaml(tmp_path / "space.yaml", {"recipe": {"lr": {"low": 1.0, "high": 0.1}}})
    cases = [
        ["--space", str(space)],
        ["--storage", "postgresql://nobody@127.0.0.1:1/none"],  # nothing listens on port 1
        ["--storage", "nosuchdb://x"],
    ]
    for extra in cases:
        out = tmp_path / "out"
        result = run_main(
            "code/search.py", "--trials", "1", "--study", "bad", "--epochs", "1",
            "--data", str(cifar), "--out", str(out), *extra,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert not out.exists() and not (REPO / "runs" / "search" / "bad.db").exists()


def _workers(tmp_path, cifar, storage: str, count: int = 2) -> list[subprocess.CompletedProcess]:
    """`count` search.py workers on one study, started together, each running 2 trials."""
    training = write_yaml(tmp_path / "training.yaml", TINY_TRAINING)
    space = write_yaml(tmp_path / "space.yaml", TINY_SPACE)
    env = {**os.environ, "BUDGETNET_CACHE": str(tmp_path / "cache")}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "code/search.py",
                "--trials",
                "2",
                "--study",
                "shared",
                "--epochs",
                "1",
                "--data",
                str(cifar),
                "--train-config",
                str(training),
                "--space",
                str(space),
                "--storage",
                storage,
                "--out",
                str(tmp_path / "out"),
                "--sampler-seed",
                str(i),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(count)
    ]
    results = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(worker.args, worker.returncode, stdout, stderr))
    return results


def _check_shared(tmp_path, storage: str, results) -> None:
    for result in results:
        assert result.returncode == 0, result.stderr[-2000:]
    study = optuna.load_study(study_name="shared", storage=storage)
    numbers = [t.number for t in study.trials if t.state.is_finished()]
    assert sorted(numbers) == list(range(4))  # 2 workers x 2 trials, each trial run once
    runs = sorted(p.name for p in (tmp_path / "out" / "shared" / "trials").iterdir())
    assert runs == [f"trial-{n:04d}" for n in range(4)]


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study_and_its_best_recipe_trains(tmp_path, cifar, run_main):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    _check_shared(tmp_path, storage, _workers(tmp_path, cifar, storage))
    best = tmp_path / "out" / "shared" / "best.yaml"
    result = run_main(
        "code/train.py", "--config", str(best), "--data", str(cifar), "--epochs", "1",
        "--device", "cpu", "--run-dir", str(tmp_path / "again"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "again" / "results.json").is_file()


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(tmp_path, cifar):
    """Against a real server: .ci/run starts one on loopback and names it here."""
    url = os.environ.get("BUDGETNET_POSTGRES_URL")
    if not url:
        pytest.skip("no PostgreSQL server: set BUDGETNET_POSTGRES_URL (.ci/run starts one)")
    import sqlalchemy

    database = f"study_{os.getpid()}"  # a fresh database per run, dropped afterwards
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {database}"))
    storage = url.rsplit("/", 1)[0] + f"/{database}"
    try:
        _check_shared(tmp_path, storage, _workers(tmp_path, cifar, storage))
    finally:
        sqlalchemy.create_engine(storage).dispose()
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        admin.dispose()


def test_a_worker_that_loses_the_sqlite_table_race_retries_and_other_errors_are_one_line(
    tmp_path, monkeypatch
):
    import sqlalchemy.exc

    real, calls = optuna.create_study, []

    def racing(message):
        def create_study(**kwargs):
            calls.append(message)
            if len(calls) == 1:  # what SQLite raises when another worker made the table first
                raise sqlalchemy.exc.OperationalError("CREATE TABLE", {}, Exception(message))
            return real(**kwargs)

        return create_study

    monkeypatch.setattr(studies.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(optuna, "create_study", racing("table study_directions already exists"))
    url = f"sqlite:///{tmp_path / 'race.db'}"
    assert _open(url, "race").study_name == "race" and len(calls) == 2
    calls.clear()
    monkeypatch.setattr(optuna, "create_study", racing("disk I/O error"))
    with pytest.raises(UserError, match="cannot open study storage .*disk I/O error"):
        _open(url, "broken")
    assert len(calls) == 1  # not retried


def _open(url, name):
    return studies.open_study(name, url, "fingerprint", 0, optuna.pruners.NopPruner())
