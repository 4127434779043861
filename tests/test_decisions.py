"""Tests for xlalign.evaluation.decisions: hand-worked margins, AUROCs, agreement and skew."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from xlalign.evaluation.decisions import (
    POOLED,
    _resampled_aurocs,
    agreement_with_english,
    answer_skew,
    auroc_by_language,
    bootstrap_auroc,
    describe_skew,
    margin,
    probe_consistency,
)
from xlalign.evaluation.metrics import consistency
from xlalign.probe.build import ANSWER_ABSENT, ANSWER_PRESENT

YES, NO = ANSWER_PRESENT, ANSWER_ABSENT


def frame(rows):
    """Prediction frame from (sample_id, lang, label, pred, logp_present, logp_absent) tuples."""
    df = pd.DataFrame(
        rows,
        columns=["sample_id", "lang", "label", "pred", "logp_first_present", "logp_first_absent"],
    )
    df.insert(0, "item_id", df["sample_id"] + "." + df["lang"])
    df["correct"] = df["pred"] == df["label"]
    df["invalid"] = False
    return df


def random_preds(n_samples=60, langs=("en", "ar", "zh"), seed=0, signal=0.0):
    """Balanced labels; margin = signal * (label is present) + noise, pred from the margin."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_samples):
        label = YES if i % 2 == 0 else NO
        for lang in langs:
            m = signal * (label == YES) + rng.normal()
            rows.append((f"s{i}", lang, label, YES if m > 0 else NO, m - 1.0, -1.0))
    return frame(rows)


def test_margin_is_present_minus_absent():
    df = frame([("s0", "en", YES, YES, -0.5, -2.0), ("s1", "en", NO, NO, -3.0, -1.0)])
    assert margin(df).tolist() == [1.5, -2.0]


def test_margin_missing_logp_is_nan():
    df = frame([("s0", "en", YES, "Invalid", None, -2.0)])
    assert np.isnan(margin(df).iloc[0])


def test_margin_requires_columns():
    df = frame([("s0", "en", YES, YES, -0.5, -2.0)]).drop(columns="logp_first_absent")
    with pytest.raises(ValueError, match="logp_first_absent"):
        margin(df)


def test_perfect_separation_gives_one_with_collapsed_ci():
    rows = [(f"s{i}", "en", YES, YES, 1.0 + i, 0.0) for i in range(5)]
    rows += [(f"n{i}", "en", NO, NO, -1.0 - i, 0.0) for i in range(5)]
    table = auroc_by_language(frame(rows), n_resamples=200, seed=0)
    en = table.set_index("lang").loc["en"]
    # roc_auc_score integrates by the trapezoid rule, so "1" may come back as 1 - 1e-16
    assert [en["auroc"], en["ci_low"], en["ci_high"]] == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    assert en["n"] == 10


def test_reversed_margin_gives_zero():
    rows = [(f"s{i}", "en", YES, NO, -1.0 - i, 0.0) for i in range(4)]
    rows += [(f"n{i}", "en", NO, YES, 1.0 + i, 0.0) for i in range(4)]
    assert bootstrap_auroc(frame(rows)["label"], margin(frame(rows)), 50).auroc == 0.0


def test_hand_worked_auroc():
    # positives 3, 1; negatives 2, 0: pairs (3>2, 3>0, 1<2, 1>0) -> 3/4 concordant
    res = bootstrap_auroc([1, 1, 0, 0], [3.0, 1.0, 2.0, 0.0], n_resamples=0)
    assert res.auroc == 0.75 and res.n == 4
    assert np.isnan(res.ci_low) and np.isnan(res.ci_high)


def test_random_margins_near_half_and_ci_covers_it():
    table = auroc_by_language(random_preds(n_samples=400, seed=1), n_resamples=300, seed=0)
    pooled = table.set_index("lang").loc[POOLED]
    assert abs(pooled["auroc"] - 0.5) < 0.05
    assert pooled["ci_low"] < 0.5 < pooled["ci_high"]
    assert pooled["n"] == 1200


