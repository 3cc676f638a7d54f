"""The one command line (harness/cli.py) of every entry point: --help generated from each tool's dataclass,
the same keys for the same things, `--out DIR` everywhere, a refused flag answered with its key=value
spelling, a bare word as the tool's positional key, and `auto` decided by one function."""
from __future__ import annotations

import dataclasses
import functools

import pytest
import yaml

from conftest import run_harness
from harness import cli
from harness import config as C
from harness.bench.specs import BenchConfig, resolve_defaults
from harness.campaign import CampaignConfig
from harness.inspect import InspectOptions
from harness.models.__main__ import ModelsOptions
from harness.report import ReportOptions
from harness.sweep.cli import SweepOptions
from harness.bench.stability import StabilityOptions
from harness.sync import SyncOptions

# every entry point: `python -m <module>` and the dataclass its command line reads
TOOLS = {"harness.train": C.Config, "harness.bench": BenchConfig, "harness.sweep": SweepOptions,
         "harness.report": ReportOptions, "harness.inspect": InspectOptions, "harness.campaign": CampaignConfig,
         "harness.models": ModelsOptions, "harness.sync": SyncOptions, "harness.bench.stability": StabilityOptions}


def _leaves(obj, prefix=""):
    """(dotted key, default, field, owning class) for every value field, nested sections included."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, f, type(obj)


@functools.lru_cache(maxsize=None)
def help_of(module: str) -> str:
    proc = run_harness(["--help"], module=module, timeout=120)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    return proc.stdout


# ---- --help ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", TOOLS)
def test_every_entry_point_help_lists_every_key_with_default_choices_and_description(module):
    out = help_of(module)
    assert out.startswith("usage: ") and module.removeprefix("harness.") in out.splitlines()[0]
    lines = out.splitlines()
    for key, value, f, owner in _leaves(TOOLS[module]()):
        line = next((ln for ln in lines if ln.startswith(f"  {key}={C.value_text(value)} ")), None)
        assert line is not None, f"{key} missing from {module} --help"
        if f.metadata.get("choices"):
            assert " | ".join(C.value_text(c) for c in f.metadata["choices"]) in line, line
        note = cli.field_descriptions(owner).get(f.name)
        if note:  # the description follows the key's line
            following = " ".join(ln.strip() for ln in lines[lines.index(line) + 1:lines.index(line) + 4])
            assert following.startswith(note[:40]), (key, following)
    keys = C.leaf_keys(TOOLS[module]())
    if "out" in keys or "run.dir" in keys:
        assert f"--out DIR is {'out' if 'out' in keys else 'run.dir'}=DIR" in out


def test_train_help_by_hand():
    """The descriptions are the comments written in config.py, checked here by hand for a few."""
    out = help_of("harness.train")
    assert out.startswith("usage: harness.train [--config FILE.yaml] [--out DIR] [key=value ...]")
    lines = out.splitlines()

    def after(key):
        i = next(i for i, ln in enumerate(lines) if ln.startswith(f"  {key}="))
        return lines[i], lines[i + 1].strip()
    assert after("train.precision")[0].split("(")[1].startswith("str: auto | fp32 | bf16 | fp16")
    assert after("train.ema")[1].startswith("EMA decay of the weights")
    assert after("optim.betas")[0] == "  optim.betas=[0.9, 0.999]".ljust(36) + " (list[float])"
    assert after("data.verify")[1].startswith("official: python files must match")  # the comment above it
    assert "model:" in lines and "train:" in lines


def test_bench_help_by_hand():
    out = help_of("harness.bench")
    assert out.startswith("usage: python -m harness.bench")
    assert "  mode=both".ljust(36) + " (str: train | infer | both)" in out
    assert "timed steps per row per round" in out and "  model.name=auto " in out


def test_help_reads_descriptions_of_any_dataclass(tmp_path, monkeypatch, capsys):
    """Trailing comments, comments above a field, fields written over several lines, nested sections and
    fields without any comment, from a module of its own (as the benchmark's and the sweep's are)."""
    (tmp_path / "helpcfg.py").write_text(
        "from dataclasses import dataclass, field\n"
        "from harness.config import choices\n\n\n"
        "@dataclass\n"
        "class Inner:\n"
        "    depth: int = 3  # how deep # with a hash inside\n\n\n"
        "@dataclass\n"
        "class Tool:\n"
        "    rate: float = 0.5  # how fast\n"
        "    # the mode to run in,\n"
        "    # spelled over two lines\n"
        "    mode: str = choices(\"a\", \"b\",\n"
        "                        default=\"b\")\n"
        "    plain: bool = False\n"
        "    names: list[str] = field(default_factory=list)  # comma-free list\n"
        "    inner: Inner = field(default_factory=Inner)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import helpcfg

    notes = cli.field_descriptions(helpcfg.Tool)
    assert notes == {"rate": "how fast", "mode": "the mode to run in, spelled over two lines",
                     "names": "comma-free list"}
    assert cli.field_descriptions(helpcfg.Inner) == {"depth": "how deep # with a hash inside"}
    with pytest.raises(SystemExit) as e:
        cli.parse_args(helpcfg.Tool, ["rate=2", "--help"], prog="tool")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tool [--config FILE.yaml] [key=value ...]\n")  # no out key: no --out
    assert "  mode=b".ljust(36) + " (str: a | b)\n      the mode to run in, spelled over two lines\n" in out
    assert "  plain=false".ljust(36) + " (bool)\n  names=[]" in out  # no description line
    assert "inner:\n  inner.depth=3".ljust(36) in out and "how deep" in out


# ---- one spelling --------------------------------------------------------------------------------------


def test_the_same_things_have_the_same_keys_in_every_tool():
    keys = {module: C.leaf_keys(cls()) for module, cls in TOOLS.items()}
    for module, have in keys.items():
        assert not {"data_root", "models", "wandb", "seed", "progress"} & set(have), module
    for module in ("harness.train", "harness.bench"):
        same = {"model.name", "data.root", "run.wandb", "run.wandb_project", "run.seed", "run.progress"}
        assert same <= set(keys[module]), module
    for module in ("harness.inspect", "harness.campaign"):
        assert "data.root" in keys[module]
    for module in ("harness.bench", "harness.sweep", "harness.report", "harness.inspect", "harness.campaign"):
        assert "out" in keys[module]


@pytest.mark.parametrize("module", [m for m in TOOLS if m not in ("harness.models", "harness.sync")])  # these write no files
def test_out_dir_is_one_flag_in_every_tool_that_writes(module):
    cls = TOOLS[module]
    key = "out" if "out" in C.leaf_keys(cls()) else "run.dir"

    def value(argv):
        return C.leaf_keys(cli.parse_known_args(cls, argv)[0])[key]
    assert value(["--out", "runs/a b"]) == value(["--out=runs/a b"]) == "runs/a b"  # a path, never YAML
    assert value(["--out", "123"]) == "123"
    if key == "out":
        assert value(["out=runs/x"]) == "runs/x"
    assert value(["--out", "runs/x", f"{key}=runs/y"]) == "runs/y"  # later wins, as for every setting
    with pytest.raises(C.ConfigError, match="--out needs a value: --out DIR"):
        cli.parse_known_args(cls, ["--out"])


def test_the_bench_takes_out_as_a_flag(tmp_path):
    run_harness(["suite=ddp", "model.name=lenet5", "batch_sizes=2", "steps=1", "warmup=0", "repeats=1",
                 "run.progress=false", "--out", str(tmp_path / "b")], module="harness.bench")
    assert (tmp_path / "b" / "ddp_overhead.json").is_file()


def test_inspect_reads_the_test_set_from_data_root(tmp_path, cifar_root):
    """A run directory whose config.yaml names a data root that does not exist: data.root=DIR on the
    command line is where the test set is read from."""
    from harness.models import create_model, save_weights

    run = tmp_path / "run"
    run.mkdir()
    cfg = C.apply_overrides(C.Config(), ["model.name=simple_cnn", f"data.root={tmp_path / 'gone'}",
                                         "data.verify=structure"])
    (run / "config.yaml").write_text(C.to_yaml(cfg))
    save_weights(create_model("simple_cnn", num_classes=10), run / "model.safetensors", model="simple_cnn",
                 num_classes="10")
    proc = run_harness([str(run), f"data.root={cifar_root}", "--out", str(tmp_path / "i"), "images=2"],
                       module="harness.inspect")
    assert "inspect.md: test accuracy" in proc.stdout
    assert "on 128 images" in (tmp_path / "i" / "inspect.md").read_text()  # cifar_root's test split


# ---- refused flags -------------------------------------------------------------------------------------


def test_a_flag_that_names_a_key_gets_its_key_value_spelling_in_one_line():
    proc = run_harness(["--model", "resnet18"], check=False, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "error: unknown option --model; did you mean model.name=resnet18?\n"


def _main(module):
    import importlib

    return importlib.import_module("harness.models.__main__" if module == "harness.models" else
                                   "harness.sweep.cli" if module == "harness.sweep" else
                                   "harness.bench.cli" if module == "harness.bench" else module).main


@pytest.mark.parametrize("module, argv, meant", [
    ("harness.train", ["--epochs", "3"], "train.epochs=3"),
    ("harness.train", ["--data-root=/d"], "data.root=/d"),
    ("harness.train", ["--name", "x"], "model.name=x, optim.name=x or run.name=x"),
    ("harness.bench", ["--models", "resnet18,airnet"], "model.name=resnet18,airnet"),
    ("harness.bench", ["--wandb"], "run.wandb=true"),
    ("harness.sweep", ["s.yaml", "--dry-run"], "dry_run=true"),
    ("harness.sweep", ["--dry-run", "configs/sweeps/smoke.yaml"], "dry_run=true"),  # the next word is the sweep
    ("harness.sweep", ["s.yaml", "--dry-run=false"], "dry_run=false"),
    ("harness.sweep", ["s.yaml", "--launcher", "slurm"], "launcher=slurm"),
    ("harness.report", ["runs", "--wandb-project", "me/p"], "wandb_project=me/p"),
    ("harness.inspect", ["runs/r", "--data-root", "/d"], "data.root=/d"),
    ("harness.campaign", ["--budget-min", "5"], "budget_min=5"),
    ("harness.campaign", ["--smoke", "out=x"], "smoke=true"),
    ("harness.campaign", ["--steps"], "steps=..."),
    ("harness.models", ["--num-classes", "100"], "num_classes=100"),
    ("harness.sync", ["runs/r", "--dry-run"], "dry_run=true"),
])
def test_every_tool_answers_a_flag_with_its_key(module, argv, meant):
    flag = next(a for a in argv if a.startswith("--")).split("=")[0]
    with pytest.raises(C.ConfigError) as e:
        _main(module)(argv)
    assert str(e.value) == f"unknown option {flag}; did you mean {meant}?"


def test_a_flag_that_names_nothing_lists_the_flags():
    with pytest.raises(C.ConfigError, match=r"unknown option --verbose; settings are key=value and the flags are "
                                            r"--config FILE and --out DIR"):
        cli.parse_args(C.Config, ["--verbose"])
    with pytest.raises(C.ConfigError, match="unknown option --out; .* the one flag is --config FILE"):
        cli.parse_args(ModelsOptions, ["--out", "x"])


def test_an_unknown_key_value_names_the_key_it_meant():
    with pytest.raises(C.ConfigError, match=r"unknown config key 'data_root'\. Did you mean data\.root\?"):
        cli.parse_args(InspectOptions, ["runs/r", "data_root=/d"], positional="run")
    with pytest.raises(C.ConfigError, match=r"unknown config key 'models'\. Did you mean model\.name\?"):
        cli.parse_args(BenchConfig, ["models=resnet18"])


# ---- words and order -----------------------------------------------------------------------------------


def test_a_bare_word_is_the_tools_positional_key(tmp_path):
    cfg = cli.parse_args(InspectOptions, ["runs/r", "out=o"], positional="run")
    assert (cfg.run, cfg.out) == ("runs/r", "o")
    assert cli.parse_args(ModelsOptions, ["[ab]*"], positional="pattern").pattern == "[ab]*"  # text, not YAML
    with pytest.raises(C.ConfigError, match="one run expected, got 2: a b"):
        cli.parse_args(InspectOptions, ["a", "b"], positional="run")
    with pytest.raises(C.ConfigError, match="unexpected word 'x'"):
        cli.parse_args(C.Config, ["x"])


def test_known_args_pass_the_rest_on_in_order(tmp_path):
    opts, rest = cli.parse_known_args(SweepOptions, ["s.yaml", "optim.lr=0.2", "dry_run=true", "--out", "o",
                                                     "train.epochs=1"], positional="sweep")
    assert (opts.sweep, opts.dry_run, opts.out) == ("s.yaml", True, "o")
    assert rest == ["optim.lr=0.2", "train.epochs=1"]
    with pytest.raises(C.ConfigError, match="unknown config key 'optim'"):
        cli.parse_args(SweepOptions, ["optim.lr=0.2"])


def test_config_file_then_the_command_line_in_order(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"train": {"epochs": 3}, "run": {"dir": "from-file"}}))
    cfg = cli.parse_args(C.Config, ["train.epochs=5", "--config", str(recipe), "--out", "x", "optim.lr=1e-3"])
    assert (cfg.train.epochs, cfg.run.dir, cfg.optim.lr) == (5, "x", 1e-3)
    with pytest.raises(C.ConfigError, match="--config needs a value: --config FILE.yaml"):
        cli.parse_args(C.Config, ["--config"])


def test_cli_bad_key_is_one_line_without_traceback():
    proc = run_harness(["train.epocs=3"], check=False, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "train.epocs" in proc.stderr and "epochs" in proc.stderr


# ---- auto ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("launcher", ["", "inductor"])
def test_auto_compile_means_in_the_bench_what_it_means_in_training(launcher, monkeypatch):
    """One function decides (harness.training.precision.resolve_compile): on a GPU, off on a CPU, the
    launcher's --dynamo_backend when it names one, whatever the suite."""
    from harness.training.precision import resolve_compile

    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", launcher)
    for device in ("cpu", "cuda"):
        trained = resolve_compile("auto", cuda=device == "cuda")[0]
        assert trained == (device == "cuda" or bool(launcher))
        for suite in ("zoo", "data", "ddp"):
            assert resolve_defaults(BenchConfig(suite=suite), device).compile is trained, (suite, device)
    assert resolve_defaults(BenchConfig(compile=False), "cuda").compile is False  # an explicit value stays
