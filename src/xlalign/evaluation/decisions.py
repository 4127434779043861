"""How a model decides, from one scoring pass: the first-token margin's AUROC, cross-language agreement
of the decisions, and whether the model gives one answer everywhere (then it is flagged, not tabulated).

Input: per-item predictions (item_id, sample_id, lang, label, pred, correct, and for the margin
logp_first_present / logp_first_absent). Shares and AUROCs are fractions in [0, 1], not percent.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from xlalign.evaluation.metrics import _answer_keys, validate_predictions
from xlalign.evaluation.stats import _percentile_bounds, bootstrap_ci
from xlalign.probe.build import ANSWER_PRESENT

POOLED = "all"  # the ``lang`` of rows pooled over every language
MARGIN_COLUMNS = ("logp_first_present", "logp_first_absent")


class AurocCI(NamedTuple):
    """An AUROC with its percentile bootstrap CI and the number of items it was computed on."""

    auroc: float
    ci_low: float
    ci_high: float
    n: int


def positive(labels) -> np.ndarray:
    """Boolean "answer is present" per item: label strings compared to ANSWER_PRESENT, 0/1 as is."""
    arr = np.asarray(labels)
    if arr.dtype.kind in "OUS":
        return arr == ANSWER_PRESENT
    return arr.astype(bool)


def margin(preds: pd.DataFrame) -> pd.Series:
    """logp_first_present - logp_first_absent per item (NaN where either log-prob is missing)."""
    validate_predictions(preds, MARGIN_COLUMNS)
    present = pd.to_numeric(preds["logp_first_present"], errors="coerce").astype(float)
    absent = pd.to_numeric(preds["logp_first_absent"], errors="coerce").astype(float)
    return (present - absent).rename("margin")


_AUROC_CHUNK = 250  # resamples ranked at once (bounds memory on large item sets)


def _resampled_aurocs(yb: np.ndarray, sb: np.ndarray) -> list[float]:
    """AUROC of each row of ``(labels, scores)`` resamples, rows with one class skipped.

    The Mann-Whitney identity ``(R+ - n+(n+ + 1)/2) / (n+ n-)`` with average ranks for ties (scipy's
    ``rankdata`` over each row) equals ``roc_auc_score`` on every row; one call ranks them all, where
    a loop of ``roc_auc_score`` calls cost about a millisecond each (a per-layer, per-language probe
    table made 150,000 of them).
    """
    n_pos = yb.sum(axis=1)
    n_neg = yb.shape[1] - n_pos
    keep = (n_pos > 0) & (n_neg > 0)
    if not keep.any():
        return []
    yb, sb, n_pos, n_neg = yb[keep], sb[keep], n_pos[keep], n_neg[keep]
    ranks = rankdata(sb, method="average", axis=1)
    rank_pos = (ranks * yb).sum(axis=1)
    return list((rank_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_auroc(
    y, scores, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> AurocCI:
    """``roc_auc_score(y, scores)`` with a percentile bootstrap CI that resamples items.

    Items are drawn with replacement by ``numpy.random.default_rng(seed)``; a resample holding only
    one class has no AUROC and is skipped (not replaced). Everything is NaN when ``y`` itself has
    one class; the CI is NaN with ``n_resamples=0`` or when every resample was skipped.
    """
    y = positive(y)
    s = np.asarray(scores, dtype=float).ravel()
    if y.size != s.size:
        raise ValueError(f"labels and scores differ in length ({y.size} vs {s.size})")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (drop items without a score first)")
    nan = float("nan")
    if y.size == 0 or y.all() or not y.any():
        return AurocCI(nan, nan, nan, int(y.size))
    point = float(roc_auc_score(y, s))
    rng = np.random.default_rng(seed)
    draws = []
    for start in range(0, n_resamples, _AUROC_CHUNK):
        # One ``rng.integers(0, n, size=n)`` per resample, in order (the draws the loop made).
        rows = min(_AUROC_CHUNK, n_resamples - start)
        idx = np.stack([rng.integers(0, y.size, size=y.size) for _ in range(rows)])
        draws.extend(_resampled_aurocs(y[idx], s[idx]))
    if not draws:
        return AurocCI(point, nan, nan, int(y.size))
    low, high = _percentile_bounds(np.asarray(draws), confidence)
    return AurocCI(point, low, high, int(y.size))


def _groups(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(POOLED, all rows) then (lang, its rows) in order of first appearance."""
    return [(POOLED, frame)] + [(str(k), g) for k, g in frame.groupby("lang", sort=False)]


