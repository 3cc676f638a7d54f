"""EMA of the weights: a shadow copy of the raw model, updated after every optimiser step.

Three choices, each for a measured or reviewed reason:
  * It tracks the raw model from before `accelerator.prepare` (nanoGPT's `raw_model`), never an unwrapped
    view of the DDP/compiled one: `accelerate.unwrap_model` on a compiled module rewires its `_orig_mod`
    to the bare model, which took DDP out of the compiled path after the first update.
  * One foreach lerp over all parameters per step and the step count on the host: no GPU->host sync and
    no Python loop over parameters (torch's AveragedModel syncs twice per step and loops); the BatchNorm
    buffers likewise.
  * BatchNorm statistics are per process (each rank normalises its own micro-batch), so the shadow's
    floating buffers are averaged over the ranks at every `sync` (before evaluation and saving): every
    rank evaluates and saves the same EMA model.
The shadow is a plain module with the model's own parameter names: its state dict is canonical
(`ema.safetensors` at the end of a run loads into `create_model(name)` strictly).
"""
from __future__ import annotations

import copy

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        # kept for use on its own (tests, notebooks): a run's train.ema is checked by training/checks.py first
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.steps = 0  # updates so far (host integer: no device sync to read it)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._src = model
        self._pairs()

    def _pairs(self) -> None:
        """The parameter lists the update walks, as Parameter objects: wrappers may swap a parameter's
        storage (DDP's constructor does, measured with gloo), never the Parameter itself."""
        self._shadow_p = list(self.module.parameters())
        self._source_p = list(self._src.parameters())
        if len(self._shadow_p) != len(self._source_p):
            raise ValueError("EMA: the model's parameters changed since the EMA was made")

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- decay * shadow + (1 - decay) * model, for every parameter and floating buffer (BatchNorm
        statistics); integer buffers (num_batches_tracked) are copied."""
        self.steps += 1
        torch._foreach_lerp_(self._shadow_p, self._source_p, 1.0 - self.decay)
        # buffers are looked up each step (a few per BatchNorm): a wrapper may replace a buffer tensor
        shadow_f, source_f = [], []
        for s, m in zip(self.module.buffers(), self._src.buffers()):
            if s.is_floating_point():
                shadow_f.append(s)
                source_f.append(m)
            else:
                s.copy_(m)
        if shadow_f:
            torch._foreach_lerp_(shadow_f, source_f, 1.0 - self.decay)

    @torch.no_grad()
    def sync(self, accelerator) -> None:
        """Average the shadow's floating buffers (BatchNorm statistics) over all processes: the parameters
        are already identical (DDP), the buffers are each rank's own. A collective: call on every rank."""
        if accelerator.num_processes == 1:
            return
        bufs = [b for n, b in self.module.named_buffers() if b.is_floating_point()]
        if bufs:
            flat = torch.cat([b.reshape(-1) for b in bufs])
            flat = accelerator.reduce(flat, "mean")  # one collective for all buffers (only at eval/save)
            for b, v in zip(bufs, flat.split([b.numel() for b in bufs])):
                b.copy_(v.view_as(b))

    # accelerate's register_for_checkpointing: the shadow's canonical state dict and the step count
    def state_dict(self) -> dict:
        return {"decay": self.decay, "steps": self.steps,
                "module": {k: v.detach().clone() for k, v in self.module.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.module.load_state_dict(state["module"], strict=True)
