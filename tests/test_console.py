"""Progress output: whole lines (no carriage returns) when the output is a file or a pipe, a real tqdm bar
on a terminal (a pseudo-terminal here), and `write` lines never glued onto progress text."""
from __future__ import annotations

import io
import fcntl
import os
import pty
import re
import select
import struct
import termios

from harness.console import Progress


def test_not_a_terminal_prints_whole_lines_with_counts_and_eta():
    out = io.StringIO()  # stdout and stderr into one file, as `2>&1` in a Slurm log
    with Progress(total=10, desc="train", unit="step", every_s=0.0, out=out, err=out) as progress:
        for step in range(1, 11):
            progress.update(1, loss=f"{1 / step:.3f}")
            if step % 5 == 0:
                progress.write(f"epoch row {step}")
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert "epoch row 5" in lines and "epoch row 10" in lines  # each row alone on its line
    counts = [line for line in lines if line.startswith("train ")]
    assert len(counts) == 10
    assert re.match(r"train 3/10 30% \| \S+ elapsed, ETA \S+ \| \S+ step/s \| loss=0\.333$", counts[2]), counts[2]
    assert counts[-1].startswith("train 10/10 100%")
    assert lines.index("epoch row 5") == lines.index(counts[4]) + 1  # in the order they happened


def test_not_a_terminal_lines_are_rate_limited_and_close_prints_the_final_count():
    out, err = io.StringIO(), io.StringIO()
    progress = Progress(total=1000, initial=200, desc="train", every_s=3600.0, out=out, err=err)
    for _ in range(800):
        progress.update(1)
    assert err.getvalue() == ""  # nothing within the interval
    progress.close()
    assert err.getvalue().startswith("train 1000/1000 100% |") and err.getvalue().count("\n") == 1
    progress.close()  # closing twice prints nothing more
    assert err.getvalue().count("\n") == 1


def test_hidden_progress_still_writes_rows():
    out, err = io.StringIO(), io.StringIO()
    with Progress(total=5, show=False, every_s=0.0, out=out, err=err) as progress:
        progress.update(5)
        progress.write("row")
    assert out.getvalue() == "row\n" and err.getvalue() == ""


def test_terminal_gets_a_tqdm_bar_and_rows_on_their_own_line():
    main_fd, term_fd = pty.openpty()
    fcntl.ioctl(term_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 24 rows x 120 columns
    term = os.fdopen(term_fd, "w")
    try:
        assert term.isatty()
        progress = Progress(total=4, desc="train", unit="step", out=term, err=term)
        assert progress.bar is not None
        progress.update(2, loss="0.5")
        progress.write("epoch row")
        progress.update(2)
        progress.close()
        term.flush()
        chunks = []
        while select.select([main_fd], [], [], 0.2)[0]:
            chunks.append(os.read(main_fd, 65536))
        text = b"".join(chunks).decode(errors="replace")
    finally:
        term.close()
        os.close(main_fd)
    assert "\r" in text  # the bar redraws in place
    assert "train" in text and "4/4" in text
    # tqdm clears the bar before the row and redraws it after: the row has a line to itself
    assert re.search(r"(^|[\r\n])epoch row\r?\n", text), repr(text)
