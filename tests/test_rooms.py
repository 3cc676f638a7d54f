"""The package layout (docs/architecture.md): imports inside a package go one way, and the two rooms of a
training run, harness/training (the maths) and harness/run (the files), never import each other nor the
entry point that joins them (harness/train.py). Read from the sources, lazy imports inside functions too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent.parent / "harness"


def imports(path: Path) -> set[str]:
    """Every harness module `path` imports, at any level: `from harness.x import y` counts as harness.x and
    harness.x.y (y may be a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("harness"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("harness"))
    return out


def graph(package: str) -> dict[str, set[str]]:
    """{module of harness/<package>: the modules of the same package it imports}, by file stem."""
    root = HARNESS / package
    stems = {p.stem for p in root.glob("*.py")}
    prefix = f"harness.{package}."
    return {p.stem: {m[len(prefix):].split(".")[0] for m in imports(p) if m.startswith(prefix)} & stems
            for p in root.glob("*.py")}


def reaches(g: dict[str, set[str]], a: str, b: str, seen: tuple = ()) -> bool:
    return any(m == b or (m not in seen and reaches(g, m, b, (*seen, m))) for m in g.get(a, ()))


@pytest.mark.parametrize("package", ["data", "training", "run"])
def test_the_modules_of_a_package_import_one_way(package):
    g = graph(package)
    assert len(g) > 3  # the package was found and read
    cycles = [m for m in g if reaches(g, m, m)]
    assert not cycles, g


def test_data_backends_import_the_interface_never_the_reverse():
    g = graph("data")
    assert "interface" in g["torch_loader"] and "interface" in g["dali"]
    assert not g["interface"] & {"loaders", "torch_loader", "dali", "synthetic"}


@pytest.mark.parametrize("room, other", [("training", "run"), ("run", "training")])
def test_training_and_run_do_not_import_each_other_nor_the_entry_point(room, other):
    offenders = {p.name: sorted(m for m in imports(p) if m.split(".")[:2] == ["harness", other] or m == "harness.train")
                 for p in (HARNESS / room).glob("*.py")}
    assert not any(offenders.values()), offenders
    # and the entry point does meet both
    joined = imports(HARNESS / "train.py")
    assert any(m.startswith("harness.training.") for m in joined) and any(m.startswith("harness.run.") for m in joined)


def test_main_tells_the_story_in_at_most_150_lines():
    """harness/train.py's main() stays readable in one sitting: every block that grows leaves as a named
    function (docs/architecture.md)."""
    tree = ast.parse((HARNESS / "train.py").read_text())
    (main,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert main.end_lineno - main.lineno + 1 <= 150


def test_one_training_step_serves_the_loop_the_warm_up_and_the_benchmark():
    """Only harness/training/step.py runs a backward pass; the loop, the warm-up run, the gradient-flow probe
    and every benchmark suite call its train_step, so a benchmark times exactly the step training takes."""
    calls_backward = sorted(str(p.relative_to(HARNESS)) for p in HARNESS.rglob("*.py")
                            if any(isinstance(n, ast.Attribute) and n.attr == "backward"
                                   for n in ast.walk(ast.parse(p.read_text()))))
    assert calls_backward == ["training/step.py"]
    for user in ("train.py", "training/warmup.py", "training/gradflow.py", "bench/measure.py",
                 "bench/data_suite.py", "bench/ddp_suite.py"):
        assert "harness.training.step.train_step" in imports(HARNESS / user), user
