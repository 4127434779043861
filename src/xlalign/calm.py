"""CALM cross-lingual self-alignment: sample CoT answers per language, vote across languages, build DPO pairs.

Also the SFT and ground-truth baselines, Table 10's incremental languages, and the evaluation chain.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import re
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from xlalign.config import Profile
from xlalign.translate import TranslationError, Translator

log = logging.getLogger(__name__)

LETTERS = "ABCDE"
INVALID = "Invalid"


# --------------------------------------------------------------------------- prompts per language


@dataclass(frozen=True)
class LangTemplate:
    """Labels (with their language's colon spacing) and the CoT instruction of one language."""

    passage: str
    question: str
    explanation: str
    answer: str
    instruction: str
    reasoning: str  # placeholder for the explanation in the requested format


# The instruction asks for the answer in the prompt's own language; option letters stay Latin so that
# every language votes over the same labels.
TEMPLATES: dict[str, LangTemplate] = {
    "en": LangTemplate(
        "Passage: ", "Question: ", "Explanation: ", "Answer: ",
        "Answer the following multiple-choice question. Think step by step, then reply in English "
        "in exactly this format:",
        "your reasoning",
    ),
    "ar": LangTemplate(
        "النص: ", "السؤال: ", "الشرح: ", "الإجابة: ",
        "أجب عن سؤال الاختيار من متعدد التالي. فكّر خطوة بخطوة، ثم أجب باللغة العربية بهذا التنسيق تمامًا:",
        "استدلالك",
    ),
    "es": LangTemplate(
        "Texto: ", "Pregunta: ", "Explicación: ", "Respuesta: ",
        "Responde a la siguiente pregunta de opción múltiple. Piensa paso a paso y luego responde en "
        "español exactamente con este formato:",
        "tu razonamiento",
    ),
    "fr": LangTemplate(
        "Texte : ", "Question : ", "Explication : ", "Réponse : ",
        "Réponds à la question à choix multiple suivante. Réfléchis étape par étape, puis réponds en "
        "français exactement dans ce format :",
        "ton raisonnement",
    ),
    "ja": LangTemplate(
        "本文：", "質問：", "説明：", "回答：",
        "次の多肢選択問題に答えてください。段階的に考えてから、次の形式どおりに日本語で答えてください：",
        "あなたの推論",
    ),
    "pt": LangTemplate(
        "Texto: ", "Pergunta: ", "Explicação: ", "Resposta: ",
        "Responda à seguinte pergunta de múltipla escolha. Pense passo a passo e depois responda em "
        "português exatamente neste formato:",
        "o seu raciocínio",
    ),
    "zh": LangTemplate(
        "文章：", "问题：", "解释：", "答案：",
        "请回答下面的单项选择题。请逐步思考，然后严格按照以下格式用中文作答：",
        "你的推理过程",
    ),
    "th": LangTemplate(
        "บทความ: ", "คำถาม: ", "คำอธิบาย: ", "คำตอบ: ",
        "ตอบคำถามแบบเลือกตอบต่อไปนี้ คิดทีละขั้นตอน แล้วตอบเป็นภาษาไทยตามรูปแบบนี้เท่านั้น:",
        "เหตุผลของคุณ",
    ),
    "vi": LangTemplate(
        "Đoạn văn: ", "Câu hỏi: ", "Giải thích: ", "Đáp án: ",
        "Hãy trả lời câu hỏi trắc nghiệm sau. Suy nghĩ từng bước, sau đó trả lời bằng tiếng Việt "
        "theo đúng định dạng này:",
        "lập luận của bạn",
    ),
    "hu": LangTemplate(
        "Szöveg: ", "Kérdés: ", "Magyarázat: ", "Válasz: ",
        "Válaszolj a következő feleletválasztós kérdésre. Gondolkodj lépésről lépésre, majd "
        "válaszolj magyarul pontosan ebben a formában:",
        "az érvelésed",
    ),
    "ro": LangTemplate(
        "Text: ", "Întrebare: ", "Explicație: ", "Răspuns: ",
        "Răspunde la următoarea întrebare cu variante multiple. Gândește pas cu pas, apoi răspunde "
        "în limba română exact în acest format:",
        "raționamentul tău",
    ),
    "de": LangTemplate(
        "Text: ", "Frage: ", "Erklärung: ", "Antwort: ",
        "Beantworte die folgende Multiple-Choice-Frage. Denke Schritt für Schritt nach und antworte "
        "dann auf Deutsch genau in diesem Format:",
        "deine Begründung",
    ),
    "it": LangTemplate(
        "Testo: ", "Domanda: ", "Spiegazione: ", "Risposta: ",
        "Rispondi alla seguente domanda a scelta multipla. Ragiona passo dopo passo, poi rispondi "
        "in italiano esattamente in questo formato:",
        "il tuo ragionamento",
    ),
}  # fmt: skip


def template(lang: str) -> LangTemplate:
    try:
        return TEMPLATES[lang]
    except KeyError:
        raise ValueError(
            f"no CALM prompt for language {lang!r}; known: {' '.join(TEMPLATES)}"
        ) from None


def build_prompt(item, lang: str | None = None) -> str:
    """The CoT prompt of one MCQ item in its language (unrendered: no chat template yet).

    ``item`` is anything with ``question``, ``options`` and ``context`` (None for X-CSQA/MedQA, the
    passage for the shipped corpus, which makes it Belebele-style reading comprehension).
    """
    t = template(lang or item.lang)
    letters = LETTERS[: len(item.options)]
    parts = []
    if item.context:
        parts.append(f"{t.passage}{item.context}\n")
    parts.append(f"{t.question}{item.question}")
    parts += [f"{letter}. {opt}" for letter, opt in zip(letters, item.options, strict=True)]
    parts.append("")
    parts.append(t.instruction)
    parts.append(f"{t.explanation}<{t.reasoning}>")
    parts.append(f"{t.answer}<{'/'.join(letters)}>")
    return "\n".join(parts)


def format_completion(explanation: str, letter: str, lang: str) -> str:
    """The canonical "Explanation: ...\\nAnswer: X" completion in ``lang``'s labels."""
    t = template(lang)
    explanation = explanation.strip()
    head = f"{t.explanation}{explanation}\n" if explanation else ""
    return f"{head}{t.answer}{letter}"


# --------------------------------------------------------------------------- parsing answers

# Answer labels per language, beyond each template's own label: the variants models write.
_EXTRA_ANSWER_LABELS: dict[str, tuple[str, ...]] = {
    "en": ("final answer", "correct answer", "answer"),
    "ar": ("الإجابة", "الاجابة", "إجابة", "اجابة", "الجواب"),
    "es": ("respuesta final", "respuesta correcta", "respuesta"),
    "fr": ("réponse finale", "bonne réponse", "réponse", "reponse"),
    "ja": ("回答", "答え", "正解", "解答"),
    "pt": ("resposta final", "resposta correta", "resposta"),
    "zh": ("最终答案", "正确答案", "答案", "回答"),
    "th": ("คำตอบที่ถูกต้อง", "คำตอบ"),
    "vi": ("đáp án đúng", "đáp án", "câu trả lời", "trả lời"),
    "hu": ("helyes válasz", "válasz", "valasz"),
    "ro": ("răspunsul corect", "răspunsul", "răspuns", "raspunsul", "raspuns"),
    "de": ("richtige antwort", "antwort"),
    "it": ("risposta corretta", "risposta"),
}
# Words that may sit between a label and the letter: "The answer is B", "la respuesta es B",
# "a resposta é B", "答案是B", "答えはB", "đáp án là B", "răspunsul este B", "die Antwort ist B".
_BRIDGE = (
    r"(?:[\s:\-–—=]|(?i:is|es|est|é|è|ist|este|là|option|opción|opção|choice)\b"
    r"|是|为|為|は|选|選)*"
)  # one character or word per step: no nested quantifiers, so no catastrophic backtracking
# Opening marks before the letter ("**B**", "(B)", "「B」"); whitespace belongs to the bridge only.
_OPEN = r"(?:[*_\"'“«「【(\[]+\s*)?"


def _answer_labels(lang: str) -> list[str]:
    labels = {TEMPLATES[lang].answer.strip(" :：")} if lang in TEMPLATES else set()
    labels |= set(_EXTRA_ANSWER_LABELS.get(lang, ()))
    # Longest first, so that "respuesta final" is tried before "respuesta".
    return sorted(labels, key=len, reverse=True)


def _label_regex(labels: Iterable[str]) -> re.Pattern:
    alts = "|".join(re.escape(unicodedata.normalize("NFKC", x)) for x in labels)
    # The letter group is case-sensitive (a lower-case "a" after a label is usually an article) and
    # stops at E, the last option letter of any dataset: "Answer: I think it is B" skips the "I".
    return re.compile(rf"(?i:{alts}){_BRIDGE}{_OPEN}([{LETTERS}])(?![A-Za-z])")


_OWN_LABELS = {
    lang: _label_regex(_answer_labels(lang) + _answer_labels("en")) for lang in TEMPLATES
}
_ALL_LABELS = _label_regex(
    sorted({x for lang in TEMPLATES for x in _answer_labels(lang)}, key=len, reverse=True)
)
_EXPLANATION_LABEL = re.compile(
    r"^\s*(?i:"
    + "|".join(
        re.escape(unicodedata.normalize("NFKC", t.explanation.strip(" :：")))
        for t in TEMPLATES.values()
    )
    + r")\s*:\s*"
)
_PAREN_LETTER = re.compile(r"[(\[]([A-Z])[)\]]")
_LINE_LETTER = re.compile(r"(?m)^\s*([A-Z])\s*[.):](?![A-Za-z0-9])")
_BARE_LETTER = re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])")


