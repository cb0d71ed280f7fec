"""inference.py end to end, test-time augmentation, bf16 against fp32, every refusal, and the
upload through a fake `kaggle` tool."""

from __future__ import annotations

import json
import os
import sys

import inference
import numpy as np
import pytest
import torch

from budgetnet.data.kaggle import kaggle_style, write_unlabeled_pickle
from budgetnet.data.normalization import Normalization, Preprocessing
from budgetnet.data.sources import load_split
from budgetnet.errors import UserError
from budgetnet.evaluation.ensemble import labeled_split, load_ensemble
from budgetnet.evaluation.infer import TTA_LEVELS, infer, tta_views
from budgetnet.models.builder import build
from budgetnet.models.checkpoint import load_release, save_release
from budgetnet.models.spec import ResNetSpec
from budgetnet.submission.csv_file import (
    check_submission,
    read_submission,
    score_submission,
    write_submission,
)
from budgetnet.submission.upload import submit

from cifar_files import CIFAR10_CLASSES, random_images, write_cifar10
from conftest import REPO
from tiny import NORM, PREPROCESSING, TRAIN_FLAGS, edited_release, save_random_release

WIDER = ResNetSpec((1, 1), (16, 32))


@pytest.fixture(scope="module")
def pickle_file(tmp_path_factory):
    """40 random images with shuffled ids that are not row numbers."""
    folder = tmp_path_factory.mktemp("kaggle")
    ids = np.random.default_rng(1).choice(1000, 40, replace=False)
    write_unlabeled_pickle(folder / "test.pkl", random_images(40, seed=3), ids)
    return folder / "test.pkl", ids


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("releases")
    return [save_random_release(folder / f"m{seed}", seed, spec=WIDER) for seed in (1, 2)]


def inference_args(pkl, out, checkpoints, *extra) -> list[str]:
    return [str(a) for a in ("--pkl", pkl, "--out", out, "--checkpoint", *checkpoints, *extra)]


def run_inference(*args) -> None:
    """inference.py in this process (the refusals raise UserError, which `run_cli` prints)."""
    assert inference.main(inference_args(*args)) == 0


def test_every_tta_level_averages_its_views_into_probabilities(tmp_path):
    model = load_release(save_random_release(tmp_path, seed=7, spec=WIDER)).model
    images = random_images(5, seed=2)
    x = torch.zeros(5, 3, 32, 32)
    expected_views = {0: 1, 1: 2, 2: 6}
    for level in TTA_LEVELS:
        views = tta_views(x, level)
        assert len(views) == expected_views[level]
        assert all(v.shape == x.shape for v in views)
        probs = infer(model, images, PREPROCESSING, tta=level, batch_size=2)
        assert probs.shape == (5, 10) and probs.dtype == torch.float32
        torch.testing.assert_close(probs.sum(1), torch.ones(5))
    # An image equal to its mirror image: the flip adds nothing.
    symmetric = np.concatenate([images[:, :, :16], images[:, :, :16][:, :, ::-1]], axis=2)
    torch.testing.assert_close(
        infer(model, symmetric, PREPROCESSING, tta=1, amp=False),
        infer(model, symmetric, PREPROCESSING, tta=0, amp=False),
    )


def _first_conv_inputs(model, images, preprocessing) -> list[torch.Tensor]:
    """What `infer` feeds the first convolution of `model`."""
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    fed = []
    hook = conv.register_forward_pre_hook(lambda module, args: fed.append(args[0]))
    try:
        infer(model, images, preprocessing, amp=False)
    finally:
        hook.remove()
    return fed


