"""The notebooks' readings, checked on hand-built predictions, tables and logs with known answers."""

import json

import numpy as np
import pandas as pd
import pytest

from xlalign.report import readings

YES, NO = "Yes, answer is present", "I don't know"


def _preds(correct: dict[str, list[bool]], flip_label: bool = False) -> pd.DataFrame:
    """Predictions for samples s0..s{n-1} in each language; ``correct[lang][i]`` says whether the
    model is right on sample i there. Labels alternate YES/NO."""
    rows = []
    for lang, oks in correct.items():
        for i, ok in enumerate(oks):
            label = YES if i % 2 == 0 else NO
            other = NO if label == YES else YES
            rows.append(
                {
                    "item_id": f"s{i}.{lang}",
                    "sample_id": f"s{i}",
                    "lang": lang,
                    "label": label,
                    "pred": label if ok else other,
                    "correct": ok,
                }
            )
    return pd.DataFrame(rows)


def test_signed_and_interval_use_the_typeset_minus():
    assert readings.signed(2.14) == "+2.1"
    assert readings.signed(-1.5) == "−1.5"
    assert readings.signed(-0.01) == "0.0"
    assert readings.interval(-1.5, 5.8) == "[−1.5, 5.8]"
    assert readings.pvalue_text(0.3149) == "p = 0.31"
    assert readings.pvalue_text(0.0042) == "p = 0.004"
    assert readings.pvalue_text(1e-5) == "p < 0.001"


def test_paired_difference_counts_only_non_english_items_and_brackets_the_delta():
    a = _preds({"en": [True] * 10, "fr": [True] * 5 + [False] * 5, "de": [False] * 10})
    b = _preds({"en": [False] * 10, "fr": [True] * 10, "de": [True] * 3 + [False] * 7})
    got = readings.paired_difference(a, b, n_resamples=500, seed=1)
    # non-English: A right on 5 of 20, B right on 13 of 20 -> +40 points; English is left out
    assert got["n"] == 20 and got["delta"] == pytest.approx(40.0)
    assert got["ci_low"] < 40.0 < got["ci_high"] and got["ci_low"] > 0
    same = readings.paired_difference(a, a)
    assert same == {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0, "n": 20}


def test_difference_reading_says_significant_only_below_alpha():
    from xlalign.experiments import compare

    a = _preds({"en": [True] * 20, "fr": [False] * 20, "de": [False] * 20})
    b = _preds({"en": [True] * 20, "fr": [True] * 20, "de": [True] * 20})
    mc = compare(a, b, 0.01)
    text = readings.difference_reading(a, b, mc, n_resamples=200)
    assert text.startswith(
        "aligned − uncoupled in Rest (avg.): +100.0 points, 95% CI [100.0, 100.0]"
    )
    assert "McNemar p < 0.001: aligned is significantly better" in text and "40 paired" in text
    c = _preds({"en": [True] * 4, "fr": [True, False, True, False], "de": [True] * 4})
    d = _preds({"en": [True] * 4, "fr": [True, True, True, False], "de": [True] * 4})
    text = readings.difference_reading(c, d, compare(c, d, 0.01), n_resamples=200)
    assert "+12.5 points" in text and "p = 1.00: no significant difference on this run" in text
    with pytest.raises(ValueError, match="non_english"):
        readings.difference_reading(c, d, compare(c, d, 0.01).drop(index="non_english"))


def test_gap_reading_and_the_constant_answer_note():
    p = _preds({"en": [True, True, True, False], "fr": [True, False, False, False]})
    text = readings.gap_reading(p, "m", n_resamples=200)
    assert text.startswith("m: English 75.0%, Rest (avg.) 25.0%; gap to English +50.0 points")
    assert "(4 samples)" in text and "restate" not in text
    constant = p.assign(pred=NO, correct=p["label"] == NO)
    assert 'answers "I don\'t know" to 100% of items' in readings.gap_reading(constant, "m")
    with pytest.raises(ValueError, match="needs 'en'"):
        readings.gap_reading(p[p["lang"] == "fr"], "m")


def test_accuracy_and_block_difference_readings():
    p = _preds({"en": [True, False], "fr": [True, True]})
    assert readings.accuracy_reading(p, "base") == (
        "base is right on 3 of 4 items (75.0%) in 2 languages."
    )
    tidy = pd.DataFrame(
        [
            {"block": "bs_1", "column": "rest_avg", "value": 50.0, "ci_low": 36.0, "ci_high": 64.0},
            {"block": "bs_7", "column": "rest_avg", "value": 54.0, "ci_low": 40.0, "ci_high": 68.0},
        ]
    )
    assert readings.block_difference_reading(tidy, "bs_7", "bs_1") == (
        "bs_7 − bs_1 in Rest (avg.): +4.0 points (54.0% [40.0, 68.0] vs 50.0% [36.0, 64.0])."
    )
    with pytest.raises(ValueError, match="no 'english' cell for block 'bs_1'"):
        readings.block_difference_reading(tidy, "bs_7", "bs_1", column="english")