def auroc_by_language(
    preds: pd.DataFrame, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> pd.DataFrame:
    """AUROC of the first-token margin against the label, pooled (lang "all") and per language.

    Columns: lang, auroc, ci_low, ci_high, n (items with a finite margin; items without one, e.g.
    numerically failed Invalid items, are left out). A language whose items share one label has
    NaN AUROC.
    """
    validate_predictions(preds, ("lang", "label", *MARGIN_COLUMNS))
    frame = preds.assign(_margin=margin(preds).to_numpy())
    frame = frame[np.isfinite(frame["_margin"])]
    rows = []
    for lang, grp in _groups(frame):
        res = bootstrap_auroc(grp["label"], grp["_margin"], n_resamples, seed, confidence)
        rows.append({"lang": lang, **res._asdict()})
    return pd.DataFrame(rows, columns=["lang", *AurocCI._fields])


def _share_ci(hits: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float, float]:
    """Share of True in ``hits`` with the bootstrap CI of ``stats.bootstrap_ci``, as fractions."""
    ci = bootstrap_ci(hits.astype(float), n_resamples=n_resamples, seed=seed)
    return ci.point / 100.0, ci.low / 100.0, ci.high / 100.0


def _agreement(preds: pd.DataFrame, langs: list[str]) -> np.ndarray:
    """Per sample present in every language of ``langs``: do all of them give the same pred?

    As in ``metrics.consistency``, an Invalid prediction never agrees with anything, not even with
    another Invalid.
    """
    absent = [lang for lang in langs if lang not in set(preds["lang"])]
    if absent:
        raise ValueError(f"languages {absent} have no predictions")
    table = preds.assign(_key=_answer_keys(preds)).pivot(
        index="sample_id", columns="lang", values="_key"
    )
    block = table[list(langs)].dropna()
    if block.empty:
        raise ValueError(f"languages {list(langs)} share no sample_id")
    return block.eq(block.iloc[:, 0], axis=0).all(axis=1).to_numpy()


def probe_consistency(
    preds: pd.DataFrame, langs=None, n_resamples: int = 1000, seed: int = 0
) -> dict:
    """Share of samples decided the same way in EVERY language of ``langs`` (default: all present).

    Only samples present in all those languages count. Returns {share, ci_low, ci_high, n} with a
    percentile bootstrap CI over samples. With ``langs`` of size s this equals
    ``metrics.consistency(preds, s=s, langs=langs) / 100``.
    """
    validate_predictions(preds)
    langs = list(pd.unique(preds["lang"])) if langs is None else list(langs)
    if len(langs) < 2:
        raise ValueError(f"consistency needs at least two languages, got {langs}")
    same = _agreement(preds, langs)
    share, low, high = _share_ci(same, n_resamples, seed)
    return {"share": share, "ci_low": low, "ci_high": high, "n": int(same.size)}


def agreement_with_english(
    preds: pd.DataFrame, english: str = "en", n_resamples: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Per non-English language, the share of samples whose pred equals the English pred.

    Paired on sample_id (samples missing in either language are left out). Columns: lang, share,
    ci_low, ci_high, n.
    """
    validate_predictions(preds)
    if english not in set(preds["lang"]):
        raise ValueError(f"no predictions in the English anchor {english!r}")
    rows = []
    for lang in [x for x in pd.unique(preds["lang"]) if x != english]:
        same = _agreement(preds, [english, lang])
        share, low, high = _share_ci(same, n_resamples, seed)
        rows.append({"lang": lang, "share": share, "ci_low": low, "ci_high": high, "n": same.size})
    return pd.DataFrame(rows, columns=["lang", "share", "ci_low", "ci_high", "n"])


def answer_skew(preds: pd.DataFrame, threshold: float = 0.95) -> pd.DataFrame:
    """Pooled (lang "all") and per language: the most frequent answer and its share of items.

    ``constant`` is True when that share is >= ``threshold``: such a model gives (nearly) one answer
    everywhere, and its accuracy or consistency measure the answer prior, not a decision -- report
    it as constant rather than as a result. Invalid counts as an answer of its own here. Columns:
    lang, top_answer, share, constant, n.
    """
    validate_predictions(preds, ("lang", "pred"))
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    rows = []
    for lang, grp in _groups(preds):
        counts = grp["pred"].astype(str).value_counts()
        share = float(counts.iloc[0] / len(grp))
        rows.append(
            {
                "lang": lang,
                "top_answer": str(counts.index[0]),
                "share": share,
                "constant": share >= threshold,
                "n": len(grp),
            }
        )
    return pd.DataFrame(rows, columns=["lang", "top_answer", "share", "constant", "n"])


def describe_skew(skew: pd.DataFrame) -> str:
    """One line for reports from ``answer_skew``'s table, e.g.
    "constant answer: 'I don't know' on 100% of items (7/7 languages constant)"."""
    pooled = skew[skew["lang"] == POOLED]
    if pooled.empty:
        raise ValueError(f"skew table has no pooled row (lang {POOLED!r})")
    top = pooled.iloc[0]
    per_lang = skew[skew["lang"] != POOLED]
    n_const, n_lang = int(per_lang["constant"].sum()), len(per_lang)
    head = "constant answer" if bool(top["constant"]) else "answers vary"
    line = f"{head}: {top['top_answer']!r} on {top['share']:.0%} of items"
    if n_const and not bool(top["constant"]):
        names = " ".join(per_lang.loc[per_lang["constant"], "lang"])
        return f"{line} ({n_const}/{n_lang} languages constant: {names})"
    return f"{line} ({n_const}/{n_lang} languages constant)"
