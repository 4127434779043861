"""Every notebook runs end to end under papermill on the smoke profile and writes its results."""

import json
import os
import re
from pathlib import Path

import pytest
from golden_digest import digest

from xlalign.config import load_profile
from xlalign.pipeline import notebooks, reproduce


@pytest.mark.slow
def test_all_notebooks_run_on_smoke(tmp_path, monkeypatch, cache_dir):
    monkeypatch.setenv("XLALIGN_CACHE", str(cache_dir))
    overrides = [f"run_root={tmp_path / 'runs'}"]
    profile = load_profile("smoke", overrides=overrides)
    run = reproduce(profile, overrides=overrides)
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
    got = digest(run.path)
    changed = [k for k in golden if got.get(k) != golden[k]]
    detail = {
        k: sorted(set(golden[k]) ^ set(got.get(k, {})))
        for k in changed
        if isinstance(golden[k], dict)
    }
    assert got == golden, f"smoke results changed in {changed}: {detail}"
