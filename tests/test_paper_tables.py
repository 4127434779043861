"""Published tables (data/paper/): loading, schema, and the consistency checks of xlalign.paper."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from xlalign import paper
from xlalign.paper.tables import Discrepancy, PaperDataError

MANIFEST = paper.load_manifest()
KEYS = paper.table_keys(MANIFEST)
ENTRIES = {entry["key"]: entry for entry in MANIFEST["tables"]}

EXPECTED_KEYS = [f"ba_t{n:02d}" for n in range(1, 14)] + [
    f"calm_t{n:02d}" for n in (1, 3, 4, 7, 8, 9, 10)
]
# Rows per table: one per printed number (so a lost or duplicated cell shows up here).
EXPECTED_ROWS = {
    "ba_t01": 12,
    "ba_t02": 24,
    "ba_t03": 16,
    "ba_t04": 48,
    "ba_t05": 64,
    "ba_t06": 128,
    "ba_t07": 36,
    "ba_t08": 128,
    "ba_t09": 48,
    "ba_t10": 48,
    "ba_t11": 54,
    "ba_t12": 64,
    "ba_t13": 64,
    "calm_t01": 81,
    "calm_t03": 24,
    "calm_t04": 8,
    "calm_t07": 12,
    "calm_t08": 6,
    "calm_t09": 72,
    "calm_t10": 18,
}
BA_MODELS = {
    "Mistral-7B-Instruct-v0.1",
    "Mistral-7B-Instruct-v0.2",
    "Mistral-7B-Instruct-v0.3",
    "Mixtral-8x22B-Instruct-v0.1",
    "Llama-3-8B-Instruct",
    "Llama-3-70B-Instruct",
    "Llama-3.1-8B-Instruct",
    "Llama-3.1-70B-Instruct",
}
BA_UNSEEN_MODELS = {"Mixtral-8x22B-Instruct-v0.1", "Llama-3-70B-Instruct", "Llama-3.1-70B-Instruct"}


def _row(table, block, model, values: dict, deltas: dict | None = None) -> pd.DataFrame:
    """A hand-built tidy frame for one (block, model) row."""
    deltas = deltas or {}
    return pd.DataFrame(
        [
            {
                "table": table,
                "block": block,
                "model": model,
                "column": col,
                "value": val,
                "delta": deltas.get(col, math.nan),
                "ci_low": math.nan,
                "ci_high": math.nan,
            }
            for col, val in values.items()
        ]
    )


# --------------------------------------------------------------------------------------------
# Manifest and loading


def test_manifest_lists_every_table_once():
    assert KEYS == EXPECTED_KEYS
    for entry in MANIFEST["tables"]:
        for field in ("paper", "table", "caption", "blocks", "models", "columns", "figures"):
            assert field in entry, (entry["key"], field)
        assert isinstance(entry["notes"], list)
        assert entry["key"] == f"{entry['paper']}_t{entry['table']:02d}"
        assert paper.table_path(entry["key"]).exists()


@pytest.mark.parametrize("key", EXPECTED_KEYS)
def test_table_loads_with_manifest_blocks_models_columns(key):
    df = paper.load_table(key)
    entry = ENTRIES[key]
    assert len(df) == EXPECTED_ROWS[key]
    assert list(df.columns) == paper.SCHEMA_COLUMNS
    assert df["value"].dtype == float and df["value"].notna().all()
    assert list(dict.fromkeys(df["block"])) == entry["blocks"]
    assert list(dict.fromkeys(df["model"])) == entry["models"]
    assert list(dict.fromkeys(df["column"])) == entry["columns"]
    assert set(entry["blocks"]) <= set(MANIFEST["blocks"])


@pytest.mark.parametrize("key", [k for k in EXPECTED_KEYS if k.startswith("ba_")])
def test_ba_tables_have_the_papers_models_and_full_grids(key):
    df = paper.load_table(key)
    expected = BA_UNSEEN_MODELS if key in {"ba_t01", "ba_t07", "ba_t11"} else BA_MODELS
    for block, part in df.groupby("block"):
        assert set(part["model"].map(paper.canonical_model)) == expected, block
        # every model of a block prints every column of the table
        assert len(part) == part["model"].nunique() * len(ENTRIES[key]["columns"]), block


def test_calm_tables_models():
    t1 = paper.load_table("calm_t01")
    assert set(t1["model"].map(paper.canonical_model)) == {
        "Llama-3-8B-Instruct",
        "Mistral-7B-Instruct-v0.2",
        "Self-RAG",
    }
    # Self-RAG prints "-" for X-CSQA, so it has MEDQA cells only
    self_rag = t1[t1["model"] == "Self-RAG"]["column"]
    assert set(self_rag) == {"medqa_english", "medqa_chinese", "medqa_acc_avg"}


def test_transcribed_cells_as_printed():
    t6 = paper.wide(paper.load_table("ba_t06"), "dpo_ours")
    assert t6.loc["Llama-3.1-8B-Instruct", "arabic"] == 65.5
    t7 = paper.load_table("ba_t07")
    cell = t7[(t7["model"] == "Mixtral-8x22B") & (t7["column"] == "english")].iloc[0]
    assert (cell["value"], cell["ci_low"], cell["ci_high"]) == (74.2, 72.2, 76.1)
    t9 = paper.load_table("calm_t09")
    cell = t9[(t9["block"] == "calm") & (t9["column"] == "medqa_us_chinese")].iloc[0]
    assert (cell["model"], cell["value"], cell["delta"]) == ("Llama3-8B-Instruct", 39.8, 6.5)


def test_wide_keeps_printed_order():
    w = paper.wide(paper.load_table("ba_t05"), "baseline")
    assert w.shape == (8, 8)
    assert list(w.index)[0] == "Mistral-7B-Instruct-v0.1"
    assert list(w.columns) == ENTRIES["ba_t05"]["columns"]
    assert w.loc["Mistral-7B-Instruct-v0.1", "arabic"] == 7.0
    with pytest.raises(KeyError):
        paper.wide(paper.load_table("ba_t05"), "orpo_ours")


def _write(tmp_path, text: str):
    path = tmp_path / "ba_t99.csv"
    path.write_text(text)
    return path


HEADER = "table,block,model,column,value,delta,ci_low,ci_high\n"


def test_loader_names_file_and_line_of_a_malformed_cell(tmp_path):
    path = _write(tmp_path, HEADER + "t,b,m,english,56.0,,,\nt,b,m,arabic,7.O,,,\n")
    with pytest.raises(PaperDataError, match=r"ba_t99\.csv: line 3: column 'value'.*'7\.O'"):
        paper.read_tidy(path)


def test_loader_rejects_missing_columns_empty_values_and_duplicates(tmp_path):
    with pytest.raises(PaperDataError, match="missing required columns"):
        paper.read_tidy(_write(tmp_path, "table,block,model,column,value\nt,b,m,english,1\n"))
    with pytest.raises(PaperDataError, match="line 2: column 'value' is empty"):
        paper.read_tidy(_write(tmp_path, HEADER + "t,b,m,english,,,,\n"))
    with pytest.raises(PaperDataError, match="line 2: column 'model' is empty"):
        paper.read_tidy(_write(tmp_path, HEADER + "t,b,,english,1,,,\n"))
    with pytest.raises(PaperDataError, match="duplicate cell"):
        paper.read_tidy(_write(tmp_path, HEADER + "t,b,m,english,1,,,\nt,b,m,english,2,,,\n"))


def test_load_table_rejects_bad_keys():
    with pytest.raises(PaperDataError):
        paper.load_table("ba_6")
    with pytest.raises(PaperDataError, match="no such table file"):
        paper.load_table("ba_t99")


def test_model_names():
    assert paper.canonical_model("Llama-3-1-70B") == "Llama-3.1-70B-Instruct"
    assert paper.canonical_model("Mixtral-8\u00d722B") == "Mixtral-8x22B-Instruct-v0.1"
    assert paper.canonical_model("gemma-3-270m") == "gemma-3-270m"
    assert paper.short_model("Llama-3-8B-Instruct") == "Llama-3-8B"
    assert paper.model_size_b("Mixtral-8x22B-v0.1") == 141
    assert paper.model_size_b("gemma-3-270m") == pytest.approx(0.27)
    assert paper.split_column("medqa_us_french") == ("medqa_us", "french")
    assert paper.split_column("rest_avg") == (None, None)


# --------------------------------------------------------------------------------------------
# Hand-worked checks, one per check type


def test_rest_avg_hand_worked():
    # ba Table 5, Mistral-7B-Instruct-v0.1: mean(7.0, 51.4, 50.6, 37.6, 51.4, 49.8) = 41.3
    langs = dict(arabic=7.0, spanish=51.4, french=50.6, japanese=37.6, portuguese=51.4)
    row = {"english": 56.0, **langs, "chinese": 49.8, "rest_avg": 41.3}
    assert paper.check_rest_avg(_row("ba_t05", "baseline", "Mistral-7B-Instruct-v0.1", row)) == []
    t5 = paper.wide(paper.load_table("ba_t05"), "baseline").loc["Mistral-7B-Instruct-v0.1"]
    assert t5["rest_avg"] == 41.3
    wrong = paper.check_rest_avg(_row("x", "b", "m", {**row, "rest_avg": 41.5}))
    assert [(d.column, d.printed, round(d.expected, 2)) for d in wrong] == [
        ("rest_avg", 41.5, 41.3)
    ]


def test_mean_tolerance_is_the_rounding_bound():
    # Ten-thousandths hidden by rounding can put a correct printed mean 0.1 from the mean of the
    # printed cells (MEAN_TOL); 0.2 cannot come from rounding.
    row = {"english": 1.0, "arabic": 50.0, "spanish": 50.1}  # mean 50.05
    assert paper.check_rest_avg(_row("x", "b", "m", {**row, "rest_avg": 50.15})) == []
    assert len(paper.check_rest_avg(_row("x", "b", "m", {**row, "rest_avg": 50.3}))) == 1


def test_deltas_hand_worked():
    # ba Table 6, Llama-3.1-8B Arabic: 65.5 (DPO + ours) - 32.3 (DPO default) = +33.2
    t6 = paper.load_table("ba_t06")
    part = t6[(t6["model"] == "Llama-3.1-8B-Instruct") & (t6["column"] == "arabic")]
    assert paper.check_deltas(part, "dpo_default") == []
    bad = part.assign(delta=part["delta"].where(part["block"] != "dpo_ours", 32.2))
    (found,) = paper.check_deltas(bad, "dpo_default")
    assert (found.printed, round(found.expected, 2), found.check) == (32.2, 33.2, "delta")


def test_deltas_need_their_baseline():
    with pytest.raises(KeyError):
        paper.check_deltas(paper.load_table("ba_t06"), "orpo_default")


def test_acc_avg_hand_worked():
    # CALM Table 9, Llama3 + SFT, MEDQA-US: mean(62.4, 36.1, 45.8) = 48.1, printed 47.8
    t9 = paper.load_table("calm_t09")
    found = paper.check_acc_avg(t9[(t9["block"] == "sft") & (t9["model"] == "Llama3-8B-Instruct")])
    assert [(d.column, d.printed, round(d.expected, 2)) for d in found] == [
        ("medqa_us_acc_avg", 47.8, 48.1)
    ]


def test_ac3_hand_worked():
    # CALM Table 1, Mistral base: A = mean(60.1, 48.3, 51.6, 50.7, 49.4, 43.0) = 50.517,
    # C = 50.51, 2AC / (A + C) = 50.513 -> printed 50.51
    langs = ["english", "chinese", "french", "italian", "german", "japanese"]
    values = dict(zip(langs, [60.1, 48.3, 51.6, 50.7, 49.4, 43.0], strict=True))
    row = {**values, "consistency": 50.51, "ac3": 50.51}
    assert paper.check_ac3(_row("x", "base", "Mistral", row), "ac3", "consistency", langs) == []
    (found,) = paper.check_ac3(
        _row("x", "base", "Mistral", {**row, "ac3": 51.87}), "ac3", "consistency", langs
    )
    assert round(found.expected, 2) == 50.51


def test_percent_sums_hand_worked():
    # CALM Table 7, Llama3-8B MEDQA: 58.2 + 17.1 + 24.8 = 100.1, within 3 x 0.05 of 100
    t7 = paper.load_table("calm_t07")
    groups = ENTRIES["calm_t07"]["checks"]["percent_sums"]
    assert paper.check_percent_sums(t7, groups) == []
    row = {"english": 58.2, "chinese": 17.1, "french": 25.0}
    (found,) = paper.check_percent_sums(_row("x", "b", "m", row), [list(row)])
    assert found.printed == pytest.approx(100.3)


def test_ci_check():
    assert paper.check_ci(paper.load_table("ba_t07")) == []
    bad = _row("x", "b", "m", {"english": 80.0}).assign(ci_low=70.0, ci_high=79.0)
    (found,) = paper.check_ci(bad)
    assert (found.printed, found.expected) == (80.0, 79.0)


def test_cross_table_hand_worked():
    # Llama-3-8B-Instruct default ORPO Rest (avg.): Table 8 prints 58.8, Table 13 prints 59.7
    tables = {k: paper.load_table(k) for k in ("ba_t08", "ba_t13")}
    link = {
        "printed": {"table": "ba_t13", "block": "orpo", "column": "rest_avg"},
        "source": {"table": "ba_t08", "block": "orpo_default", "column": "rest_avg"},
    }
    found = paper.check_cross_table(tables, [link])
    assert [(d.model, d.printed, d.expected) for d in found] == [
        ("Llama-3-8B-Instruct", 59.7, 58.8)
    ]


def test_cross_table_matches_models_across_spellings():
    # Table 1 "Llama-3-1-70B" baseline Rest (avg.) 33.7 = Table 7 "Llama-3.1-70B (Base)" 33.7,
    # and Table 7's 41.7 (Mixtral) is Table 11's 41.65 printed to one decimal.
    links = [c for c in MANIFEST["cross_checks"] if c["printed"]["table"] in {"ba_t01", "ba_t07"}]
    assert paper.check_cross_table(paper.load_all(), links) == []


def test_cross_table_link_matching_nothing_raises():
    link = {
        "printed": {"table": "ba_t01", "block": "baseline", "column": "english"},
        "source": {"table": "ba_t02", "block": "baseline", "column": "english"},
    }
    with pytest.raises(PaperDataError, match="matched no cells"):
        paper.check_cross_table(paper.load_all(), [link])


# --------------------------------------------------------------------------------------------
# All checks over all tables == the documented discrepancies


def test_found_discrepancies_equal_documented():
    found = paper.run_checks()
    documented = paper.documented_discrepancies()
    undocumented, stale = paper.compare_discrepancies(found, documented)
    assert not undocumented, "undocumented:\n" + "\n".join(map(str, undocumented))
    assert not stale, "documented but not found:\n" + "\n".join(map(str, stale))
    assert len(found) == len(documented)


def test_documented_discrepancies_are_complete_records():
    for item in MANIFEST["discrepancies"]:
        for field in ("table", "block", "model", "column", "check", "printed", "expected", "note"):
            assert item.get(field) not in (None, ""), (item, field)
        assert item["table"] in KEYS
        assert abs(item["printed"] - item["expected"]) > 0  # a real disagreement


def test_known_example_is_documented():
    known = Discrepancy("ba_t13", "orpo", "Llama-3-8B-Instruct", "rest_avg", 59.7, 58.8, "", "")
    documented = paper.documented_discrepancies()
    assert any(
        known.location()[:4] == d.location()[:4] and known.printed == d.printed for d in documented
    )


def test_an_edited_cell_is_caught():
    # A transcription slip (Table 5 Arabic 7.0 typed as 70.0) must surface as a new discrepancy.
    tables = paper.load_all()
    t5 = tables["ba_t05"]
    slip = (t5["model"] == "Mistral-7B-Instruct-v0.1") & (t5["column"] == "arabic")
    tables["ba_t05"] = t5.assign(value=t5["value"].mask(slip, 70.0))
    undocumented, stale = paper.compare_discrepancies(
        paper.run_checks(tables), paper.documented_discrepancies()
    )
    assert [(d.table, d.column, d.check) for d in undocumented] == [
        ("ba_t05", "rest_avg", "rest_avg")
    ]
    assert stale == []


def test_figure_entries_point_at_tables_and_functions():
    from xlalign.report import figures

    keys = {f["key"] for f in MANIFEST["figures"]}
    assert {"ba_fig3", "ba_fig4", "ba_fig5", "ba_fig6", "ba_fig7"} <= keys
    for fig in MANIFEST["figures"]:
        assert set(fig["tables"]) <= set(KEYS), fig["key"]
        assert callable(getattr(figures, fig["function"])), fig["key"]
        assert fig["derivation"]
        for table in fig["tables"]:
            if fig["figure"] is not None:
                assert fig["key"] in ENTRIES[table]["figures"], (fig["key"], table)
