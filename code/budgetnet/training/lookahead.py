"""Lookahead-style weight averaging with a ramped decay (airbench's `LookaheadState`).

A slow copy of every floating-point tensor of the model's state (weights and BatchNorm running
statistics) is kept. Every `every` optimizer steps the slow copy moves toward the current
weights, slow <- decay * slow + (1 - decay) * fast, and the network is reset to it. The decay
ramps with the step t of T as decay(t) = final_decay * (t / T)**3: early on the slow copy just
follows the fast weights; late in training the averaging is strong. After the last step the
network is set to the slow copy.
"""

from __future__ import annotations

import torch
from torch import nn

RAMP_POWER = 3  # decay(t) = final_decay * (t / T) ** RAMP_POWER


def decay_at(step: int, total_steps: int, final_decay: float) -> float:
    """The decay used at optimizer step `step` (1-based; the count of steps done)."""
    return final_decay * (step / total_steps) ** RAMP_POWER


class Lookahead:
    def __init__(self, model: nn.Module, every: int, final_decay: float, total_steps: int):
        self.every, self.final_decay, self.total_steps = every, final_decay, total_steps
        self.slow = {
            k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()
        }

    @torch.no_grad()
    def _pull(self, model: nn.Module, decay: float) -> None:
        state = model.state_dict()
        for key, slow in self.slow.items():
            slow.lerp_(state[key], 1 - decay)
            state[key].copy_(slow)

    def after_step(self, model: nn.Module, step: int) -> None:
        """Call after optimizer step `step` (1-based)."""
        if step % self.every == 0:
            self._pull(model, decay_at(step, self.total_steps, self.final_decay))
        if step == self.total_steps:
            self._pull(model, 1.0)  # the network ends as the slow copy

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.slow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state.keys() != self.slow.keys():
            raise ValueError("the lookahead state does not match the model")
        for key, value in state.items():
            self.slow[key].copy_(value)
