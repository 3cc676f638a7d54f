"""Checkpoints: atomic accelerate save_state folders under `<run dir>/checkpoints/`, and what resumes.

Layout: `checkpoints/step-NNNNNNNNN/` (accelerate save_state folders, each marked COMPLETE) and `latest`,
a one-line pointer. A checkpoint is written to a hidden temporary folder, marked COMPLETE, renamed into
place, and only then is `latest` replaced (write + os.replace): a kill at any moment leaves the previous
checkpoint and `latest` intact.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from harness.errors import UserError



class Checkpoints:
    """Atomic accelerate checkpoints under `<run dir>/checkpoints/`. Call save/latest on every rank."""

    def __init__(self, run_dir: Path, accelerator, keep: int = 2):
        self.dir = run_dir / "checkpoints"
        self.acc = accelerator
        self.keep = max(1, keep)

    def _complete(self, path: Path) -> bool:
        return (path / "COMPLETE").is_file()

    def latest(self) -> Path | None:
        """The checkpoint `latest` names if it is complete, else the newest complete one, else None."""
        pointer = self.dir / "latest"
        if pointer.is_file():
            p = self.dir / pointer.read_text().strip()
            if self._complete(p):
                return p
        done = sorted(p for p in self.dir.glob("step-*") if self._complete(p))
        return done[-1] if done else None

    def save(self, step: int) -> Path:
        acc = self.acc
        final = self.dir / f"step-{step:09d}"
        tmp = self.dir / f".tmp-step-{step:09d}"
        if acc.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # debris of a save that was killed
        acc.wait_for_everyone()
        acc.save_state(str(tmp))  # model, optimizer, RNG states per rank, registered objects
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / "COMPLETE").write_text(f"{step}\n")
            if final.exists():  # the same step saved again (e.g. a signal right after a periodic save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            ptmp = self.dir / ".latest.tmp"
            ptmp.write_text(final.name + "\n")
            os.replace(ptmp, self.dir / "latest")
            for old in sorted(p for p in self.dir.glob("step-*") if p != final)[: -self.keep + 1 or None]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final


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
