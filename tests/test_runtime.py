"""The hardware rules (budgetnet.runtime): bf16 only where the device computes it natively,
and the CPU's threads and allocator."""

from __future__ import annotations

import torch

from budgetnet import runtime


def test_bf16_is_used_only_where_the_hardware_has_it(monkeypatch):
    cpu = torch.device("cpu")
    assert isinstance(runtime.bf16_native("cpu"), bool)
    monkeypatch.setattr(runtime, "bf16_native", lambda kind: False)
    assert runtime.amp_dtype(cpu) is None
    with runtime.autocast(cpu, True):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32
    monkeypatch.setattr(runtime, "bf16_native", lambda kind: True)
    assert runtime.amp_dtype(cpu) == torch.bfloat16 and runtime.amp_dtype(cpu, False) is None
    with runtime.autocast(cpu, True):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16


def test_configure_cpu_sets_threads_and_reports_the_allocator():
    line = runtime.configure_cpu(threads=1, allocator=False)
    assert torch.get_num_threads() == 1 and line == "1 CPU thread"
    line = runtime.configure_cpu(threads=0)
    assert torch.get_num_threads() == runtime.cpu_count()
    assert ("heap reuse" in line) == runtime.tune_allocator()