def _normalize(text: str) -> tuple[str, list[int]]:
    """NFKC per character (full-width letters, colons and brackets become ASCII) plus an index map.

    Per-character normalization keeps a map from each normalized position back to the original, so
    explanations are cut from the text the model wrote, not from its normalized copy.
    """
    out, index = [], []
    for i, ch in enumerate(text):
        norm = unicodedata.normalize("NFKC", ch)
        out.append(norm)
        index.extend([i] * len(norm))
    index.append(len(text))
    return "".join(out), index


def _is_article(norm: str, match: re.Match) -> bool:
    # "A farmer ..." (English, Portuguese, Spanish "A la ...") is an article, not option A.
    return match.group(1) == "A" and re.match(r"\s+[a-zà-ÿ]", norm[match.end() :]) is not None


def _locate(text: str, lang: str, n_options: int) -> tuple[str | None, int]:
    """(letter or None, position in ``text`` where the answer statement starts)."""
    norm, index = _normalize(text or "")
    valid = LETTERS[:n_options]

    # 1. An answer label ("Answer:", "答案：", "La respuesta es"): the language's own labels and
    #    English first, then any language's (a model may switch language mid-answer). The last
    #    statement wins: it is the final answer. A label followed by an impossible letter ("Answer: E"
    #    with four options) is unparsable rather than a reason to guess from elsewhere.
    for pattern in (_OWN_LABELS.get(lang, _OWN_LABELS["en"]), _ALL_LABELS):
        matches = list(pattern.finditer(norm))
        if matches:
            letter = matches[-1].group(1)
            return (letter if letter in valid else None), index[matches[-1].start()]
    # 2. Without a label: "(B)", then "B." at a line start, then the last standalone letter.
    for pattern in (_PAREN_LETTER, _LINE_LETTER, _BARE_LETTER):
        matches = [
            m
            for m in pattern.finditer(norm)
            if m.group(1) in valid and not (pattern is _BARE_LETTER and _is_article(norm, m))
        ]
        if matches:
            return matches[-1].group(1), index[matches[-1].start()]
    return None, len(text or "")