def test_auroc_by_language_matches_sklearn_per_language():
    df = random_preds(n_samples=50, seed=2, signal=1.0)
    table = auroc_by_language(df, n_resamples=100, seed=0).set_index("lang")
    assert list(table.index) == [POOLED, "en", "ar", "zh"]
    m = df["logp_first_present"] - df["logp_first_absent"]
    for lang in ("en", "ar", "zh"):
        sel = df["lang"] == lang
        expected = roc_auc_score(df.loc[sel, "label"] == YES, m[sel])
        assert table.loc[lang, "auroc"] == pytest.approx(expected)
        assert table.loc[lang, "ci_low"] <= expected <= table.loc[lang, "ci_high"]
    assert table.loc[POOLED, "auroc"] == pytest.approx(roc_auc_score(df["label"] == YES, m))


def test_bootstrap_is_seeded():
    df = random_preds(n_samples=30, seed=3, signal=0.5)
    a = auroc_by_language(df, n_resamples=100, seed=7)
    b = auroc_by_language(df, n_resamples=100, seed=7)
    c = auroc_by_language(df, n_resamples=100, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a["ci_low"].equals(c["ci_low"])


def test_one_class_resamples_are_skipped():
    # one positive among 6 items: ~40% of resamples miss it; they must not enter the CI as NaN
    res = bootstrap_auroc([1, 0, 0, 0, 0, 0], [5.0, 1, 2, 3, 4, 0], n_resamples=200, seed=0)
    assert [res.auroc, res.ci_low, res.ci_high] == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)


def test_single_class_language_is_nan():
    rows = [("s0", "en", YES, YES, 0.0, -1.0), ("s1", "en", YES, YES, 0.5, -1.0)]
    rows += [("s0", "ar", YES, YES, 0.0, -1.0), ("s2", "ar", NO, NO, -2.0, -1.0)]
    table = auroc_by_language(frame(rows), n_resamples=20).set_index("lang")
    assert np.isnan(table.loc["en", "auroc"])
    assert table.loc["ar", "auroc"] == 1.0


def test_items_without_margin_are_left_out():
    rows = [("s0", "en", YES, YES, 0.0, -1.0), ("s1", "en", NO, NO, -2.0, -1.0)]
    rows += [("s2", "en", NO, "Invalid", None, None)]
    table = auroc_by_language(frame(rows), n_resamples=20).set_index("lang")
    assert table.loc["en", "n"] == 2 and table.loc["en", "auroc"] == 1.0


# ---------------------------------------------------------------- consistency


def three_by_three():
    """3 samples x 3 languages: s0 same everywhere, s1 differs in zh, s2 differs in ar."""
    rows = [
        ("s0", "en", YES, YES, 0, 0),
        ("s0", "ar", YES, YES, 0, 0),
        ("s0", "zh", YES, YES, 0, 0),
        ("s1", "en", NO, NO, 0, 0),
        ("s1", "ar", NO, NO, 0, 0),
        ("s1", "zh", NO, YES, 0, 0),
        ("s2", "en", YES, NO, 0, 0),
        ("s2", "ar", YES, YES, 0, 0),
        ("s2", "zh", YES, NO, 0, 0),
    ]
    return frame(rows)


def test_consistency_hand_count():
    df = three_by_three()
    res = probe_consistency(df, ["en", "ar", "zh"], n_resamples=200)
    assert res["share"] == pytest.approx(1 / 3) and res["n"] == 3
    assert 0.0 <= res["ci_low"] <= res["share"] <= res["ci_high"] <= 1.0
    assert probe_consistency(df, ["en", "ar"])["share"] == pytest.approx(2 / 3)  # s0, s1
    assert probe_consistency(df, ["en", "zh"])["share"] == pytest.approx(2 / 3)  # s0, s2
    assert probe_consistency(df, ["ar", "zh"])["share"] == pytest.approx(1 / 3)  # s0


def test_consistency_agrees_with_metrics_module():
    df = random_preds(n_samples=40, seed=4, signal=0.3)
    langs = ["en", "ar", "zh"]
    expected = consistency(df, s=3, langs=langs) / 100.0
    assert probe_consistency(df, langs)["share"] == pytest.approx(expected)


def test_invalid_never_agrees():
    df = three_by_three()
    df.loc[df["sample_id"] == "s0", "pred"] = "Invalid"
    assert probe_consistency(df, ["en", "ar", "zh"])["share"] == 0.0


