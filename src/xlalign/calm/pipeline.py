"""The whole CALM chain: sample -> vote -> pairs -> DPO (+ baselines) -> evaluation, under ``calm/``.

Every intermediate (samples, votes, pairs, counts, predictions) is written into the run directory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from xlalign.calm.items import corpus_items, group_items, split_questions
from xlalign.calm.pairs import build_pairs, ground_truth_pairs, gt_sft_rows, pair_counts, sft_rows
from xlalign.calm.variants import _load_adapter, _train_variant, predict, score
from xlalign.calm.vote import SamplerFn, render_prompts, sample_answers, vote_accuracy, vote_all
from xlalign.config import Profile
from xlalign.results import CalmRun
from xlalign.runs import jsonable, write_json, write_jsonl

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- the whole chain


def load_calm_items(profile: Profile, langs: Sequence[str]) -> tuple[list, dict[str, str]]:
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
) -> CalmRun:
    """Sample -> vote -> pairs -> DPO (+ baselines) -> evaluation; everything under ``run_dir/calm/``.

    ``items``: MCQ items (``qid, lang, question, options, answer, context``) such as
    ``loaders.MCQItem`` from X-CSQA, as a list or ``{lang: [items]}``; default: the shipped corpus's MCQs with the probe's topic
    split. Questions are split into training questions (sampled, voted, trained on; at most
    ``calm.max_questions``) and held-out test questions (evaluated in ``calm.eval_langs``, at most
    ``eval.max_items_per_lang``). ``baselines``: any of sft, gt_dpo, gt_sft. ``calm.incremental``
    adds Table 10's runs that vote over the first 1..n-1 training languages only;
    ``compare_batching`` also trains CALM with the other batching. ``batch_size``: pairs per
    micro-batch (default ``calm.train.batch_size``: 1 as in Table 5).
    Questions without a vote, ties, languages without pairs and failed translations are counted in
    ``counts.json``, never raised. Returns the main results and wall times as a ``CalmRun``.
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
    batch_size = batch_size or c.train.batch_size

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
    write_jsonl(out / "samples.jsonl", (asdict(s) for s in samples))

    # 2. Voting.
    votes = vote_all(samples, train_langs)
    write_jsonl(out / "votes.jsonl", (v.to_dict() for v in votes.values()))
    fig3 = vote_accuracy(samples, votes, train_langs)

    # 3. Pairs (translation happens here).
    t0 = time.perf_counter()
    translator = make_translator(c.translator, model, tokenizer)
    pairs = build_pairs(samples, votes, train_prompts, translator, train_langs, pairing=pairing)
    walls["pairs"] = time.perf_counter() - t0
    counts = pair_counts(samples, votes, pairs, train_langs)
    counts["dropped_incomplete_questions"] = len(dropped)
    write_jsonl(out / "pairs.jsonl", pairs.rows)
    write_jsonl(out / "translation_failures.jsonl", pairs.translation_failures)
    sft = sft_rows(samples, votes, train_prompts)
    write_jsonl(out / "sft.jsonl", sft)

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
    write_json(out / "counts.json", jsonable(counts), overwrite=True)

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
        write_jsonl(out / "predictions" / f"{name}.jsonl", preds.to_dict("records"))
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
    results = CalmRun(
        train_langs=train_langs,
        eval_langs=eval_langs,
        questions_train=len(train_q),
        questions_test=len(test_q),
        eval_on_train_questions=set(train_ids) == set(test_ids),
        sampling=stats.to_dict() if sampler is None else {"injected": True},
        counts=counts,
        vote_accuracy=fig3,
        training=training,
        evaluation=evaluation,
        incremental=table10,
        batching=batching_cmp,
        wall_times_s=walls,
    )
    write_json(out / "metrics.json", jsonable(results.to_dict()), overwrite=True)
    return results