def parse_letter(text: str, lang: str, n_options: int = 4) -> str | None:
    """The option letter a CoT answer commits to, or None when it commits to none.

    Tries, in order: the last answer label of ``lang`` or English ("Answer:", "Respuesta:",
    "Réponse :", "答案：", "回答：", "الإجابة:", "คำตอบ:", "Đáp án:", "Válasz:", "Răspuns:", "The answer is
    (B)", full-width letters and colons), the last label of any other language, then "(B)", "B." at
    a line start, and finally the last standalone capital letter (skipping an English-style article
    "A word"). Only letters among the first ``n_options`` count.
    """
    return _locate(text, lang, n_options)[0]


def split_answer(text: str, lang: str, n_options: int = 4) -> tuple[str, str | None]:
    """(explanation, letter): the text before the answer statement, less an "Explanation:" label."""
    letter, start = _locate(text, lang, n_options)
    explanation = (text or "")[:start]
    norm, index = _normalize(explanation)
    match = _EXPLANATION_LABEL.match(norm)
    if match:
        explanation = explanation[index[match.end()] :]
    return explanation.strip(), letter


# --------------------------------------------------------------------------- items


def corpus_items(corpus: dict[str, dict[str, Any]]) -> list:
    """Shipped-corpus topics as MCQ items: passage + question + 4 options (reading comprehension)."""
    from xlalign.loaders import MCQItem

    return [
        MCQItem(
            tid,
            lang,
            rec.mcq_question,
            list(rec.mcq_options),
            rec.mcq_answer,
            rec.passage,
            "corpus",
        )
        for lang, topics in corpus.items()
        for tid, rec in sorted(topics.items())
    ]


def group_items(
    items: Iterable, langs: Sequence[str]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``{qid: {lang: item}}`` for questions present in every language of ``langs``; also the ids
    of the questions dropped for lacking one."""
    by_q: dict[str, dict[str, Any]] = defaultdict(dict)
    for item in items:
        if item.lang in langs:
            by_q[item.qid][item.lang] = item
    complete = {
        q: {lang: m[lang] for lang in langs}
        for q, m in sorted(by_q.items())
        if set(langs) <= set(m)
    }
    dropped = sorted(q for q in by_q if q not in complete)
    return complete, dropped


def split_questions(
    qids: Sequence[str], test_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Seeded (train, test) split of question ids; with fewer than two questions both are the same."""
    qids = sorted(qids)
    if len(qids) < 2:
        return qids, qids
    order = list(qids)
    random.Random(f"calm-split/{seed}").shuffle(order)
    n_test = min(len(qids) - 1, max(1, round(len(qids) * test_fraction)))
    test = set(order[:n_test])
    return [q for q in qids if q not in test], [q for q in qids if q in test]


# --------------------------------------------------------------------------- sampling


@dataclass
class Sample:
    """One sampled CoT answer: the j-th of m for question ``qid`` in ``lang``."""

    qid: str
    lang: str
    idx: int
    text: str
    letter: str | None
    gold: str
    n_options: int = 4

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.qid, self.lang, self.idx)


# (qid, lang, rendered prompt) requests and m -> m texts per request; the test hook for the sampler.
SamplerFn = Callable[[list[tuple[str, str, str]], int], list[list[str]]]


def render_prompts(
    questions: dict[str, dict[str, Any]], langs: Sequence[str], tokenizer, prompt_format: str
):
    """``{(qid, lang): rendered prompt}`` (chat template when the profile's format asks for one)."""
    from xlalign.probe import render_prompt

    out = {}
    for qid, by_lang in questions.items():
        for lang in langs:
            text = build_prompt(by_lang[lang], lang)
            out[(qid, lang)] = (
                render_prompt(text, tokenizer, prompt_format) if tokenizer else text + "\n"
            )
    return out


def sample_answers(
    questions: dict[str, dict[str, Any]],
    langs: Sequence[str],
    prompts: dict[tuple[str, str], str],
    m: int,
    *,
    model=None,
    tokenizer=None,
    temperature: float = 1.0,
    top_p: float = 0.9,
    max_new_tokens: int = 512,
    seed: int = 0,
    batch_size: int = 8,
    sampler: SamplerFn | None = None,
    stats=None,
) -> list[Sample]:
    """m CoT samples per question and language, parsed; ordered by question, language, index.

    ``sampler`` replaces the model (tests inject texts through it); otherwise
    ``generation.sample_shared_prefill`` encodes each prompt once for its m samples.
    """
    requests = [(qid, lang, prompts[(qid, lang)]) for qid in questions for lang in langs]
    if sampler is None:
        from xlalign.generation import sample_shared_prefill

        texts = sample_shared_prefill(
            model,
            tokenizer,
            [p for _, _, p in requests],
            m,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
            batch_size=batch_size,
            stats=stats,
        )
    else:
        texts = sampler(requests, m)
    if len(texts) != len(requests) or any(len(t) != m for t in texts):
        raise ValueError(
            f"the sampler returned {[len(t) for t in texts]} texts for {len(requests)} x {m}"
        )
    samples = []
    for (qid, lang, _), outs in zip(requests, texts, strict=True):
        item = questions[qid][lang]
        n = len(item.options)
        for j, text in enumerate(outs):
            samples.append(Sample(qid, lang, j, text, parse_letter(text, lang, n), item.answer, n))
    return samples


# --------------------------------------------------------------------------- voting


