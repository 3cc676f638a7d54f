"""The config system: defaults, YAML recipes, dotted overrides, errors that name the key, round trip.
The command line that reads them (flags, --help) is tests/test_cli.py."""

import pytest
import yaml

from conftest import REPO
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
    cfg = C.load(C.Config, recipe, ["optim.lr=1e-3", "train.compile=false", "run.name=42"])
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


def test_an_unknown_key_is_answered_with_the_key_it_most_likely_meant():
    cfg = C.Config()
    for name, meant in [("data-root", ["data.root"]), ("data_root", ["data.root"]), ("--model", ["model.name"]),
                        ("models", ["model.name"]), ("epochs", ["train.epochs"]), ("wandb-project", ["run.wandb_project"]),
                        ("optim.lrr", ["optim.lr"]), ("lrr", ["optim.lr"]), ("out", [])]:
        assert C.close_keys(cfg, name) == meant, name
    assert C.close_keys(cfg, "name") == ["model.name", "optim.name", "run.name"]
    with pytest.raises(C.ConfigError, match=r"unknown config key 'data_root'\. Did you mean data\.root\?"):
        C.apply_overrides(cfg, ["data_root=/d"])
    with pytest.raises(C.ConfigError, match=r"unknown config key 'train.epocs'\. Did you mean train\.epochs\?"):
        C.apply_overrides(cfg, ["train.epocs=3"])


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
