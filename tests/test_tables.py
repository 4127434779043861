"""Tests for xlalign.report.tables: tidy schema, paper formatting, writing and round-trips."""

import sys

import numpy as np
import pandas as pd
import pytest

from xlalign.evaluation.metrics import ac3, consistency, is_correct
from xlalign.evaluation.stats import bootstrap_ci, bootstrap_rest_avg_ci
from xlalign.report.tables import (
    LANG_NAMES,
    SCHEMA_COLUMNS,
    calm_table,
    format_cell,
    probe_table,
    to_wide,
    write_table,
)


def run_preds(outcomes, preds_for_wrong="B"):
    """Predictions frame from {lang: list of 0/1} over parallel sample_ids q000, q001, ..."""
    rows = []
    for lang, vals in outcomes.items():
        for i, ok in enumerate(vals):
            pred = "A" if ok else preds_for_wrong
            rows.append(
                {
                    "item_id": f"q{i:03d}.{lang}",
                    "sample_id": f"q{i:03d}",
                    "lang": lang,
                    "label": "A",
                    "pred": pred,
                    "correct": pred == "A",
                }
            )
    return pd.DataFrame(rows)


def paper_tidy():
    """Two rows of batch-alignment Table 8 (ORPO), Mistral-7B-Instruct-v0.1, in the schema."""
    rows = [
        ("english", 60.8, np.nan, np.nan, np.nan),
        ("arabic", 59.6, 31.3, 57.1, 62.0),
        ("spanish", 59.0, 3.9, np.nan, np.nan),
        ("rest_avg", 58.1, 8.6, np.nan, np.nan),
    ]
    frame = pd.DataFrame(rows, columns=["column", "value", "delta", "ci_low", "ci_high"])
    frame = frame.assign(table="ba_t08", block="orpo_ours", model="Mistral-7B-Instruct-v0.1")
    return frame[SCHEMA_COLUMNS]


def test_lang_names_cover_all_codes():
    assert LANG_NAMES["en"] == "english" and LANG_NAMES["de"] == "german"
    assert set(LANG_NAMES) == set("en ar es fr ja pt zh th vi hu ro it de".split())


def test_format_cell_paper_style():
    assert format_cell(59.6, 31.3) == "59.6(+31.3)"
    assert format_cell(57.7, 0.0) == "57.7(+0.0)"
    assert format_cell(57.7, -0.01) == "57.7(+0.0)"  # no "-0.0"
    assert format_cell(50.0, -2.04) == "50.0(-2.0)"
    assert format_cell(60.8) == "60.8"
    assert format_cell(59.6, 31.3, 57.1, 62.0, show_ci=True) == "59.6(+31.3) [57.1–62.0]"
    assert format_cell(59.6, 31.3, show_delta=False) == "59.6"
    assert format_cell(np.nan) == ""


def test_to_wide_formats_and_orders_columns():
    tidy = paper_tidy().iloc[[3, 1, 0, 2]]  # scrambled: rest_avg, arabic, english, spanish
    wide = to_wide(tidy)
    assert list(wide.columns) == ["english", "arabic", "spanish", "rest_avg"]
    row = wide.loc["Mistral-7B-Instruct-v0.1"]
    assert row["arabic"] == "59.6(+31.3)"
    assert row["english"] == "60.8"
    assert row["rest_avg"] == "58.1(+8.6)"
    assert to_wide(tidy, show_ci=True).iloc[0]["arabic"] == "59.6(+31.3) [57.1–62.0]"
    assert to_wide(tidy, show_delta=False).iloc[0]["arabic"] == "59.6"


def test_to_wide_keeps_blocks_apart():
    ours = paper_tidy()
    default = ours.assign(block="orpo_default", delta=np.nan)
    wide = to_wide(pd.concat([ours, default]))
    assert list(wide.index) == [
        ("orpo_ours", "Mistral-7B-Instruct-v0.1"),
        ("orpo_default", "Mistral-7B-Instruct-v0.1"),
    ]


def test_probe_table_values_cis_and_delta():
    rng = np.random.default_rng(0)
    langs = ["en", "ar", "fr"]
    base_preds = run_preds({lang: rng.integers(0, 2, 80).tolist() for lang in langs})
    ours_preds = run_preds({"en": [1] * 60 + [0] * 20, "ar": [1] * 50 + [0] * 30, "fr": [1] * 80})
    base = probe_table(base_preds, "ba_t07", "base", "M (Base)", langs, seed=1)
    ours = probe_table(ours_preds, "ba_t07", "ours", "M (Ours)", langs, baseline=base, seed=1)

    assert list(ours.columns) == SCHEMA_COLUMNS
    assert list(ours["column"]) == ["english", "arabic", "french", "rest_avg"]
    val = ours.set_index("column")
    assert val.loc["english", "value"] == 75.0
    assert val.loc["arabic", "value"] == 62.5
    assert val.loc["rest_avg", "value"] == pytest.approx((62.5 + 100.0) / 2)

    ar = is_correct(ours_preds)[ours_preds["lang"] == "ar"]
    ci = bootstrap_ci(ar, seed=1)
    assert (val.loc["arabic", "ci_low"], val.loc["arabic", "ci_high"]) == (ci.low, ci.high)
    rci = bootstrap_rest_avg_ci(ours_preds, seed=1)
    assert (val.loc["rest_avg", "ci_low"], val.loc["rest_avg", "ci_high"]) == (rci.low, rci.high)

    ref = base.set_index("column")["value"]
    assert np.isnan(val.loc["english", "delta"])  # paper prints no delta for English
    for col in ("arabic", "french", "rest_avg"):
        assert val.loc[col, "delta"] == pytest.approx(val.loc[col, "value"] - ref[col])


