"""CALM's questions: items grouped into parallel questions across languages, and the train/test split.

The shipped corpus's multiple-choice questions become items here; public tasks come from xlalign.sources.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

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