@dataclass
class Vote:
    """The cross-lingual majority answer of one question (``letter`` None: nothing parsable)."""

    qid: str
    letter: str | None
    counts: dict[str, int]
    shares: dict[str, float]  # share of the parsable samples per letter
    n_samples: int
    n_parsable: int
    tied: bool
    candidates: list[str]  # letters sharing the top count, in tie-break order
    gold: str | None = None

    @property
    def correct(self) -> bool:
        return self.letter is not None and self.letter == self.gold

    def to_dict(self) -> dict:
        return asdict(self) | {"correct": self.correct}


def majority_vote(samples: Sequence[Sample], lang_order: Sequence[str] | None = None) -> Vote:
    """Majority vote over every parsable sample of one question, all languages pooled (CALM §2.2).

    Tie-break: among letters with the top count, the one whose first supporting sample comes
    earliest in sampling order wins -- languages in ``lang_order`` (the profile's
    ``calm.train_langs`` order; the given order when None), then sample index. It depends on
    nothing numeric, so the same samples vote the same way on any hardware; it does favour the
    first language, which is English in the paper's setting. Unparsable samples have no vote.
    """
    if not samples:
        raise ValueError("majority_vote needs at least one sample")
    qids = {s.qid for s in samples}
    if len(qids) != 1:
        raise ValueError(f"majority_vote takes one question's samples, got {sorted(qids)}")
    ordered = list(samples)
    if lang_order is not None:
        rank = {lang: i for i, lang in enumerate(lang_order)}
        ordered.sort(key=lambda s: (rank.get(s.lang, len(rank)), s.idx))
    letters = [s.letter for s in ordered if s.letter is not None]
    counts = Counter(letters)
    n_parsable = len(letters)
    if not counts:
        return Vote(ordered[0].qid, None, {}, {}, len(ordered), 0, False, [], ordered[0].gold)
    top = max(counts.values())
    candidates = [x for x in dict.fromkeys(letters) if counts[x] == top]  # first-occurrence order
    return Vote(
        qid=ordered[0].qid,
        letter=candidates[0],
        counts=dict(sorted(counts.items())),
        shares={x: c / n_parsable for x, c in sorted(counts.items())},
        n_samples=len(ordered),
        n_parsable=n_parsable,
        tied=len(candidates) > 1,
        candidates=candidates,
        gold=ordered[0].gold,
    )


def vote_all(samples: Sequence[Sample], langs: Sequence[str]) -> dict[str, Vote]:
    """One vote per question over the samples of ``langs`` (question order as in ``samples``)."""
    by_q: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.lang in langs:
            by_q[s.qid].append(s)
    return {q: majority_vote(ss, langs) for q, ss in by_q.items()}


def vote_accuracy(samples: Sequence[Sample], votes: dict[str, Vote], langs: Sequence[str]) -> dict:
    """CALM Fig. 3 data: monolingual accuracy against the multilingual majority vote's (percent).

    ``sample_accuracy``: share of a language's samples that are correct (unparsable = wrong).
    ``mono_vote_accuracy``: accuracy of a vote over that language's m samples alone.
    ``multi_vote_accuracy``: accuracy of the cross-lingual vote; questions without one count wrong.
    """
    by_lang: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_lang[s.lang].append(s)
    n_q = len(votes)
    sample_acc, mono = {}, {}
    for lang in langs:
        ss = by_lang.get(lang, [])
        sample_acc[lang] = _pct(sum(s.letter == s.gold for s in ss), len(ss))
        per_q: dict[str, list[Sample]] = defaultdict(list)
        for s in ss:
            per_q[s.qid].append(s)
        mono[lang] = _pct(sum(majority_vote(v).correct for v in per_q.values()), len(per_q))
    return {
        "questions": n_q,
        "sample_accuracy": sample_acc,
        "mono_vote_accuracy": mono,
        "multi_vote_accuracy": _pct(sum(v.correct for v in votes.values()), n_q),
        "mean_top_share": _mean([max(v.shares.values()) for v in votes.values() if v.shares]),
    }


def _pct(num: int, den: int) -> float:
    return 100.0 * num / den if den else float("nan")


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


# --------------------------------------------------------------------------- pairs


@dataclass
class PairSet:
    """CALM's preference rows plus what was skipped on the way."""

    rows: list[dict]
    translation_failures: list[dict] = field(default_factory=list)  # one per failed text
    skipped_pairs: int = 0  # pairs lost to translation failures
    skipped_empty: int = 0  # rejected samples with no text at all


def _translate_isolated(
    translator: Translator, texts: list[str], src: str, tgt: str
) -> list[str | Exception]:
    """Translate a batch; if the batch fails, retry item by item so one bad text costs one pair."""
    try:
        out = translator.translate(texts, src, tgt)
        if len(out) != len(texts):
            raise TranslationError(f"{len(out)} translations for {len(texts)} texts")
        return [o if o.strip() else TranslationError("empty translation") for o in out]
    except TranslationError as exc:
        if len(texts) == 1:
            return [exc]
    results: list[str | Exception] = []
    for text in texts:
        try:
            (one,) = translator.translate([text], src, tgt)
            results.append(one if one.strip() else TranslationError("empty translation"))
        except (TranslationError, ValueError) as exc:  # ValueError: unpacking a wrong-length result
            results.append(exc)
    return results