def test_a_release_stores_its_preprocessing_and_a_contiguous_one_infers_in_contiguous_order(
    tmp_path,
):
    torch.manual_seed(0)
    model = build(WIDER)
    stored = Preprocessing(32, False, NORM)
    folder = save_release(tmp_path / "r", model, CIFAR10_CLASSES, stored, {}, {})
    meta = json.loads((folder / "model.json").read_text())
    assert meta["preprocessing"] == {"size": 32, "channels_last": False}
    assert meta["normalization"] == NORM.to_dict()
    release = load_release(folder)
    assert release.preprocessing == stored and release.normalization == NORM
    assert not release.model.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = random_images(3, seed=1)
    (fed,) = _first_conv_inputs(release.model, images, release.preprocessing)
    assert fed.is_contiguous() and not fed.is_contiguous(memory_format=torch.channels_last)
    # The same weights stored channels_last: inputs in that order, the same probabilities.
    folder = save_release(tmp_path / "cl", model, CIFAR10_CLASSES, PREPROCESSING, {}, {})
    channels_last = load_release(folder)
    (fed,) = _first_conv_inputs(channels_last.model, images, channels_last.preprocessing)
    assert fed.is_contiguous(memory_format=torch.channels_last) and not fed.is_contiguous()
    torch.testing.assert_close(
        infer(release.model, images, release.preprocessing, amp=False),
        infer(channels_last.model, images, channels_last.preprocessing, amp=False),
    )


def test_a_release_without_stored_preprocessing_loads_with_what_inference_always_fed_it(
    tmp_path,
):
    """Releases written before the preprocessing was stored: the spec's input size,
    channels_last and their own normalisation. The shipped trained_model/ stores its own."""
    bigger = ResNetSpec((1, 1), (8, 16), input_size=40)
    folder = save_random_release(tmp_path / "new", seed=1, spec=bigger)
    old = edited_release(folder, tmp_path / "old", lambda meta: meta.pop("preprocessing"))
    release = load_release(old)
    assert release.preprocessing == Preprocessing(40, True, NORM)
    assert release.model.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    (fed,) = _first_conv_inputs(release.model, random_images(2, seed=3), release.preprocessing)
    assert fed.shape == (2, 3, 40, 40) and fed.is_contiguous(memory_format=torch.channels_last)

    shipped = json.loads((REPO / "trained_model" / "model.json").read_text())
    stored = shipped["preprocessing"]
    assert load_release(REPO / "trained_model").preprocessing == Preprocessing(
        stored["size"], stored["channels_last"], Normalization.from_dict(shipped["normalization"])
    )


def test_bf16_agrees_with_fp32(tmp_path):
    release = load_release(save_random_release(tmp_path / "r", seed=3, spec=WIDER))
    with torch.no_grad():  # spread the logits, as a trained classifier's are
        release.model.head.fc.weight.mul_(20)
    images = random_images(200, seed=4)
    fp32 = infer(release.model, images, release.preprocessing, amp=False)
    bf16 = infer(release.model, images, release.preprocessing, amp=True)
    assert (fp32 - bf16).abs().max() < 0.05
    top2 = fp32.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.05  # bf16 may only flip near-ties
    assert clear.sum() > 100
    assert (fp32.argmax(1) == bf16.argmax(1))[clear].all()


