"""The command line of every entry point (train, bench, sweep, report, inspect, campaign, models): one
parser, so each setting has one spelling in every tool.

    python -m harness.<tool> [WORD] [--config FILE.yaml] [--out DIR] [key=value ...]

* A setting is `key=value`: the dotted name of a field of the tool's dataclass (`model.name=resnet18`,
  `data.root=/data`, `run.wandb=false`, `out=runs/x`); the value is read as YAML (0.1, true, [1, 2]).
  Later wins: the defaults, then the --config file, then the command line in order.
* Two flags, the same in every tool: `--config FILE` (a YAML file of the tool's keys) and `--out DIR`
  (out=DIR in every tool that writes files, run.dir=DIR for training; `FLAGS` is the one table that maps a
  flag to its key). -h/--help prints every key, generated from the dataclass: type, default, choices, and
  the field's comment as its description.
* A bare word is the tool's one positional key (the sweep file, the run to inspect, ...): the same as
  KEY=WORD, taken as text.
* Any other flag is refused with the key=value spelling of what it meant (`--model resnet18` -> `did you
  mean model.name=resnet18?`, found by `config.close_keys`).
`run_cli` runs an entry point's main() and turns a `UserError` into one line and exit status 2, said once per
job however many processes run it (`harness.errors.report`).

harness/config.py keeps what a config is: its dataclasses, checks, YAML loading and key=value overrides (a
recipe or a sweep's overrides are config without a command line); this module turns argv into one.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import sys
import textwrap
import tokenize
import types
import typing

from harness import config as C
from harness.config import ConfigError
from harness.errors import UserError, report

CONFIG_FLAG = "--config"  # a YAML file of the tool's keys: after the defaults, before the key=value words
# flag -> the keys it may set: the first one the tool has (the tools write to out, a training run to its
# run.dir). Every other setting is spelled key=value only.
FLAGS = {"--out": ("out", "run.dir")}


def flag_key(cls, flag: str) -> str | None:
    """The key `flag` sets in `cls`, None if it sets none there."""
    keys = C.leaf_keys(cls())
    return next((k for k in FLAGS.get(flag, ()) if k in keys), None)


def parse_args(cls, argv: list[str] | None = None, prog: str = "harness", usage: str | None = None,
               positional: str | None = None):
    """`[WORD] [--config FILE] [--out DIR] [key=value ...]` -> a checked `cls` instance. `positional` names
    the key a bare word sets (None: the tool takes none). `--help` prints `help_text` and exits 0."""
    return _parse(cls, argv, prog, usage, positional, keep_foreign=False)[0]


def parse_known_args(cls, argv: list[str] | None = None, prog: str = "harness", usage: str | None = None,
                     positional: str | None = None):
    """As `parse_args`, for a tool that passes settings on (the sweep: training overrides): (the `cls`
    instance, the key=value words whose first part is none of `cls`'s keys, in order)."""
    return _parse(cls, argv, prog, usage, positional, keep_foreign=True)


def _parse(cls, argv, prog, usage, positional, keep_foreign):
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(cls, prog, usage, positional), end="")
        raise SystemExit(0)
    own = {f.name for f in dataclasses.fields(cls)}
    path, settings, foreign, words = None, [], [], []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a.startswith("-"):
            flag, eq, value = a.partition("=")
            key = flag_key(cls, flag)
            if flag != CONFIG_FLAG and key is None:
                following = argv[i] if i < len(argv) and not argv[i].startswith("-") and "=" not in argv[i] else None
                raise unknown_option(cls, flag, value if eq else following, prog, given=bool(eq))
            if not eq:
                if i >= len(argv) or argv[i].startswith("-"):
                    raise ConfigError(f"{flag} needs a value: {flag} {'FILE.yaml' if key is None else 'DIR'}")
                value, i = argv[i], i + 1
            if key is None:
                path = value
            else:
                settings.append((key, value))  # a path: text, never YAML
        elif "=" in a:
            key, value = C.parse_override(a)
            if keep_foreign and key.split(".")[0] not in own:
                foreign.append(a)
            else:
                settings.append((key, value))
        elif positional:
            words.append(a)
            settings.append((positional, a))
        else:
            raise ConfigError(f"unexpected word {a!r}: settings are key=value ({prog} --help lists them)")
    if len(words) > 1:
        raise ConfigError(f"one {positional} expected, got {len(words)}: {' '.join(words)}"
                          + (f"; usage: {usage}" if usage else ""))
    cfg = C.load(cls, path)
    for key, value in settings:
        C.set_value(cfg, key, value)
    return cfg, foreign


