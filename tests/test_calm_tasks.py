"""CALM on its own tasks: numeric answers read as each language writes numbers, the profile's tasks
(X-CSQA, MedQA, MGSM) read through sources.qa, MedQA translated, bad items refused by name, test-time
decoding, and a two-task run on the tiny model with injected samples."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from xlalign.calm.items import (
    CalmItemError,
    check_items,
    gold,
    group_items,
    load_task_items,
    n_options,
    translate_items,
)
from xlalign.calm.parse import (
    canonical_number,
    parse_answer,
    parse_letter,
    parse_number,
    read_number,
    split_answer,
)
from xlalign.calm.prompts import build_prompt, format_completion
from xlalign.config import CalmSection, ConfigError, LoraSection, load_profile
from xlalign.sources.common import LanguageNotAvailableError, MathItem, MCQItem
from xlalign.sources.corpus import CorpusError
from xlalign.translate import FakeTranslator, IdentityTranslator, TranslationError, Translator

FIX = Path(__file__).parent / "fixtures" / "public"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- numbers

STATIONS = (
    "Explanation: the train goes from station A to station B in 1 hour, then back from station B "
    "to station A in 1 hour.\nThe answer is 2."
)
NUMBER_TABLE = [
    # (model output, language, expected canonical number), each worked by hand
    (STATIONS, "en", "2"),
    ("Answer: 1,000", "en", "1000"),  # "," groups thousands in English
    ("Antwort: 1.000", "de", "1000"),  # "." groups thousands in German
    ("Answer: 1.000", "en", "1"),  # ... but is a decimal point in English
    ("Antwort: 1,000", "de", "1"),  # ... and "," a decimal comma in German
    ("Réponse : 1 000", "fr", "1000"),
    ("Réponse : 1\u202f000\u202f000 €", "fr", "1000000"),  # narrow no-break spaces
    ("Réponse : 3,5", "fr", "3.5"),
    ("Answer: 3,5", "en", "3.5"),  # not three digits after the comma: a decimal in any language
    ("Answer: 0,500", "en", "0.5"),  # a group never starts with 0
    ("Respuesta: 1.234,5", "es", "1234.5"),  # both marks: the last one is the decimal
    ("Answer: $1,234.50", "en", "1234.5"),
    ("Respuesta: 1.000.000", "es", "1000000"),
    ("Answer: -4", "en", "-4"),
    ("Answer: \u22124 degrees", "en", "-4"),  # U+2212 MINUS SIGN
    ("答案：１８", "zh", "18"),  # full-width digits
    ("答案：１，０００", "zh", "1000"),  # full-width comma
    ("答えは 25 個です", "ja", "25"),
    ("الإجابة: ٤٢", "ar", "42"),  # Arabic-Indic digits
    ("Explanation: 12 + 6 = 18 apples", "en", "18"),  # no label: the last number
    ("Answer: 2.\nThat is 5 trips in all.", "en", "2"),  # the label's line, not the last number
    ("Between 3-5 people, so 4", "en", "4"),  # "3-5" is a range, not -5
    ("Answer: 1.2.3", "en", None),  # no consistent reading
    ("Answer: none of them", "en", None),  # a label committing to no number
    ("I do not know.", "en", None),
    ("", "fr", None),
]


@pytest.mark.parametrize("text,lang,expected", NUMBER_TABLE)
def test_parse_number_reads_numbers_as_the_language_writes_them(text, lang, expected):
    assert parse_number(text, lang) == expected
    assert parse_answer(text, lang, 0) == expected


def test_numeric_cot_never_parses_as_a_letter():
    # Before: the label had no letter after it, so the last standalone capital, "B", was taken.
    assert parse_letter(STATIONS, "en", 4) is None
    assert parse_answer(STATIONS, "en", 0) == "2"
    assert parse_letter("Answer: (2)", "en", 4) is None
    # Letters still parse where the task has options, numbers in the reasoning notwithstanding.
    assert parse_letter("2 of the 4 options fit.\nAnswer: B", "en", 4) == "B"
    assert parse_letter("Answer: B, since 2 > 1", "en", 4) == "B"
    assert parse_letter("Answer: 2\nAnswer: C", "en", 4) == "C"  # the last statement wins
    with pytest.raises(ValueError, match="parse_number"):
        parse_letter("Answer: 2", "en", 0)


def test_read_number_and_canonical_spelling():
    assert read_number("1,000", "en") == 1000 and read_number("1,000", "fr") == 1.0
    assert read_number("12,34", "en") == 12.34 and read_number("1,2,3", "en") is None
    assert read_number("1 000,25", "fr") == 1000.25
    assert [canonical_number(x) for x in (18.0, -3.0, 3.5, -0.0, 1e6)] == [
        "18",
        "-3",
        "3.5",
        "0",
        "1000000",
    ]


def test_numeric_split_answer_and_completion_round_trip():
    text = "Explanation: 12 + 6 = 18.\nAnswer: 18"
    assert split_answer(text, "en", 0) == ("12 + 6 = 18.", "18")
    for lang in ("en", "fr", "de", "zh", "ja", "es", "th"):
        done = format_completion("12 + 6", "1000", lang)
        assert split_answer(done, lang, 0) == ("12 + 6", "1000"), lang


def test_numeric_prompt_has_no_options():
    item = MathItem("mgsm-000", "fr", "Combien de pommes ?", 18.0)
    prompt = build_prompt(item)
    assert prompt.startswith("Question : Combien de pommes ?")
    assert "Réponse : <un nombre>" in prompt and "A." not in prompt
    assert n_options(item) == 0 and gold(item) == "18"
    with pytest.raises(ValueError, match="no numeric CALM prompt for language 'pt'"):
        build_prompt(replace(item, lang="pt"))


# --------------------------------------------------------------------------- bad items


def test_items_without_the_answer_field_are_refused_by_name():
    good = MCQItem("q1", "en", "Which?", ["a", "b", "c"], "B", None, "t")
    check_items([good, MathItem("m1", "en", "How many?", 3.0)])
    with pytest.raises(CalmItemError, match=r"'q2' \(fr\) from data/x/fr\.jsonl: field 'answer'"):
        check_items(
            [good, replace(good, qid="q2", lang="fr", answer=None)], {"fr": "data/x/fr.jsonl"}
        )
    with pytest.raises(CalmItemError, match=r"'q3' \(en\).*gold letter among \['A', 'B', 'C'\]"):
        check_items([replace(good, qid="q3", answer="D")])
    with pytest.raises(CalmItemError, match="'m2'.*'answer_number' is None"):
        check_items([MathItem("m2", "en", "How many?", None)])

    class Bare:
        qid, lang, question = "b1", "en", "What?"

    with pytest.raises(CalmItemError, match="'b1'.*neither 'options'.*nor 'answer_number'"):
        check_items([Bare()])


def test_run_calm_refuses_bad_items_before_any_model_loads(tmp_path):
    from xlalign.calm.pipeline import run_calm

    profile = load_profile("smoke", overrides=["model.name=no-such-model-anywhere"])
    bad = [MCQItem("q9", "en", "Which?", ["a", "b"], None, None, "t")]
    with pytest.raises(CalmItemError, match="'q9'"):
        run_calm(profile, tmp_path, items=bad)


# --------------------------------------------------------------------------- tasks from the profile


def _profile(tasks, train_langs, eval_langs, **calm):
    overrides = {
        "calm.tasks": tasks,
        "calm.data_dir": str(FIX),
        "calm.train_langs": train_langs,
        "calm.eval_langs": eval_langs,
        **{f"calm.{k}": v for k, v in calm.items()},
    }
    return load_profile("smoke", overrides=overrides)


def test_xcsqa_task_reads_the_parallel_dev_split():
    p = _profile(["xcsqa"], ["en", "zh"], ["en", "zh", "ja"])
    got = load_task_items(p, "xcsqa", ["en", "zh", "ja"])
    assert got.translate_from == [] and got.split is None
    assert sorted({i.lang for i in got.items}) == ["en", "ja", "zh"] and len(got.items) == 9
    assert got.origin["ja"].endswith("xcsqa/jap/dev.jsonl")
    questions, dropped = group_items(got.items, ["en", "zh", "ja"])
    assert len(questions) == 3 and dropped == []


def test_mgsm_task_gives_numeric_items():
    p = _profile(["mgsm"], ["en", "fr"], ["en", "fr", "ja"])
    got = load_task_items(p, "mgsm", ["en", "fr", "ja"])
    assert {n_options(i) for i in got.items} == {0}
    assert sorted(gold(i) for i in got.items if i.lang == "ja") == ["18", "3", "700"]


def test_task_languages_are_checked_before_reading(tmp_path):
    p = _profile(["xcsqa"], ["en", "th"], ["en"], data_dir=str(tmp_path / "nothing"))
    with pytest.raises(LanguageNotAvailableError, match="xcsqa has no data for language"):
        load_task_items(p, "xcsqa", ["en", "th"])
    from xlalign.calm.pipeline import run_calm

    for tasks in (["xcsqa"], ["mgsm", "xcsqa"]):  # one task, and a later one of several
        nowhere = replace(p, model=replace(p.model, name="no-such-model-anywhere"))
        nowhere = replace(nowhere, calm=replace(p.calm, tasks=tasks, train_langs=["en", "th"]))
        with pytest.raises(LanguageNotAvailableError, match="th"):  # before any model loads
            run_calm(nowhere, tmp_path / "run")
    p = _profile(["xcsqa"], ["en", "fr"], ["en"])
    with pytest.raises(CorpusError, match=r"xcsqa/fr/dev\.jsonl: missing"):
        load_task_items(p, "xcsqa", ["en", "fr"])
    p = _profile(["medqa"], ["fr", "es"], ["fr"])
    with pytest.raises(CalmItemError, match="medqa.*calm.train_langs=\\['fr', 'es'\\]"):
        load_task_items(p, "medqa", ["fr", "es"])


def test_a_broken_answer_field_names_file_and_line(tmp_path):
    root = tmp_path / "public"
    shutil.copytree(FIX / "mgsm", root / "mgsm")
    path = root / "mgsm" / "mgsm_fr.tsv"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1].split("\t")[0] + "\tdrei"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    p = _profile(["mgsm"], ["en", "fr"], ["en"], data_dir=str(root))
    with pytest.raises(CorpusError, match=r"mgsm_fr\.tsv:2: answer 'drei' is not a number"):
        load_task_items(p, "mgsm", ["en", "fr"])


def test_medqa_is_translated_not_dropped():
    p = _profile(["medqa"], ["en", "zh", "fr"], ["en", "zh", "fr"])
    got = load_task_items(p, "medqa", ["en", "zh", "fr"])
    assert got.translate_from == ["en", "zh"] and len(got.items) == 4
    langs = ["en", "zh", "fr"]
    # Without translation every question lacks two languages: all four would be dropped.
    assert group_items(got.items, langs) == ({}, sorted(i.qid for i in got.items))

    translated, failures = translate_items(got.items, langs, FakeTranslator(), progress=False)
    assert failures == [] and len(translated) == 4 * 2
    questions, dropped = group_items(got.items + translated, langs)
    assert len(questions) == 4 and dropped == []
    us = questions["medqa-us-00000"]
    assert us["en"].source == "medqa" and us["fr"].source == "medqa>mt:fake"
    assert us["fr"].question.startswith("[fr:") and us["fr"].question.endswith(us["en"].question)
    assert us["fr"].answer == us["en"].answer == "B" and len(us["fr"].options) == 5
    assert questions["medqa-mainland-00000"]["en"].question.startswith("[en:")

    same, _ = translate_items(got.items, langs, IdentityTranslator(), progress=False)
    assert {(i.qid, i.lang): i.question for i in same}[("medqa-us-00000", "zh")] == us[
        "en"
    ].question


def test_a_failed_question_translation_drops_only_that_question():
    class FailsOnGland(Translator):
        name = "flaky"

        def translate(self, texts, src, tgt):
            if any("gland" in t for t in texts):
                raise TranslationError("MT service refused")
            return [f"<{tgt}> {t}" for t in texts]

    p = _profile(["medqa"], ["en", "fr"], ["en", "fr"])
    got = load_task_items(p, "medqa", ["en", "fr"])
    translated, failures = translate_items(got.items, ["en", "fr"], FailsOnGland(), progress=False)
    assert [(f["qid"], f["tgt"]) for f in failures] == [("medqa-us-00000", "fr")]
    questions, dropped = group_items(got.items + translated, ["en", "fr"])
    assert list(questions) == ["medqa-us-00001"] and dropped == ["medqa-us-00000"]


# --------------------------------------------------------------------------- profiles


def test_paper_profile_runs_the_papers_tasks_and_decoding():
    c = load_profile("paper").calm
    assert c.tasks == ["xcsqa", "medqa"]
    assert c.train_langs == ["en", "fr", "zh"]  # §3.4: English, then French, then Chinese
    assert c.eval_langs == ["en", "fr", "zh", "it", "de", "ja"]  # X-CSQA, Table 10
    assert c.medqa_eval_langs == ["en", "zh", "fr"]  # Table 9
    assert (c.eval_decoding, c.temperature, c.top_p, c.max_new_tokens) == ("sample", 1.0, 0.9, 512)
    assert c.incremental and c.num_samples == 3
    for name in ("cpu", "smoke"):
        assert load_profile(name).calm.tasks == ["corpus_mcq"]


def test_calm_task_keys_are_checked():
    with pytest.raises(ConfigError, match="calm.tasks\\[0\\]='belebele' is not allowed"):
        CalmSection(tasks=["belebele"])
    with pytest.raises(ConfigError, match="each task once"):
        CalmSection(tasks=["xcsqa", "xcsqa"])
    with pytest.raises(ConfigError, match="calm.eval_decoding='beam'"):
        CalmSection(eval_decoding="beam")
    assert CalmSection(eval_langs=["en", "it", "de"]).eval_langs == ["en", "it", "de"]


# --------------------------------------------------------------------------- with the tiny model


def test_sampled_test_decoding_is_seeded(tiny_model_and_tokenizer):
    from xlalign.calm.variants import predict

    model, tok = tiny_model_and_tokenizer
    items = [
        MCQItem(f"q{i}", "en", f"Q{i}?", ["a", "b", "c", "d"], "A", None, "t") for i in range(3)
    ]
    questions = {i.qid: {"en": i} for i in items}
    prompts = {(i.qid, "en"): build_prompt(i) + "\n" for i in items}

    def run(decoding, seed=0):
        return predict(model, tok, questions, ["en"], prompts, 8, 4, decoding=decoding, seed=seed)[
            "raw"
        ].tolist()

    sampled = run("sample")
    assert run("sample") == sampled  # seeded: a rerun answers the same
    assert run("sample", seed=1) != sampled or run("greedy") != sampled
    with pytest.raises(ValueError, match="decoding='beam'"):
        run("beam")


def test_two_tasks_run_side_by_side(tiny_profile, tmp_path, tiny_model_and_tokenizer):
    """medqa (US bank translated into French) and mgsm (numeric answers) from calm.tasks: each
    under calm/<task>/, read back as one table with task-prefixed columns."""
    from xlalign.calm.pipeline import CalmTaskRuns, run_calm
    from xlalign.calm.variants import results_table

    model, tok = tiny_model_and_tokenizer
    langs = ["en", "fr"]
    calm = CalmSection(
        tasks=["medqa", "mgsm"], data_dir=str(FIX), train_langs=langs, eval_langs=langs,
        num_samples=2, max_new_tokens=6, translator="fake", incremental=False,
        train=replace(CalmSection().train, max_steps=1, learning_rate=1e-3, max_length=2048),
        lora=LoraSection(r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"]),
    )  # fmt: skip
    profile = replace(tiny_profile, calm=calm)
    seen = []

    def sampler(requests, m):
        # Every language answers gold once; French's second sample is off by one (MGSM: written
        # with a French thousands space) or picks the next letter (MedQA).
        seen.extend(requests)
        out = []
        for qid, lang, _prompt in requests:
            texts = []
            for j in range(m):
                if qid.startswith("mgsm"):
                    value = answers[qid] + (1000 if (lang, j) == ("fr", 1) else 0)
                    shown = f"{value:,}".replace(",", " ") if lang == "fr" else f"{value:,}"
                    texts.append(format_completion(f"pourquoi {j}", shown, lang))
                else:
                    g = answers[qid]
                    letter = "ABCDE"[("ABCDE".index(g) + 1) % 5] if (lang, j) == ("fr", 1) else g
                    texts.append(format_completion(f"why {j}", letter, lang))
            out.append(texts)
        return out

    answers = {
        "mgsm-000": 18,
        "mgsm-001": 3,
        "mgsm-002": 700,
        "medqa-us-00000": "B",
        "medqa-us-00001": "D",
    }
    res = run_calm(profile, tmp_path, model=model, tokenizer=tok, sampler=sampler, baselines=())
    assert isinstance(res, CalmTaskRuns) and list(res) == ["medqa", "mgsm"]
    out = tmp_path / "calm"
    assert json.loads((out / "tasks.json").read_text()) == {"tasks": ["medqa", "mgsm"]}

    # MedQA: the US bank's questions were translated into French, and sampled in French.
    translated = [json.loads(x) for x in (out / "medqa" / "translated_items.jsonl").open()]
    assert {(t["qid"], t["lang"]) for t in translated} == {
        ("medqa-us-00000", "fr"),
        ("medqa-us-00001", "fr"),
    }
    fr_prompts = [p for q, lang, p in seen if q.startswith("medqa") and lang == "fr"]
    assert fr_prompts and all("[fr:" in p for p in fr_prompts)
    assert res.counts["medqa"]["translated_questions_from"] == ["en"]
    assert res.counts["medqa"]["dropped_incomplete_questions"] == 0

    # MGSM: numbers vote; the French "1 018" is a thousand too many, so it is the rejected side.
    samples = [json.loads(x) for x in (out / "mgsm" / "samples.jsonl").open()]
    assert {s["n_options"] for s in samples} == {0}
    by_key = {(s["qid"], s["lang"], s["idx"]): s for s in samples}
    for qid in {s["qid"] for s in samples}:
        assert by_key[(qid, "en", 0)]["letter"] == str(answers[qid])
        assert by_key[(qid, "fr", 1)]["letter"] == str(answers[qid] + 1000)
    pairs = [json.loads(x) for x in (out / "mgsm" / "pairs.jsonl").open()]
    assert pairs and all(p["lang"] == "fr" and p["rejected_idx"] == 1 for p in pairs)
    assert all(p["chosen_letter"] == p["gold"] for p in pairs)
    assert all(p["chosen"].endswith(f"Réponse : {p['gold']}") for p in pairs)
    assert res.vote_accuracy["mgsm"]["multi_vote_accuracy"] == 100.0

    # Both tasks evaluated in en and fr; the table's columns carry the task, as in Table 1.
    assert set(res.evaluation["mgsm"]) == {"base", "calm"}
    preds = pd.read_json(out / "mgsm" / "predictions" / "base.jsonl", lines=True, dtype=False)
    assert set(preds["label"]) <= {"18", "3", "700"}
    table = results_table(out, "tiny", langs, seed=0, n_resamples=20)
    columns = set(table["column"])
    assert {"medqa_english", "medqa_us_french", "mgsm_english", "mgsm_ac3"} <= columns
    assert not any(c.startswith("medqa_cn_") for c in columns)  # the Mainland bank was not loaded
    mgsm_base = table[(table["block"] == "base") & (table["column"] == "mgsm_english")]
    assert mgsm_base["value"].item() == pytest.approx(
        res.evaluation["mgsm"]["base"]["accuracy"]["en"]
    )


def test_medqa_table_per_bank_and_by_native_language(tmp_path):
    """Table 9's per-bank columns and Table 1's native ones, on hand-made predictions."""
    from xlalign.calm.variants import results_table

    calm_dir = tmp_path / "calm"
    (calm_dir / "medqa" / "predictions").mkdir(parents=True)
    (calm_dir / "tasks.json").write_text(json.dumps({"tasks": ["medqa"]}))
    (calm_dir / "medqa" / "metrics.json").write_text(
        json.dumps({"eval_langs": ["en", "zh"], "evaluation": {"base": {}, "calm": {}}})
    )
    # Right answers per (question, language); gold is A everywhere, a wrong answer is B.
    right = {
        "base": {("us-1", "en"), ("cn-3", "zh"), ("cn-4", "zh"), ("cn-3", "en")},
        "calm": {("us-1", "en"), ("us-2", "en"), ("cn-3", "zh"), ("us-1", "zh")},
    }
    bank = {"us": "medqa-us-0000", "cn": "medqa-mainland-0000"}
    for name, ok in right.items():
        rows = []
        for q in ("us-1", "us-2", "cn-3", "cn-4"):
            qid = bank[q[:2]] + q[-1]
            for lang in ("en", "zh"):
                pred = "A" if (q, lang) in ok else "B"
                rows.append(
                    {"item_id": f"{qid}.{lang}", "sample_id": qid, "lang": lang, "label": "A",
                     "pred": pred, "correct": pred == "A", "raw": f"Answer: {pred}"}
                )  # fmt: skip
        path = calm_dir / "medqa" / "predictions" / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = results_table(calm_dir, "m", ["en"], seed=0, n_resamples=20)
    cell = table.set_index(["block", "column"])
    expected = {
        # Table 9: each bank in each language
        "medqa_us_english": (50.0, 100.0),
        "medqa_us_chinese": (0.0, 50.0),
        "medqa_cn_chinese": (100.0, 50.0),
        "medqa_cn_english": (50.0, 0.0),
        # Table 1: the US bank in English, the Mainland bank in Chinese, and their mean
        "medqa_english": (50.0, 100.0),
        "medqa_chinese": (100.0, 50.0),
        "medqa_acc_avg": (75.0, 75.0),
        # ours: both banks pooled
        "medqa_all_english": (50.0, 50.0),
    }
    for column, (base, calm) in expected.items():
        assert cell.loc[("base", column), "value"] == pytest.approx(base), column
        assert cell.loc[("calm", column), "value"] == pytest.approx(calm), column
    assert cell.loc[("calm", "medqa_acc_avg"), "delta"] == pytest.approx(0.0)
    assert cell.loc[("calm", "medqa_english"), "delta"] == pytest.approx(50.0)
    assert pd.isna(cell.loc[("base", "medqa_acc_avg"), "delta"])
    assert not table.duplicated(["block", "column"]).any()
