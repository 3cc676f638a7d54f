"""User-facing errors: a mistake the user can fix (bad config, missing or damaged data, OOM, NaN loss), and
how a job of several processes says one once.

Entry points catch `UserError` (`harness.cli.run_cli`) and `report` it: one line naming the problem and the
fix, a non-zero exit (2), never a traceback.

One line per job, however many processes. A config or data mistake stops every rank at the same point, so
N ranks would print N copies, glued together, and `accelerate launch`/torchrun would bury them under its
own failure summary. So:
  * rank 0 (or a process alone) says it: under torchrun's agent (`accelerate launch` with several
    processes, `torchrun`), into the agent's error file (TORCHELASTIC_ERROR_FILE, the file that
    `torch.distributed.elastic.multiprocessing.errors.record` writes), so the agent's summary names it as
    the root cause where it would say "To enable traceback see: ..."; anywhere else on stderr;
  * every other rank says nothing and waits for the agent, which stops the remaining workers (SIGTERM)
    once rank 0 has exited, then exits with the same code: the agent records exit status 2 for every
    rank, and rank 0 is never stopped before it has written its line. If no SIGTERM comes within
    `RANK_GRACE_S`, rank 0 did not meet the error (an out-of-memory error of one rank): the rank says it
    itself, naming its rank.
What the launcher still prints is its own (docs/training.md, "Errors"): a warning that it stopped the
other workers, its Python traceback of ChildFailedError and the failure summary; it exits 1.
`agreed` makes an error found by some ranks (a missing file, a held lock) the error of every rank, so that
every rank stops at the same point instead of waiting in a collective for the one that left.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

RANK_GRACE_S = 10.0  # a rank other than 0 waits this long for the launcher after rank 0's error: rank 0
                     # meets a config or data error within milliseconds of the others (the same code path)
RANK_0_LINGER_S = 1.0


class UserError(Exception):
    exit_code = 2


def launcher_rank() -> int:
    """This process's global rank as the launcher set it (torchrun's RANK), readable before any process
    group exists; 0 for a process started alone."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def report(error: UserError) -> None:
    """Say `error` once per job (the module docstring): rank 0 says it, other ranks wait for the launcher."""
    line = f"error: {error}"
    rank = launcher_rank()
    if rank != 0:
        _exit_on_sigterm(error.exit_code)
        time.sleep(RANK_GRACE_S)  # the launcher ends this process here once rank 0 has exited
        line = f"error (rank {rank}): {error}"
    if not _to_error_file(line):
        print(line, file=sys.stderr, flush=True)
    elif rank == 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # the agent stops the other workers as soon as this one exits, and polls every 0.1 s: a moment for
        # them to reach their own `report` (milliseconds behind on the same path) so they exit 2, not by SIGTERM
        time.sleep(RANK_0_LINGER_S)


def _exit_on_sigterm(code: int) -> None:
    def leave(signum, frame):
        if not _to_error_file(f"exit status {code}: stopped with rank 0, whose error is the root cause"):
            sys.stderr.flush()
        os._exit(code)  # not SystemExit: nothing is left to tear down, and the launcher waits for this exit

    signal.signal(signal.SIGTERM, leave)


def _to_error_file(message: str) -> bool:
    """Write `message` where torchrun's agent reads a worker's failure (its summary prints it); False when
    there is no agent (no TORCHELASTIC_ERROR_FILE) or the file cannot be written."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return False
    try:  # a string message is shown as it is; the timestamp orders the failures (the first is the root cause)
        with open(path, "w") as f:
            json.dump({"message": message, "timestamp": int(time.time())}, f)
    except OSError:
        return False
    return True


def agreed(accelerator, fn):
    """`fn()` on every rank; a UserError raised on any rank is raised on every rank (the lowest rank's
    message), so they all stop here. One collective, called on every rank whether or not anything failed."""
    result, error = None, None
    try:
        result = fn()
    except UserError as e:
        error = e
    if accelerator.num_processes == 1:
        if error is not None:
            raise error
        return result
    from accelerate.utils import gather_object

    messages = gather_object([None if error is None else (str(error), error.exit_code)])
    first = next((m for m in messages if m is not None), None)
    if first is None:
        return result
    if error is not None and str(error) == first[0]:
        raise error
    raised = UserError(first[0])
    raised.exit_code = first[1]
    raise raised