def test_mcnemar_reading_counts_significant_rows():
    mc = pd.DataFrame(
        {"delta": [10.0, -5.0], "pvalue": [0.004, 0.5]}, index=pd.Index(["th", "vi"], name="lang")
    )
    assert readings.mcnemar_reading(mc, 0.01, "unseen") == (
        "unseen: th +10.0 points (p = 0.004); vi −5.0 points (p = 0.50); "
        "1 of 2 significant at p < 0.01."
    )


def test_counts_and_lengths_readings():
    idx = pd.MultiIndex.from_tuples([("test", NO), ("test", YES)], names=["split", "label"])
    counts = pd.DataFrame({"en": [4, 4], "fr": [4, 4]}, index=idx)
    text = readings.counts_reading(counts)
    assert text.startswith("2 languages, 8 samples each; every language holds the same samples")
    counts.loc[("test", YES), "fr"] = 3
    assert "languages differ" in readings.counts_reading(counts)
    lengths = pd.DataFrame({"mean": [100.0, 250.0]}, index=pd.Index(["en", "zh"], name="lang"))
    assert "from 100 tokens on average (en) to 250 (zh), 2.50 times" in readings.lengths_reading(
        lengths
    )


def test_mark_passage_marks_the_questions_own_topic_only_in_a_positive():
    prompt = "Q?\nCONTEXTS:\n[1] Other passage.\n[2] Own passage.\nOUTPUT:"
    row = {"prompt": prompt, "topic_id": "t1", "doc_topics": ["t9", "t1"], "label": YES}
    text = readings.mark_passage(row)
    assert ">>> [2] Own passage. <<<" in text and ">>> [1]" not in text
    neg = dict(row, doc_topics=["t9", "t8"], label=NO)
    assert ">>>" not in readings.mark_passage(neg).split("\n\n", 1)[1]
    assert "no passage answers it" in readings.mark_passage(neg)
    with pytest.raises(ValueError, match="no field 'doc_topics'"):
        readings.mark_passage({"prompt": prompt, "topic_id": "t1", "label": YES})


ALIGNED_LOG = [
    {"step": 0, "rank": 0, "sample_ids": ["q1.neg"] * 3, "langs": ["en", "zh", "ar"]},
    {"step": 1, "rank": 0, "sample_ids": ["q2.pos"] * 3, "langs": ["en", "zh", "ar"]},
]
UNCOUPLED_LOG = [
    {"step": 0, "rank": 0, "sample_ids": ["q1.neg", "q3.neg", "q2.pos"], "langs": ["ar"] * 3},
    {"step": 1, "rank": 0, "sample_ids": ["q1.pos"] * 3, "langs": ["en", "zh", "ar"]},
]


def test_batch_frame_and_reading_from_a_log():
    frame = readings.batch_frame(UNCOUPLED_LOG, step=0)
    assert list(frame["query_id"]) == ["q1", "q3", "q2"]
    assert list(frame["label"]) == [NO, NO, YES] and list(frame["lang"]) == ["ar"] * 3
    assert readings.batch_reading(ALIGNED_LOG, "aligned").startswith(
        "aligned: 2 of 2 micro-batches (size 3) hold one sample in 3 distinct languages; 0 mix"
    )
    assert "1 of 2 micro-batches" in readings.batch_reading(UNCOUPLED_LOG, "uncoupled")
    assert "2.0 distinct languages per batch" in readings.batch_reading(UNCOUPLED_LOG, "uncoupled")
    with pytest.raises(ValueError, match="no step 5"):
        readings.batch_frame(ALIGNED_LOG, step=5)


def test_curve_reading_and_the_training_curve_figure(tmp_path):
    from xlalign.report.figures import plot_training_curves

    log = [
        {"step": 1, "loss": 2.41, "rewards/margins": -0.01},
        {"step": 20, "loss": 0.27, "rewards/margins": 0.84},
        {"step": 20, "train_loss": 1.0},
    ]
    path = tmp_path / "train_log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in log))
    rows = readings.read_train_log(path)
    assert readings.curve_reading(rows, "orpo aligned") == (
        "orpo aligned: loss 2.41 → 0.27 over 20 steps; reward margin −0.01 → 0.84"
    )
    fig = plot_training_curves({"aligned": rows, "uncoupled": rows[:1]})
    assert [ax.get_title() for ax in fig.axes[:2]] == ["loss", "rewards/margins"]
    assert len(fig.axes[0].lines) == 2
    path.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"train_log.jsonl:2: not JSON"):
        readings.read_train_log(path)


