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
    assert "### effect_vs_base" in report and "| orpo     | aligned − base" in report
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


def _readings(run: Path, notebook: str) -> dict:
    return json.loads((run / "readings" / f"{notebook}.json").read_text(encoding="utf-8"))


def _cell(path: Path, block: str, column: str) -> float:
    import csv

    with path.open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if r["block"] == block and r["column"] == column:
                return float(r["value"])
    raise AssertionError(f"{path} has no cell {block}/{column}")


def _number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in {text!r}"
    return float(m.group(1).replace("−", "-"))


def _check_00(run: Path) -> bool:
    summary = json.loads((run / "quickstart" / "summary.json").read_text())
    said = _readings(run, "00_quickstart")["answers"]
    right = _number(r"right on (\d+) of", said)
    assert _number(r"of (\d+) items", said) == summary["items"]
    return right / summary["items"] == pytest.approx(summary["accuracy"])


def _check_01(run: Path) -> bool:
    import pandas as pd

    counts = pd.read_csv(run / "tables" / "probe_counts.csv", index_col=[0, 1])
    said = _readings(run, "01_build_dataset")["counts"]
    assert "every language holds the same samples" in said
    return _number(r"(\d+) samples each", said) == counts.iloc[:, 0].sum()


def _check_02(run: Path) -> bool:
    table = run / "tables" / "table05_baseline.csv"
    assert all(0 <= v <= 100 for v in _csv_values(table))
    said = _readings(run, "02_baseline_gap")["gap"]
    return _number(r"English (\d+\.\d)%", said) == pytest.approx(
        _cell(table, "baseline", "english"), abs=0.05
    )


def _check_03(run: Path) -> bool:
    table = run / "tables" / "table06_08_batch_alignment.csv"
    said = _readings(run, "03_batch_alignment")
    delta = _cell(table, "orpo_ours", "rest_avg") - _cell(table, "orpo_default", "rest_avg")
    assert _number(r"Rest \(avg\.\): ([+−]?\d+\.\d) points", said["difference"]) == (
        pytest.approx(delta, abs=0.05)
    )
    assert "orpo aligned: " in said["batches"] and "hold one sample in" in said["batches"]
    import pandas as pd

    effect = pd.read_csv(run / "tables" / "effect_vs_base.csv").set_index(["comparison", "group"])
    assert effect.loc[("aligned − uncoupled", "Rest (avg.)"), "delta"] == pytest.approx(
        delta, abs=0.05
    )
    base = _cell(table, "baseline", "rest_avg")
    assert effect.loc[("uncoupled − base", "Rest (avg.)"), "delta"] == pytest.approx(
        _cell(table, "orpo_default", "rest_avg") - base, abs=0.05
    )
    assert said["effect"].startswith("orpo uncoupled − base: Rest (avg.) ")
    assert (run / "train" / "orpo-aligned" / "train_result.json").exists()
    return all(
        0 <= v <= 1
        for v in _column(run / "tables" / "decisions_aligned_vs_uncoupled.csv", "consistency")
    )


def _check_04(run: Path) -> bool:
    assert (run / "tables" / "calm_table01_03.csv").exists()
    said = _readings(run, "04_calm")
    metrics = json.loads((run / "calm" / "metrics.json").read_text())
    samples = _number(r": (\d+) samples in", said["vote"])
    assert (
        samples
        == len(metrics["train_langs"])
        * metrics["sampling"]["samples"]
        / (metrics["sampling"]["prompts"])
    )
    return metrics["questions_train"] > 0


def _check_05(run: Path) -> bool:
    table = run / "tables" / "table12_13_batch_size.csv"
    said = _readings(run, "05_ablations")["batch_size"]
    for line in said.splitlines():
        block = line.split(":", 1)[0]
        size = int(_number(r"at batch size (\d+)", line))
        assert _number(r"at batch size \d+ (\d+\.\d)%", line) == pytest.approx(
            _cell(table, block, f"bs_{size}"), abs=0.05
        )
    return len(said.splitlines()) == len({r for r in _column_text(table, "block")})


def _column_text(path: Path, name: str) -> list[str]:
    import csv

    with path.open(encoding="utf-8") as fh:
        return [r[name] for r in csv.DictReader(fh)]


def _check_06(run: Path) -> bool:
    table = run / "tables" / "table07_unseen_languages.csv"
    said = _readings(run, "06_generalization")["unseen"]
    block = said.split(" ", 1)[0]
    delta = _cell(table, block, "rest_avg") - _cell(table, "baseline", "rest_avg")
    assert _number(r"Rest \(avg\.\): ([+−]?\d+\.\d) points", said) == pytest.approx(delta, abs=0.05)
    return (
        json.loads((run / "train" / "orpo-aligned" / "train_result.json").read_text())["steps"] > 0
    )


def _check_07(run: Path) -> bool:
    said = _readings(run, "07_report")["report"]
    assert "not produced in this run" in (run / "report.md").read_text()
    return _number(r"; (\d+) lack this run's results", said) > 0


# What each notebook, run alone, must have recorded in its own run directory: its tables, and
# readings whose numbers match them.
STANDALONE_CHECKS = {
    "00_quickstart": _check_00,
    "01_build_dataset": _check_01,
    "02_baseline_gap": _check_02,
    "03_batch_alignment": _check_03,
    "04_calm": _check_04,
    "05_ablations": _check_05,
    "06_generalization": _check_06,
    "07_report": _check_07,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STANDALONE_CHECKS))
def test_each_notebook_runs_alone_in_a_fresh_kernel(name, tmp_path, cache_dir):
    """Opened alone with only PROFILE=smoke set (a fresh kernel; RUN_DIR left empty, so the notebook
    opens the profile's current run, here under a fresh run root), every notebook computes what it
    needs and records its results."""
    import papermill as pm

    from xlalign.pipeline import NOTEBOOK_DIR
    from xlalign.runs import current_link

    assert set(STANDALONE_CHECKS) == {nb.stem for nb in notebooks()}
    root = tmp_path / "runs"
    env = {"XLALIGN_CACHE": str(cache_dir)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        pm.execute_notebook(
            str(NOTEBOOK_DIR / f"{name}.ipynb"),
            str(tmp_path / f"{name}.ipynb"),
            parameters={"PROFILE": "smoke", "OVERRIDES": [f"run_root={root}"]},
            kernel_name="python3",
            cwd=str(NOTEBOOK_DIR),
            progress_bar=False,
        )
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    link = current_link(root, "smoke")
    assert link.is_symlink(), "the notebook did not open the profile's current run"
    run_dir = link.resolve()
    assert [p for p in root.iterdir() if not p.is_symlink()] == [run_dir]
    assert STANDALONE_CHECKS[name](run_dir)
