"""Tests for xlalign.evaluation.stats against scipy references and hand-computed values."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from xlalign.evaluation import stats
from xlalign.evaluation.stats import (
    EXACT_BELOW,
    bootstrap_ci,
    bootstrap_rest_avg_ci,
    compare_runs,
    mcnemar_test,
    paired_bootstrap_ppl_delta,
)


def paired_vectors(both, b, c, neither):
    """Outcome vectors of runs A and B realising the 2x2 table [[both, b], [c, neither]]."""
    a = [1] * both + [1] * b + [0] * c + [0] * neither
    bb = [1] * both + [0] * b + [1] * c + [0] * neither
    return np.array(a, dtype=bool), np.array(bb, dtype=bool)


# ---------------------------------------------------------------- McNemar


def test_mcnemar_exact_matches_binomtest():
    a, b = paired_vectors(both=50, b=8, c=2, neither=40)
    res = mcnemar_test(a, b)
    assert (res.n, res.b, res.c, res.exact) == (100, 8, 2, True)
    assert res.pvalue == pytest.approx(sps.binomtest(8, 10, 0.5).pvalue)  # 0.109375
    assert res.pvalue == pytest.approx(0.109375)
    assert not res.significant


def test_mcnemar_exact_significant_one_sided_table():
    a, b = paired_vectors(both=30, b=0, c=12, neither=30)
    res = mcnemar_test(a, b)
    assert res.exact
    assert res.pvalue == pytest.approx(sps.binomtest(0, 12, 0.5).pvalue)  # 2 * 0.5**12
    assert res.pvalue == pytest.approx(2 * 0.5**12)
    assert res.significant


def test_mcnemar_chi2_with_continuity_correction():
    a, b = paired_vectors(both=100, b=40, c=15, neither=45)
    res = mcnemar_test(a, b)
    expected_stat = (abs(40 - 15) - 1) ** 2 / (40 + 15)  # 576 / 55 = 10.47
    assert not res.exact
    assert res.statistic == pytest.approx(expected_stat)
    assert res.pvalue == pytest.approx(sps.chi2.sf(expected_stat, df=1))  # ~0.0012
    assert res.significant  # p < 0.01 (paper's rule)
    assert not mcnemar_test(a, b, alpha=0.001).significant


def test_mcnemar_not_significant_large_table():
    a, b = paired_vectors(both=100, b=30, c=20, neither=50)
    res = mcnemar_test(a, b)
    assert res.statistic == pytest.approx(81 / 50)  # (10 - 1)^2 / 50
    assert res.pvalue > 0.01 and not res.significant


def test_mcnemar_exact_threshold():
    assert EXACT_BELOW == 25
    assert mcnemar_test(*paired_vectors(10, 14, 10, 10)).exact  # b + c = 24
    assert not mcnemar_test(*paired_vectors(10, 15, 10, 10)).exact  # b + c = 25


def test_mcnemar_no_discordance_and_errors():
    a, b = paired_vectors(both=5, b=0, c=0, neither=5)
    res = mcnemar_test(a, b)
    assert res.pvalue == 1.0 and not res.significant
    with pytest.raises(ValueError, match="equal lengths"):
        mcnemar_test([1, 0], [1])
    with pytest.raises(ValueError, match="empty"):
        mcnemar_test([], [])


# ---------------------------------------------------------------- bootstrap_ci


def test_bootstrap_ci_known_vector():
    x = np.array([1] * 600 + [0] * 400)
    point, low, high = bootstrap_ci(x)
    assert point == 60.0
    assert low < point < high
    half = 1.96 * np.sqrt(0.6 * 0.4 / 1000) * 100  # normal approximation, ~3.04 points
    assert low == pytest.approx(60.0 - half, abs=0.5)
    assert high == pytest.approx(60.0 + half, abs=0.5)


def test_bootstrap_ci_seeded_and_matches_scipy():
    x = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 1] * 10, dtype=bool)
    assert bootstrap_ci(x, seed=1) == bootstrap_ci(x, seed=1)
    assert bootstrap_ci(x, seed=1) != bootstrap_ci(x, seed=2)
    ref = sps.bootstrap(
        (x.astype(float),),
        np.mean,
        n_resamples=1000,
        method="percentile",
        rng=np.random.default_rng(1),
    ).confidence_interval
    _, low, high = bootstrap_ci(x, seed=1)
    assert (low, high) == pytest.approx((ref.low * 100, ref.high * 100))


def test_bootstrap_ci_edge_cases():
    assert bootstrap_ci([1]) == (100.0, 100.0, 100.0)
    assert bootstrap_ci([0, 0, 0]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="0/1"):
        bootstrap_ci([0.5, 1.0])


# ---------------------------------------------------------------- rest_avg cluster bootstrap


def parallel_preds(outcomes, sample_ids=None):
    """Predictions frame from {lang: list of 0/1}, one row per (sample_id, lang)."""
    rows = []
    for lang, vals in outcomes.items():
        ids = sample_ids or [f"q{i:03d}" for i in range(len(vals))]
        for sid, ok in zip(ids, vals, strict=True):
            rows.append(
                {
                    "item_id": f"{sid}.{lang}",
                    "sample_id": sid,
                    "lang": lang,
                    "label": "A",
                    "pred": "A" if ok else "B",
                    "correct": bool(ok),
                }
            )
    return pd.DataFrame(rows)


def test_rest_avg_ci_matches_naive_cluster_reference():
    rng = np.random.default_rng(7)
    outcomes = {lang: rng.integers(0, 2, 30).tolist() for lang in ("en", "ar", "fr", "ja")}
    preds = parallel_preds(outcomes)
    point, low, high = bootstrap_rest_avg_ci(preds, n_resamples=200, seed=3)
    assert point == pytest.approx(np.mean([np.mean(outcomes[k]) * 100 for k in ("ar", "fr", "ja")]))
    # Naive reference: same draws of sample_id positions (sorted ids), loop per resample.
    draws = np.random.default_rng(3).integers(0, 30, size=(200, 30))
    ref = [np.mean([np.mean(np.take(outcomes[k], d)) for k in ("ar", "fr", "ja")]) for d in draws]
    expected = np.percentile(np.array(ref) * 100, [2.5, 97.5])
    assert (low, high) == pytest.approx(tuple(expected))
    assert low <= point <= high


def test_rest_avg_ci_clusters_keep_cross_language_correlation():
    # Two non-English languages with identical outcomes: the macro-average behaves like one
    # language of n=400, so the CI half-width is ~1.96 * sqrt(.25/400) = 4.9 points. Independent
    # per-language resampling would wrongly shrink it by ~sqrt(2).
    vals = [1, 0] * 200
    preds = parallel_preds({"en": [1] * 400, "ar": vals, "fr": vals})
    point, low, high = bootstrap_rest_avg_ci(preds)
    assert point == 50.0
    assert (high - low) / 2 == pytest.approx(4.9, abs=0.6)


def test_rest_avg_ci_ignores_english_and_is_seeded():
    rng = np.random.default_rng(0)
    base = {lang: rng.integers(0, 2, 137).tolist() for lang in ("ar", "es")}
    p1 = parallel_preds({"en": [1] * 137, **base})
    p2 = parallel_preds({"en": [0] * 137, **base})
    assert bootstrap_rest_avg_ci(p1, seed=5) == bootstrap_rest_avg_ci(p2, seed=5)
    assert bootstrap_rest_avg_ci(p1, seed=5) != bootstrap_rest_avg_ci(p1, seed=6)
    with pytest.raises(ValueError, match="empty"):
        bootstrap_rest_avg_ci(p1.iloc[:0])


# ---------------------------------------------------------------- compare_runs


def two_runs():
    ids = [f"q{i}" for i in range(40)]
    a = parallel_preds({"en": [1] * 40, "ar": [0] * 40, "fr": [1, 0] * 20}, ids)
    b = parallel_preds({"en": [1] * 40, "ar": [1] * 30 + [0] * 10, "fr": [1] * 40}, ids)
    return a, b


def test_compare_runs_per_language_and_pooled():
    a, b = two_runs()
    out = compare_runs(a, b.sample(frac=1.0, random_state=0))  # row order must not matter
    assert list(out.index) == ["en", "ar", "fr", "non_english"]
    assert (out.loc["en", "b"], out.loc["en", "c"], out.loc["en", "pvalue"]) == (0, 0, 1.0)
    assert (out.loc["ar", "b"], out.loc["ar", "c"]) == (0, 30)  # 30 discordant -> chi-square
    assert not out.loc["ar", "exact"]
    assert out.loc["ar", "delta"] == pytest.approx(75.0)
    assert (out.loc["fr", "b"], out.loc["fr", "c"], out.loc["fr", "exact"]) == (0, 20, True)
    assert out.loc["fr", "pvalue"] == pytest.approx(sps.binomtest(0, 20, 0.5).pvalue)
    pooled = out.loc["non_english"]
    assert (pooled["n"], pooled["b"], pooled["c"]) == (80, 0, 50)
    assert pooled["significant"]


def test_compare_runs_mismatched_items_named():
    a, b = two_runs()
    b = b[~((b["sample_id"] == "q3") & (b["lang"] == "ar"))]
    extra = parallel_preds({"ar": [1]}, ["q99"])
    b = pd.concat([b, extra], ignore_index=True)
    with pytest.raises(ValueError) as err:
        compare_runs(a, b)
    msg = str(err.value)
    assert "1 (sample_id/lang) only in run A" in msg and "q3/ar" in msg
    assert "1 only in run B" in msg and "q99/ar" in msg


def test_compare_runs_shows_at_most_five_examples():
    a, b = two_runs()
    b = b[~((b["lang"] == "fr") & b["sample_id"].isin([f"q{i}" for i in range(8)]))]
    with pytest.raises(ValueError, match="8 \\(sample_id/lang\\) only in run A") as err:
        compare_runs(a, b)
    assert str(err.value).count("/fr") == 5


def test_compare_runs_missing_language_named():
    a, b = two_runs()
    with pytest.raises(ValueError, match=r"\['fr'\] present in run A but not in B"):
        compare_runs(a, b[b["lang"] != "fr"])
    with pytest.raises(ValueError, match="empty"):
        compare_runs(a.iloc[:0], b)


# ---------------------------------------------------------------- perplexity delta


def test_ppl_delta_hand_computed():
    nll_a, ntok_a = [2.0, 4.0], [2, 2]  # ppl_a = exp(6 / 4) = exp(1.5)
    nll_b, ntok_b = [1.0, 2.0], [1, 3]  # ppl_b = exp(3 / 4) = exp(0.75)
    res = paired_bootstrap_ppl_delta(nll_a, ntok_a, nll_b, ntok_b)
    assert res.ppl_a == pytest.approx(np.exp(1.5))
    assert res.ppl_b == pytest.approx(np.exp(0.75))
    assert res.delta == pytest.approx(np.exp(0.75) - np.exp(1.5))


def test_ppl_delta_identical_inputs_zero_ci():
    rng = np.random.default_rng(0)
    nll, ntok = rng.gamma(2.0, 5.0, 100), rng.integers(5, 30, 100)
    res = paired_bootstrap_ppl_delta(nll, ntok, nll, ntok)
    assert (res.delta, res.ci_low, res.ci_high) == (0.0, 0.0, 0.0)


def test_ppl_delta_matches_naive_paired_reference():
    rng = np.random.default_rng(1)
    n = 60
    ntok_a, ntok_b = rng.integers(5, 30, n), rng.integers(5, 30, n)
    nll_a, nll_b = ntok_a * rng.uniform(2, 3, n), ntok_b * rng.uniform(1.8, 2.8, n)
    res = paired_bootstrap_ppl_delta(nll_a, ntok_a, nll_b, ntok_b, n_resamples=200, seed=4)
    idx = np.random.default_rng(4).integers(0, n, size=(200, n))
    ref = [
        np.exp(nll_b[i].sum() / ntok_b[i].sum()) - np.exp(nll_a[i].sum() / ntok_a[i].sum())
        for i in idx
    ]
    assert (res.ci_low, res.ci_high) == pytest.approx(tuple(np.percentile(ref, [2.5, 97.5])))
    assert res.ci_low <= res.delta <= res.ci_high


def test_ppl_delta_errors():
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap_ppl_delta([], [], [], [])
    with pytest.raises(ValueError, match="equal lengths"):
        paired_bootstrap_ppl_delta([1.0], [1], [1.0, 2.0], [1, 1])


# --------------------------------------------------------------------------- paired_accuracy_delta


def test_paired_delta_is_the_difference_and_zero_when_the_runs_agree():
    rng = np.random.default_rng(3)
    a, b = rng.random(120) < 0.5, rng.random(120) < 0.7
    got = stats.paired_accuracy_delta(a, b, n_resamples=500, seed=0)
    assert got.point == pytest.approx(100 * (b.mean() - a.mean()))
    assert got.low < got.point < got.high
    assert stats.paired_accuracy_delta(a, a) == (0.0, 0.0, 0.0)
    assert stats.paired_accuracy_delta(a, b, seed=5) == stats.paired_accuracy_delta(a, b, seed=5)
    with pytest.raises(ValueError, match="equal lengths"):
        stats.paired_accuracy_delta(a, b[:-1])
    with pytest.raises(ValueError, match="clusters has 3 keys for 120 items"):
        stats.paired_accuracy_delta(a, b, clusters=[0, 1, 2])


def test_paired_delta_of_single_items_agrees_with_scipys_paired_bootstrap():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(0)
    a = (rng.random(300) < 0.55).astype(float)
    b = (rng.random(300) < 0.65).astype(float)
    ours = stats.paired_accuracy_delta(a, b, n_resamples=4000, seed=1)
    ref = bootstrap(
        (a, b),
        lambda x, y, axis=-1: 100 * (y.mean(axis=axis) - x.mean(axis=axis)),
        paired=True,
        vectorized=True,
        n_resamples=4000,
        method="percentile",
        rng=np.random.default_rng(2),
    ).confidence_interval
    assert ours.low == pytest.approx(ref.low, abs=1.0)
    assert ours.high == pytest.approx(ref.high, abs=1.0)


def test_clusters_widen_the_interval_when_an_items_translations_agree():
    # 40 samples in 6 languages; each sample is decided the same way in every language, so the 240
    # items carry 40 items' worth of evidence
    rng = np.random.default_rng(1)
    per_sample_a, per_sample_b = rng.random(40) < 0.5, rng.random(40) < 0.7
    a, b = np.repeat(per_sample_a, 6), np.repeat(per_sample_b, 6)
    sample = np.repeat(np.arange(40), 6)
    items = stats.paired_accuracy_delta(a, b, n_resamples=2000, seed=0)
    clustered = stats.paired_accuracy_delta(a, b, clusters=sample, n_resamples=2000, seed=0)
    assert clustered.point == items.point
    assert (clustered.high - clustered.low) > 2 * (items.high - items.low)


def test_strata_keep_the_label_balance_of_a_one_answer_model():
    # the base answers "no" everywhere: right on every negative, wrong on every positive; the trained
    # model is right on 18 of 20 positives and 12 of 20 negatives
    label = np.array([1] * 20 + [0] * 20)
    base = label == 0
    trained = np.concatenate([np.arange(20) < 18, np.arange(20) < 12])
    free = stats.paired_accuracy_delta(base, trained, n_resamples=4000, seed=0)
    held = stats.paired_accuracy_delta(base, trained, strata=label, n_resamples=4000, seed=0)
    assert held.point == free.point == pytest.approx(100 * (30 - 20) / 40)
    assert (held.high - held.low) < 0.8 * (free.high - free.low)
    # with the balance held, each resample's delta is (right positives − wrong negatives) / 40:
    # a multiple of 2.5 points, no more than (20 − 0) / 40 and no less than (0 − 20) / 40
    assert held.low >= -50.0 and held.high <= 50.0
    assert held.low % 2.5 == pytest.approx(0.0) and held.high % 2.5 == pytest.approx(0.0)


def test_a_cluster_that_spans_two_strata_is_refused():
    with pytest.raises(ValueError, match="cluster 's1' spans more than one stratum"):
        stats.paired_accuracy_delta(
            [1, 0, 1, 0], [1, 1, 1, 1], clusters=["s0", "s0", "s1", "s1"], strata=[0, 0, 0, 1]
        )
