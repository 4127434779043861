"""Every notebook runs end to end under papermill on the smoke profile and writes its results."""

import json
import os
import re
from pathlib import Path

import pytest
from golden_digest import digest

from xlalign.config import load_profile
from xlalign.pipeline import notebooks, reproduce


def _git_status() -> str:
    import subprocess

    from xlalign.config import REPO_ROOT

    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    return out.stdout if out.returncode == 0 else "not a git checkout"


@pytest.mark.slow
def test_all_notebooks_run_on_smoke(tmp_path, monkeypatch, cache_dir):
    monkeypatch.setenv("XLALIGN_CACHE", str(cache_dir))
    overrides = [f"run_root={tmp_path / 'runs'}"]
    profile = load_profile("smoke", overrides=overrides)
    before = _git_status()
    run = reproduce(profile, overrides=overrides)
    assert _git_status() == before, "a smoke reproduce changed tracked files (figures?) in the repo"
    rec = json.loads((run.path / "run.json").read_text())
    assert rec["status"] == "ok"
    for nb in notebooks():
        assert (run.path / "notebooks" / nb.name).exists()
        assert rec["steps"][f"notebook/{nb.stem}"]["status"] == "ok"
    report = (run.path / "report.md").read_text(encoding="utf-8")
    assert "## Our run next to the published numbers" in report
    assert "### calm_table01_03 (published: calm_t01, calm_t03)" in report
    table = (run.path / "tables" / "table06_08_batch_alignment.md").read_text(encoding="utf-8")
    assert re.search(r"\d+\.\d \[\d+\.\d–\d+\.\d\]", table)  # cells carry their 95% CI
    assert (run.path / "tables" / "calm_table01_03.csv").exists()
    assert (run.path / "figures" / "ours_fig3_english_vs_rest.png").exists()
    assert os.listdir(run.path / "eval")
    # Golden check: moving code must not move results (tests/golden_digest.py says how to refresh it).
    golden = json.loads(
        (Path(__file__).parent / "golden" / "smoke.json").read_text(encoding="utf-8")
    )
    # Outputs added since the digest (a new table, say) are not changes; every recorded one must match.
    got = digest(run.path)
    got = {
        k: {n: got[k].get(n) for n in v} if isinstance(v, dict) else got.get(k)
        for k, v in golden.items()
    }
    changed = {
        k: sorted(n for n in v if got[k].get(n) != v[n]) if isinstance(v, dict) else k
        for k, v in golden.items()
        if got[k] != v
    }
    assert got == golden, f"smoke results changed: {changed}"


def _csv_values(path: Path) -> list[float]:
    import csv

    with path.open(encoding="utf-8") as fh:
        return [float(r["value"]) for r in csv.DictReader(fh) if r.get("value")]


def _column(path: Path, name: str) -> list[float]:
    import csv

    with path.open(encoding="utf-8") as fh:
        values = [float(r[name]) for r in csv.DictReader(fh)]
    assert values, f"{path} has no rows"
    return values


# What each notebook, run alone, must have recorded in its own run directory.
STANDALONE_CHECKS = {
    "00_quickstart": lambda run: (
        0.0 <= json.loads((run / "quickstart" / "summary.json").read_text())["accuracy"] <= 1.0
    ),
    "01_build_dataset": lambda run: json.loads((run / "data" / "data_report.json").read_text()),
    "02_baseline_gap": lambda run: all(
        0 <= v <= 100 for v in _csv_values(run / "tables" / "table05_baseline.csv")
    ),
    "03_batch_alignment": lambda run: (
        len(_csv_values(run / "tables" / "table06_08_batch_alignment.csv")) > 0
        and (run / "train" / "orpo-aligned" / "train_result.json").exists()
        and all(
            0 <= v <= 1
            for v in _column(run / "tables" / "decisions_aligned_vs_uncoupled.csv", "consistency")
        )
    ),
    "04_calm": lambda run: (
        (run / "tables" / "calm_table01_03.csv").exists()
        and json.loads((run / "calm" / "metrics.json").read_text())["questions_train"] > 0
    ),
    "05_ablations": lambda run: len(_csv_values(run / "tables" / "table12_13_batch_size.csv")) > 0,
    "06_generalization": lambda run: (
        len(_csv_values(run / "tables" / "table07_unseen_languages.csv")) > 0
        and json.loads((run / "train" / "orpo-aligned" / "train_result.json").read_text())["steps"]
        > 0
    ),
    "07_report": lambda run: "not produced in this run" in (run / "report.md").read_text(),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STANDALONE_CHECKS))
def test_each_notebook_runs_alone_in_a_fresh_kernel(name, tmp_path, cache_dir):
    """Opened alone with only PROFILE=smoke set (a fresh kernel, its own new run directory), every
    notebook computes what it needs and records its results."""
    import papermill as pm

    from xlalign.pipeline import NOTEBOOK_DIR

    assert set(STANDALONE_CHECKS) == {nb.stem for nb in notebooks()}
    run_dir = tmp_path / "run"
    env = {"XLALIGN_CACHE": str(cache_dir)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        pm.execute_notebook(
            str(NOTEBOOK_DIR / f"{name}.ipynb"),
            str(tmp_path / f"{name}.ipynb"),
            parameters={"PROFILE": "smoke", "RUN_DIR": str(run_dir)},
            kernel_name="python3",
            cwd=str(NOTEBOOK_DIR),
            progress_bar=False,
        )
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert STANDALONE_CHECKS[name](run_dir)