def build_pairs(
    samples: Sequence[Sample],
    votes: dict[str, Vote],
    prompts: dict[tuple[str, str], str],
    translator: Translator,
    langs: Sequence[str],
    pairing: str = "one",
    include_unparsable: bool = True,
) -> PairSet:
    """DPO pairs: every sample disagreeing with its question's vote becomes a rejected completion.

    chosen = a voted ("positive") sample's explanation translated into the rejected sample's
    language, followed by the voted letter in that language's answer label (the letter is never
    sent through the translator, so a translation cannot change it); rejected = that sample's own
    explanation and letter. Both sides use the same canonical "Explanation/Answer" layout, so format
    alone cannot separate them. ``pairing="one"``: the i-th negative of a question takes the
    (i mod P)-th of its P positives (positives and negatives in language order, then index), so every
    source language contributes; ``"all"``: every positive with every negative. Unparsable samples
    are negatives too (raw text as rejected) unless ``include_unparsable`` is false. A question with
    no vote gives no pairs. A failed translation skips its pairs and is recorded, never raised.
    """
    if pairing not in ("one", "all"):
        raise ValueError(f"pairing={pairing!r}; use 'one' or 'all'")
    rank = {lang: i for i, lang in enumerate(langs)}
    by_q: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.lang in rank:
            by_q[s.qid].append(s)

    plan: list[tuple[Sample, Sample]] = []
    skipped_empty = 0
    for qid, vote in votes.items():
        if vote.letter is None:
            continue
        ordered = sorted(by_q.get(qid, []), key=lambda s: (rank[s.lang], s.idx))
        pos = [s for s in ordered if s.letter == vote.letter]
        neg = [s for s in ordered if s.letter != vote.letter and (s.letter or include_unparsable)]
        kept = [s for s in neg if (s.text or "").strip()]
        skipped_empty += len(neg) - len(kept)
        for i, n in enumerate(kept):
            chosen = pos if pairing == "all" else [pos[i % len(pos)]]
            plan += [(p, n) for p in chosen]

    # One translation per (positive, target language), batched per language pair.
    explanations = {p.key: split_answer(p.text, p.lang, p.n_options)[0] for p, _ in plan}
    wanted: dict[tuple[str, str], list[tuple]] = defaultdict(list)
    for p, n in plan:
        if p.lang != n.lang and explanations[p.key] and p.key not in wanted[(p.lang, n.lang)]:
            wanted[(p.lang, n.lang)].append(p.key)
    translated: dict[tuple, str | Exception] = {}
    for (src, tgt), keys in wanted.items():
        outs = _translate_isolated(translator, [explanations[k] for k in keys], src, tgt)
        translated.update({(k, tgt): o for k, o in zip(keys, outs, strict=True)})
    failures = [
        {"qid": k[0], "src": k[1], "idx": k[2], "tgt": tgt, "error": f"{type(o).__name__}: {o}"}
        for (k, tgt), o in translated.items()
        if isinstance(o, Exception)
    ]

    rows, skipped = [], 0
    for p, n in plan:
        expl = explanations[p.key]
        if p.lang != n.lang and expl:
            expl = translated[(p.key, n.lang)]
            if isinstance(expl, Exception):
                skipped += 1
                continue
        if n.letter is not None:
            rejected = format_completion(
                split_answer(n.text, n.lang, n.n_options)[0], n.letter, n.lang
            )
        else:
            rejected = n.text.strip()
        rows.append(
            {
                "prompt": prompts[(n.qid, n.lang)],
                "chosen": format_completion(expl, p.letter, n.lang),
                "rejected": rejected,
                "qid": n.qid,
                "lang": n.lang,
                "chosen_lang": p.lang,
                "chosen_idx": p.idx,
                "rejected_idx": n.idx,
                "chosen_letter": p.letter,
                "rejected_letter": n.letter,
                "gold": n.gold,
                "translated": p.lang != n.lang,
            }
        )
    return PairSet(rows, failures, skipped, skipped_empty)


def pair_counts(
    samples: Sequence[Sample], votes: dict[str, Vote], pairs: PairSet, langs: Sequence[str]
) -> dict:
    """Counts behind CALM Tables 7/8, every language listed (a language with no pairs shows 0).

    ``positives``: samples agreeing with their question's vote, by language (Table 7);
    ``chosen_source``: language the chosen side of the final pairs came from; ``pairs``: final
    pairs by (rejected = prompt) language (Table 8). ``*_pct`` are percentages of the total.
    """

    def per_lang(counter: Counter) -> dict[str, int]:
        return {lang: int(counter.get(lang, 0)) for lang in langs}

    def pct(d: dict[str, int]) -> dict[str, float]:
        total = sum(d.values())
        return {k: _pct(v, total) for k, v in d.items()}

    voted = {q: v for q, v in votes.items() if v.letter is not None}
    positives = per_lang(
        Counter(s.lang for s in samples if s.qid in voted and s.letter == voted[s.qid].letter)
    )
    chosen = per_lang(Counter(r["chosen_lang"] for r in pairs.rows))
    by_pair = per_lang(Counter(r["lang"] for r in pairs.rows))
    in_langs = [s for s in samples if s.lang in langs]
    return {
        "languages": list(langs),
        "questions": len(votes),
        "questions_voted": len(voted),
        "questions_no_vote": len(votes) - len(voted),  # nothing parsable in any language
        "ties": sum(v.tied for v in votes.values()),
        "unanimous": sum(
            1 for v in voted.values() if v.n_parsable == v.n_samples and len(v.counts) == 1
        ),
        "samples": len(in_langs),
        "unparsable": per_lang(Counter(s.lang for s in in_langs if s.letter is None)),
        "positives": positives,
        "positives_pct": pct(positives),
        "chosen_source": chosen,
        "chosen_source_pct": pct(chosen),
        "pairs": by_pair,
        "pairs_pct": pct(by_pair),
        "pairs_total": len(pairs.rows),
        "pairs_translated": sum(r["translated"] for r in pairs.rows),
        "pairs_gold_chosen": sum(r["chosen_letter"] == r["gold"] for r in pairs.rows),
        "rejected_unparsable": sum(r["rejected_letter"] is None for r in pairs.rows),
        "zero_pair_langs": [lang for lang in langs if by_pair[lang] == 0],
        "translation_failures": len(pairs.translation_failures),
        "translation_failures_by_lang": per_lang(
            Counter(f["tgt"] for f in pairs.translation_failures)
        ),
        "skipped_pairs_translation": pairs.skipped_pairs,
        "skipped_empty_rejected": pairs.skipped_empty,
    }


