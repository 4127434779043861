"""Statistical reporting of the batch-alignment paper (§4.1): bootstrap CIs, McNemar, paired PPL.

95% percentile bootstrap CIs (B=1000), McNemar on paired items (p < 0.01), paired bootstrap deltas.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar

from xlalign.evaluation.metrics import (
    accuracy_by_language,
    is_correct,
    rest_avg,
    validate_predictions,
)

EXACT_BELOW = 25  # discordant pairs b + c below this use the exact binomial McNemar test
_CHUNK = 250  # bootstrap resamples per matrix product, bounds memory on large item sets


class CI(NamedTuple):
    """A point estimate with its confidence interval, all in percent."""

    point: float
    low: float
    high: float


@dataclass(frozen=True)
class McNemarResult:
    """McNemar test on paired items: b = A right & B wrong, c = A wrong & B right."""

    n: int
    b: int
    c: int
    statistic: float
    pvalue: float
    exact: bool
    significant: bool


@dataclass(frozen=True)
class PplDelta:
    """Corpus perplexities of two models and the paired-bootstrap CI of ppl_b - ppl_a."""

    ppl_a: float
    ppl_b: float
    delta: float
    ci_low: float
    ci_high: float


def _as_binary(values, name: str = "correct") -> np.ndarray:
    """1-D float array of 0/1 values; raises on empty input or non-binary values."""
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty: nothing to bootstrap or test")
    if not np.isin(arr, (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold only 0/1 (or bool) values")
    return arr


def _percentile_bounds(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.nanpercentile(samples, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high)


def _cluster_weights(rng: np.random.Generator, strata: list[np.ndarray], size: int) -> np.ndarray:
    """(size, n_clusters) counts: how often each cluster was drawn in each of ``size`` resamples,
    drawing with replacement within each stratum (an array of cluster indices) as many clusters as
    it holds."""
    n = sum(idx.size for idx in strata)
    weights = np.zeros((size, n))
    for idx in strata:
        picks = idx[rng.integers(0, idx.size, size=(size, idx.size))]
        np.add.at(weights, (np.arange(size)[:, None], picks), 1.0)
    return weights


def bootstrap_ci(correct, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> CI:
    """Accuracy (%) of 0/1 outcomes with a percentile bootstrap CI via ``scipy.stats.bootstrap``."""
    x = _as_binary(correct)
    point = float(x.mean() * 100.0)
    if x.size == 1:
        # scipy refuses one observation; every resample of it is the same value, so no spread.
        return CI(point, point, point)
    res = stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    low, high = res.confidence_interval
    return CI(point, float(low) * 100.0, float(high) * 100.0)


def bootstrap_rest_avg_ci(
    preds: pd.DataFrame,
    english: str = "en",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> CI:
    """Rest (avg.) (%) with a cluster-bootstrap CI that resamples whole sample_ids.

    Why clusters: items are parallel translations, so one sample_id appears in every language and
    its difficulty is shared. Per-language accuracies are therefore positively correlated; drawing
    items independently per language would ignore that covariance and give a too-narrow interval
    for their macro-average. Resampling sample_ids keeps all translations of a draw together.
    """
    validate_predictions(preds)
    rest = preds[preds["lang"] != english]
    if rest.empty:
        raise ValueError("rest_avg needs at least one non-English language")
    point = rest_avg(accuracy_by_language(rest), english)
    frame = rest.assign(_correct=is_correct(rest).astype(float))
    correct = frame.pivot(index="sample_id", columns="lang", values="_correct")
    present = correct.notna().to_numpy(dtype=float)  # unbalanced designs: count only present
    correct = correct.fillna(0.0).to_numpy()
    rng = np.random.default_rng(seed)
    everyone = [np.arange(correct.shape[0])]
    draws = []
    for start in range(0, n_resamples, _CHUNK):
        weights = _cluster_weights(rng, everyone, min(_CHUNK, n_resamples - start))
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = (weights @ correct) / (weights @ present)
        draws.append(np.nanmean(acc, axis=1) * 100.0)
    low, high = _percentile_bounds(np.concatenate(draws), confidence)
    return CI(point, low, high)


def paired_accuracy_delta(
    correct_a,
    correct_b,
    clusters=None,
    strata=None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> CI:
    """B − A accuracy (points) of two runs on the same items (same order), with a paired percentile
    bootstrap CI: each resample draws clusters with replacement, within each stratum, and both runs
    are scored on the same draw.

    ``clusters`` (one key per item, e.g. its sample_id) resamples whole clusters: an item's
    translations share its difficulty, so drawing them independently would make the interval too
    narrow (the reason ``bootstrap_rest_avg_ci`` resamples sample_ids). ``strata`` (one key per
    item, constant within a cluster, e.g. its label) keeps each stratum's number of clusters fixed,
    as a label-balanced evaluation set is by design; without it, a model that answers one way has
    an accuracy that swings with the drawn label balance, which the set does not have. Without
    either, every item is its own cluster in one stratum. The statistic is the pooled difference,
    (right_B − right_A) / items over the drawn clusters; with the same items in every language it
    equals the difference of Rest (avg.). Where the runs agree on every item the interval is 0.
    scipy's ``bootstrap`` has no strata, hence the draws here.
    """
    a = _as_binary(correct_a, "correct_a")
    b = _as_binary(correct_b, "correct_b")
    if a.size != b.size:
        raise ValueError(f"paired delta needs equal lengths, got {a.size} and {b.size}")
    keys = np.arange(a.size) if clusters is None else np.asarray(clusters)
    groups = np.zeros(a.size, dtype=int) if strata is None else np.asarray(strata)
    for name, arr in (("clusters", keys), ("strata", groups)):
        if arr.shape != a.shape:
            raise ValueError(f"{name} has {arr.size} keys for {a.size} items")
    ids, inverse = np.unique(keys, return_inverse=True)
    diff = np.bincount(inverse, weights=b - a)  # per cluster: right_B − right_A
    count = np.bincount(inverse).astype(float)
    _, group_inverse = np.unique(groups, return_inverse=True)
    pairs = np.unique(np.stack([inverse, group_inverse]), axis=1)  # distinct (cluster, stratum)
    spans = np.bincount(pairs[0], minlength=ids.size) > 1
    if spans.any():
        raise ValueError(f"cluster {ids[spans][0].item()!r} spans more than one stratum")
    cluster_group = np.empty(ids.size, dtype=int)
    cluster_group[inverse] = group_inverse
    point = float(100.0 * diff.sum() / count.sum())
    if np.array_equal(a, b):
        return CI(point, point, point)
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(cluster_group == g) for g in np.unique(cluster_group)]
    draws = []
    for start in range(0, n_resamples, _CHUNK):
        weights = _cluster_weights(rng, members, min(_CHUNK, n_resamples - start))
        draws.append(100.0 * (weights @ diff) / (weights @ count))
    low, high = _percentile_bounds(np.concatenate(draws), confidence)
    return CI(point, low, high)


def mcnemar_test(correct_a, correct_b, alpha: float = 0.01) -> McNemarResult:
    """Two-sided McNemar test of runs A and B on the same items (same order).

    Exact binomial test when the discordant count b + c < 25, otherwise the chi-square statistic
    with continuity correction, (|b - c| - 1)^2 / (b + c). ``significant`` is p < alpha.
    """
    a = _as_binary(correct_a, "correct_a").astype(bool)
    b_arr = _as_binary(correct_b, "correct_b").astype(bool)
    if a.size != b_arr.size:
        raise ValueError(f"paired test needs equal lengths, got {a.size} and {b_arr.size}")
    b = int((a & ~b_arr).sum())
    c = int((~a & b_arr).sum())
    table = [[int((a & b_arr).sum()), b], [c, int((~a & ~b_arr).sum())]]
    exact = b + c < EXACT_BELOW
    res = mcnemar(table, exact=exact, correction=True)
    pvalue = float(res.pvalue)
    return McNemarResult(
        n=int(a.size),
        b=b,
        c=c,
        statistic=float(res.statistic),
        pvalue=pvalue,
        exact=exact,
        significant=pvalue < alpha,
    )


def _key_examples(keys: pd.Index, limit: int = 5) -> str:
    return ", ".join(f"{sid}/{lang}" for sid, lang in list(keys)[:limit])


def _check_same_items(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Raise ValueError naming languages or (sample_id, lang) items present in only one run."""
    langs_a, langs_b = set(a["lang"]), set(b["lang"])
    problems = []
    for name, only in (("A", langs_a - langs_b), ("B", langs_b - langs_a)):
        if only:
            other = "B" if name == "A" else "A"
            problems.append(f"languages {sorted(only)} present in run {name} but not in {other}")
    if problems:
        raise ValueError("runs cover different languages: " + "; ".join(problems))
    keys_a = pd.MultiIndex.from_frame(a[["sample_id", "lang"]])
    keys_b = pd.MultiIndex.from_frame(b[["sample_id", "lang"]])
    only_a, only_b = keys_a.difference(keys_b), keys_b.difference(keys_a)
    if len(only_a) or len(only_b):
        raise ValueError(
            "runs are not on the same items: "
            f"{len(only_a)} (sample_id/lang) only in run A (e.g. {_key_examples(only_a)}); "
            f"{len(only_b)} only in run B (e.g. {_key_examples(only_b)})"
        )


