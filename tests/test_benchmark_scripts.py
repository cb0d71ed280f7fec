"""The benchmark scripts' own logic, without timing anything: airbench's CPU adapter, the
refusal of a run near chance, and recipes.py's table and resume."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from budgetnet.models.builder import build
from budgetnet.models.zoo import model_spec

from conftest import REPO


def test_airbench_adapter_runs_the_package_on_the_cpu(tmp_path):
    """The benchmark's airbench process: package unmodified, device and precision adapted
    (in a new process: adapt_to_cpu patches torch and torch.cuda for the whole process)."""
    pytest.importorskip("airbench")
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8)
    (tmp_path / "cifar10").mkdir()
    torch.save(
        {"images": images, "labels": torch.arange(64) % 10, "classes": list("abcdefghij")},
        tmp_path / "cifar10" / "train.pt",
    )
    code = f"""
import json, sys, torch
sys.path.insert(0, {str(REPO / "benchmarks")!r})
import airbench_cpu
airbench_cpu.adapt_to_cpu()
import airbench, os
os.chdir({str(tmp_path)!r})
net = airbench.make_net94()
loader = airbench.CifarLoader("cifar10", train=True, batch_size=32, aug=dict(flip=True, translate=2))
x, y = next(iter(loader))
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record(); out = net(x); end.record(); torch.cuda.synchronize()
print(json.dumps({{"dtype": str(next(net.parameters()).dtype), "device": str(x.device),
    "shape": list(out.shape), "params": sum(p.numel() for p in net.parameters()),
    "ms": start.elapsed_time(end), "timed": len(airbench_cpu.INTERVALS)}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["dtype"] == "torch.float32" and row["device"] == "cpu"
    assert row["shape"] == [32, 10] and row["ms"] > 0 and row["timed"] == 1
    ours = build(model_spec("fastres_s"))  # the same layers plus identity shortcuts
    assert row["params"] == sum(p.numel() for p in ours.parameters())


def test_airbench_adapter_autocasts_each_forward_so_every_step_sees_new_weights():
    """The adapter opens an autocast region per forward pass: autocast caches its bf16 casts of
    the weights until its region exits, so one region around all of airbench's train() would
    run every step on the first step's weights (and airbench would reach chance, 10%)."""
    pytest.importorskip("airbench")
    code = f"""
import json, sys, torch
sys.path.insert(0, {str(REPO / "benchmarks")!r})
import airbench_cpu
airbench_cpu.adapt_to_cpu()
import airbench
net = airbench_cpu.autocast_net(airbench.make_net94)()
seen = []
net[2].conv1.register_forward_hook(lambda m, i, o: seen.append(str(o.dtype)))
x = torch.randn(4, 3, 32, 32)
before = net(x)
with torch.no_grad():
    net[2].conv1.weight.mul_(-1)
after = net(x)
print(json.dumps({{"out": str(before.dtype), "conv": seen, "changed": not torch.equal(before, after),
    "indexed": type(net[0]).__name__}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row == {
        "out": "torch.float32", "conv": ["torch.bfloat16"] * 2, "changed": True, "indexed": "Conv",
    }  # fmt: skip


def test_benchmark_refuses_a_row_near_chance(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cpu_vs_airbench

    log = (tmp_path / "log").open("w")
    row = {"system": "airbench94", "seed": 0, "test_acc_tta2": 0.1}
    with pytest.raises(SystemExit, match="airbench94 seed 0 reached 10.00% .* near chance"):
        cpu_vs_airbench.checked(row, log)
    assert cpu_vs_airbench.checked({**row, "test_acc_tta2": 0.9}, log)["test_acc_tta2"] == 0.9


def test_recipes_table_gives_each_system_its_columns_and_time_ratio():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import recipes

    common = {"precision": "float32", "params": 10, "flops": 2e6, "test_acc_tta0": 0.8}
    peer = {**common, "system": "airbench94", "epochs": 9.9, "test_acc_tta2": 0.9}
    ours = {
        **common, "system": "budgetnet fast", "epochs": 10, "val_acc": 0.88,
        "test_acc_tta2": 0.91, "corruption_mean": 0.7,
        **{name: 0.5 for name in recipes.NOISES},
    }  # fmt: skip
    rows = [
        {**ours, "seed": 0, "train_seconds": 50.0}, {**ours, "seed": 1, "train_seconds": 70.0},
        {**peer, "seed": 0, "train_seconds": 120.0}, {**peer, "seed": 1, "train_seconds": 120.0},
    ]  # fmt: skip
    lines = recipes.summarise(rows, "airbench94").splitlines()
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in lines[2:]
    }
    assert list(cells) == ["airbench94", "budgetnet fast"]  # the reference first
    assert cells["airbench94"][3] == "—" and cells["airbench94"][-1] == "1.00"
    assert cells["budgetnet fast"][3] == "88.00 ± 0.00" and cells["budgetnet fast"][-1] == "0.50"
    assert cells["budgetnet fast"][5] == "91.00 ± 0.00"
    recipes.time_figure(rows)  # draws without a display


def test_recipes_resume_runs_only_missing_pairs_and_keeps_every_finished_row(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import recipes

    trained = []
    common = {"precision": "float32", "params": 10, "flops": 2e6, "epochs": 1, "val_acc": 0.5}

    def fake_row(system, seed):
        trained.append((system, seed))
        if len(trained) == 3:
            raise KeyboardInterrupt  # the benchmark stops during its third run
        return {**common, "system": system, "seed": seed, "train_seconds": 10.0 + seed,
                "test_acc_tta0": 0.6, "test_acc_tta2": 0.7}  # fmt: skip

    monkeypatch.setattr(recipes, "write_airbench_data", lambda data, workdir: None)
    monkeypatch.setattr(recipes, "load_split", lambda data, split: None)
    monkeypatch.setattr(recipes, "preset_row", lambda p, s, *a: fake_row(f"budgetnet {p}", s))
    monkeypatch.setattr(recipes, "airbench_run", lambda v, s, *a: fake_row(f"airbench{v}", s))
    out = tmp_path / "bench" / "recipes"
    argv = ["recipes.py", "--presets", "fast", "--seeds", "0", "1", "--out", str(out), "--resume"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(KeyboardInterrupt):
        recipes.main()
    kept = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [(r["system"], r["seed"]) for r in kept] == [("budgetnet fast", 0), ("airbench94", 0)]
    assert (
        "budgetnet fast" in out.with_suffix(".md").read_text()
        and out.with_suffix(".png").stat().st_size
    )

    trained.clear()
    recipes.main()  # resumed: only seed 1's pairs run
    assert trained == [("budgetnet fast", 1), ("airbench94", 1)]
    assert len(json.loads(out.with_suffix(".json").read_text())["rows"]) == 4


def test_gpu_table_takes_each_ratio_to_the_airbench_of_equal_or_lower_accuracy():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_vs_airbench as gpu

    def row(system, acc, seconds, seed=0, epochs=10):
        return {"system": system, "seed": seed, "epochs": epochs, "test_acc_tta0": acc - 0.01,
                "test_acc_tta2": acc, "train_seconds": seconds, "params": 5, "flops": 1e6}  # fmt: skip

    rows = [
        row("airbench94", 0.94, 3.0),
        row("airbench94", 0.94, 5.0, seed=1),
        row("airbench95", 0.95, 10.0),
        row("budgetnet fast", 0.945, 2.0),
        row("budgetnet tiny", 0.90, 1.0),
    ]
    assert gpu.reference_for(94.5, {"airbench94": 94.0, "airbench95": 95.0}) == "airbench94"
    assert gpu.reference_for(95.0, {"airbench94": 94.0, "airbench95": 95.0}) == "airbench95"
    assert gpu.reference_for(90.0, {"airbench94": 94.0}) is None
    rate = 1e12
    assert gpu.floor_seconds(rows[0], rate, 50_000) == pytest.approx(3 * 1e6 * 50_000 * 10 / rate)
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in gpu.summarise(rows, rate, 50_000).splitlines()[2:]
    }
    assert list(cells)[:2] == ["airbench94", "airbench95"]  # airbench first
    assert cells["airbench94"][3] == "94.00 ± 0.00" and cells["airbench94"][5] == "4.00"
    assert cells["budgetnet fast"][-1] == "0.50 (airbench94)"  # median 4 s of airbench94
    assert cells["budgetnet tiny"][-1] == "—"  # below every airbench: no ratio
    assert gpu.matmul_rate(torch.device("cpu"), 64, repeats=2) > 0


def test_airbench_gpu_runner_refuses_a_machine_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "airbench_gpu.py"), "--workdir", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1 and "needs a CUDA device" in result.stderr
