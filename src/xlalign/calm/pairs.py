"""CALM's training rows: DPO pairs (the voted answer, translated, against inconsistent ones) and SFT rows.

Also the ground-truth baselines' rows (GT-DPO, GT-SFT) and the counts of what was paired or dropped.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from xlalign.calm.parse import split_answer
from xlalign.calm.prompts import format_completion
from xlalign.calm.vote import Sample, Vote, _pct
from xlalign.translate import TranslationError, Translator

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
    from tqdm.auto import tqdm

    translated: dict[tuple, str | Exception] = {}
    bar = tqdm(wanted.items(), desc="translate explanations", disable=len(wanted) < 2)
    for (src, tgt), keys in bar:
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