def paired_outcomes(preds_a: pd.DataFrame, preds_b: pd.DataFrame, by: str = "lang") -> pd.DataFrame:
    """The two runs' outcomes per item, lined up on (sample_id, lang): columns sample_id, lang,
    ``by`` and, where run A has it, label (from run A), correct_a, correct_b. Raises ValueError
    when either run's predictions are malformed or the runs differ in languages or items, naming
    them."""
    for name, frame in (("A", preds_a), ("B", preds_b)):
        try:
            validate_predictions(frame)
        except ValueError as err:
            raise ValueError(f"run {name}: {err}") from None
    _check_same_items(preds_a, preds_b)
    keep = list(
        dict.fromkeys(["sample_id", "lang", by, *(["label"] if "label" in preds_a else [])])
    )
    left = preds_a[keep].assign(correct_a=is_correct(preds_a).to_numpy())
    right = preds_b[["sample_id", "lang"]].assign(correct_b=is_correct(preds_b).to_numpy())
    return left.merge(right, on=["sample_id", "lang"], how="inner", validate="one_to_one")


def paired_outcomes_delta(paired: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> CI:
    """``paired_accuracy_delta`` of a ``paired_outcomes`` frame (or a subset of its rows): whole
    samples resampled, within each label where the frame has one."""
    return paired_accuracy_delta(
        paired["correct_a"],
        paired["correct_b"],
        paired["sample_id"],
        paired["label"] if "label" in paired else None,
        n_resamples,
        seed=seed,
    )


def compare_runs(
    preds_a: pd.DataFrame,
    preds_b: pd.DataFrame,
    by: str = "lang",
    english: str = "en",
    alpha: float = 0.01,
) -> pd.DataFrame:
    """McNemar per ``by`` group and pooled over non-English, items aligned on (sample_id, lang).

    Returns one row per group (and ``non_english``) with acc_a, acc_b, delta (B - A, %) and the
    McNemarResult fields. Raises ValueError when the runs differ in languages or items.
    """
    if by not in preds_a.columns:
        raise ValueError(f"cannot group by {by!r}: no such column in run A")
    paired = paired_outcomes(preds_a, preds_b, by)
    groups = {key: grp for key, grp in paired.groupby(by, sort=False)}
    non_english = paired[paired["lang"] != english]
    if len(non_english):
        groups["non_english"] = non_english
    rows = {}
    for key, grp in groups.items():
        res = mcnemar_test(grp["correct_a"], grp["correct_b"], alpha=alpha)
        acc_a, acc_b = grp["correct_a"].mean() * 100.0, grp["correct_b"].mean() * 100.0
        rows[key] = {"acc_a": acc_a, "acc_b": acc_b, "delta": acc_b - acc_a, **asdict(res)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(by)


def _as_nonneg(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty: no items to compare")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    return arr


def paired_bootstrap_ppl_delta(
    nll_a,
    ntok_a,
    nll_b,
    ntok_b,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PplDelta:
    """Corpus perplexity exp(sum nll / sum tokens) of A and B, and ppl_b - ppl_a with a CI.

    Per-item summed NLLs (nats) and token counts; each model keeps its own token counts because
    tokenizers differ. The bootstrap resamples item indices jointly for both models (paired), so
    item difficulty cancels in the delta.
    """
    arrays = [
        _as_nonneg(v, n)
        for v, n in ((nll_a, "nll_a"), (ntok_a, "ntok_a"), (nll_b, "nll_b"), (ntok_b, "ntok_b"))
    ]
    if len({arr.size for arr in arrays}) != 1:
        raise ValueError(f"paired inputs need equal lengths, got {[arr.size for arr in arrays]}")
    if arrays[1].sum() == 0 or arrays[3].sum() == 0:
        raise ValueError("token counts sum to zero: perplexity undefined")
    data = np.stack(arrays, axis=1)  # columns: nll_a, ntok_a, nll_b, ntok_b
    ppl_a = float(np.exp(data[:, 0].sum() / data[:, 1].sum()))
    ppl_b = float(np.exp(data[:, 2].sum() / data[:, 3].sum()))
    rng = np.random.default_rng(seed)
    n = data.shape[0]
    deltas = []
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        sums = data[idx].sum(axis=1)  # (size, 4): one index draw shared by both models
        with np.errstate(invalid="ignore", divide="ignore"):
            deltas.append(np.exp(sums[:, 2] / sums[:, 3]) - np.exp(sums[:, 0] / sums[:, 1]))
    low, high = _percentile_bounds(np.concatenate(deltas), confidence)
    return PplDelta(ppl_a, ppl_b, ppl_b - ppl_a, low, high)
