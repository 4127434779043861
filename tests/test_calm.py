"""Tests for xlalign.calm: multilingual answer parsing, hand-worked votes and ties, pair construction
with the fake/identity translators, counted failures, and the whole chain on the tiny model."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch

from xlalign.calm.items import split_questions
from xlalign.calm.pairs import build_pairs, ground_truth_pairs, gt_sft_rows, pair_counts, sft_rows
from xlalign.calm.parse import parse_letter, split_answer
from xlalign.calm.pipeline import load_calm_items, run_calm
from xlalign.calm.prompts import TEMPLATES, build_prompt, format_completion
from xlalign.calm.variants import PAPER_BLOCKS, results_table, trainer_rows
from xlalign.calm.vote import Sample, majority_vote, sample_answers, vote_accuracy, vote_all
from xlalign.config import CalmSection, LoraSection
from xlalign.sources.common import MCQItem
from xlalign.translate import FakeTranslator, IdentityTranslator, TranslationError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny model's ops are microseconds long: on a shared 2-core machine, torch's second
    OpenMP thread spin-waits for a busy core and makes them ~15x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- parsing

PARSE_TABLE = [
    # (model output, prompt language, number of options, expected letter)
    ("Explanation: the passage says 82 percent.\nAnswer: C", "en", 4, "C"),
    ("The answer is (B).", "en", 4, "B"),
    ("Final answer: **D**", "en", 4, "D"),
    ("Explicación: el texto lo dice.\nRespuesta: A", "es", 4, "A"),
    ("la respuesta correcta es B.", "es", 4, "B"),
    ("Explication : le texte le dit.\nRéponse : D", "fr", 4, "D"),
    ("Réponse: C", "fr", 4, "C"),
    ("Explicação: o texto diz.\nResposta: (B)", "pt", 4, "B"),
    ("a resposta é C", "pt", 4, "C"),
    ("解释：文章提到了。\n答案：Ｂ", "zh", 4, "B"),  # full-width letter
    ("答案是C", "zh", 4, "C"),
    ("説明：本文に書いてある。\n回答：A", "ja", 4, "A"),
    ("答えは（D）です", "ja", 4, "D"),  # full-width brackets
    ("الشرح: النص يقول ذلك.\nالإجابة: B", "ar", 4, "B"),
    ("คำอธิบาย: ข้อความระบุไว้\nคำตอบ: C", "th", 4, "C"),
    ("Giải thích: đoạn văn nói vậy.\nĐáp án: A", "vi", 4, "A"),
    ("Magyarázat: a szöveg szerint.\nVálasz: D", "hu", 4, "D"),
    ("Explicație: textul spune.\nRăspuns: B", "ro", 4, "B"),
    ("Erklärung: steht im Text.\nAntwort: C", "de", 5, "C"),
    ("Spiegazione: lo dice il testo.\nRisposta: E", "it", 5, "E"),
    ("Réponse : B\nAnswer: C", "fr", 4, "C"),  # the last statement is the final answer
    ("Respuesta: B", "fr", 4, "B"),  # another language's label still parses
    ("Answer: I think it is D", "en", 4, "D"),  # "I" after the label is not an option
    ("B. cow", "en", 5, "B"),
    ("A farmer would pick option C here", "en", 4, "C"),  # "A farmer" is an article
    ("Answer: E", "en", 4, None),  # impossible letter with four options
    ("Answer: E", "en", 5, "E"),
    ("I do not know.", "en", 4, None),
    ("", "zh", 4, None),
    ("\n\n\n", "ja", 4, None),
]


@pytest.mark.parametrize("text,lang,n,expected", PARSE_TABLE)
def test_parse_letter_across_languages(text, lang, n, expected):
    assert parse_letter(text, lang, n) == expected


@pytest.mark.parametrize("lang", sorted(TEMPLATES))
def test_canonical_completion_round_trips_in_every_language(lang):
    text = format_completion("  Because of X (see B).  ", "C", lang)
    assert text.endswith("C") and TEMPLATES[lang].answer in text
    assert parse_letter(text, lang, 4) == "C"
    assert split_answer(text, lang, 4) == ("Because of X (see B).", "C")


@pytest.mark.parametrize("lang", sorted(TEMPLATES))
def test_prompt_is_in_the_language_and_keeps_latin_letters(lang):
    item = MCQItem("q", lang, "Q?", ["one", "two", "three", "four", "five"], "A", "Ctx.", "t")
    prompt = build_prompt(item)
    t = TEMPLATES[lang]
    for part in (
        t.passage + "Ctx.",
        t.question + "Q?",
        "A. one",
        "E. five",
        t.instruction,
        t.answer + "<A/B/C/D/E>",
    ):
        assert part in prompt
    assert t.passage not in build_prompt(replace(item, context=None))


# --------------------------------------------------------------------------- voting


def S(qid, lang, idx, letter, gold="A", text=None):
    """A sample whose text states ``letter`` (or says nothing parsable when letter is None)."""
    if text is None:
        text = (
            format_completion(f"reason {qid} {lang} {idx}", letter, lang) if letter else "no idea"
        )
    return Sample(qid, lang, idx, text, letter, gold, 4)


def test_majority_vote_pools_all_languages():
    # en: B B   fr: A B   zh: C None  ->  B has 3 of 5 parsable votes.
    ss = [S("q", "en", 0, "B"), S("q", "en", 1, "B"), S("q", "fr", 0, "A"), S("q", "fr", 1, "B"),
          S("q", "zh", 0, "C"), S("q", "zh", 1, None)]  # fmt: skip
    v = majority_vote(ss, ["en", "fr", "zh"])
    assert v.letter == "B" and not v.tied and v.candidates == ["B"]
    assert v.counts == {"A": 1, "B": 3, "C": 1}
    assert v.shares == pytest.approx({"A": 0.2, "B": 0.6, "C": 0.2})
    assert (v.n_samples, v.n_parsable) == (6, 5)
    assert not v.correct  # gold is A


def test_tie_goes_to_the_earliest_first_occurrence_in_language_order():
    # en: C A   fr: A C  -> A and C tie 2-2. In order en, fr the first vote cast is en's C.
    ss = [S("q", "en", 0, "C"), S("q", "en", 1, "A"), S("q", "fr", 0, "A"), S("q", "fr", 1, "C")]
    v = majority_vote(ss, ["en", "fr"])
    assert v.tied and v.candidates == ["C", "A"] and v.letter == "C"
    # The same samples with French first: fr's first sample says A.
    assert majority_vote(ss, ["fr", "en"]).letter == "A"
    # Input order does not matter once a language order is given.
    assert majority_vote(ss[::-1], ["en", "fr"]).letter == "C"


def test_question_without_any_parsable_answer_has_no_vote():
    v = majority_vote([S("q", "en", 0, None), S("q", "fr", 0, None)], ["en", "fr"])
    assert v.letter is None and v.counts == {} and not v.tied and not v.correct


def test_vote_accuracy_is_figure_3_data():
    ss = [
        # q1 gold A: en A A, fr B A  -> multilingual vote A (3-1); fr alone ties 1-1, B first.
        S("q1", "en", 0, "A"), S("q1", "en", 1, "A"), S("q1", "fr", 0, "B"), S("q1", "fr", 1, "A"),
        # q2 gold C: en B B, fr C C  -> 2-2 tie, en first: B (wrong).
        S("q2", "en", 0, "B", "C"), S("q2", "en", 1, "B", "C"), S("q2", "fr", 0, "C", "C"),
        S("q2", "fr", 1, "C", "C"),
    ]  # fmt: skip
    votes = vote_all(ss, ["en", "fr"])
    acc = vote_accuracy(ss, votes, ["en", "fr"])
    assert acc["sample_accuracy"] == {"en": 50.0, "fr": 75.0}
    assert acc["mono_vote_accuracy"] == {"en": 50.0, "fr": 50.0}
    assert acc["multi_vote_accuracy"] == 50.0
    assert acc["questions"] == 2


# --------------------------------------------------------------------------- pairs

LANGS = ["en", "fr", "zh"]


def _prompts(qids, langs=LANGS):
    return {(q, lang): f"<prompt {q} {lang}>" for q in qids for lang in langs}


def _pair_samples():
    return [
        # q1 gold B: en B B, fr A B, zh C C  -> vote B; negatives fr0, zh0, zh1.
        S("q1", "en", 0, "B", "B"), S("q1", "en", 1, "B", "B"), S("q1", "fr", 0, "A", "B"),
        S("q1", "fr", 1, "B", "B"), S("q1", "zh", 0, "C", "B"), S("q1", "zh", 1, "C", "B"),
        # q2: nothing parsable anywhere -> no vote, no pairs.
        S("q2", "en", 0, None), S("q2", "en", 1, None), S("q2", "fr", 0, None),
        S("q2", "fr", 1, None), S("q2", "zh", 0, None), S("q2", "zh", 1, None),
    ]  # fmt: skip


def test_pairs_with_fake_translator_are_in_the_rejected_language():
    samples = _pair_samples()
    votes = vote_all(samples, LANGS)
    pairs = build_pairs(samples, votes, _prompts(["q1", "q2"]), FakeTranslator(), LANGS)
    rows = pairs.rows
    # Positives in order en0, en1, fr1; negatives fr0, zh0, zh1 take them round-robin.
    assert [(r["lang"], r["rejected_idx"], r["chosen_lang"], r["chosen_idx"]) for r in rows] == [
        ("fr", 0, "en", 0),
        ("zh", 0, "en", 1),
        ("zh", 1, "fr", 1),
    ]
    for r in rows:
        assert r["prompt"] == f"<prompt q1 {r['lang']}>"
        assert r["chosen_letter"] == "B" and parse_letter(r["chosen"], r["lang"]) == "B"
        assert r["chosen"].startswith(TEMPLATES[r["lang"]].explanation + f"[{r['lang']}:")
        assert f"reason q1 {r['chosen_lang']} {r['chosen_idx']}" in r["chosen"]
        assert r["rejected"] == format_completion(
            f"reason q1 {r['lang']} {r['rejected_idx']}", r["rejected_letter"], r["lang"]
        )
        assert r["translated"]
    counts = pair_counts(samples, votes, pairs, LANGS)
    assert counts["pairs"] == {"en": 0, "fr": 1, "zh": 2}
    assert counts["zero_pair_langs"] == ["en"]  # a language with no pairs is reported as 0
    assert counts["positives"] == {"en": 2, "fr": 1, "zh": 0}
    assert counts["chosen_source"] == {"en": 2, "fr": 1, "zh": 0}
    assert counts["pairs_pct"]["zh"] == pytest.approx(200 / 3)
    assert counts["questions_no_vote"] == 1 and counts["questions_voted"] == 1
    assert counts["unparsable"] == {"en": 2, "fr": 2, "zh": 2}
    assert counts["translation_failures"] == 0


def test_pairs_with_identity_translator_and_all_pairing():
    samples = _pair_samples()
    votes = vote_all(samples, LANGS)
    pairs = build_pairs(
        samples, votes, _prompts(["q1", "q2"]), IdentityTranslator(), LANGS, pairing="all"
    )
    assert len(pairs.rows) == 3 * 3  # 3 positives x 3 negatives
    first = pairs.rows[0]
    assert first["chosen"] == format_completion(
        "reason q1 en 0", "B", "fr"
    )  # text kept, labels in fr


def test_same_language_positive_is_not_translated():
    class Refusing(FakeTranslator):
        def translate(self, texts, src, tgt):
            raise AssertionError("no translation needed")

    samples = [S("q", "en", 0, "A"), S("q", "en", 1, "A"), S("q", "en", 2, "B")]
    pairs = build_pairs(
        samples, vote_all(samples, ["en"]), _prompts(["q"], ["en"]), Refusing(), ["en"]
    )
    assert len(pairs.rows) == 1 and not pairs.rows[0]["translated"]
    assert pairs.rows[0]["chosen"] == format_completion("reason q en 0", "A", "en")


def test_translator_failure_on_one_item_is_counted_and_skipped():
    class Flaky(FakeTranslator):
        def translate(self, texts, src, tgt):
            if any("BAD" in t for t in texts):
                raise TranslationError("cannot translate this one")
            return super().translate(texts, src, tgt)

    samples = _pair_samples()
    samples[1] = S("q1", "en", 1, "B", "B", text="Explanation: BAD text\nAnswer: B")
    votes = vote_all(samples, LANGS)
    pairs = build_pairs(samples, votes, _prompts(["q1", "q2"]), Flaky(), LANGS)
    # en1 was the chosen side of zh0's pair: that pair is skipped, the other two remain.
    assert [(r["lang"], r["rejected_idx"]) for r in pairs.rows] == [("fr", 0), ("zh", 1)]
    assert pairs.skipped_pairs == 1
    assert pairs.translation_failures == [
        {
            "qid": "q1",
            "src": "en",
            "idx": 1,
            "tgt": "zh",
            "error": "TranslationError: cannot translate this one",
        }
    ]
    counts = pair_counts(samples, votes, pairs, LANGS)
    assert counts["translation_failures"] == 1 and counts["translation_failures_by_lang"]["zh"] == 1
    assert counts["skipped_pairs_translation"] == 1


def test_unparsable_and_empty_negatives():
    samples = [
        S("q", "en", 0, "A"),
        S("q", "en", 1, None, text="gibberish"),
        S("q", "en", 2, None, text="  "),
    ]
    votes = vote_all(samples, ["en"])
    pairs = build_pairs(samples, votes, _prompts(["q"], ["en"]), FakeTranslator(), ["en"])
    assert [r["rejected"] for r in pairs.rows] == ["gibberish"]
    assert pairs.skipped_empty == 1
    assert (
        build_pairs(
            samples,
            votes,
            _prompts(["q"], ["en"]),
            FakeTranslator(),
            ["en"],
            include_unparsable=False,
        ).rows
        == []
    )


def test_baseline_rows_keep_what_the_paper_keeps():
    # q1's vote B is gold; q3's vote D is wrong (gold A).
    samples = _pair_samples()[:6] + [
        S("q3", "en", 0, "D"),
        S("q3", "fr", 0, "D"),
        S("q3", "zh", 0, "A"),
    ]
    votes = vote_all(samples, LANGS)
    pairs = build_pairs(samples, votes, _prompts(["q1", "q3"]), FakeTranslator(), LANGS)
    assert {r["qid"] for r in pairs.rows} == {"q1", "q3"}
    gt = ground_truth_pairs(pairs.rows)
    assert gt and all(r["qid"] == "q1" and r["chosen_letter"] == r["gold"] for r in gt)
    sft = sft_rows(samples, votes, _prompts(["q1", "q3"]))
    assert [(r["qid"], r["lang"], r["idx"]) for r in sft] == [
        ("q1", "en", 0), ("q1", "en", 1), ("q1", "fr", 1), ("q3", "en", 0), ("q3", "fr", 0),
    ]  # fmt: skip
    assert all(parse_letter(r["completion"], r["lang"]) == r["letter"] for r in sft)
    assert [r["qid"] for r in gt_sft_rows(sft)] == ["q1", "q1", "q1"]


def test_trainer_rows_fit_the_clustered_sampler():
    from xlalign.training.sampling import GroupedBatchSampler

    rows = [{"prompt": "p", "chosen": "c", "rejected": "r", "qid": q, "lang": lang}
            for q in ("q1", "q2", "q3") for lang in ("en", "fr", "fr", "zh")]  # fmt: skip
    cols = ("prompt", "chosen", "rejected")
    aligned = trainer_rows(rows, "aligned", cols)
    assert [r["lang"] for r in aligned[:4]] == ["en#0", "fr#0", "fr#1", "zh#0"]
    sampler = GroupedBatchSampler(
        [r["sample_id"] for r in aligned], [r["lang"] for r in aligned], 4, "clustered"
    )
    for batch in sampler.plan(0):  # 4 pairs per question, batch of 4: one question per batch
        assert len({aligned[i]["sample_id"] for i in batch}) == 1
    shuffled = trainer_rows(rows, "shuffled", cols)
    assert len({r["sample_id"] for r in shuffled}) == len(rows)
    assert {r["lang"] for r in shuffled} == {"en", "fr", "zh"}
    plan = GroupedBatchSampler(
        [r["sample_id"] for r in shuffled], [r["lang"] for r in shuffled], 4, "clustered"
    ).plan(0)
    assert sorted(i for b in plan for i in b) == list(range(len(rows)))


def test_split_questions_is_seeded_and_disjoint():
    qids = [f"q{i}" for i in range(10)]
    train, test = split_questions(qids, 0.3, seed=1)
    assert len(test) == 3 and not set(train) & set(test) and sorted(train + test) == qids
    assert split_questions(qids, 0.3, seed=1) == (train, test)
    assert split_questions(["only"], 0.3, 0) == (["only"], ["only"])


def test_shipped_corpus_items_follow_the_probe_split(tiny_profile):
    items, split = load_calm_items(tiny_profile, ["en", "fr"])
    per_domain = tiny_profile.data.topics_per_domain
    assert len(items) == 2 * len(split) == 2 * 2 * per_domain  # en + fr; finance + science
    assert set(split.values()) == {"train", "test"}
    en = next(i for i in items if i.lang == "en")
    assert en.context and len(en.options) == 4 and en.answer in "ABCD"


# --------------------------------------------------------------------------- with the tiny model


def _items(n, langs):
    golds = "BACD"
    return [
        MCQItem(
            f"q{i}",
            lang,
            f"Question {i} ({lang})?",
            ["red", "green", "blue", "grey"],
            golds[i % 4],
            None,
            "test",
        )
        for i in range(n)
        for lang in langs
    ]


def test_real_sampler_shapes_and_counts(tiny_model_and_tokenizer):
    from xlalign.calm.items import group_items
    from xlalign.calm.vote import render_prompts
    from xlalign.generation import SamplingStats

    model, tok = tiny_model_and_tokenizer
    questions, dropped = group_items(_items(2, ["en", "fr"]), ["en", "fr"])
    prompts = render_prompts(questions, ["en", "fr"], tok, "plain")
    stats = SamplingStats()
    samples = sample_answers(
        questions,
        ["en", "fr"],
        prompts,
        2,
        model=model,
        tokenizer=tok,
        max_new_tokens=6,
        batch_size=4,
        stats=stats,
    )
    assert [s.key for s in samples] == [
        (q, lang, j) for q in ("q0", "q1") for lang in ("en", "fr") for j in (0, 1)
    ]
    assert all(s.letter is None or s.letter in "ABCD" for s in samples)
    assert stats.prefill_rows == 4 and stats.samples == 8 and dropped == []


def test_full_chain_on_the_tiny_model(
    tiny_profile, tmp_path, tiny_model_and_tokenizer, monkeypatch
):
    """sample (injected texts) -> vote -> pairs -> CALM DPO, SFT, GT-DPO, GT-SFT, Table 10 -> eval."""
    import xlalign.calm.pipeline as calm_pipeline

    model, tok = tiny_model_and_tokenizer
    eval_batches = []

    def predict(*args, **kwargs):  # the evaluation's own batch size, then the real prediction
        eval_batches.append(args[6])
        return real_predict(*args, **kwargs)

    real_predict = calm_pipeline.predict
    monkeypatch.setattr(calm_pipeline, "predict", predict)
    langs = ["en", "fr"]
    profile = replace(
        tiny_profile,
        calm=CalmSection(
            train_langs=langs, eval_langs=langs, num_samples=2, max_new_tokens=6, translator="fake",
            train=replace(
                CalmSection().train, max_steps=1, learning_rate=1e-3, max_length=2048,
                warmup_ratio=0.0,
            ),
            sft_learning_rate=1e-3, incremental=True, eval_batch_size=5,
            lora=LoraSection(r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"]),
        ),
    )  # fmt: skip
    items = _items(4, langs)
    train_ids, test_ids = split_questions(
        [f"q{i}" for i in range(4)], profile.data.test_fraction, profile.seed
    )
    gold = {i.qid: i.answer for i in items}
    wrong = {g: "ABCD"[("ABCD".index(g) + 1) % 4] for g in "ABCD"}
    other = {g: "ABCD"[("ABCD".index(g) + 2) % 4] for g in "ABCD"}
    # Roles by position among the training questions:
    #   0: en [gold, other], fr [gold, gold] -> vote gold; en1 is rejected (an en pair, untranslated)
    #   1: nothing parsable anywhere         -> no vote
    #   2: en [wrong, wrong], fr [wrong, gold] -> vote wrong; fr1 rejected, chosen en0 translated
    role = {q: i for i, q in enumerate(train_ids)}

    def answer(qid, lang, j):
        g, r = gold[qid], role[qid]
        if r == 1:
            return None
        if r == 0:
            return [[g, other[g]], [g, g]][langs.index(lang)][j]
        return [[wrong[g], wrong[g]], [wrong[g], g]][langs.index(lang)][j]

    def sampler(requests, m):
        return [
            [
                format_completion(f"why {q} {lang} {j}", a, lang)
                if (a := answer(q, lang, j))
                else "no idea"
                for j in range(m)
            ]
            for q, lang, _ in requests
        ]

    by_lang = {lang: [i for i in items if i.lang == lang] for lang in langs}  # load_xcsqa's shape
    res = run_calm(profile, tmp_path, model=model, tokenizer=tok, items=by_lang, sampler=sampler)
    assert eval_batches and set(eval_batches) == {5}  # calm.eval_batch_size, not eval.batch_size

    out = tmp_path / "calm"
    for name in (
        "samples.jsonl",
        "votes.jsonl",
        "pairs.jsonl",
        "sft.jsonl",
        "counts.json",
        "metrics.json",
    ):
        assert (out / name).exists(), name
    assert len((out / "samples.jsonl").read_text().splitlines()) == 3 * 2 * 2
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    assert [(p["lang"], p["translated"], p["chosen_letter"] == p["gold"]) for p in pairs] == [
        ("en", False, True),
        ("fr", True, False),
    ]
    assert pairs[1]["chosen"].startswith("Explication : [fr:")
    counts = json.loads((out / "counts.json").read_text())
    assert counts["questions_no_vote"] == 1 and counts["pairs"] == {"en": 1, "fr": 1}
    assert counts["incremental"]["calm_en"]["pairs"] == {"en": 1}

    training = res.training
    assert {k: v["rows"] for k, v in training.items()} == {
        "calm": 2,
        "sft": 6,
        "gt_dpo": 1,
        "gt_sft": 3,
        "calm_en": 1,
        "calm_en+fr": 2,
    }
    assert all(
        v["steps"] == 1 and (out / "train" / k / "adapter" / "adapter_config.json").exists()
        for k, v in training.items()
    )
    assert set(res.evaluation) == {
        "base",
        "calm",
        "sft",
        "gt_dpo",
        "gt_sft",
        "calm_en",
        "calm_en+fr",
    }
    for name, metrics in res.evaluation.items():
        assert set(metrics["accuracy"]) == set(langs)
        assert {"acc_avg", "consistency", "ac3"} <= set(metrics)
        preds = (out / "predictions" / f"{name}.jsonl").read_text().splitlines()
        assert len(preds) == len(test_ids) * len(langs)
    assert set(res.incremental) == {"calm_en", "calm_en+fr"}
    # Table 10 is sequential: the en+fr step continues the en step's adapter. It trains on the same
    # pairs as the joint run (every language), which starts from a fresh adapter, so the two differ
    # only if the en+fr step started elsewhere (fresh adapters are seeded alike).
    assert res.incremental["calm_en+fr"]["continues"] == "calm_en"
    assert training["calm_en+fr"]["init_adapter"] == training["calm_en"]["adapter_dir"]
    assert training["calm"]["init_adapter"] is None
    from safetensors.torch import load_file

    def weights(name):
        return load_file(out / "train" / name / "adapter" / "adapter_model.safetensors")

    step1, step2, joint = weights("calm_en"), weights("calm_en+fr"), weights("calm")
    assert step1.keys() == step2.keys()
    assert not all(torch.equal(step1[k], step2[k]) for k in step1)  # it trained
    assert not all(torch.equal(step2[k], joint[k]) for k in step1)  # ... from step 1's adapter
    assert res.vote_accuracy["questions"] == 3
    assert res.questions_train == 3 and res.questions_test == 1
    assert res.wall_times_s["total"] > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"]["pairs_total"] == 2

    # The tidy Tables 1/3 rebuilt from the per-item files agree with the chain's own scores.
    table = results_table(out, "tiny", langs, seed=0, n_resamples=50)
    assert list(pd.unique(table["block"])) == [
        "base", "sft", "calm", "sft_gt", "dpo_gt", "calm_en", "calm_en+fr",
    ]  # fmt: skip
    for name, metrics in res.evaluation.items():
        block = table[table["block"] == PAPER_BLOCKS.get(name, name)].set_index("column")["value"]
        assert block["english"] == pytest.approx(metrics["accuracy"]["en"])
        assert block["french"] == pytest.approx(metrics["accuracy"]["fr"])
        assert block["ac3"] == pytest.approx(metrics["ac3"])
    base = table[table["block"] == "base"]
    assert base["delta"].isna().all()
    calm_rows = table[table["block"] == "calm"].set_index("column")
    assert calm_rows.loc["acc_avg", "delta"] == pytest.approx(
        res.evaluation["calm"]["acc_avg"] - res.evaluation["base"]["acc_avg"]
    )
