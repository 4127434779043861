"""CALM's questions: a task's items (shipped corpus, X-CSQA, MedQA, MGSM), checked, translated where
the task is not parallel (MedQA), grouped into parallel questions, and split into train and test.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xlalign.calm.parse import canonical_number
from xlalign.calm.prompts import has_options
from xlalign.sources.common import LETTERS


class CalmItemError(ValueError):
    """A CALM item lacks what sampling and scoring need; the message names the item and its file."""


# --------------------------------------------------------------------------- answers of an item


def n_options(item) -> int:
    """Options of a multiple-choice item; 0 for a numeric one (MGSM), whose answer is a number."""
    return len(item.options) if has_options(item) else 0


def gold(item) -> str:
    """The gold answer as the parser writes answers: a letter, or a canonical number."""
    return item.answer if has_options(item) else canonical_number(item.answer_number)


def check_items(items: Iterable, origin: dict[str, str] | None = None) -> None:
    """Refuse items the parser cannot score: a letter task needs 2-5 ``options`` and a gold
    ``answer`` letter among them; a numeric task needs a finite ``answer_number``.

    ``origin`` maps a language to the file its items came from, named in the error where known.
    """
    for item in items:
        qid, lang = getattr(item, "qid", None), getattr(item, "lang", None)
        where = f"CALM item {qid!r} ({lang})"
        if origin and lang in origin:
            where += f" from {origin[lang]}"
        if not qid or not lang:
            raise CalmItemError(f"{where}: fields 'qid' and 'lang' must be non-empty")
        question = getattr(item, "question", None)
        if not isinstance(question, str) or not question.strip():
            raise CalmItemError(f"{where}: field 'question' is missing or empty")
        if has_options(item):
            opts = item.options
            if not 2 <= len(opts) <= len(LETTERS):
                raise CalmItemError(f"{where}: {len(opts)} options; a letter task needs 2-5")
            answer = getattr(item, "answer", None)
            valid = list(LETTERS[: len(opts)])
            if answer not in valid:
                raise CalmItemError(
                    f"{where}: field 'answer' is {answer!r}; the letter parser scores against a "
                    f"gold letter among {valid}"
                )
        elif hasattr(item, "answer_number"):
            number = item.answer_number
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise CalmItemError(
                    f"{where}: field 'answer_number' is {number!r}; the number parser scores "
                    "against a gold number"
                )
            if not math.isfinite(number):
                raise CalmItemError(f"{where}: field 'answer_number' is {number}, not finite")
        else:
            raise CalmItemError(
                f"{where}: neither 'options' with an 'answer' letter (a letter task) nor "
                "'answer_number' (a numeric task); the parser has no gold answer to score against"
            )


# --------------------------------------------------------------------------- items


def corpus_items(corpus: dict[str, dict[str, Any]]) -> list:
    """Shipped-corpus topics as MCQ items: passage + question + 4 options (reading comprehension)."""
    from xlalign.sources.common import MCQItem

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


def load_calm_items(profile, langs: Sequence[str]) -> tuple[list, dict[str, str]]:
    """The shipped corpus as CALM items, with the probe's domain-stratified topic split."""
    from xlalign.probe.build import select_topics, split_topics
    from xlalign.sources.corpus import load_corpus

    corpus = load_corpus(profile.data.corpus_dir, list(langs))
    first = corpus[langs[0]]
    keep = select_topics(first, profile.data.domains, profile.data.topics_per_domain)
    split = split_topics(keep, profile.data.test_fraction, profile.seed)
    corpus = {
        lang: {t: r for t, r in topics.items() if t in keep} for lang, topics in corpus.items()
    }
    return corpus_items(corpus), split


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


# --------------------------------------------------------------------------- tasks


@dataclass
class TaskItems:
    """One CALM task's items as read, before any translation.

    ``split``: question -> train/test where the source fixes it (the shipped corpus follows the
    probe's topic split), else None. ``origin``: language -> the file its items came from.
    ``translate_from``: languages whose native questions are translated into every other language
    the run needs (MedQA, which is not parallel); empty for parallel tasks.
    """

    task: str
    items: list
    split: dict[str, str] | None = None
    origin: dict[str, str] = field(default_factory=dict)
    translate_from: list[str] = field(default_factory=list)


# MedQA question banks by native language, and their folders.
MEDQA_BANKS = {"en": "US", "zh": "Mainland"}


def task_eval_langs(profile, task: str) -> list[str]:
    """The languages a task is evaluated in: ``calm.medqa_eval_langs`` for MedQA where set (the
    paper's Table 9: en, zh, fr), else ``calm.eval_langs``."""
    c = profile.calm
    if task == "medqa" and c.medqa_eval_langs:
        return list(c.medqa_eval_langs)
    return list(c.eval_langs)