def ground_truth_pairs(rows: Sequence[dict]) -> list[dict]:
    """GT-DPO (CALM Table 3): only the pairs whose chosen letter is the gold one."""
    return [r for r in rows if r["chosen_letter"] == r["gold"]]


def sft_rows(
    samples: Sequence[Sample], votes: dict[str, Vote], prompts: dict[tuple[str, str], str]
) -> list[dict]:
    """SFT baseline (CALM §3.2): every voted sample, in its own language, as a completion."""
    rows = []
    for s in samples:
        vote = votes.get(s.qid)
        if vote is None or vote.letter is None or s.letter != vote.letter:
            continue
        expl = split_answer(s.text, s.lang, s.n_options)[0]
        rows.append(
            {
                "prompt": prompts[(s.qid, s.lang)],
                "completion": format_completion(expl, s.letter, s.lang),
                "qid": s.qid,
                "lang": s.lang,
                "idx": s.idx,
                "letter": s.letter,
                "gold": s.gold,
            }
        )
    return rows


def gt_sft_rows(rows: Sequence[dict]) -> list[dict]:
    """GT-SFT (CALM Table 3): only the SFT rows whose (voted) letter is the gold one."""
    return [r for r in rows if r["letter"] == r["gold"]]


# --------------------------------------------------------------------------- training


def trainer_rows(rows: Sequence[dict], batching: str, columns: Sequence[str]) -> list[dict]:
    """Rows keyed for the trainer's ``clustered`` sampler, which needs unique (sample_id, lang).

    CALM has several pairs per question and language, so the keys carry a per-(question,
    language) counter. ``aligned`` (beyond the paper): sample_id = question, lang = "fr#1", so a
    question's pairs stay together in consecutive batches. ``shuffled`` (the paper): every pair is
    its own group, so ``clustered`` shuffles pairs freely. (``uncoupled`` cannot serve here: it keeps
    ``batch_size`` languages per group and refuses groups that lack a language.)
    """
    seen: Counter = Counter()
    out = []
    for r in rows:
        base = (r["qid"], r["lang"])
        k = seen[base]
        seen[base] += 1
        if batching == "aligned":
            sid, tag = r["qid"], f"{r['lang']}#{k}"
        else:
            sid, tag = f"{r['qid']}|{r['lang']}#{k}", r["lang"]
        out.append({c: r[c] for c in columns} | {"sample_id": sid, "lang": tag})
    return out


def calm_train_profile(profile: Profile, method: str, batch_size: int) -> Profile:
    """The derived profile the shared trainer runs CALM with (paper Table 5 hyperparameters)."""
    c = profile.calm
    sft = method == "sft"
    return replace(
        profile,
        train=replace(
            profile.train,
            method=method,
            batching="clustered",
            batch_size=batch_size,
            include_english=False,  # only the probe's aligned sampler reads it
            grad_accum=1,
            learning_rate=c.sft_learning_rate if sft else c.learning_rate,
            beta=c.beta,
            epochs=c.epochs,
            max_steps=c.max_steps,
            lr_scheduler=c.lr_scheduler,
            warmup_ratio=0.0 if sft else c.warmup_ratio,  # Table 5: SFT has no warmup
        ),
        lora=c.lora,
    )


def _train_variant(profile, method, rows, batching, batch_size, out_dir, model, tokenizer) -> dict:
    from xlalign.training import train_preference, train_sft

    if not rows:
        return {"skipped": "no training rows"}
    bs = max(1, min(batch_size, len(rows)))
    prof = calm_train_profile(profile, method, bs)
    columns = ("prompt", "completion") if method == "sft" else ("prompt", "chosen", "rejected")
    data = trainer_rows(rows, batching, columns)
    # Each variant trains its own copy: peft injects LoRA layers into the model it is given.
    policy = copy.deepcopy(model)
    if method == "sft":
        result = train_sft(prof, data, out_dir, model=policy, tokenizer=tokenizer)
    else:
        result = train_preference(prof, data, out_dir, model=policy, tokenizer=tokenizer)
    del policy
    return {
        "rows": len(rows),
        "batch_size": bs,
        "batching": batching,
        "steps": result.steps,
        "wall_time_s": result.wall_time_s,
        "adapter_dir": str(result.adapter_dir),
        "train_loss": result.metrics.get("train_loss"),
    }


# --------------------------------------------------------------------------- evaluation


def predict(
    model,
    tokenizer,
    questions: dict[str, dict[str, Any]],
    langs: Sequence[str],
    prompts: dict[tuple[str, str], str],
    max_new_tokens: int,
    batch_size: int,
) -> pd.DataFrame:
    """Greedy CoT answers with the sampling prompt, parsed: one row per (question, language)."""
    from xlalign.generation import greedy_generate

    keys = [(q, lang) for q in questions for lang in langs]
    texts = greedy_generate(
        model, tokenizer, [prompts[k] for k in keys], max_new_tokens, batch_size
    )
    rows = []
    for (q, lang), raw in zip(keys, texts, strict=True):
        item = questions[q][lang]
        letter = parse_letter(raw, lang, len(item.options))
        rows.append(
            {
                "item_id": f"{q}.{lang}",
                "sample_id": q,
                "lang": lang,
                "label": item.answer,
                "pred": letter or INVALID,
                "correct": letter == item.answer,
                "raw": raw,
            }
        )
    return pd.DataFrame(rows)


