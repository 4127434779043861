"""Metrics of both papers: per-language accuracy, Rest (avg.), gap, Consistency_s, AC3, errors.

Input: per-item predictions (item_id, sample_id, lang, label, pred, correct); outputs in percent.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from xlalign.evaluation.parse import INVALID

REQUIRED_COLUMNS = ("item_id", "sample_id", "lang", "pred", "correct")


def validate_predictions(preds: pd.DataFrame, columns=REQUIRED_COLUMNS) -> None:
    """Raise ValueError if ``preds`` is empty, lacks ``columns`` or repeats a (sample_id, lang)."""
    if preds is None or len(preds) == 0:
        raise ValueError("prediction set is empty: nothing to score")
    missing = [c for c in columns if c not in preds.columns]
    if missing:
        raise ValueError(f"prediction frame lacks columns {missing}")
    if {"sample_id", "lang"} <= set(columns):
        dup = preds.duplicated(["sample_id", "lang"], keep=False)
        if dup.any():
            examples = preds.loc[dup, ["sample_id", "lang"]].drop_duplicates().head(5)
            pairs = list(examples.itertuples(index=False, name=None))
            raise ValueError(
                f"{int(dup.sum())} rows share a (sample_id, lang) with another row, e.g. {pairs}"
            )


def is_invalid(pred: pd.Series) -> pd.Series:
    """True where a prediction is unparsable: None/NaN or "Invalid" (any case or padding)."""
    as_text = pred.astype("string").str.strip().str.casefold()
    return pred.isna() | as_text.eq(INVALID.casefold()).fillna(False).astype(bool)


def is_correct(preds: pd.DataFrame) -> pd.Series:
    """Boolean correctness; NaN counts as wrong and Invalid predictions are forced to wrong."""
    # ``eq(True)`` maps NaN/None to False instead of ``astype(bool)`` turning NaN into True.
    return preds["correct"].eq(True) & ~is_invalid(preds["pred"])


def accuracy_by_language(preds: pd.DataFrame) -> pd.Series:
    """Accuracy (%) per language, languages in order of first appearance."""
    validate_predictions(preds, ("lang", "pred", "correct"))
    acc = is_correct(preds).groupby(preds["lang"], sort=False).mean() * 100.0
    return acc.rename("accuracy").rename_axis("lang")


def invalid_rate_by_language(preds: pd.DataFrame) -> pd.Series:
    """Share (%) of unparsable predictions per language."""
    validate_predictions(preds, ("lang", "pred"))
    rate = is_invalid(preds["pred"]).groupby(preds["lang"], sort=False).mean() * 100.0
    return rate.rename("invalid_rate").rename_axis("lang")


def rest_avg(acc: pd.Series, english: str = "en") -> float:
    """Macro-average of ``acc`` over the non-English languages present (the papers' Rest (avg.))."""
    rest = acc.drop(labels=[english], errors="ignore")
    if rest.empty:
        raise ValueError("rest_avg needs at least one non-English language")
    return float(rest.mean())


def gap_to_english(acc: pd.Series, english: str = "en") -> float:
    """English accuracy minus Rest (avg.); positive when English is ahead."""
    if english not in acc.index:
        raise ValueError(f"no accuracy for the English anchor {english!r}")
    return float(acc[english]) - rest_avg(acc, english)


def _answer_keys(preds: pd.DataFrame) -> pd.Series:
    """Comparable answer per row, where every Invalid gets a key unique to its item.

    Design choice: two unparsable answers do not count as "consistent" -- the model gave no
    answer in either language, so agreement would reward failure. Invalid therefore is its own
    value (never equal to a valid answer) but is also never equal to another Invalid.
    """
    keys = preds["pred"].astype(str)
    invalid = is_invalid(preds["pred"])
    keys[invalid] = "\x00invalid:" + preds.loc[invalid, "item_id"].astype(str)
    return keys


def consistency(preds: pd.DataFrame, s: int = 2, langs=None) -> float:
    """CALM's Consistency_s (%): mean over all s-subsets of languages of the agreement rate M.

    M for a subset is the fraction of sample_ids, among those present in every language of the
    subset, on which all s languages give the same ``pred``. See ``_answer_keys`` for Invalid.
    """
    validate_predictions(preds)
    langs = list(pd.unique(preds["lang"])) if langs is None else list(langs)
    absent = [lang for lang in langs if lang not in set(preds["lang"])]
    if absent:
        raise ValueError(f"languages {absent} have no predictions")
    if not 2 <= s <= len(langs):
        raise ValueError(f"s must be between 2 and the number of languages ({len(langs)}), got {s}")
    answers = preds.assign(_key=_answer_keys(preds)).pivot(
        index="sample_id", columns="lang", values="_key"
    )
    agreement = []
    for subset in combinations(langs, s):
        block = answers[list(subset)].dropna()  # only samples present in all s languages
        if block.empty:
            raise ValueError(f"languages {subset} share no sample_id")
        same = block.eq(block.iloc[:, 0], axis=0).all(axis=1)
        agreement.append(same.mean())
    return float(np.mean(agreement) * 100.0)


def ac3(accuracy: float, consistency: float) -> float:
    """AC3 = harmonic mean of accuracy and consistency (same scale in, same scale out)."""
    if accuracy < 0 or consistency < 0:
        raise ValueError("accuracy and consistency must be non-negative")
    total = accuracy + consistency
    return 0.0 if total == 0 else 2.0 * accuracy * consistency / total


def error_cooccurrence(preds: pd.DataFrame, anchor: str = "en") -> pd.DataFrame:
    """Per language L, how errors in L and in the anchor co-occur, paired on sample_id.

    Columns: n (paired samples), both_wrong, only_lang_wrong, only_anchor_wrong,
    p_anchor_wrong_given_lang_wrong and p_lang_wrong_given_anchor_wrong (NaN when undefined).
    """
    validate_predictions(preds)
    wrong = preds[["sample_id", "lang"]].assign(wrong=~is_correct(preds))
    table = wrong.pivot(index="sample_id", columns="lang", values="wrong")
    if anchor not in table.columns:
        raise ValueError(f"anchor language {anchor!r} has no predictions")
    rows = {}
    for lang in [c for c in pd.unique(preds["lang"]) if c != anchor]:
        pair = table[[anchor, lang]].dropna().astype(bool)
        a, x = pair[anchor], pair[lang]
        both, only_x, only_a = int((a & x).sum()), int((x & ~a).sum()), int((a & ~x).sum())
        rows[lang] = {
            "n": len(pair),
            "both_wrong": both,
            "only_lang_wrong": only_x,
            "only_anchor_wrong": only_a,
            "p_anchor_wrong_given_lang_wrong": _ratio(both, both + only_x),
            "p_lang_wrong_given_anchor_wrong": _ratio(both, both + only_a),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("lang")


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def summarize(preds: pd.DataFrame, english: str = "en", s: int = 2) -> dict:
    """All headline metrics of one run.

    ``acc_avg`` is the macro-average over all languages (CALM's ACC_avg) and is the accuracy fed
    to AC3; ``english``/``gap`` are NaN without English; ``consistency``/``ac3`` are NaN with
    fewer than ``s`` languages.
    """
    validate_predictions(preds)
    acc = accuracy_by_language(preds)
    has_english = english in acc.index
    acc_avg = float(acc.mean())
    cons = consistency(preds, s=s) if len(acc) >= s else float("nan")
    return {
        "accuracy": acc,
        "english": float(acc[english]) if has_english else float("nan"),
        "rest_avg": rest_avg(acc, english) if len(acc) > int(has_english) else float("nan"),
        "gap": gap_to_english(acc, english) if has_english and len(acc) > 1 else float("nan"),
        "acc_avg": acc_avg,
        "consistency": cons,
        "ac3": ac3(acc_avg, cons) if not np.isnan(cons) else float("nan"),
        "invalid_rate": invalid_rate_by_language(preds),
    }