def check_task_languages(profile, task: str, langs: Sequence[str]) -> None:
    """LanguageNotAvailableError (naming the source and the languages) if ``task``'s source lacks
    one of ``langs``; reads nothing, so a run of several tasks can check them all first."""
    from xlalign.sources.common import check_languages

    if task in ("xcsqa", "mgsm"):
        check_languages(task, list(langs))
    elif task == "medqa":  # translated into the other languages; its banks' natives only
        check_languages("medqa", _medqa_natives(profile))


def _medqa_natives(profile) -> list[str]:
    # The banks whose native language CALM trains on (the paper: both, en and zh).
    natives = [lang for lang in profile.calm.train_langs if lang in MEDQA_BANKS]
    if not natives:
        raise CalmItemError(
            f"calm.tasks has medqa, whose banks are in {sorted(MEDQA_BANKS)}, but "
            f"calm.train_langs={list(profile.calm.train_langs)} names neither"
        )
    return natives


def load_task_items(profile, task: str, langs: Sequence[str]) -> TaskItems:
    """Read ``task``'s items in ``langs`` through the loaders of ``xlalign.sources.qa`` from
    ``calm.data_dir`` (corpus_mcq: the shipped corpus). Checks languages before reading, and every
    item's answer field after."""
    from xlalign.sources import qa

    langs = list(langs)
    root = Path(profile.calm.data_dir)
    check_task_languages(profile, task, langs)
    if task == "corpus_mcq":
        items, split = load_calm_items(profile, langs)
        d = profile.data.corpus_dir
        out = TaskItems(task, items, split, {lang: f"{d}/<domain>/{lang}.jsonl" for lang in langs})
    elif task == "xcsqa":
        from xlalign.sources.common import XCSQA_DIRS

        by_lang = qa.load_xcsqa(root / "xcsqa", langs, split="dev")
        origin = {lang: str(root / "xcsqa" / XCSQA_DIRS[lang] / "dev.jsonl") for lang in langs}
        out = TaskItems(task, [i for v in by_lang.values() for i in v], None, origin)
    elif task == "mgsm":
        by_lang = qa.load_mgsm(root / "mgsm", langs)
        origin = {lang: str(root / "mgsm" / f"mgsm_{lang}.tsv") for lang in langs}
        out = TaskItems(task, [i for v in by_lang.values() for i in v], None, origin)
    elif task == "medqa":
        # Each bank's questions are translated into the run's other languages (paper §2.1, B.3).
        natives = _medqa_natives(profile)
        split = profile.calm.medqa_split
        items, origin = [], {}
        for lang in natives:
            path = root / "medqa" / MEDQA_BANKS[lang] / f"{split}.jsonl"
            items += qa.load_medqa(path, lang)
            origin[lang] = str(path)
        out = TaskItems(task, items, None, origin, translate_from=natives)
    else:
        raise ValueError(f"unknown CALM task {task!r}; use corpus_mcq | xcsqa | medqa | mgsm")
    check_items(out.items, out.origin)
    return out


def translate_items(
    items: Sequence, langs: Sequence[str], translator, progress: bool = True
) -> tuple[list, list[dict]]:
    """Every item also in each of ``langs`` it lacks, through ``translator`` (question and options,
    batched per language pair; the gold letter or number is kept, never translated).

    Returns (translated items, failures). An item whose texts fail to translate is left out in that
    language, so its question is dropped as incomplete (counted), never raised.
    """
    from tqdm.auto import tqdm

    from xlalign.calm.pairs import _translate_isolated

    have = {(i.qid, i.lang) for i in items}
    by_pair: dict[tuple[str, str], list] = defaultdict(list)
    for item in items:
        for tgt in langs:
            if tgt != item.lang and (item.qid, tgt) not in have:
                by_pair[(item.lang, tgt)].append(item)
    out, failures = [], []
    total = sum(len(v) for v in by_pair.values())
    bar = tqdm(total=total, desc="translate questions", disable=not progress or not total)
    for (src, tgt), group in by_pair.items():
        for start in range(0, len(group), 16):
            chunk = group[start : start + 16]
            texts = [[i.question, *(i.options if has_options(i) else [])] for i in chunk]
            flat = [t for ts in texts for t in ts]
            done = _translate_isolated(translator, flat, src, tgt)
            pos = 0
            for item, ts in zip(chunk, texts, strict=True):
                got, pos = done[pos : pos + len(ts)], pos + len(ts)
                bad = [g for g in got if isinstance(g, Exception)]
                if bad:
                    failures.append(
                        {"qid": item.qid, "src": src, "tgt": tgt, "error": f"{bad[0]!r}"}
                    )
                    continue
                tag = f"{item.source}>mt:{getattr(translator, 'name', 'translator')}"
                if has_options(item):
                    out.append(
                        replace(item, lang=tgt, question=got[0], options=got[1:], source=tag)
                    )
                else:
                    out.append(replace(item, lang=tgt, question=got[0]))
            bar.update(len(chunk))
    bar.close()
    return out, failures