def unknown_option(cls, flag: str, value: str | None, prog: str, given: bool = False) -> ConfigError:
    """`--model resnet18` -> "unknown option --model; did you mean model.name=resnet18?"; the value is the
    one given (after = or as the next word), `...` when none was given. A switch (a bool key) takes its
    value only after = (`--dry-run=false`); the next word is no value of a switch (`--dry-run s.yaml` ->
    dry_run=true)."""
    keys = C.leaf_keys(cls())
    close = C.close_keys(cls(), flag)
    if not close:
        flags = [f"{CONFIG_FLAG} FILE"] + [f"{f} DIR" for f in FLAGS if flag_key(cls, f)]
        return ConfigError(f"unknown option {flag}; settings are key=value and the "
                           + ("flags are " + " and ".join(flags) if len(flags) > 1 else f"one flag is {flags[0]}")
                           + f" ({prog} --help lists every key)")

    def spelled(key):
        if isinstance(keys[key], bool):
            return f"{key}={value if given else 'true'}"
        text = value if value is not None else "..."
        return f"{key}={text}"

    meant = [spelled(k) for k in close]
    return ConfigError(f"unknown option {flag}; did you mean "
                       + (meant[0] if len(meant) == 1 else ", ".join(meant[:-1]) + " or " + meant[-1]) + "?")


# ----------------------------------------------------------------------------------------------------
# --help, from the dataclass


@functools.lru_cache(maxsize=None)
def field_descriptions(cls) -> dict[str, str]:
    """{field name: description} read from the class's source: the `# comment` at the end of the field's
    line (any line of a field written over several), else the comment lines right above the field. The
    comment beside a field is its one description, for the reader of the dataclass and for `--help` alike.
    Read once per class; a class without source (built at runtime) has no descriptions."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments, own_line = {}, set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
            if not tok.line[: tok.start[1]].strip():
                own_line.add(tok.start[0])
    out = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        lines = range(node.lineno, node.end_lineno + 1)
        text = " ".join(comments[n] for n in lines if n in comments and n not in own_line)
        if not text:
            above, n = [], node.lineno - 1
            while n in own_line:
                above.insert(0, comments[n])
                n -= 1
            text = " ".join(above)
        if text:
            out[node.target.id] = text
    return out


def _type_text(tp) -> str:
    """`list[float]`, `dict[str, Any]`, `int | None`: the type as written in the dataclass."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else _type_text(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is not None and typing.get_args(tp):
        return f"{typing.get_origin(tp).__name__}[{', '.join(_type_text(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def usage_line(cls, prog: str, positional: str | None = None) -> str:
    """`prog [WORD] [--config FILE.yaml] [--out DIR] [key=value ...]`, with the flags `cls` takes."""
    parts = [prog] + ([f"[{positional.upper()}]"] if positional else []) + [f"[{CONFIG_FLAG} FILE.yaml]"]
    parts += [f"[{flag} DIR]" for flag in FLAGS if flag_key(cls, flag)]
    return " ".join(parts + ["[key=value ...]"])


def help_text(cls, prog: str = "harness", usage: str | None = None, positional: str | None = None) -> str:
    """Every key of `cls` (nested sections included): `key=default`, its type and choices, and its
    description (the field's comment in the source)."""
    flags = [f"{flag} DIR is {flag_key(cls, flag)}=DIR" for flag in FLAGS if flag_key(cls, flag)]
    about = ("Later wins: defaults, then the --config file (YAML, these keys), then key=value overrides (values "
             "are YAML: 0.1, true, [1, 2])" + "".join(f"; {f}" for f in flags)
             + (f"; a bare word is {positional}=WORD" if positional else "") + ".")
    lines = [f"usage: {usage or usage_line(cls, prog, positional)}", "", *textwrap.wrap(about, 106), ""]

    def walk(obj, prefix: str) -> None:
        hints, notes = typing.get_type_hints(type(obj)), field_descriptions(type(obj))
        for f in dataclasses.fields(obj):
            key, value = f"{prefix}{f.name}", getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                lines.extend([""] * bool(lines[-1]) + [f"{key}:" + (f"  # {notes[f.name]}" if f.name in notes else "")])
                walk(value, key + ".")
                continue
            kind = _type_text(hints[f.name])
            if f.metadata.get("choices"):
                kind += ": " + " | ".join(C.value_text(c) for c in f.metadata["choices"])
            lines.append(f"  {key}={C.value_text(value)}".ljust(36) + f" ({kind})")
            if f.name in notes:
                lines.extend(textwrap.wrap(notes[f.name], 100, initial_indent=" " * 6, subsequent_indent=" " * 6))

    walk(cls(), "")
    return "\n".join(lines) + "\n"


def run_cli(main):
    """Run an entry point's `main()`, turning user mistakes into one clear line (once per job: rank 0 says
    it) and a non-zero exit on every rank."""
    try:
        return main()
    except UserError as e:
        report(e)
        raise SystemExit(e.exit_code) from None
