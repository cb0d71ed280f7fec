"""notebooks/kaggle_submission.ipynb, executed for real at tiny size on the shared CIFAR-10.

With no competition pickle under its KAGGLE_INPUT, the notebook rehearses on a Kaggle-style
pickle of the test split; the submission it writes must pass the checker against that pickle.
"""

from __future__ import annotations

import pytest

from budgetnet.data.kaggle import read_unlabeled_pickle
from budgetnet.submission.csv_file import check_submission

from conftest import REPO

NOTEBOOK = REPO / "notebooks" / "kaggle_submission.ipynb"
# A 5k-parameter network for one epoch on 20 images per class, labelling 20 test images per
# class: every cell runs, in seconds.
TINY = {
    "BUDGETNET_NOTEBOOK_PRESET": "cpu-quick",
    "BUDGETNET_NOTEBOOK_TRAIN_FLAGS": "--epochs 1 --warmup-epochs 0 --max-per-class 20 "
    "--val-size 50 --batch-size 50 --blocks 1 --channels 16 --device cpu",
    "BUDGETNET_NOTEBOOK_REHEARSAL_FLAGS": "--max-per-class 20",
}


def _read():
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (notebook extra)")
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_stored_clean_and_every_cell_is_ipython():
    from_ipython = pytest.importorskip("IPython.core.inputtransformer2")
    notebook = _read()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    # The install cell does not run in CI (INSTALL=0): its shell and pip lines are checked here.
    for cell in code:
        compile(from_ipython.TransformerManager().transform_cell(cell.source), cell.id, "exec")


@pytest.mark.data
@pytest.mark.slow
def test_notebook_trains_and_writes_a_checked_submission(shared_cifar10, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (notebook extra)")
    pytest.importorskip("ipykernel", reason="ipykernel is not installed (notebook extra)")
    notebook = _read()
    # The kernel inherits this environment. The data cache stays the shared one, so the
    # CIFAR-10 images are decoded once for all tests.
    for name, value in {
        **TINY,
        "KAGGLE_INPUT": str(tmp_path / "input"),  # no competition files: rehearse
        "BUDGETNET_DATA": str(shared_cifar10),
        "BUDGETNET_REPO": str(REPO),
        "BUDGETNET_NOTEBOOK_INSTALL": "0",
        "PYTHONPATH": str(REPO / "code"),  # this checkout's budgetnet in the kernel
    }.items():
        monkeypatch.setenv(name, value)
    work = tmp_path / "working"
    work.mkdir()
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    )
    try:
        client.execute()
    finally:  # what the cells printed, shown by pytest when the test fails
        for cell in notebook.cells:
            for output in cell.get("outputs", []):
                print(output.get("text", ""), end="")

    pickle = read_unlabeled_pickle(work / "rehearsal_nolabel.pkl")
    assert len(pickle) == 200
    checked = check_submission(work / "submission.csv", pickle.ids)
    assert len(checked.ids) == 200
    assert (work / "run" / "best" / "model.json").is_file()
