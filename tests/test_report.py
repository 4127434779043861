"""Tests for xlalign.report.build: our tables next to the published ones, read from data/paper/."""

from __future__ import annotations

import shutil
import subprocess

import pandas as pd
import pytest

from xlalign import paper
from xlalign.config import REPO_ROOT
from xlalign.report import build, figures
from xlalign.report.build import published_side_by_side, write_side_by_side
from xlalign.report.tables import SCHEMA_COLUMNS, write_table
from xlalign.runs import Run


def _ours(table, rows):
    frame = pd.DataFrame(rows, columns=["block", "column", "value", "delta", "ci_low", "ci_high"])
    return frame.assign(table=table, model="gemma-3-270m")[SCHEMA_COLUMNS]


def test_batch_alignment_rows_sit_next_to_the_published_blocks(tmp_path):
    nan = float("nan")
    ours = _ours(
        "ours_t06_08",
        [
            ("baseline", "english", 50.0, nan, 20.0, 80.0),
            ("baseline", "rest_avg", 45.0, nan, 30.0, 60.0),
            ("orpo_default", "english", 55.0, nan, 25.0, 85.0),
            ("orpo_default", "rest_avg", 48.3, nan, 21.7, 75.0),
            ("orpo_ours", "english", 55.0, nan, 25.0, 85.0),
            ("orpo_ours", "rest_avg", 51.0, 2.7, 30.0, 70.0),
            ("orpo_ours", "arabic", 51.0, 2.7, 30.0, 70.0),  # not a compared column
        ],
    )
    write_table(ours, tmp_path, "table06_08_batch_alignment")
    wide = published_side_by_side(tmp_path)["table06_08_batch_alignment"]
    assert list(wide.columns) == ["table", "block", "model", "english", "rest_avg"]
    mine = wide.loc[["ours"]].set_index("block")
    assert mine.loc["orpo_ours", "rest_avg"] == "51.0(+2.7) [30.0–70.0]"
    assert mine.loc["baseline", "english"] == "50.0 [20.0–80.0]"
    published = wide.loc[["paper"]]
    # Only the blocks we reproduced (ORPO), from Table 8; DPO's Table 6 rows are left out.
    assert set(published["block"]) == {"orpo_default", "orpo_ours"}
    assert set(published["table"]) == {"ba_t08"}
    t08 = paper.load_table("ba_t08").set_index(["block", "model", "column"])
    row = published[(published["block"] == "orpo_ours")].set_index("model")
    for model, cell in row["rest_avg"].items():
        value = t08.loc[("orpo_ours", model, "rest_avg")]
        assert cell == f"{value['value']:.1f}({value['delta']:+.1f})"
    assert len(row) == 8  # the paper's eight models


def test_batch_size_ablation_is_put_in_table_13s_layout(tmp_path):
    nan = float("nan")
    ours = _ours(
        "ours_t12_13",
        [
            ("bs_1", "english", 50.0, nan, 20.0, 80.0),
            ("bs_1", "rest_avg", 40.0, nan, 20.0, 60.0),
            ("bs_4", "rest_avg", 44.0, nan, 24.0, 64.0),
            ("bs_7", "rest_avg", 47.0, nan, 27.0, 67.0),
            ("orpo_default", "english", 52.0, nan, 22.0, 82.0),
            ("orpo_default", "rest_avg", 41.0, nan, 21.0, 61.0),
        ],
    )
    write_table(ours, tmp_path, "table12_13_batch_size")
    wide = published_side_by_side(tmp_path)["table12_13_batch_size"]
    mine = wide.loc[["ours"]]
    assert len(mine) == 1 and mine["block"].iloc[0] == "orpo"
    assert mine["english"].iloc[0] == "52.0 [22.0–82.0]"  # the uncoupled default, as in Table 13
    assert mine["bs_4"].iloc[0] == "44.0 [24.0–64.0]"
    assert mine["bs_2"].iloc[0] == ""  # not run
    published = wide.loc[["paper"]]
    assert set(published["table"]) == {"ba_t13"} and published["bs_1"].eq("").all()


def test_calm_compares_with_the_x_csqa_columns_and_table_3_baselines(tmp_path):
    nan = float("nan")
    rows = []
    for block in ("base", "calm", "sft_gt"):
        for column in ("english", "chinese", "french", "acc_avg", "consistency", "ac3"):
            rows.append((block, column, 30.0, nan, nan, nan))
    write_table(_ours("ours_calm_t01_03", rows), tmp_path, "calm_table01_03")
    wide = published_side_by_side(tmp_path)["calm_table01_03"]
    published = wide.loc[["paper"]]
    assert set(published["block"]) == {"base", "calm", "sft_gt"}
    t01 = paper.load_table("calm_t01").set_index(["block", "model", "column"])["value"]
    # The paper prints "Llama" in Table 1 and "Llama3" in Table 3: both get one canonical name.
    assert set(published["model"]) == {
        "Llama-3-8B-Instruct",
        "Mistral-7B-Instruct-v0.2",
    }  # Self-RAG: MEDQA only
    calm = published[published["block"] == "calm"]
    llama = calm[calm["model"] == "Llama-3-8B-Instruct"].iloc[0]
    assert llama["ac3"] == f"{t01[('calm', 'Llama', 'xcsqa_ac3')]:.1f}"
    assert llama["chinese"] == f"{t01[('calm', 'Llama', 'xcsqa_chinese')]:.1f}"


