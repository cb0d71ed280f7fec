"""A Muon-style optimizer for convolution filters, as airbench94_muon uses it.

Each step: Nesterov momentum on the gradient, then the update is orthogonalised (its singular
values pushed toward 1 by a few quintic Newton-Schulz iterations on the filter reshaped to
out x (in * k * k)), and the filter is renormalised to norm sqrt(out_channels) before the step,
which a BatchNorm after every convolution makes harmless and which keeps the effective step
size constant. timm's `Muon` computes the iteration in bf16 only, which CPUs without native
bf16 emulate about 400x slower than float32; here the dtype follows the hardware. torch's
`torch.optim.Muon` takes 2-D parameters only and does not renormalise the filters.
"""

from __future__ import annotations

import torch

from budgetnet.runtime import bf16_native

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # maximise the slope at zero (Jordan et al.)


def orthogonalize(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """About U V^T of the matrix g = U S V^T (singular values end in roughly [0.5, 1.5])."""
    a, b, c = NS_COEFFICIENTS
    dtype = torch.bfloat16 if bf16_native(g.device.type) else torch.float32
    x = g.to(dtype)
    x = x / (x.norm() + eps)  # spectral norm <= Frobenius norm <= 1
    wide = x.shape[0] <= x.shape[1]
    if not wide:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).to(g.dtype)


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.6, nesterov: bool = True):
        if lr < 0 or not 0 <= momentum < 1:
            raise ValueError(f"Muon needs lr >= 0 and momentum in [0, 1), got {lr}, {momentum}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "nesterov": nesterov})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            momentum = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(p.grad)
                g = p.grad.add(buf, alpha=momentum) if group["nesterov"] else buf
                p.mul_(len(p) ** 0.5 / p.norm().clamp_min(1e-12))
                update = orthogonalize(g.reshape(len(g), -1)).view_as(p)
                p.add_(update, alpha=-group["lr"])
