"""Lookahead (Zhang et al. 2019) as airbench94 uses it (`train.lookahead_every=k`).

Every k optimiser steps the slow weights move toward the fast ones, slow <- decay x slow + (1 - decay) x
fast, and the fast weights restart from the result. `decay` ramps as lookahead_decay x (step/total)^3:
about 0 early (the slow weights simply follow), 0.95^5 at the end, when averaging the noisy last steps
helps most. After the last step the model holds the slow weights (airbench's final update with decay 1),
so evaluation and the saved weights are the slow ones. Every floating tensor of the state dict takes part,
BatchNorm's running statistics included (they belong to the weights they were measured with).

Like the EMA (harness/training/ema.py) it works on the raw model (the one before `accelerator.prepare`): DDP keeps
the weights identical on every rank, so every rank's slow copy is identical too.
"""
from __future__ import annotations

import torch


class Lookahead:
    def __init__(self, model: torch.nn.Module, every: int, decay: float = 0.95**5):
        # kept for use on its own: a run's train.lookahead_every is checked by training/checks.py first
        if every < 1:
            raise ValueError(f"Lookahead needs every >= 1, got {every}")
        self.every, self.decay, self._model = every, decay, model
        self.slow = [t.detach().clone() for t in self._fast()]

    def _fast(self) -> list[torch.Tensor]:
        """The model's floating parameters and buffers, looked up at each use: a wrapper may swap a
        parameter's storage (DDP's constructor does) or replace a buffer, so no tensor is held."""
        return [t for t in self._model.state_dict(keep_vars=True).values() if t.is_floating_point()]

    def decay_at(self, step: int, total: int) -> float:
        return self.decay * (step / max(1, total)) ** 3

    @torch.no_grad()
    def step(self, step: int, total: int) -> None:
        """Call after optimiser step number `step` (1-based) of `total`."""
        if step % self.every and step < total:
            return
        fast = self._fast()
        if step % self.every == 0:
            torch._foreach_lerp_(self.slow, fast, 1.0 - self.decay_at(step, total))
        torch._foreach_copy_(fast, self.slow)  # at the end (any step) the model keeps the slow weights

    # accelerate's register_for_checkpointing
    def state_dict(self) -> dict:
        return {"slow": [t.clone() for t in self.slow]}

    def load_state_dict(self, state: dict) -> None:
        for s, v in zip(self.slow, state["slow"]):
            s.copy_(v)