def score(preds: pd.DataFrame) -> dict:
    """Per-language accuracy, ACC_avg, Consistency_2 and AC3 (percent), via xlalign.metrics."""
    from xlalign.metrics import summarize

    s = summarize(preds, s=2)
    return {
        "accuracy": {k: float(v) for k, v in s["accuracy"].items()},
        "acc_avg": s["acc_avg"],
        "consistency": s["consistency"],
        "ac3": s["ac3"],
        "invalid_rate": {k: float(v) for k, v in s["invalid_rate"].items()},
    }


# Our variant names -> the block names of the transcribed CALM Tables 1 and 3 (data/paper).
PAPER_BLOCKS = {
    "base": "base",
    "sft": "sft",
    "calm": "calm",
    "gt_sft": "sft_gt",
    "gt_dpo": "dpo_gt",
}


def results_table(
    calm_dir: str | Path,
    model: str,
    langs: Sequence[str],
    seed: int = 0,
    n_resamples: int = 1000,
) -> pd.DataFrame:
    """CALM Tables 1 and 3 in the tidy schema, from ``calm_dir/predictions/<variant>.jsonl``.

    One block per evaluated variant (named as in the papers' tables where they have one), accuracy
    per language with bootstrap CIs, ACC_avg, Consistency_2 and AC3, and gains over ``base``.
    """
    from xlalign.tables import calm_table

    pred_dir = Path(calm_dir) / "predictions"
    files = {f.stem: f for f in sorted(pred_dir.glob("*.jsonl"))}
    if "base" not in files:
        raise FileNotFoundError(f"{pred_dir}: no base.jsonl; run the CALM chain first")
    order = [n for n in PAPER_BLOCKS if n in files] + [n for n in files if n not in PAPER_BLOCKS]
    frames, base = [], None
    for name in order:
        preds = pd.read_json(files[name], lines=True, dtype={"sample_id": str, "label": str})
        tidy = calm_table(
            preds,
            "ours_calm_t01_03",
            PAPER_BLOCKS.get(name, name),
            model,
            langs,
            baseline=base,
            with_ci=True,
            seed=seed,
            n_resamples=n_resamples,
        )
        base = tidy if name == "base" else base
        frames.append(tidy)
    return pd.concat(frames, ignore_index=True)


def _load_adapter(model, adapter_dir: str):
    from peft import PeftModel

    tuned = PeftModel.from_pretrained(copy.deepcopy(model), adapter_dir)
    tuned.eval()
    return tuned


# --------------------------------------------------------------------------- the whole chain


def _jsonable(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(_jsonable(r), ensure_ascii=False) + "\n")


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(_jsonable(obj), indent=2, ensure_ascii=False), encoding="utf-8")


def load_calm_items(profile: Profile, langs: Sequence[str]) -> tuple[list, dict[str, str]]:
    """The shipped corpus as CALM items, with the probe's domain-stratified topic split."""
    from xlalign.corpus import load_corpus
    from xlalign.probe import select_topics, split_topics

    corpus = load_corpus(profile.data.corpus_dir, list(langs))
    first = corpus[langs[0]]
    keep = select_topics(first, profile.data.domains, profile.data.topics_per_domain)
    split = split_topics(keep, profile.data.test_fraction, profile.seed)
    corpus = {
        lang: {t: r for t, r in topics.items() if t in keep} for lang, topics in corpus.items()
    }
    return corpus_items(corpus), split


