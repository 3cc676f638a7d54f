"""`python -m harness.models [GLOB] [num_classes=N]`: table of registered models (params, forward GFLOPs per
32x32 image, seed source), optionally filtered by an fnmatch glob such as 'resnet*' (the bare word, or
pattern=GLOB)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from harness.cli import parse_args, run_cli

from . import list_models, model_facts


@dataclass
class ModelsOptions:
    pattern: str = ""  # fnmatch glob, e.g. 'resnet*' ("": every model; the bare word on the command line)
    num_classes: int = 10  # classes of the head, for params and GFLOPs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(ModelsOptions, argv, prog="python -m harness.models",
                      usage="python -m harness.models [GLOB] [num_classes=N]", positional="pattern")
    args.pattern = args.pattern or None

    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}; all models: {', '.join(list_models())}",
              file=sys.stderr)
        return 1
    rows = []
    for name in names:
        f = model_facts(name, args.num_classes)
        rows.append((name, f"{f['params']:,}", f"{f['gflops']:.4f}", f["source"]))
    headers = ("name", "params", "GFLOPs", "seed source")
    title = (f"{len(rows)} models, {args.num_classes} classes; GFLOPs: forward, one 32x32 image, "
             "multiply-add = 2 FLOPs")
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        right = (False, True, True, False)
        print(title)
        for row in (headers, *rows):
            cells = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]
            print("  ".join(cells).rstrip())
        return 0
    table = Table(title=title)
    for h, r in zip(headers, (False, True, True, False)):
        table.add_column(h, justify="right" if r else "left", no_wrap=h != "seed source")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
