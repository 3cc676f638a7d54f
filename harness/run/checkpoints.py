"""Checkpoints and resume: what makes a run safe to kill (the lock is run/directory.py's, signals run/stop.py's).

Layout: `checkpoints/step-NNNNNNNNN/` (accelerate save_state folders, each marked COMPLETE, each with the
config.yaml of the start that wrote it: the recipe a resume is checked against) and `latest`, a one-line
pointer. A checkpoint is written to a hidden temporary folder, every file fsync'd, marked
COMPLETE (fsync'd), renamed into place, and only then is `latest` replaced (write + fsync + os.replace):
a kill or a power loss at any moment leaves the previous checkpoint and `latest` intact. Weights that
are not finite are never written: the last good checkpoint stays the one `latest` names.

The model's weights in a checkpoint are its own state dict (`model.safetensors`, no `module.` or
`_orig_mod.` prefixes), written from the raw model by a save hook instead of accelerate's copy of the
wrapped model, and loaded back into the raw model by a load hook: a run resumes across changes of the
number of processes and of the compile setting. Optimiser, RNG states and registered objects (TrainState,
EMA) are accelerate's.

Resuming loads into what this run built: a checkpoint whose optimiser state does not fit the optimiser (another
optim.name or other parameter groups, possible only under train.resume_force) stops with one line, not
torch's traceback.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from harness.errors import UserError
from harness.models.weights import load_weights, save_weights

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
ASIDE = ".old-"  # a checkpoint moved aside while the same step is saved again (Checkpoints.save)


def fsync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """Flush every file under `path`, then the directories, to disk (os.replace is atomic, not durable)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def write_durable(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def weights_finite(model: torch.nn.Module) -> bool:
    """All parameters finite: one fused norm over every tensor and a single host sync."""
    params = [p.detach() for p in model.parameters()]
    if not params:
        return True
    return bool(torch.stack(torch._foreach_norm(params)).float().isfinite().all())


class Checkpoints:
    """Atomic checkpoints under `<run dir>/checkpoints/`. Call save/latest on every rank."""

    def __init__(self, run_dir: Path, accelerator, keep: int = 2, config_yaml: str = ""):
        self.dir = run_dir / "checkpoints"
        self.acc = accelerator
        self.keep = max(1, keep)
        self.config_yaml = config_yaml  # written into every checkpoint
        self.model = None

    def attach(self, raw_model: torch.nn.Module) -> None:
        """Save and load `raw_model`'s own state dict in place of accelerate's copy of the wrapped model."""
        self.model = raw_model

        def save_hook(models, weights, output_dir):
            weights.clear()  # accelerate writes no model file of its own ...
            if self.acc.is_main_process:  # ... we write the canonical one
                save_weights(raw_model, Path(output_dir) / WEIGHTS)

        def load_hook(models, input_dir):
            models.clear()  # accelerate loads no model ...
            load_weights(raw_model, Path(input_dir) / WEIGHTS)  # ... the raw model takes the canonical file

        self.acc.register_save_state_pre_hook(save_hook)
        self.acc.register_load_state_pre_hook(load_hook)

    def restore(self, path: Path | None, raw_model: torch.nn.Module, objects) -> Path | None:
        """Make every save hold `raw_model` (`attach`) and `objects` (TrainState, EMA, Lookahead: anything with
        state_dict/load_state_dict; None skipped), then load the checkpoint `path` (train.resume's, resolved
        by `resolve_resume`), if any, into all of them and the optimiser and RNG states. Returns `path`."""
        self.attach(raw_model)
        for obj in objects:
            if obj is not None:
                self.acc.register_for_checkpointing(obj)
        if path is not None:
            fix = (f"Resume with the recipe it was written with ({path.parent.parent / CONFIG}), or start a new "
                   f"run.dir from its weights with model.init_from={path.parent.parent}")
            try:
                self.acc.load_state(str(path))
            except torch.OutOfMemoryError:
                raise  # not a mismatch: the run's out-of-memory advice names the batch and the fix
            except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:
                # torch's optimisers check little when loading: SGD's state in AdamW is a KeyError ('step')
                # from Adam.__setstate__, other groups a ValueError; the same on every rank
                first = (str(e).strip().splitlines() or [""])[0]
                if "custom checkpoints" in first:  # accelerate: other objects registered than were saved
                    names = ", ".join(type(o).__name__ for o in objects if o is not None)
                    raise UserError(f"checkpoint {path} holds other objects than this run's ({names}): "
                                    f"train.ema or train.lookahead_every was switched on or off. {fix}") from None
                raise UserError(f"checkpoint {path} does not fit this run's optimiser or objects "
                                f"({type(e).__name__}: {first}): it was written by another optim.name or other "
                                f"parameter groups. {fix}") from None
        return path

    def _complete(self, path: Path) -> bool:
        return (path / "COMPLETE").is_file()

    def latest(self) -> Path | None:
        """The checkpoint `latest` names if it is complete, else the newest complete one, else None."""
        pointer = self.dir / "latest"
        if pointer.is_file():
            p = self.dir / pointer.read_text().strip()
            if self._complete(p):
                return p
        # by step; a checkpoint moved aside by a save of the same step that was killed counts, after its twin
        found = [*self.dir.glob("step-*"), *self.dir.glob(f"{ASIDE}step-*")]
        done = sorted((p for p in found if self._complete(p)),
                      key=lambda p: (p.name.removeprefix(ASIDE), not p.name.startswith(ASIDE)))
        return done[-1] if done else None

    def save(self, step: int) -> Path:
        acc = self.acc
        if self.model is not None and not weights_finite(self.model):  # identical on every rank (DDP)
            last = self.latest()
            raise UserError(f"the weights are not finite (NaN or inf) at step {step}: no checkpoint was written. "
                            + (f"The last good one is {last} (train.resume=auto continues from it). " if last else "")
                            + "Lower optim.lr, add warm-up (optim.warmup_epochs=1) or clipping (train.grad_clip=1.0).")
        final = self.dir / f"step-{step:09d}"
        tmp = self.dir / f".tmp-step-{step:09d}"
        if acc.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # debris of a save that was killed
        acc.wait_for_everyone()
        acc.save_state(str(tmp))  # weights (our hook), optimizer, RNG states per rank, registered objects
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / CONFIG).write_text(self.config_yaml)
            _fsync_tree(tmp)
            write_durable(tmp / "COMPLETE", f"{step}\n")
            # the same step saved again (e.g. a signal right after a periodic save): the old copy is moved
            # aside, not deleted, until the new one is in place; `latest` finds it if a kill comes between
            aside = self.dir / f"{ASIDE}{final.name}"
            if final.exists():
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(final, aside)
            os.replace(tmp, final)
            write_durable(self.dir / "latest", final.name + "\n")
            fsync_dir(self.dir)  # the renames and the new pointer themselves
            shutil.rmtree(aside, ignore_errors=True)
            for old in sorted(p for p in self.dir.glob("step-*") if p != final)[: -self.keep + 1 or None]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final


def checkpoint_step(path: Path) -> int:
    """The optimiser step a complete checkpoint was written at (its COMPLETE marker holds it)."""
    return int((path / "COMPLETE").read_text().split()[0])


def resolve_resume(resume: str, checkpoints: Checkpoints) -> Path | None:
    """train.resume: "" -> None; "auto" -> latest complete checkpoint or None; a path -> that path."""
    if not resume:
        return None
    if resume == "auto":
        return checkpoints.latest()
    p = Path(resume)
    if not (p / "COMPLETE").is_file():
        raise UserError(f"train.resume={resume}: not a complete checkpoint folder (no COMPLETE marker). "
                        f"Use train.resume=auto to take the latest one in run.dir, or name a "
                        f"checkpoints/step-* folder.")
    return p
