"""Packaging: exact pins agree across pyproject, environment.yml and the lock; notebooks carry no outputs."""

import json
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(specs) -> dict[str, str]:
    out = {}
    for spec in specs:
        spec = spec.split("#")[0].strip()
        if not spec:
            continue
        name, _, version = spec.partition("==")
        assert version, f"{spec!r} is not pinned exactly"
        out[_norm(name)] = version.strip()
    return out


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _pins(project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip) == declared


def test_lock_pins_every_declared_dependency_at_the_same_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _pins(project["dependencies"] + project["optional-dependencies"]["dev"])
    lock = _pins(
        line
        for line in (ROOT / "requirements/lock-cpu.txt").read_text().splitlines()
        if not line.startswith("#")
    )
    for name, version in declared.items():
        assert lock.get(name) == version, f"{name}: pyproject {version}, lock {lock.get(name)}"
    assert not any(n.startswith("nvidia-") for n in lock), "the CPU lock must not pull CUDA wheels"


def test_notebooks_are_committed_without_outputs():
    books = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert len(books) == 8
    for path in books:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and not cell.get("execution_count"), path.name
            # nbformat 4.5 cells carry ids; a cell added by hand without one is a warning today
            # and an error in future nbformat versions.
            assert cell.get("id"), f"{path.name}: a cell has no id"


def test_every_notebook_has_one_parameters_cell_without_computation():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, path.name
        src = "".join(tagged[0]["source"])
        names = [line.split("=")[0].strip() for line in src.splitlines() if "=" in line]
        assert {"PROFILE", "RUN_DIR", "SEED"} <= set(names), path.name
        assert "(" not in src.replace("e.g.", ""), f"{path.name}: parameters cell must not compute"


def test_ci_calls_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make reproduce" in readme
    assert "make test" in (ROOT / ".ci/run").read_text()
