"""Tests for xlalign.evaluation.metrics against hand-worked cases."""

import numpy as np
import pandas as pd
import pytest

from xlalign.evaluation.metrics import (
    ac3,
    accuracy_by_language,
    consistency,
    error_cooccurrence,
    gap_to_english,
    invalid_rate_by_language,
    is_invalid,
    rest_avg,
    summarize,
)


def make_preds(rows):
    """rows: (sample_id, lang, label, pred); correct is derived, Invalid/None never correct."""
    frame = pd.DataFrame(rows, columns=["sample_id", "lang", "label", "pred"])
    frame.insert(0, "item_id", frame["sample_id"] + "." + frame["lang"])
    frame["correct"] = frame["pred"] == frame["label"]
    return frame


# Three languages, four samples (s4 has no German row). Answers:
#        en        fr         de
# s1     A         A          A
# s2     A         B          A
# s3     None      "Invalid"  C
# s4     B         B          -
CONSISTENCY_ROWS = [
    ("s1", "en", "A", "A"),
    ("s1", "fr", "A", "A"),
    ("s1", "de", "A", "A"),
    ("s2", "en", "A", "A"),
    ("s2", "fr", "A", "B"),
    ("s2", "de", "A", "A"),
    ("s3", "en", "C", None),
    ("s3", "fr", "C", "Invalid"),
    ("s3", "de", "C", "C"),
    ("s4", "en", "B", "B"),
    ("s4", "fr", "B", "B"),
]


def test_consistency_2_hand_worked():
    # (en,fr): s1..s4 shared; agree on s1, s4; s2 differs; s3 None vs Invalid is NOT agreement
    #          -> 2/4 = 0.5
    # (en,de): s1..s3 shared (s4 has no de); agree s1, s2; s3 None vs C -> 2/3
    # (fr,de): s1..s3 shared; agree s1 only (s2 B vs A, s3 Invalid vs C) -> 1/3
    # Consistency_2 = (1/2 + 2/3 + 1/3) / C(3,2) = 1.5 / 3 = 0.5 -> 50 %
    preds = make_preds(CONSISTENCY_ROWS)
    assert consistency(preds, s=2) == pytest.approx(50.0)


def test_consistency_3_hand_worked():
    # Only s1..s3 are present in all three languages; all agree on s1 only -> 1/3 -> 33.33 %
    preds = make_preds(CONSISTENCY_ROWS)
    assert consistency(preds, s=3) == pytest.approx(100.0 / 3)


def test_consistency_invalid_never_equal_to_invalid():
    # Both languages unparsable on the only sample: not consistent -> 0 %, not 100 %.
    preds = make_preds([("s1", "en", "A", "Invalid"), ("s1", "fr", "A", "Invalid")])
    assert consistency(preds) == 0.0
    preds = make_preds([("s1", "en", "A", None), ("s1", "fr", "A", np.nan)])
    assert consistency(preds) == 0.0


def test_consistency_subset_of_languages_and_bad_s():
    preds = make_preds(CONSISTENCY_ROWS)
    assert consistency(preds, langs=["en", "de"]) == pytest.approx(200.0 / 3)
    with pytest.raises(ValueError, match="s must be"):
        consistency(preds, s=4)
    with pytest.raises(ValueError, match="'ja'"):
        consistency(preds, langs=["en", "ja"])


def test_ac3_formula_and_zero():
    assert ac3(62.0, 57.73) == pytest.approx(2 * 62.0 * 57.73 / (62.0 + 57.73))
    assert ac3(50.0, 50.0) == pytest.approx(50.0)
    assert ac3(0.0, 0.0) == 0.0
    assert ac3(80.0, 0.0) == 0.0
    with pytest.raises(ValueError):
        ac3(-1.0, 50.0)


def test_invalid_detection():
    pred = pd.Series(["A", "Invalid", None, np.nan, " invalid ", "B"], dtype=object)
    assert is_invalid(pred).tolist() == [False, True, True, True, True, False]


