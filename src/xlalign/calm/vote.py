"""Sample m chain-of-thought answers per question and language, and majority-vote across languages.

The vote's tie-break is documented in ``majority_vote``; Figure 3's vote accuracy is computed here.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from xlalign.calm.items import gold, n_options
from xlalign.calm.parse import parse_answer
from xlalign.calm.prompts import build_prompt

# --------------------------------------------------------------------------- sampling


@dataclass
class Sample:
    """One sampled CoT answer: the j-th of m for question ``qid`` in ``lang``.

    ``letter`` is the parsed answer: an option letter, or for a numeric task (``n_options`` 0) the
    canonical number ("18", "3.5"); ``gold`` is written the same way.
    """

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
    from xlalign.probe.build import render_prompt

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
    ``generation.sample_shared_prefill`` encodes each prompt once for its m samples (with a
    ``tqdm.auto`` progress bar over prompts).
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
        n, g = n_options(item), gold(item)
        for j, text in enumerate(outs):
            samples.append(Sample(qid, lang, j, text, parse_answer(text, lang, n), g, n))
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