def test_probe_table_without_ci_and_unknown_language():
    preds = run_preds({"en": [1, 0], "th": [0, 0]})
    tidy = probe_table(preds, "t", "b", "m", ["en", "th"], with_ci=False)
    assert tidy[["ci_low", "ci_high"]].isna().all().all()
    assert list(tidy["value"]) == [50.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="'vi'"):
        probe_table(preds, "t", "b", "m", ["en", "vi"])


def test_calm_table():
    langs = ["en", "zh", "fr"]
    preds = run_preds({"en": [1, 1, 1, 0], "zh": [1, 0, 1, 0], "fr": [1, 1, 0, 0]}, "C")
    tidy = calm_table(preds, "calm_t01", "x_csqa", "Llama", langs)
    val = tidy.set_index("column")["value"]
    assert list(val.index) == ["english", "chinese", "french", "acc_avg", "consistency", "ac3"]
    assert val["acc_avg"] == pytest.approx((75 + 50 + 50) / 3)
    # all wrong answers are "C", so agreement = same correctness:
    # (en,zh) 3/4, (en,fr) 3/4, (zh,fr) 2/4 -> (0.75 + 0.75 + 0.5) / 3 = 66.67 %
    assert val["consistency"] == pytest.approx(200 / 3)
    assert val["consistency"] == pytest.approx(consistency(preds))
    assert val["ac3"] == pytest.approx(ac3(val["acc_avg"], val["consistency"]))
    assert tidy["ci_low"].isna().all()

    with_ci = calm_table(preds, "calm_t01", "x_csqa", "Llama", langs, with_ci=True, seed=3)
    pd.testing.assert_series_equal(with_ci["value"], tidy["value"])
    lang_rows = with_ci[with_ci["column"].isin(["english", "chinese", "french"])]
    assert (lang_rows["ci_low"] <= lang_rows["value"]).all()
    assert (lang_rows["value"] <= lang_rows["ci_high"]).all()
    assert (lang_rows["ci_high"] > lang_rows["ci_low"]).all()  # 2-3 of 4 right: not degenerate
    assert with_ci.loc[~with_ci.index.isin(lang_rows.index), "ci_low"].isna().all()


def test_write_table_roundtrip_and_no_silent_overwrite(tmp_path):
    tidy = paper_tidy()
    csv_path, md_path = write_table(tidy, tmp_path / "out", "ba_t08")
    assert csv_path.name == "ba_t08.csv" and md_path.name == "ba_t08.md"
    back = pd.read_csv(csv_path)
    assert list(back.columns) == SCHEMA_COLUMNS
    pd.testing.assert_frame_equal(back, tidy.reset_index(drop=True), check_exact=False)
    assert "59.6(+31.3)" in md_path.read_text(encoding="utf-8")

    with pytest.raises(FileExistsError):
        write_table(tidy.assign(value=0.0), tmp_path / "out", "ba_t08")
    assert pd.read_csv(csv_path)["value"].tolist() == tidy["value"].tolist()  # untouched
    write_table(tidy.assign(value=1.0), tmp_path / "out", "ba_t08", overwrite=True)
    assert (pd.read_csv(csv_path)["value"] == 1.0).all()


def test_markdown_keeps_trailing_zero(tmp_path):
    _, md_path = write_table(paper_tidy().assign(value=60.0), tmp_path, "t")
    text = md_path.read_text(encoding="utf-8")
    assert "| 60.0 " in text and "| 60 " not in text


def test_write_table_refuses_when_only_markdown_exists(tmp_path):
    (tmp_path / "t.md").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_table(paper_tidy(), tmp_path, "t")
    assert not (tmp_path / "t.csv").exists()  # nothing half-written
    assert (tmp_path / "t.md").read_text() == "keep me"


def test_markdown_fallback_without_tabulate(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tabulate", None)  # makes ``import tabulate`` fail
    _, md_path = write_table(paper_tidy(), tmp_path, "t")
    lines = md_path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "| model | english | arabic | spanish | rest_avg |"
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| Mistral-7B-Instruct-v0.1 | 60.8 | 59.6(+31.3) | 59.0(+3.9) | 58.1(+8.6) |"