def test_side_by_side_markdown_lists_each_reproduced_table(tmp_path):
    assert write_side_by_side(tmp_path) is None  # nothing reproduced, nothing written
    nan = float("nan")
    ours = _ours("ours_t05", [("baseline", "english", 50.0, nan, 20.0, 80.0)])
    write_table(ours, tmp_path, "table05_baseline")
    text = write_side_by_side(tmp_path).read_text(encoding="utf-8")
    assert "### table05_baseline (published: ba_t05)" in text
    assert "50.0 [20.0–80.0]" in text and "Llama-3.1-70B-Instruct" in text
    assert "table06_08" not in text


def test_a_malformed_table_of_ours_names_the_file_and_line(tmp_path):
    (tmp_path / "table05_baseline.csv").write_text(
        ",".join(SCHEMA_COLUMNS) + "\nours_t05,baseline,m,english,fifty,,,\n"
    )
    with pytest.raises(paper.PaperDataError, match=r"table05_baseline.csv: line 2.*'value'"):
        published_side_by_side(tmp_path)


# --------------------------------------------------------------------------------------------
# A run's figures stay in the run; the tracked gallery changes only through refresh_gallery


def _fake_run(path) -> Run:
    path.mkdir(parents=True, exist_ok=True)
    record = {
        "profile": "smoke",
        "seed": 0,
        "git": {"commit": "0" * 40, "dirty": False},
        "device": {"cuda": False},
        "steps": {"notebook/03_batch_alignment": {"wall_time_s": 1.0}},
    }
    return Run(path=path, record=record)


def _fig3_frame() -> pd.DataFrame:
    nan = float("nan")
    rows = []
    for block, value in (("baseline", 40.0), ("orpo_default", 45.0), ("orpo_ours", 50.0)):
        for column in ("english", "rest_avg"):
            rows.append((block, column, value, nan, value - 10, value + 10))
    return _ours("ours_t06_08", rows)


def _gallery_state():
    """``git status --porcelain figures/`` and the (name, size, mtime) of every file there."""
    status = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "figures/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    files = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in build.GALLERY_DIR.iterdir()
    )
    return status, files


def _make_run_figures(run: Run) -> None:
    frame = _fig3_frame()
    build.save_ours(figures.plot_english_vs_rest(frame), "fig3_english_vs_rest", frame, run)


def test_save_ours_writes_into_the_run_not_the_gallery(tmp_path):
    run = _fake_run(tmp_path / "run")
    before = _gallery_state()
    frame = _fig3_frame()
    png = build.save_ours(figures.plot_english_vs_rest(frame), "fig3_english_vs_rest", frame, run)
    assert png == run.path / "figures" / "ours_fig3_english_vs_rest.png"
    names = {p.name for p in (run.path / "figures").iterdir()}
    assert names == {f"ours_fig3_english_vs_rest.{ext}" for ext in ("png", "svg", "csv")}
    assert _gallery_state() == before
    # a run directory given as a path works the same
    other = build.save_ours(figures.plot_english_vs_rest(frame), "x", frame, tmp_path / "b")
    assert other == tmp_path / "b" / "figures" / "ours_x.png"


def test_draw_paper_figures_needs_a_destination(tmp_path):
    with pytest.raises(TypeError, match="run or an out_dir"):
        build.draw_paper_figures()
    run = _fake_run(tmp_path / "run")
    out = build.draw_paper_figures(run)
    assert set(out) == {stem for _key, stem, _title, _fn in build.FIGURES}
    assert all(p.parent == run.path / "figures" and p.exists() for p in out.values())


def test_report_of_a_run_without_figures_points_nowhere_else(tmp_path):
    run = _fake_run(tmp_path / "run")
    text = build.build_report(run).read_text(encoding="utf-8")
    assert text.count("_not produced in this run_") == 2 * len(build.FIGURES)
    assert "![" not in text
    assert "figures/" not in text and str(build.GALLERY_DIR) not in text