ACC_ROWS = [
    # en: 3/4 correct, ar: 1/4, fr: 2/4 (one wrong is Invalid)
    ("s1", "en", "A", "A"),
    ("s2", "en", "A", "A"),
    ("s3", "en", "B", "B"),
    ("s4", "en", "B", "A"),
    ("s1", "ar", "A", "A"),
    ("s2", "ar", "A", "B"),
    ("s3", "ar", "B", "A"),
    ("s4", "ar", "B", "A"),
    ("s1", "fr", "A", "A"),
    ("s2", "fr", "A", "Invalid"),
    ("s3", "fr", "B", "B"),
    ("s4", "fr", "B", "A"),
]


def test_accuracy_rest_avg_and_gap():
    acc = accuracy_by_language(make_preds(ACC_ROWS))
    assert list(acc.index) == ["en", "ar", "fr"]
    assert acc.tolist() == [75.0, 25.0, 50.0]
    assert rest_avg(acc) == pytest.approx(37.5)  # (25 + 50) / 2, English excluded
    assert gap_to_english(acc) == pytest.approx(37.5)  # 75 - 37.5
    with pytest.raises(ValueError):
        rest_avg(acc[["en"]])


def test_invalid_counts_wrong_even_if_flagged_correct():
    preds = make_preds([("s1", "en", "Invalid", "Invalid"), ("s2", "en", "A", "A")])
    assert preds["correct"].all()  # naive string match would score the Invalid as right
    assert accuracy_by_language(preds)["en"] == 50.0
    assert invalid_rate_by_language(preds)["en"] == 50.0


def test_error_cooccurrence_counts():
    # wrong sets -- en: {s4}; ar: {s2, s3, s4}; fr: {s2, s4}
    out = error_cooccurrence(make_preds(ACC_ROWS))
    ar, fr = out.loc["ar"], out.loc["fr"]
    assert (ar["n"], ar["both_wrong"], ar["only_lang_wrong"], ar["only_anchor_wrong"]) == (
        4,
        1,
        2,
        0,
    )
    assert ar["p_anchor_wrong_given_lang_wrong"] == pytest.approx(1 / 3)
    assert ar["p_lang_wrong_given_anchor_wrong"] == pytest.approx(1.0)
    assert (fr["both_wrong"], fr["only_lang_wrong"], fr["only_anchor_wrong"]) == (1, 1, 0)
    assert fr["p_anchor_wrong_given_lang_wrong"] == pytest.approx(0.5)


def test_error_cooccurrence_pairs_on_sample_id_and_nan_when_undefined():
    rows = [
        ("s1", "en", "A", "A"),
        ("s2", "en", "A", "A"),
        ("s1", "ja", "A", "B"),  # s2 missing in ja -> only s1 is paired
        ("s9", "ja", "A", "B"),  # not in English -> ignored
    ]
    out = error_cooccurrence(make_preds(rows)).loc["ja"]
    assert (out["n"], out["both_wrong"], out["only_lang_wrong"]) == (1, 0, 1)
    assert np.isnan(out["p_lang_wrong_given_anchor_wrong"])  # English never wrong


def test_summarize():
    out = summarize(make_preds(ACC_ROWS))
    assert out["english"] == 75.0
    assert out["rest_avg"] == pytest.approx(37.5)
    assert out["gap"] == pytest.approx(37.5)
    assert out["acc_avg"] == pytest.approx(50.0)
    # pairs agree on (en,ar) s1,s4 -> 2/4; (en,fr) s1,s3,s4 -> 3/4; (ar,fr) s1,s4 -> 2/4
    # Consistency_2 = (0.5 + 0.75 + 0.5) / 3 = 58.33 %; AC3 uses acc_avg (50 %)
    assert out["consistency"] == pytest.approx(175.0 / 3)
    assert out["ac3"] == pytest.approx(2 * 50.0 * (175.0 / 3) / (50.0 + 175.0 / 3))
    assert out["invalid_rate"]["fr"] == 25.0


def test_empty_and_duplicates_raise():
    with pytest.raises(ValueError, match="empty"):
        accuracy_by_language(make_preds([]))
    dup = make_preds([("s1", "en", "A", "A"), ("s1", "en", "A", "B")])
    with pytest.raises(ValueError, match="s1"):
        consistency(pd.concat([dup, make_preds([("s1", "fr", "A", "A")])]))
