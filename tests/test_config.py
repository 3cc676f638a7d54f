"""The config system: defaults, YAML recipes, dotted overrides, errors that name the key, round trip."""

import pytest
import yaml

from conftest import REPO, run_harness
from harness import config as C
from harness.models import list_models


def test_defaults_are_the_seed_recipe():
    cfg = C.Config()
    assert (cfg.model.name, cfg.optim.name, cfg.optim.lr, cfg.train.batch_size) == ("resnet18", "sgd", 0.1, 128)
    assert (cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.schedule) == (0.9, 5e-4, "cosine")
    assert (cfg.data.crop_padding, cfg.data.flip) == (4, True)


def test_yaml_round_trip_preserves_every_value():
    cfg = C.apply_overrides(C.Config(), ["optim.lr=0.2", "train.epochs=7", "optim.betas=[0.8, 0.95]",
                                         "data.backend=torch", "run.dir=runs/x"])
    again = C.from_dict(C.Config, yaml.safe_load(C.to_yaml(cfg)))
    assert again == cfg
    assert again.optim.betas == [0.8, 0.95]


def test_overrides_are_typed_and_applied_last(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 0.05\ntrain:\n  epochs: 3\n")
    cfg = C.parse_args(C.Config, ["--config", str(recipe), "optim.lr=1e-3", "train.compile=false", "run.name=42"])
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 3  # from the recipe
    assert cfg.train.compile is False
    assert cfg.run.name == "42"  # a string field takes the text of a number
    assert C.apply_overrides(C.Config(), ["optim.lr=1"]).optim.lr == 1.0  # ints are accepted as floats


@pytest.mark.parametrize("override, words", [
    ("optim.lrr=0.1", ["optim.lrr", "lr"]),  # unknown key: named, with the closest allowed
    ("optimiser.lr=0.1", ["optimiser", "optim"]),
    ("train.epochs=abc", ["train.epochs", "integer", "abc"]),
    ("train.epochs=2.5", ["train.epochs", "integer"]),
    ("train.compile=maybe", ["train.compile", "true, false, auto"]),
    ("train.precision=fp8", ["train.precision", "fp32", "bf16", "fp16"]),
    ("data.dataset=imagenet", ["data.dataset", "cifar10", "cifar100"]),
    ("optim=3", ["optim", "section"]),
    ("optim.lr.x=3", ["optim.lr", "not a section"]),
    ("optim.lr", ["key=value"]),
])
def test_bad_overrides_name_the_key_and_what_is_allowed(override, words):
    with pytest.raises(C.ConfigError) as e:
        C.apply_overrides(C.Config(), [override])
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_bad_yaml_recipe_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epocs: 3\n")
    with pytest.raises(C.ConfigError, match=r"bad.yaml.*train.epocs.*epochs"):
        C.load(C.Config, bad)
    bad.write_text("- a list\n")
    with pytest.raises(C.ConfigError, match="mapping"):
        C.load(C.Config, bad)
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.load(C.Config, tmp_path / "missing.yaml")


def _recipes():
    return sorted(p for p in (REPO / "configs").rglob("*.yaml") if "sweeps" not in p.parts)


@pytest.mark.parametrize("path", _recipes(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_recipe_loads_and_names_a_registered_model(path):
    cfg = C.load(C.Config, path)
    assert cfg.model.name in list_models()


def test_every_model_has_a_zoo_recipe():
    zoo = {p.stem for p in (REPO / "configs" / "zoo").glob("*.yaml")}
    assert set(list_models()) <= zoo, set(list_models()) - zoo


def test_cli_bad_key_is_one_line_without_traceback():
    proc = run_harness(["train.epocs=3"], check=False, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "train.epocs" in proc.stderr and "epochs" in proc.stderr


def _leaves(obj, prefix=""):
    """(dotted key, default, field, owning class) for every value field, nested sections included."""
    import dataclasses

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, f, type(obj)


def test_cli_help_shows_every_key_with_type_default_choices_and_description():
    proc = run_harness(["--help"], timeout=120)
    out = proc.stdout
    assert out.startswith("usage: harness.train [--config FILE.yaml] [key=value ...]")
    lines = out.splitlines()
    for key, value, f, owner in _leaves(C.Config()):
        line = next((ln for ln in lines if ln.startswith(f"  {key}={C._value_text(value)} ")), None)
        assert line is not None, f"{key} missing from --help"
        if f.metadata.get("choices"):
            assert " | ".join(C._value_text(c) for c in f.metadata["choices"]) in line, line
        note = C.field_descriptions(owner).get(f.name)
        if note:  # the description follows the key's line
            following = " ".join(ln.strip() for ln in lines[lines.index(line) + 1:lines.index(line) + 4])
            assert following.startswith(note[:40]), (key, following)
    # the descriptions are the comments written in config.py, checked here by hand for a few
    def after(key):
        i = next(i for i, ln in enumerate(lines) if ln.startswith(f"  {key}="))
        return lines[i], lines[i + 1].strip()
    assert after("train.precision")[0].split("(")[1].startswith("str: auto | fp32 | bf16 | fp16")
    assert after("train.ema")[1].startswith("EMA decay of the weights")
    assert after("optim.betas")[0] == "  optim.betas=[0.9, 0.999]".ljust(36) + " (list[float])"
    assert after("data.verify")[1].startswith("official: python files must match")  # the comment above it
    assert "model:" in lines and "train:" in lines


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

    notes = C.field_descriptions(helpcfg.Tool)
    assert notes == {"rate": "how fast", "mode": "the mode to run in, spelled over two lines",
                     "names": "comma-free list"}
    assert C.field_descriptions(helpcfg.Inner) == {"depth": "how deep # with a hash inside"}
    with pytest.raises(SystemExit) as e:
        C.parse_args(helpcfg.Tool, ["rate=2", "--help"], prog="tool")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "  mode=b".ljust(36) + " (str: a | b)\n      the mode to run in, spelled over two lines\n" in out
    assert "  plain=false".ljust(36) + " (bool)\n  names=[]" in out  # no description line
    assert "inner:\n  inner.depth=3".ljust(36) in out and "how deep" in out


def test_bench_help_uses_the_same_machinery(capsys):
    from harness.bench import BenchConfig

    with pytest.raises(SystemExit):
        C.parse_args(BenchConfig, ["--help"], prog="python -m harness.bench")
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m harness.bench")
    assert "  mode=both".ljust(36) + " (str: train | infer | both)" in out
    assert "timed steps per repeat" in out