def test_report_shows_the_runs_own_figures(tmp_path):
    run = _fake_run(tmp_path / "run")
    _make_run_figures(run)
    text = build.build_report(run).read_text(encoding="utf-8")
    assert "![ours](figures/ours_fig3_english_vs_rest.png)" in text
    assert "../" not in text  # nothing outside the run directory
    # the paper's figures are in the gallery, but not in this run: not shown
    assert "![paper]" not in text
    build.draw_paper_figures(run)
    text = build.build_report(run).read_text(encoding="utf-8")
    assert "![paper](figures/paper_fig6_batch_size.png)" in text
    assert text.count("_not produced in this run_") == len(build.FIGURES) - 1


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_run_leaves_the_tracked_gallery_untouched(tmp_path):
    before = _gallery_state()
    run = _fake_run(tmp_path / "run")
    _make_run_figures(run)
    build.draw_paper_figures(run)
    build.build_report(run)
    status, files = _gallery_state()
    assert status == ""
    assert files == before[1]


@pytest.mark.parametrize("target_name", ["gallery", "nested/figures"])
def test_refresh_gallery_copies_a_runs_figures_and_redraws_the_papers(tmp_path, target_name):
    run = _fake_run(tmp_path / "run")
    _make_run_figures(run)
    target = tmp_path / target_name
    before = _gallery_state()
    written = build.refresh_gallery(run.path, target)
    assert _gallery_state() == before  # the tracked figures/ is not the target here
    names = {p.name for p in target.iterdir()}
    ours = {f"ours_fig3_english_vs_rest.{ext}" for ext in ("png", "svg", "csv")}
    paper_ = {
        f"paper_{stem}.{ext}" for _k, stem, _t, _f in build.FIGURES for ext in ("png", "svg", "csv")
    }
    assert names == ours | paper_ == {p.name for p in written}
    for name in ours:
        assert (target / name).read_bytes() == (run.path / "figures" / name).read_bytes()


def test_refresh_gallery_refuses_to_mix_runs(tmp_path):
    target = tmp_path / "gallery"
    target.mkdir()
    (target / "ours_fig6_batch_size.png").write_bytes(b"an older run")
    with pytest.raises(FileNotFoundError, match="no ours_"):
        build.refresh_gallery(_fake_run(tmp_path / "empty").path, target)
    run = _fake_run(tmp_path / "run")
    _make_run_figures(run)
    with pytest.raises(FileNotFoundError, match="ours_fig6_batch_size.png"):
        build.refresh_gallery(run.path, target)
    assert sorted(p.name for p in target.iterdir()) == ["ours_fig6_batch_size.png"]


def test_gallery_command_line(tmp_path, capsys):
    run = _fake_run(tmp_path / "run")
    _make_run_figures(run)
    assert build.main(["--gallery", str(run.path), "--target", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "ours_fig3_english_vs_rest.svg").exists()
    assert "paper_fig7_size_vs_improvement.png" in capsys.readouterr().out
    assert build.main(["--gallery", str(tmp_path / "none"), "--target", str(tmp_path / "g")]) == 1
    assert "no ours_* figures" in capsys.readouterr().err


def test_report_flags_an_evaluation_that_gives_one_answer_everywhere(tmp_path):
    """A model answering "I don't know" to every item is a finding, listed as such; a model whose
    answers vary is not, and each evaluation's margin AUROC is shown."""
    import json
    from types import SimpleNamespace

    from xlalign.probe.build import ANSWER_ABSENT, ANSWER_PRESENT
    from xlalign.report.build import evaluation_findings

    def write(label: str, preds: list[str]):
        out = tmp_path / "eval" / label
        out.mkdir(parents=True)
        rows = []
        for i, pred in enumerate(preds):
            gold = ANSWER_PRESENT if i % 2 else ANSWER_ABSENT
            rows.append(
                {
                    "item_id": f"s{i}.en",
                    "sample_id": f"s{i}",
                    "lang": "en",
                    "label": gold,
                    "pred": pred,
                    "correct": pred == gold,
                    "logp_first_present": float(i % 2),
                    "logp_first_absent": 0.5,
                }  # fmt: skip
            )
        (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write("constant", [ANSWER_ABSENT] * 20)
    write("varied", [ANSWER_PRESENT if i % 2 else ANSWER_ABSENT for i in range(20)])
    lines = "\n".join(evaluation_findings(SimpleNamespace(path=tmp_path)))
    finding = next(x for x in lines.splitlines() if x.startswith("**Finding"))
    assert "constant" in finding and "varied" not in finding
    assert "| constant | 20 | I don't know | 100% | 1.00 [1.00–1.00] |" in lines
    assert "| varied | 20 |" in lines


def test_report_settings_mark_each_value_as_a_papers_or_ours():
    from xlalign.config import load_profile
    from xlalign.report.build import settings_lines

    profile = load_profile("paper")
    text = "\n".join(settings_lines({"config": profile.to_dict()}))
    assert "## Settings" in text
    assert "ours" in text and "paper" in text
    assert settings_lines({}) == []
