"""Console progress for the entry points: a tqdm bar on a terminal, plain whole lines anywhere else.

    progress = Progress(total=7820, initial=0, desc="train", unit="step", show=is_main and cfg.run.progress)
    progress.update(1, loss=f"{loss:.3f}")        # per step
    progress.write(f"{epoch:>5} {acc:.4f} ...")   # a table row: never glued onto the bar
    progress.close()

A bar redraws itself with `\\r`, which is right on a terminal and wrong in a file: a Slurm log, `| tee`, a
CI log or `> out.txt` would get one long line of bar states with the table rows stuck onto it. So the bar
is drawn only when its stream (stderr) is a terminal; otherwise `update` prints a complete line
(`train 1200/7820 15% | 0:01:40 elapsed, ETA 0:09:12 | 12.0 step/s | loss=1.234`) at most every
`every_s` seconds, and `write` prints whole lines, flushing the other stream first so that stdout and
stderr sharing one file (`2>&1`) interleave line by line.

`leave=False` is for work inside other work (an evaluation during training): the bar is removed when
closed, and off a terminal nothing is printed at the end unless it ran long enough to print lines.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


class Progress:
    """Progress over `total` units (steps, runs); see the module docstring."""

    def __init__(self, total: int, *, initial: int = 0, desc: str = "", unit: str = "step", show: bool = True,
                 every_s: float = 30.0, leave: bool = True, out: TextIO | None = None, err: TextIO | None = None):
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.total, self.n, self.desc, self.unit, self.every_s = total, initial, desc, unit, every_s
        self.postfix: dict[str, str] = {}
        self.bar = None
        self.show, self.leave, self.lines = show, leave, 0
        if show and _is_terminal(self.err):
            self.bar = tqdm(total=total, initial=initial, desc=desc or None, unit=unit, file=self.err,
                            dynamic_ncols=True, mininterval=1.0, leave=leave)
        self._start_n, self._t0 = initial, time.monotonic()
        self._last_line = self._t0
        self._printed_n = initial

    def update(self, n: int = 1, **postfix) -> None:
        """Advance by `n`; keyword values (already formatted or numbers) are shown after the counts."""
        self.n += n
        if postfix:
            self.postfix.update({k: str(v) for k, v in postfix.items()})
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(n)
        elif self.show and time.monotonic() - self._last_line >= self.every_s:
            self._line()

    def write(self, line: str) -> None:
        """Print `line` on its own line of stdout (above the bar on a terminal)."""
        if self.bar is not None:
            self.bar.write(line, file=self.out)
            return
        self.err.flush()  # whatever stderr holds goes out first, as whole lines
        print(line, file=self.out, flush=True)

    def close(self) -> None:
        """Close the bar, or print the final count when it moved since the last line (with leave=False: and
        lines were printed)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.show and self.n != self._printed_n and (self.leave or self.lines):
            self._line()
        self.show = False

    def _line(self) -> None:
        now = time.monotonic()
        elapsed = now - self._t0
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc + ' ' if self.desc else ''}{self.n}/{self.total}"
                 + (f" {100 * self.n / self.total:.0f}%" if self.total else "")]
        eta = (self.total - self.n) / rate if rate > 0 and self.total else None
        parts.append(f"{tqdm.format_interval(elapsed)} elapsed"
                     + (f", ETA {tqdm.format_interval(eta)}" if eta is not None else ""))
        parts.append(f"{rate:.3g} {self.unit}/s")
        if self.postfix:
            parts.append(" ".join(f"{k}={v}" for k, v in self.postfix.items()))
        self.out.flush()  # a row printed to stdout just before stays above this line
        print(" | ".join(parts), file=self.err, flush=True)
        self._last_line, self._printed_n = now, self.n
        self.lines += 1

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal
        return False