def run_calm(
    profile: Profile,
    run_dir: str | Path,
    model=None,
    tokenizer=None,
    items: Sequence | dict[str, Sequence] | None = None,
    *,
    sampler: SamplerFn | None = None,
    baselines: Sequence[str] = ("sft", "gt_dpo", "gt_sft"),
    compare_batching: bool = False,
    batch_size: int | None = None,
    pairing: str = "one",
) -> dict:
    """Sample -> vote -> pairs -> DPO (+ baselines) -> evaluation; everything under ``run_dir/calm/``.

    ``items``: MCQ items (``qid, lang, question, options, answer, context``) such as
    ``loaders.MCQItem`` from X-CSQA, as a list or ``{lang: [items]}``; default: the shipped corpus's MCQs with the probe's topic
    split. Questions are split into training questions (sampled, voted, trained on; at most
    ``calm.max_questions``) and held-out test questions (evaluated in ``calm.eval_langs``, at most
    ``eval.max_items_per_lang``). ``baselines``: any of sft, gt_dpo, gt_sft. ``calm.incremental``
    adds Table 10's runs that vote over the first 1..n-1 training languages only;
    ``compare_batching`` also trains CALM with the other batching. ``batch_size``: pairs per
    micro-batch (default ``calm.batch_size`` if the profile has one, else 1 as in Table 5).
    Questions without a vote, ties, languages without pairs and failed translations are counted in
    ``counts.json``, never raised. Returns the main results and wall times.
    """
    from xlalign.generation import SamplingStats
    from xlalign.translate import make_translator

    c = profile.calm
    out = Path(run_dir) / "calm"
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    walls: dict[str, float] = {}
    t_all = time.perf_counter()
    train_langs, eval_langs = list(c.train_langs), list(c.eval_langs)
    all_langs = list(dict.fromkeys(train_langs + eval_langs))
    batch_size = batch_size or getattr(c, "batch_size", None) or 1

    # Questions and split.
    if items is None:
        items, split = load_calm_items(profile, all_langs)
    else:
        split = None
        if isinstance(items, dict):  # {lang: [items]}, as loaders.load_xcsqa returns
            items = [item for per_lang in items.values() for item in per_lang]
    questions, dropped = group_items(items, all_langs)
    if not questions:
        raise ValueError(f"no question has all of the languages {all_langs}")
    if split is None:
        train_ids, test_ids = split_questions(
            list(questions), profile.data.test_fraction, profile.seed
        )
    else:
        train_ids = [q for q in questions if split.get(q) == "train"]
        test_ids = [q for q in questions if split.get(q) == "test"]
    if c.max_questions:
        train_ids = train_ids[: c.max_questions]
    if profile.eval.max_items_per_lang:
        test_ids = test_ids[: profile.eval.max_items_per_lang]
    train_q = {q: questions[q] for q in train_ids}
    test_q = {q: questions[q] for q in test_ids}

    if model is None:
        from xlalign.models import load_model

        model, tokenizer = load_model(profile)
    fmt = profile.model.prompt_format
    train_prompts = render_prompts(train_q, train_langs, tokenizer, fmt)
    test_prompts = render_prompts(test_q, eval_langs, tokenizer, fmt)

    # 1. Sampling.
    t0 = time.perf_counter()
    stats = SamplingStats()
    samples = sample_answers(
        train_q, train_langs, train_prompts, c.num_samples, model=model, tokenizer=tokenizer,
        temperature=c.temperature, top_p=c.top_p, max_new_tokens=c.max_new_tokens, seed=profile.seed,
        batch_size=c.sample_batch_size, sampler=sampler, stats=stats,
    )  # fmt: skip
    walls["sampling"] = time.perf_counter() - t0
    _write_jsonl(out / "samples.jsonl", (asdict(s) for s in samples))

    # 2. Voting.
    votes = vote_all(samples, train_langs)
    _write_jsonl(out / "votes.jsonl", (v.to_dict() for v in votes.values()))
    fig3 = vote_accuracy(samples, votes, train_langs)

    # 3. Pairs (translation happens here).
    t0 = time.perf_counter()
    translator = make_translator(c.translator, model, tokenizer)
    pairs = build_pairs(samples, votes, train_prompts, translator, train_langs, pairing=pairing)
    walls["pairs"] = time.perf_counter() - t0
    counts = pair_counts(samples, votes, pairs, train_langs)
    counts["dropped_incomplete_questions"] = len(dropped)
    _write_jsonl(out / "pairs.jsonl", pairs.rows)
    _write_jsonl(out / "translation_failures.jsonl", pairs.translation_failures)
    sft = sft_rows(samples, votes, train_prompts)
    _write_jsonl(out / "sft.jsonl", sft)

    # 4. Training: CALM and the baselines, each from the untouched base model.
    variants: dict[str, tuple[str, list[dict], str]] = {"calm": ("dpo", pairs.rows, c.batching)}
    if "sft" in baselines:
        variants["sft"] = ("sft", sft, c.batching)
    if "gt_dpo" in baselines:
        variants["gt_dpo"] = ("dpo", ground_truth_pairs(pairs.rows), c.batching)
    if "gt_sft" in baselines:
        variants["gt_sft"] = ("sft", gt_sft_rows(sft), c.batching)
    other = "aligned" if c.batching == "shuffled" else "shuffled"
    if compare_batching:
        variants[f"calm_{other}"] = ("dpo", pairs.rows, other)
    incremental: dict[str, dict] = {}
    if c.incremental and len(train_langs) > 1:
        for k in range(1, len(train_langs)):
            sub = train_langs[:k]
            sub_votes = vote_all(samples, sub)
            sub_pairs = build_pairs(
                samples, sub_votes, train_prompts, translator, sub, pairing=pairing
            )
            name = "calm_" + "+".join(sub)
            variants[name] = ("dpo", sub_pairs.rows, c.batching)
            incremental[name] = {
                "langs": sub,
                "counts": pair_counts(samples, sub_votes, sub_pairs, sub),
            }
    counts["incremental"] = {k: v["counts"] for k, v in incremental.items()}
    _write_json(out / "counts.json", counts)

    training: dict[str, dict] = {}
    for name, (method, rows, batching) in variants.items():
        if batch_size == 1 and batching == "aligned":
            log.warning(
                "%s: aligned batching with batch_size 1 only changes the order of pairs", name
            )
        t0 = time.perf_counter()
        training[name] = _train_variant(
            profile, method, rows, batching, batch_size, out / "train" / name, model, tokenizer
        )
        walls[f"train_{name}"] = time.perf_counter() - t0

    # 5. Evaluation: base model and every trained adapter, greedy, same prompts.
    evaluation: dict[str, dict] = {}
    for name in ["base", *training]:
        info = training.get(name, {})
        if "skipped" in info:
            continue
        t0 = time.perf_counter()
        policy = model if name == "base" else _load_adapter(model, info["adapter_dir"])
        preds = predict(
            policy,
            tokenizer,
            test_q,
            eval_langs,
            test_prompts,
            c.max_new_tokens,
            profile.eval.batch_size,
        )
        if policy is not model:
            del policy
        _write_jsonl(out / "predictions" / f"{name}.jsonl", preds.to_dict("records"))
        evaluation[name] = score(preds)
        walls[f"eval_{name}"] = time.perf_counter() - t0

    # Table 10: the last step (every training language) is the main CALM run.
    table10 = {
        name: {"langs": v["langs"], "metrics": evaluation.get(name)}
        for name, v in incremental.items()
    }
    if table10:
        table10["calm_" + "+".join(train_langs)] = {
            "langs": train_langs,
            "metrics": evaluation.get("calm"),
        }
    batching_cmp = {}
    if compare_batching:
        batching_cmp = {c.batching: evaluation.get("calm"), other: evaluation.get(f"calm_{other}")}

    walls["total"] = time.perf_counter() - t_all
    results = {
        "train_langs": train_langs,
        "eval_langs": eval_langs,
        "questions_train": len(train_q),
        "questions_test": len(test_q),
        "eval_on_train_questions": set(train_ids) == set(test_ids),
        "sampling": stats.to_dict() if sampler is None else {"injected": True},
        "counts": counts,
        "vote_accuracy": fig3,
        "training": training,
        "evaluation": evaluation,
        "incremental": table10,
        "batching": batching_cmp,
        "wall_times_s": walls,
    }
    _write_json(out / "metrics.json", results)
    return results
