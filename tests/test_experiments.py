"""xlalign.experiments: a finished training run is reused for an identical configuration only."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from xlalign import experiments
from xlalign.config import derive, load_profile
from xlalign.experiments import ablations
from xlalign.probe.dataset import build_probe_data
from xlalign.runs import start_run
from xlalign.training.run import TrainResult, training_signature


def _finished(run, label, profile):
    out = run.path / "train" / label
    out.mkdir(parents=True)
    sig = training_signature(profile, profile.train.method)
    (out / "xlalign_train_config.json").write_text(json.dumps(sig))
    info = TrainResult(
        output_dir=out,
        adapter_dir=out / "adapter",
        steps=2,
        wall_time_s=1.0,
        tokens=10,
        tokens_per_s=10.0,
        train_log=out / "train_log.jsonl",
        batch_logs=[],
        metrics={},
    )
    (out / "train_result.json").write_text(json.dumps(info.to_dict()))
    return info


def test_identical_configuration_is_trained_once(tmp_path):
    profile = load_profile("smoke")
    run = start_run(profile, tmp_path / "run")
    # Notebook 03's aligned ORPO run with the ablations' step budget ...
    nb03 = derive(
        profile, train=dict(method="orpo", max_steps=profile.experiments.ablation_max_steps)
    )
    info = _finished(run, "orpo-aligned", nb03)
    # ... is the batch-size ablation's largest batch.
    ablation = ablations._ablation_profile(profile, ["batch_size_3"])
    assert experiments.same_training(run, ablation) == run.path / "train" / "orpo-aligned"
    got = experiments.train(
        ablation, run, "ablation-bs3", data=None
    )  # data unused: nothing is trained
    assert got == info and experiments.adapter_label(got) == "orpo-aligned"
    assert not (run.path / "train" / "ablation-bs3").exists()
    assert run.record["steps"]["train/ablation-bs3"] == {"reused": "train/orpo-aligned"}


def test_a_different_configuration_is_not_reused(tmp_path):
    profile = load_profile("smoke")
    run = start_run(profile, tmp_path / "run")
    _finished(run, "orpo-aligned", profile)
    for other in (
        derive(profile, train=dict(batching="uncoupled")),
        derive(profile, train=dict(max_steps=profile.train.max_steps + 1)),
        derive(profile, train=dict(method="dpo")),
    ):
        assert experiments.same_training(run, other) is None
    # An unfinished directory (no train_result.json) is never reused.
    (run.path / "train" / "orpo-aligned" / "train_result.json").unlink()
    assert experiments.same_training(run, profile) is None


def test_an_evaluation_records_the_hub_commit_it_ran_on(
    tmp_path, tiny_profile, tiny_model_and_tokenizer
):
    model, tok = tiny_model_and_tokenizer
    model.config._commit_hash = "0123abcd"  # what from_pretrained records for a hub download
    run = start_run(tiny_profile, tmp_path / "run")
    rows = build_probe_data(tiny_profile, tok).test_rows[:2]
    preds = experiments.evaluate(tiny_profile, run, "base", rows, model=model, tokenizer=tok)
    assert len(preds) == 2
    step = json.loads((run.path / "run.json").read_text())["steps"]["eval/base"]
    assert step["model_commit"] == "0123abcd" and step["items"] == 2


def test_readings_are_built_from_the_tables():
    import pandas as pd

    from xlalign.experiments import decisions_reading, knows_vs_says_reading

    says = pd.DataFrame([{"lang": "all", "auroc": 0.32, "ci_low": 0.17, "ci_high": 0.47, "n": 28}])
    knows = pd.DataFrame(
        [
            {
                "layer": 6,
                "lang": "all",
                "auroc": 0.77,
                "ci_low": 0.57,
                "ci_high": 0.93,
                "accuracy": 0.75,
            },
            {
                "layer": 9,
                "lang": "all",
                "auroc": 0.90,
                "ci_low": 0.76,
                "ci_high": 1.0,
                "accuracy": 0.79,
            },
            {
                "layer": 9,
                "lang": "en",
                "auroc": 0.99,
                "ci_low": 0.9,
                "ci_high": 1.0,
                "accuracy": 1.0,
            },
        ]
    )
    assert knows_vs_says_reading(says, knows) == (
        "The model says: margin AUROC 0.32 [0.17, 0.47]; it knows: probe AUROC 0.90 [0.76, 1.00] "
        "at layer 9 (accuracy 79%), on the same 28 items."
    )
    row = dict(consistency_ci_low=0.5, consistency_ci_high=0.9, samples=10, constant=False)
    decisions = pd.DataFrame(
        [
            {"model": "orpo_ours", "consistency": 0.7, **row},
            {"model": "orpo_default", "consistency": 0.6, **row | {"constant": True}},
        ]
    )
    assert decisions_reading(decisions, ["orpo"]) == (
        "orpo: consistency aligned 70.0% [50.0, 90.0] vs uncoupled 60.0% [50.0, 90.0] on 10 samples"
        " (at least one of them answers one way almost everywhere)"
    )


def test_one_label_evaluated_on_other_items_later_keeps_both(
    tmp_path, tiny_profile, tiny_model_and_tokenizer
):
    # Notebook 03 scores the baseline on the training languages, notebook 06 (same shared run, same
    # label) on the unseen ones: the file grows, nothing is refused or lost, each call gets its rows.
    from xlalign.evaluation.predictions import read_predictions

    model, tok = tiny_model_and_tokenizer
    run = start_run(tiny_profile, tmp_path / "run")
    rows = build_probe_data(tiny_profile, tok).test_rows
    first, second = rows[:2], rows[2:5]
    a = experiments.evaluate(tiny_profile, run, "base", first, model=model, tokenizer=tok)
    b = experiments.evaluate(tiny_profile, run, "base", second, model=model, tokenizer=tok)
    assert list(a["item_id"]) == [r["item_id"] for r in first]
    assert list(b["item_id"]) == [r["item_id"] for r in second]
    stored = read_predictions(run.path / "eval" / "base" / "predictions.jsonl")
    assert {r["item_id"] for r in stored} == {r["item_id"] for r in first + second}
    again = experiments.evaluate(tiny_profile, run, "base", first, model=None, tokenizer=None)
    # reused from the file, no model needed
    assert again[["item_id", "pred"]].values.tolist() == a[["item_id", "pred"]].values.tolist()


def _eval_rows(right: dict[str, list[bool]]) -> pd.DataFrame:
    """Predictions on samples s0..s19 in each language: even samples positive, odd negative;
    ``right[lang][i]`` says whether the model is right on sample i there."""
    import pandas as pd

    yes, no = "Yes, answer is present", "I don't know"
    rows = []
    for lang, oks in right.items():
        for i, ok in enumerate(oks):
            label = yes if i % 2 == 0 else no
            rows.append(
                {
                    "item_id": f"s{i}.{lang}",
                    "sample_id": f"s{i}",
                    "lang": lang,
                    "label": label,
                    "pred": label if ok else (no if label == yes else yes),
                    "correct": ok,
                }
            )
    return pd.DataFrame(rows)


def test_effect_table_compares_each_arm_with_the_base_on_the_same_items():
    from types import SimpleNamespace

    from xlalign.experiments.batch_alignment import effect_markdown, effect_reading, effect_table

    profile = derive(load_profile("smoke"), experiments={"methods": ["orpo"]})
    langs = ["en", "fr", "de"]
    negatives = [i % 2 == 1 for i in range(20)]  # "I don't know" to everything
    base = _eval_rows({lang: negatives for lang in langs})
    uncoupled = _eval_rows({lang: [i % 4 != 3 for i in range(20)] for lang in langs})
    aligned = _eval_rows(
        {
            "en": [True] * 20,
            "fr": [i != 1 for i in range(20)],
            "de": [i % 4 != 3 for i in range(20)],
        }
    )
    arms = {
        ("orpo", "uncoupled"): SimpleNamespace(preds=uncoupled),
        ("orpo", "aligned"): SimpleNamespace(preds=aligned),
    }
    table = effect_table(arms, base, profile, langs).set_index(["comparison", "group"])
    row = table.loc[("uncoupled − base", "all")]
    # uncoupled is right on every positive and on half the negatives: 45 of 60, the base 30
    assert (row["items"], row["acc_a"], row["acc_b"]) == (60, 50.0, 75.0)
    assert row["delta"] == 25.0 and row["ci_low"] > 0 and row["ci_high"] > 25.0
    # McNemar's discordant counts: the base alone right on 15 negatives, uncoupled alone on 30 positives
    assert (row["only_a_right"], row["only_b_right"]) == (15, 30)
    assert row["one_answer_a"] and not row["one_answer_b"]
    rest = table.loc[("aligned − uncoupled", "Rest (avg.)")]
    # in fr, aligned gains the 5 negatives uncoupled gets wrong and loses sample 1: +4 of 40
    assert (rest["items"], rest["delta"], rest["only_a_right"], rest["only_b_right"]) == (
        40,
        10.0,
        1,
        5,
    )
    eng = table.loc[("aligned − uncoupled", "English")]
    assert (eng["items"], eng["delta"]) == (20, 25.0)
    assert set(table.index.get_level_values("group")) == {"English", "Rest (avg.)", "all"}
    lines = effect_reading(table.reset_index()).splitlines()
    assert lines[0].startswith("orpo uncoupled − base: Rest (avg.) +25.0 points [")
    assert "CI excludes 0; base gives one answer to at least 95% of the items" in lines[0]
    assert "one answer" not in lines[2]
    md = effect_markdown(table.reset_index())
    assert "| orpo     | uncoupled − base" in md and "+25.0 [+" in md
    # a base evaluated on other items is refused, with the items named
    with pytest.raises(ValueError, match="not on the same items"):
        effect_table(arms, base.assign(sample_id=base["sample_id"] + "x"), profile, langs)