def test_accuracy_by_language_figure_draws_one_errorbar_per_bar():
    from xlalign.report.figures import plot_accuracy_by_language

    tidy = pd.DataFrame(
        [
            {"block": b, "model": "m", "column": c, "value": v, "ci_low": v - 10, "ci_high": v + 10}
            for b, base in (("orpo_default", 50.0), ("orpo_ours", 60.0))
            for c, v in (("english", base), ("french", base - 5), ("rest_avg", base - 5))
        ]
    )
    fig = plot_accuracy_by_language(tidy)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == "Rest (avg.)"
    heights = sorted(round(b.get_height(), 1) for c in ax.containers[:2] for b in c)
    assert heights == [45.0, 45.0, 50.0, 55.0, 55.0, 60.0]
    bars = [c for c in ax.collections if c.__class__.__name__ == "LineCollection"]
    assert sum(len(c.get_segments()) for c in bars) == 6


def _calm_dir(tmp_path):
    d = tmp_path / "calm"
    d.mkdir()
    samples = [
        {"qid": "q1", "lang": "en", "idx": 0, "text": "so B", "letter": "B"},
        {"qid": "q1", "lang": "en", "idx": 1, "text": "so C", "letter": "C"},
        {"qid": "q1", "lang": "zh", "idx": 0, "text": "所以 B", "letter": "B"},
        {"qid": "q1", "lang": "zh", "idx": 1, "text": "???", "letter": None},
        {"qid": "q2", "lang": "en", "idx": 0, "text": "x", "letter": None},
    ]
    votes = [
        {"qid": "q2", "letter": None, "counts": {}, "n_parsable": 0, "gold": "A", "correct": False},
        {"qid": "q1", "letter": "B", "counts": {"B": 2, "C": 1}, "n_parsable": 3, "tied": False,
         "gold": "B", "correct": True},
    ]  # fmt: skip
    pairs = [
        {"qid": "q1", "lang": "en", "chosen_lang": "zh", "translated": True, "chosen": "so B",
         "rejected": "so C", "chosen_letter": "B", "rejected_letter": "C"},
    ]  # fmt: skip
    for name, rows in (("samples", samples), ("votes", votes), ("pairs", pairs)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_calm_example_picks_a_question_that_made_a_pair_and_reads_its_vote(tmp_path):
    ex = readings.calm_example(_calm_dir(tmp_path))
    assert ex["qid"] == "q1" and list(ex["samples"]["agrees"]) == [True, False, True, False]
    assert list(ex["pairs"]["chosen_from"]) == ["zh"]
    assert readings.vote_reading(ex) == (
        "q1: 4 samples in 2 languages, 3 parsable; vote B (2 of 3; gold B: right); 1 pairs, 1 with "
        "the chosen answer translated from another language."
    )
    none = readings.calm_example(tmp_path / "calm", qid="q2")
    assert "no vote" in readings.vote_reading(none) and none["pairs"].empty
    with pytest.raises(FileNotFoundError, match="run the CALM chain"):
        readings.calm_example(tmp_path / "nowhere")


def test_calm_reading_compares_calm_with_the_base_model():
    results = pd.DataFrame(
        [
            {"block": b, "column": c, "value": v}
            for b, vals in (("base", (40.0, 30.0, 34.3)), ("calm", (45.0, 50.0, 47.4)))
            for c, v in zip(("acc_avg", "consistency", "ac3"), vals, strict=True)
        ]
    )
    assert readings.calm_reading(results) == (
        "calm vs base: AVG accuracy 45.0 vs 40.0 (+5.0); consistency 50.0 vs 30.0 (+20.0); "
        "AC3 47.4 vs 34.3 (+13.1)."
    )


def test_report_reading_names_the_sections_without_this_runs_results():
    text = "# Report\n## Fig. 3\n![x](a.png)\n## Table 6\n_not produced in this run_\n"
    assert readings.report_reading(text) == (
        "The report has 3 sections; 1 lack this run's results (not produced in this run): Table 6."
    )
    assert "every one shows" in readings.report_reading("# R\n## A\nok\n")


def test_readings_survive_numpy_scalars():
    assert readings.signed(np.float64(3.0)) == "+3.0"


def test_batch_size_anchor_and_versus_readings_on_the_ablation_layouts():
    layout = pd.DataFrame(
        [
            {"block": "orpo", "column": c, "value": v, "ci_low": v - 10, "ci_high": v + 10}
            for c, v in (("english", 60.0), ("rest_avg", 48.0), ("bs_2", 50.0), ("bs_7", 56.0))
        ]
    )
    assert readings.batch_size_reading(layout) == (
        "orpo: Rest (avg.) at batch size 7 56.0% [46.0, 66.0] vs 2 50.0% [40.0, 60.0] (+6.0 points);"
        " uncoupled at 7: 48.0% [38.0, 58.0] (+8.0 points)."
    )
    with pytest.raises(ValueError, match="no bs_N columns"):
        readings.batch_size_reading(layout[~layout["column"].str.startswith("bs_")])
    anchor = pd.DataFrame(
        [
            {"block": "with_english_orpo", "column": "rest_avg", "value": 60.0},
            {"block": "without_english_orpo", "column": "rest_avg", "value": 55.0},
        ]
    )
    tests = pd.DataFrame(
        {"pvalue": [0.5, 0.2], "method": ["orpo", "orpo"]}, index=["ar", "non_english"]
    )
    assert readings.anchor_reading(anchor, tests) == (
        "with_english_orpo − without_english_orpo in Rest (avg.): +5.0 points (60.0% vs 55.0%); "
        "McNemar on non-English items p = 0.20, not significant at 0.01."
    )
    unseen = pd.DataFrame(
        [
            {"block": "baseline", "column": "rest_avg", "value": 50.0},
            {"block": "orpo_ours", "column": "rest_avg", "value": 52.5},
        ]
    )
    assert readings.versus_reading(unseen) == (
        "orpo_ours − baseline in Rest (avg.): +2.5 points (52.5% vs 50.0%)."
    )


def test_before_compute_lists_what_the_run_lacks_and_skips_what_it_holds(tmp_path, monkeypatch):
    """The plan of notebook 03 on smoke: two trainings and three evaluations; a training already on
    disk is counted as reused. The time estimate is replaced by a failing one to test the fallback
    without measuring the model."""
    import xlalign.estimate
    from xlalign.config import load_profile
    from xlalign.results import arm

    def no_measure(*args, **kwargs):
        raise RuntimeError("not measured in this test")

    monkeypatch.setattr(xlalign.estimate, "measure", no_measure)
    profile = load_profile("smoke")
    line = readings.before_compute(profile, tmp_path, "03")
    assert line.startswith("[xlalign] 03_batch_alignment: computing 2 train, 3 eval runs (")
    assert "no time estimate: RuntimeError: not measured in this test" in line
    done = tmp_path / "train" / arm(profile.train.method, "aligned")
    done.mkdir(parents=True)
    (done / "train_result.json").write_text("{}")
    assert "computing 1 train, 3 eval runs" in readings.before_compute(profile, tmp_path, "03")
    assert "1 already in this run, reused" in readings.before_compute(profile, tmp_path, "03")
    assert "no model runs" in readings.before_compute(profile, tmp_path, "07")
    assert readings.try_cost(profile, "03", ["train.batch_size=2"]).startswith(
        "03 with train.batch_size=2: no time estimate"
    )


def test_record_writes_the_readings_a_notebook_printed(tmp_path):
    path = readings.record(tmp_path, "03_batch_alignment", difference="aligned − uncoupled ...")
    assert json.loads(path.read_text(encoding="utf-8")) == {"difference": "aligned − uncoupled ..."}
    readings.record(tmp_path, "03_batch_alignment", difference="again")
    assert json.loads(path.read_text(encoding="utf-8")) == {"difference": "again"}


def test_benchmark_tests_reading_names_each_comparison_and_counts_significant_rows():
    from xlalign.report import readings

    tests = pd.DataFrame(
        [
            {
                "a": "baseline",
                "b": "orpo-aligned",
                "column": "mmmlu",
                "delta": 2.0,
                "pvalue": 0.004,
            },
            {
                "a": "orpo-uncoupled",
                "b": "orpo-aligned",
                "column": "mmmlu",
                "delta": -1.5,
                "pvalue": 0.4,
            },
        ]
    )
    text = readings.benchmark_tests_reading(tests, alpha=0.01)
    assert "orpo-aligned vs baseline, mmmlu +2.0 points" in text
    assert "orpo-aligned vs orpo-uncoupled, mmmlu -1.5 points" in text or "−1.5" in text
    assert "1 of 2 significant" in text
    assert "nothing to test" in readings.benchmark_tests_reading(tests.iloc[:0])


def test_try_cost_names_a_change_the_profile_refuses_instead_of_failing():
    from xlalign.config import load_profile
    from xlalign.report import readings

    profile = load_profile("cpu")  # batches of 7 need at least 7 training languages
    text = readings.try_cost(profile, "03", ["data.train_langs=[en,ar,zh]"])
    assert "not a valid change for this profile" in text and "training languages (3)" in text