@pytest.mark.slow
def test_trained_run_labels_a_kaggle_pickle_from_the_command_line_as_infer_does(
    tmp_path, run_script
):
    # New processes: train.py's and inference.py's real command lines, end to end.
    cifar = tmp_path / "cifar"
    write_cifar10(cifar, per_batch=40, test_count=50)
    run = tmp_path / "run"
    trained = run_script(
        "code/train.py", "--data", str(cifar), "--epochs", "1", "--run-dir", str(run), *TRAIN_FLAGS
    )
    assert trained.returncode == 0, trained.stderr[-3000:]

    test = load_split(cifar, "test", cache_dir=False)
    images, ids, labels = kaggle_style(test, seed=5)
    assert not np.array_equal(np.sort(ids), np.arange(len(ids)))  # ids are not row numbers
    pkl, key = tmp_path / "test_nolabel.pkl", tmp_path / "key.csv"
    write_unlabeled_pickle(pkl, images, ids)
    write_submission(key, ids, labels)

    out = tmp_path / "submissions" / "submission.csv"
    extra = ["--tta", "2", "--device", "cpu"]
    result = run_script("inference.py", *inference_args(pkl, out, [run], *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"labelled 50 images of {pkl}" in result.stdout and "TTA 2 (6 views)" in result.stdout
    check_submission(out, ids, num_classes=10)
    accuracy, correct, total = score_submission(out, key)
    release = load_release(run)
    probs = infer(release.model, images, release.preprocessing, tta=2)
    assert total == 50 and correct == (probs.argmax(1).numpy() == labels).sum()
    assert accuracy == correct / total and "predicted per class: airplane" in result.stdout
    # The run's own record rebuilds the validation split it held out (--val-size 40).
    held_out = labeled_split(load_ensemble([run], torch.device("cpu")), "val")
    assert len(held_out) == 40 and "validation split of 40" in held_out.source


def test_saved_probabilities_of_an_ensemble_are_the_average_of_its_models(
    pickle_file, releases, tmp_path, capsys
):
    pkl, ids = pickle_file
    saved = []
    for name, chosen in (("a", releases[:1]), ("b", releases[1:]), ("ab", releases)):
        out = tmp_path / f"{name}.csv"
        extra = ["--tta", "1", "--save-probs", "--batch-size", "16"]
        run_inference(pkl, out, chosen, *extra)
        with np.load(tmp_path / f"{name}.probs.npz") as npz:  # plain arrays: no pickle needed
            saved.append(npz["probs"])
            np.testing.assert_array_equal(npz["ids"], ids)
            assert npz["classes"].tolist() == CIFAR10_CLASSES
        csv_ids, labels = read_submission(out)
        np.testing.assert_array_equal(csv_ids, ids)  # the pickle's ids, in its order
        np.testing.assert_array_equal(labels, saved[-1].argmax(1))
    np.testing.assert_allclose(saved[2], (saved[0] + saved[1]) / 2, atol=1e-6)
    printed = capsys.readouterr().out
    assert f"{releases[0]} + {releases[1]}" in printed and "40 rows, checked" in printed


def _foreign_checkpoint(tmp_path, releases):
    path = tmp_path / "model.pt"
    torch.save(load_release(releases[0]).model.state_dict(), path)
    return [path]


def _wrong_spec(tmp_path, releases):
    folder = save_random_release(tmp_path / "spec", seed=1, spec=WIDER)
    return [
        edited_release(folder, tmp_path / "spec2", lambda m: m["spec"].update(channels=[16, 48]))
    ]


def _class_count(tmp_path, releases):
    folder = save_random_release(tmp_path / "count", seed=1, spec=WIDER)
    return [
        edited_release(folder, tmp_path / "count2", lambda m: m.update(classes=m["classes"][:9]))
    ]


def _preprocessing(edit):
    def make(tmp_path, releases):
        folder = save_random_release(tmp_path / "prep", seed=1, spec=WIDER)
        return [edited_release(folder, tmp_path / "prep2", lambda m: edit(m["preprocessing"]))]

    return make


def _other_classes(tmp_path, releases):
    names = [f"class{i}" for i in range(10)]
    return [releases[0], save_random_release(tmp_path / "other", 1, names, spec=WIDER)]


REFUSALS = {
    "missing": (lambda tmp_path, releases: [tmp_path / "nowhere"], "no such checkpoint"),
    "empty folder": (lambda tmp_path, releases: [tmp_path], "not a budgetnet release"),
    "another tool's file": (_foreign_checkpoint, "saved by another tool cannot be loaded"),
    "wrong spec": (_wrong_spec, "weights do not fit the spec"),
    "class count": (_class_count, "9 class names for a 10-class model"),
    "mismatched classes": (_other_classes, "must label the same classes"),
    "preprocessing order": (
        _preprocessing(lambda p: p.update(channels_last="yes")),
        "channels_last must be true or false",
    ),
    "preprocessing size": (
        _preprocessing(lambda p: p.update(size=10**9)),
        "preprocessing size 1000000000 is outside 1..1024",
    ),
    "preprocessing fields": (_preprocessing(lambda p: p.pop("size")), "needs size and"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_bad_checkpoints_are_refused_and_write_nothing(case, pickle_file, releases, tmp_path):
    make, message = REFUSALS[case]
    checkpoints = make(tmp_path, releases)
    out = tmp_path / "out" / "submission.csv"
    with pytest.raises(UserError, match=message):
        run_inference(pickle_file[0], out, checkpoints, "--save-probs")
    assert not out.parent.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unusable_devices_are_refused(pickle_file, releases, tmp_path):
    for device, message in (("cuda", "this machine has no CUDA device"), ("tpu", "--device tpu")):
        with pytest.raises(UserError, match=message):
            run_inference(pickle_file[0], tmp_path / "s.csv", releases[:1], "--device", device)
    assert not (tmp_path / "s.csv").exists()


def test_bad_pickle_is_refused_before_the_model_loads(tmp_path):
    pkl = tmp_path / "bad.pkl"
    write_unlabeled_pickle(pkl, random_images(3), np.arange(3))
    pkl.write_bytes(pkl.read_bytes()[:-20])  # truncated
    with pytest.raises(UserError, match="bad.pkl"):
        run_inference(pkl, tmp_path / "s.csv", [tmp_path / "x"])
    assert not (tmp_path / "s.csv").exists()


def test_refusal_is_one_line_and_exit_2(pickle_file, releases, tmp_path, run_main):
    checkpoint = _foreign_checkpoint(tmp_path, releases)[0]
    out = tmp_path / "s.csv"
    result = run_main("inference.py", *inference_args(pickle_file[0], out, [checkpoint]))
    assert result.returncode == 2 and not out.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {checkpoint}: not a budgetnet")


def fake_kaggle(folder):
    """A `kaggle` executable that records its arguments, one per line."""
    folder.mkdir()
    tool = folder / "kaggle"
    tool.write_text(
        f"#!{sys.executable}\nimport sys\n"
        f"open({str(folder / 'args.txt')!r}, 'w').write('\\n'.join(sys.argv[1:]))\n"
        "print('Successfully submitted')\n"
    )
    tool.chmod(0o755)
    return folder


def test_submit_runs_the_official_tool(pickle_file, releases, tmp_path, run_script):
    bin_dir = fake_kaggle(tmp_path / "bin")
    out = tmp_path / "sub.csv"
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "KAGGLE_USERNAME": "me",
        "KAGGLE_KEY": "secret",
        "KAGGLE_COMPETITION": "nyu-dl-project-1",
    }
    submit_args = ["--submit", "-m", "tiny, TTA 1"]
    args = inference_args(pickle_file[0], out, releases[:1], *submit_args)
    # A new process: the kaggle tool writes to the stdout it inherits, which redirecting
    # sys.stdout in this process would not capture.
    result = run_script("inference.py", *args, env=env)
    assert result.returncode == 0, result.stderr
    recorded = (bin_dir / "args.txt").read_text().splitlines()
    assert recorded == [
        "competitions",
        "submit",
        "-c",
        "nyu-dl-project-1",
        "-f",
        str(out),
        "-m",
        "tiny, TTA 1",
    ]
    assert "Successfully submitted" in result.stdout
    check_submission(out, pickle_file[1])


def test_submit_without_the_tool_explains_and_keeps_the_csv(pickle_file, tmp_path, capsys):
    csv = write_submission(tmp_path / "sub.csv", pickle_file[1], np.zeros(40, np.int64))
    env = {"PATH": str(tmp_path), "KAGGLE_CONFIG_DIR": str(tmp_path / "conf")}
    with pytest.raises(UserError, match="not uploaded .3 setup steps missing.*sub.csv is written"):
        submit(csv, "first", None, env)
    printed = capsys.readouterr().out
    assert "pip install kaggle" in printed and str(tmp_path / "conf" / "kaggle.json") in printed
    assert "--competition SLUG" in printed and f"upload {csv.resolve()} by hand" in printed

    bin_dir = fake_kaggle(tmp_path / "bin")  # installed and configured: only the slug is missing
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "kaggle.json").write_text('{"username": "me", "key": "k"}')
    env["PATH"] = str(bin_dir)
    with pytest.raises(UserError, match=r"\(1 setup step missing"):
        submit(csv, "first", None, env)
    submit(csv, "first", "some-comp", env)
    assert (bin_dir / "args.txt").read_text().splitlines()[2:4] == ["-c", "some-comp"]
    check_submission(csv, pickle_file[1])


def test_submit_needs_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_code:
        inference.main(["--pkl", str(tmp_path / "x.pkl"), "--submit"])
    assert exit_code.value.code == 2 and "--submit needs -m MESSAGE" in capsys.readouterr().err