def test_consistency_only_counts_samples_in_every_language():
    df = three_by_three()
    df = df[~((df["sample_id"] == "s2") & (df["lang"] == "zh"))]
    res = probe_consistency(df, ["en", "ar", "zh"])
    assert res["n"] == 2 and res["share"] == pytest.approx(1 / 2)


def test_consistency_rejects_missing_language():
    with pytest.raises(ValueError, match="ja"):
        probe_consistency(three_by_three(), ["en", "ja"])


def test_agreement_with_english_hand_count():
    table = agreement_with_english(three_by_three(), n_resamples=200).set_index("lang")
    assert list(table.index) == ["ar", "zh"]
    assert table.loc["ar", "share"] == pytest.approx(2 / 3)  # s0, s1
    assert table.loc["zh", "share"] == pytest.approx(2 / 3)  # s0, s2
    assert (table["n"] == 3).all()
    assert (table["ci_low"] <= table["share"]).all() and (table["share"] <= table["ci_high"]).all()


# ---------------------------------------------------------------- skew


def test_all_i_dont_know_is_flagged_constant():
    df = random_preds(n_samples=10)
    df["pred"] = NO
    skew = answer_skew(df).set_index("lang")
    assert skew["constant"].all()
    assert (skew["share"] == 1.0).all() and (skew["top_answer"] == NO).all()
    assert skew.loc[POOLED, "n"] == 30
    text = describe_skew(answer_skew(df))
    assert text.startswith("constant answer") and "100%" in text and "3/3" in text


def test_balanced_answers_are_not_constant():
    df = three_by_three()
    skew = answer_skew(df).set_index("lang")
    assert not skew["constant"].any()
    # en: YES, NO, NO -> NO at 2/3; pooled: 5 YES of 9
    assert skew.loc["en", "top_answer"] == NO and skew.loc["en", "share"] == pytest.approx(2 / 3)
    assert skew.loc[POOLED, "top_answer"] == YES
    assert skew.loc[POOLED, "share"] == pytest.approx(5 / 9)
    assert describe_skew(answer_skew(df)).startswith("answers vary")


def test_threshold_boundary_and_one_constant_language():
    # 19 of 20 NO in en (0.95 -> constant at the default threshold), mixed in ar
    rows = [(f"s{i}", "en", NO, NO if i else YES, 0, 0) for i in range(20)]
    rows += [(f"s{i}", "ar", NO, NO if i % 2 else YES, 0, 0) for i in range(20)]
    skew = answer_skew(frame(rows)).set_index("lang")
    assert skew.loc["en", "share"] == pytest.approx(0.95) and skew.loc["en", "constant"]
    assert not skew.loc["ar", "constant"] and not skew.loc[POOLED, "constant"]
    assert not answer_skew(frame(rows), threshold=0.96).set_index("lang").loc["en", "constant"]
    assert "1/2 languages constant: en" in describe_skew(answer_skew(frame(rows)))


@pytest.mark.parametrize("n, ties", [(6, True), (40, True), (280, False)])
def test_bootstrap_auroc_equals_a_loop_of_sklearn_calls_on_the_same_draws(n, ties):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(n)
    y = np.arange(n) % 2 == 0
    s = rng.integers(0, 4, size=n).astype(float) if ties else rng.normal(size=n) + y
    want, seen = [], np.random.default_rng(3)
    for _ in range(600):  # the documented draws: one rng.integers(0, n, size=n) per resample
        idx = seen.integers(0, n, size=n)
        if y[idx].all() or not y[idx].any():
            continue  # one class: skipped, not replaced (n = 6 has some)
        want.append(roc_auc_score(y[idx], s[idx]))
    got = bootstrap_auroc(y, s, n_resamples=600, seed=3)
    assert got.auroc == pytest.approx(roc_auc_score(y, s))
    low, high = np.percentile(want, [2.5, 97.5])
    assert (got.ci_low, got.ci_high) == pytest.approx((low, high), abs=1e-12)
    assert _resampled_aurocs(y[None, :], s[None, :]) == pytest.approx([roc_auc_score(y, s)])
