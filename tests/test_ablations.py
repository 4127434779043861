"""Notebook 05's ablations: both methods where the paper has both, Tables 12/13's layout, and the
machine-translation ablation at Table 11's batch size 7. Training and evaluation are replaced by
recorders, so these tests check what would be trained and how the results are laid out."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from xlalign.config import ConfigError, derive, load_profile
from xlalign.experiments import ablations
from xlalign.report import figures


def _preds(rows, accuracy: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    correct = rng.random(len(rows)) < accuracy
    return pd.DataFrame(
        {
            "item_id": [r["item_id"] for r in rows],
            "sample_id": [r["sample_id"] for r in rows],
            "lang": [r["lang"] for r in rows],
            "label": [r["label"] for r in rows],
            "pred": ["yes" if c else "no" for c in correct],
            "correct": correct,
        }
    )


@pytest.fixture
def recorded(monkeypatch):
    """Replaces steps.train/evaluate inside ablations; returns what they were called with."""
    calls = {"train": [], "evaluate": []}

    def train(profile, run, label, data):
        calls["train"].append((label, profile))
        return SimpleNamespace(output_dir=f"/x/train/{label}", adapter_dir=f"/x/{label}")

    def evaluate(profile, run, label, rows, adapter_dir=None):
        calls["evaluate"].append(label)
        return _preds(rows, 0.5 + 0.05 * len(calls["evaluate"]) % 0.4, len(calls["evaluate"]))

    monkeypatch.setattr(ablations, "train", train)
    monkeypatch.setattr(ablations, "evaluate", evaluate)
    return calls


def _test_rows(langs, n=6):
    return [
        {"item_id": f"s{i}-{lang}", "sample_id": f"s{i}", "lang": lang, "label": i % 2}
        for i in range(n)
        for lang in langs
    ]


def _profile(methods):
    return derive(
        load_profile("smoke"), experiments={"ablation_methods": methods, "batch_sizes": [1, 2, 3]}
    )


def test_ablation_methods_are_validated():
    assert load_profile("paper").experiments.ablation_methods == ["dpo", "orpo"]
    assert load_profile("cpu").experiments.ablation_methods == ["orpo"]
    with pytest.raises(ConfigError, match="ablation_methods must name at least one"):
        load_profile("smoke", overrides=["experiments.ablation_methods=[]"])
    with pytest.raises(ConfigError, match="names a method twice"):
        load_profile("smoke", overrides=["experiments.ablation_methods=[dpo, dpo]"])
    with pytest.raises(ConfigError, match="experiments.ablation_method"):
        load_profile("smoke", overrides=["experiments.ablation_method=orpo"])  # the old key


def test_batch_size_and_english_anchor_run_each_method(recorded):
    profile = _profile(["dpo", "orpo"])
    data = SimpleNamespace(test_rows=_test_rows(profile.data.train_langs))
    bs = ablations.ablation_batch_size(profile, run=None, data=data)

    trained = {label: p for label, p in recorded["train"]}
    assert list(trained) == [
        "ablation-bs1-dpo",
        "ablation-bs2-dpo",
        "ablation-bs3-dpo",
        "ablation-bs3-uncoupled-dpo",
        "ablation-bs1-orpo",
        "ablation-bs2-orpo",
        "ablation-bs3-orpo",
        "ablation-bs3-uncoupled-orpo",
    ]
    for label, p in trained.items():
        assert p.train.method == label.rsplit("-", 1)[1]
        assert p.train.max_steps == profile.experiments.ablation_max_steps
        assert p.train.batching == ("uncoupled" if "uncoupled" in label else "aligned")
    assert trained["ablation-bs2-orpo"].train.batch_size == 2

    # Tables 12/13: one block per method; English and Rest (avg.) of the default, BS = 1..N aligned
    # (BS = 1, English only, is our extra column: the paper's tables start at 2).
    table = bs["table"]
    assert set(table["block"]) == {"dpo", "orpo"}
    for method in ("dpo", "orpo"):
        cols = table.loc[table["block"] == method, "column"].tolist()
        assert sorted(cols) == ["bs_1", "bs_2", "bs_3", "english", "rest_avg"]
        detail = bs["detail"]
        rest = detail[(detail["block"] == f"{method}_bs_3") & (detail["column"] == "rest_avg")]
        cell = table[(table["block"] == method) & (table["column"] == "bs_3")]
        assert cell["value"].iloc[0] == rest["value"].iloc[0]
        assert cell["ci_low"].iloc[0] <= cell["value"].iloc[0] <= cell["ci_high"].iloc[0]
        default = detail[(detail["block"] == f"{method}_default") & (detail["column"] == "english")]
        eng = table[(table["block"] == method) & (table["column"] == "english")]
        assert eng["value"].iloc[0] == default["value"].iloc[0]
    assert set(bs["preds"]) == {"dpo", "orpo"} and set(bs["preds"]["dpo"]) == {1, 2, 3}

    # Fig. 6 draws one line per method.
    curve = figures.batch_size_curve(bs["figure_data"])
    assert set(curve["block"]) == {"dpo", "orpo"}
    assert sorted(curve["batch_size"].unique()) == [1, 2, 3]
    figures.plot_batch_size(bs["figure_data"])

    recorded["train"].clear()
    anchor = ablations.ablation_english(profile, None, data, bs)
    assert [label for label, _ in recorded["train"]] == [
        "ablation-no-english-dpo",
        "ablation-no-english-orpo",
    ]
    for label, p in recorded["train"]:
        assert not p.train.include_english and p.train.batch_size == 2  # ar, zh
        assert p.train.method == label.rsplit("-", 1)[1]
    assert set(anchor["table"]["block"]) == set(figures.ENGLISH_ANCHOR_BLOCKS)
    assert set(anchor["mcnemar"]["method"]) == {"dpo", "orpo"}
    figures.plot_english_anchor(anchor["figure_data"])


def test_one_method_profiles_keep_one_block(recorded):
    profile = _profile(["orpo"])
    data = SimpleNamespace(test_rows=_test_rows(profile.data.train_langs))
    bs = ablations.ablation_batch_size(profile, None, data)
    assert set(bs["table"]["block"]) == {"orpo"}
    assert all(label.endswith("-orpo") for label, _ in recorded["train"])


def test_machine_translated_trains_at_batch_size_7(recorded, monkeypatch):
    profile = _profile(["dpo", "orpo"])
    built = []

    def build(p, tokenizer):
        built.append(p)
        langs = ["en"] + p.data.mt_langs
        return SimpleNamespace(test_rows=_test_rows(langs))

    monkeypatch.setattr(ablations, "build_probe_data", build)
    monkeypatch.setattr(ablations, "_tokenizer", lambda p: None)
    mt = ablations.ablation_machine_translated(profile, None)

    (p,) = built
    assert p.data.mt_langs == ["th", "vi", "hu", "ro"] and p.data.unseen_langs == []
    assert p.data.train_langs == profile.data.train_langs  # en ar zh kept: 7 languages per query
    assert mt["batch_size"] == 7 and len(mt["train_langs"]) == 7
    labels = [label for label, _ in recorded["train"]]
    assert labels == ["ablation-mt-uncoupled-orpo", "ablation-mt-aligned-orpo"]  # C.2: ORPO only
    for _, q in recorded["train"]:
        assert q.train.batch_size == 7 and q.train.method == "orpo"
    assert set(mt["table"]["block"]) == set(figures.MACHINE_TRANSLATED_BLOCKS)


def test_machine_translated_without_orpo_uses_the_ablated_method():
    assert ablations.mt_method(_profile(["dpo"])) == "dpo"
    assert ablations.mt_method(_profile(["dpo", "orpo"])) == "orpo"


def test_batch_size_table_is_written_and_set_beside_tables_12_and_13(recorded, tmp_path):
    from xlalign.report.build import published_side_by_side
    from xlalign.report.tables import write_table

    profile = _profile(["dpo", "orpo"])
    data = SimpleNamespace(test_rows=_test_rows(profile.data.train_langs))
    bs = ablations.ablation_batch_size(profile, None, data)
    write_table(bs["table"], tmp_path, "table12_13_batch_size", show_ci=True)
    wide = published_side_by_side(tmp_path)["table12_13_batch_size"]
    assert set(wide.loc[["ours"], "block"]) == {"dpo", "orpo"}
    assert set(wide.loc[["paper"], "table"]) == {"ba_t12", "ba_t13"}
    assert (wide.loc[["ours"], "bs_3"] != "").all() and (wide.loc[["ours"], "bs_7"] == "").all()
    assert (wide.loc[["ours"], "bs_1"] != "").all() and (wide.loc[["paper"], "bs_1"] == "").all()
