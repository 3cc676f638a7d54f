"""Stopping on a signal: SIGTERM/SIGUSR1 (preemption, a time limit) become a checkpoint and a clean exit,
agreed by every rank at the same step."""
from __future__ import annotations

import signal

import torch


class StopRequest:
    """SIGTERM/SIGUSR1 (cluster preemption, time limit) ask for a checkpoint and a clean exit.

    Every rank must stop at the same step. The flag is all-reduced every step, but without blocking: the
    sum is started asynchronously on a small CPU (gloo) side group, and its result is read one call later,
    by which time it has long arrived, so no step waits for a collective and no GPU work is synced. The
    check also runs between evaluation batches, so a signal during a long evaluation is not missed (torchrun
    gives workers a grace period after forwarding SIGTERM; see launch/slurm/train.sbatch)."""

    def __init__(self, accelerator):
        self.signum = 0
        self.world = accelerator.num_processes
        for s in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(s, self._handle)
        self._group = self._pending = None
        self._flag = torch.zeros(1)
        if self.world > 1:
            import torch.distributed as dist

            self._group = dist.new_group(backend="gloo")  # every rank creates it, in the same order

    def _handle(self, signum, frame):
        self.signum = self.signum or signum

    def poll(self) -> int:
        """The agreed signal (0: keep going). Call at the same points on every rank."""
        if self.world == 1:
            return self.signum
        import torch.distributed as dist

        agreed = 0
        if self._pending is not None:
            self._pending.wait()  # started one call ago: already complete in practice
            if self._flag.item() > 0:
                agreed = self.signum or signal.SIGTERM  # a rank that saw no signal stops for the others
        if not agreed:
            self._flag.fill_(1.0 if self.signum else 0.0)
            self._pending = dist.all_reduce(self._flag, group=self._group, async_op=True)
        else:
            self._pending = None
        return agreed

    def drain(self) -> int:
        """Wait for the last started exchange and return its verdict (the loop's end: no later call)."""
        if self.world == 1 or self._pending is None:
            return self.signum if self.world == 1 else 0
        self._pending.wait()
        self._pending = None
        return (self.signum or signal.SIGTERM) if self._flag.item() > 0 else 0
