"""The whole CALM chain: task items -> sample -> vote -> pairs -> DPO (+ baselines) -> evaluation.

Every intermediate (samples, votes, pairs, counts, predictions) is written into the run directory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from xlalign.calm.items import (
    check_items,
    check_task_languages,
    group_items,
    load_calm_items,
    load_task_items,
    split_questions,
    task_eval_langs,
    translate_items,
)
from xlalign.calm.pairs import build_pairs, ground_truth_pairs, gt_sft_rows, pair_counts, sft_rows
from xlalign.calm.variants import (
    _load_adapter,
    _train_variant,
    calm_eval_batch_size,
    predict,
    score,
)
from xlalign.calm.vote import SamplerFn, render_prompts, sample_answers, vote_accuracy, vote_all
from xlalign.config import Profile
from xlalign.results import CalmRun
from xlalign.runs import jsonable, write_json, write_jsonl

log = logging.getLogger(__name__)

__all__ = ["CalmTaskRuns", "load_calm_items", "run_calm"]

# --------------------------------------------------------------------------- the whole chain


class CalmTaskRuns(dict):
    """``{task: CalmRun}`` of a run over several tasks (``calm.tasks``), in the profile's order.

    ``counts``, ``vote_accuracy``, ``incremental``, ``evaluation`` and ``training`` give each
    task's field as ``{task: ...}``, so a notebook reads one task's run and several tasks' alike.
    """

    def __getattr__(self, name: str):
        if name.startswith("_") or name not in CalmRun.__dataclass_fields__:
            raise AttributeError(name)
        return {task: getattr(run, name) for task, run in self.items()}

    def to_dict(self) -> dict:
        return {task: run.to_dict() for task, run in self.items()}


def run_calm(
    profile: Profile,
    run_dir: str | Path,
    model=None,
    tokenizer=None,
    items: Sequence | dict[str, Sequence] | None = None,
    *,
    task: str | None = None,
    sampler: SamplerFn | None = None,
    baselines: Sequence[str] = ("sft", "gt_dpo", "gt_sft"),
    compare_batching: bool = False,
    batch_size: int | None = None,
    pairing: str = "one",
) -> CalmRun | CalmTaskRuns:
    """Sample -> vote -> pairs -> DPO (+ baselines) -> evaluation, under ``run_dir/calm/``.

    ``items``: MCQ items (``qid, lang, question, options, answer, context``, such as
    ``sources.common.MCQItem`` from X-CSQA) or numeric ones (``qid, lang, question,
    answer_number``, such as ``MathItem`` from MGSM), as a list or ``{lang: [items]}``. Without
    items, each task of ``calm.tasks`` (or ``task``) is read by ``items.load_task_items`` from
    ``calm.data_dir``: corpus_mcq (the shipped corpus's MCQs with the probe's topic split), xcsqa,
    medqa (each bank translated into the other languages by ``calm.translator``), mgsm. One task
    writes into ``calm/`` and returns a ``CalmRun``; several write into ``calm/<task>/`` (listed
    in ``calm/tasks.json``) and return a ``CalmTaskRuns``.

    Questions are split into training questions (sampled, voted, trained on; at most
    ``calm.max_questions``) and held-out test questions (evaluated in ``calm.eval_langs``, MedQA
    in ``calm.medqa_eval_langs`` where set, at most ``eval.max_items_per_lang``), decoded as
    ``calm.eval_decoding`` says. ``baselines``: any of sft, gt_dpo, gt_sft. ``calm.incremental``
    adds Table 10's sequential runs: step k continues training step k-1's adapter on the pairs
    of a vote over the first k training languages. ``compare_batching`` also trains CALM with the
    other batching. ``batch_size``: pairs per micro-batch (default ``calm.train.batch_size``: 1
    as in Table 5). Questions without a vote, ties, languages without pairs and failed
    translations are counted in ``counts.json``, never raised; items without the answer field
    their parser needs are refused (``CalmItemError``) before any model loads.
    """
    tasks = [task] if task else list(profile.calm.tasks)
    common = dict(
        sampler=sampler, baselines=baselines, compare_batching=compare_batching,
        batch_size=batch_size, pairing=pairing,
    )  # fmt: skip
    out = Path(run_dir) / "calm"
    if items is not None:
        return _run_task(profile, out, None, model, tokenizer, items, **common)
    if len(tasks) == 1:
        return _run_task(profile, out, tasks[0], model, tokenizer, None, **common)
    # Every task's languages first (no file read), then every task's items, then the model: bad
    # input fails in seconds, whichever task holds it.
    for t in tasks:
        check_task_languages(profile, t, _task_langs(profile, t))
    loaded = {t: _task_items(profile, t) for t in tasks}
    if model is None:
        from xlalign.models import load_model

        model, tokenizer = load_model(profile)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "tasks.json", {"tasks": tasks}, overwrite=True)
    runs = CalmTaskRuns()
    for t in tasks:
        runs[t] = _run_task(profile, out / t, t, model, tokenizer, None, loaded=loaded[t], **common)
    return runs


def _task_langs(profile: Profile, task: str) -> list[str]:
    return list(dict.fromkeys(list(profile.calm.train_langs) + task_eval_langs(profile, task)))


def _task_items(profile: Profile, task: str):
    langs = _task_langs(profile, task)
    return load_task_items(profile, task, langs), langs


def _run_task(
    profile: Profile,
    out: Path,
    task: str | None,
    model,
    tokenizer,
    items,
    *,
    loaded=None,
    sampler: SamplerFn | None,
    baselines: Sequence[str],
    compare_batching: bool,
    batch_size: int | None,
    pairing: str,
) -> CalmRun:
    from xlalign.generation import SamplingStats
    from xlalign.translate import make_translator

    c = profile.calm
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    walls: dict[str, float] = {}
    t_all = time.perf_counter()
    train_langs = list(c.train_langs)
    eval_langs = task_eval_langs(profile, task) if task else list(c.eval_langs)
    all_langs = list(dict.fromkeys(train_langs + eval_langs))
    batch_size = batch_size or c.train.batch_size

    # Questions: read and checked before the model loads.
    translate_from: list[str] = []
    if items is None:
        task_items, _ = loaded or _task_items(profile, task)
        items, split = task_items.items, task_items.split
        translate_from = task_items.translate_from
    else:
        split = None
        if isinstance(items, dict):  # {lang: [items]}, as loaders.load_xcsqa returns
            items = [item for per_lang in items.values() for item in per_lang]
        items = list(items)
        check_items(items)

    if model is None:
        from xlalign.models import load_model

        model, tokenizer = load_model(profile)
    translator = make_translator(c.translator, model, tokenizer)
    question_failures: list[dict] = []
    if translate_from:
        # A question bank that is not parallel (MedQA): its questions in the other languages come
        # from the profile's translator (paper §2.1), and are written out for inspection.
        t0 = time.perf_counter()
        translated, question_failures = translate_items(items, all_langs, translator)
        items = items + translated
        walls["translate_questions"] = time.perf_counter() - t0
        write_jsonl(out / "translated_items.jsonl", (asdict(i) for i in translated))
        write_jsonl(out / "question_translation_failures.jsonl", question_failures)
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
    pairs = build_pairs(samples, votes, train_prompts, translator, train_langs, pairing=pairing)
    walls["pairs"] = time.perf_counter() - t0
    counts = pair_counts(samples, votes, pairs, train_langs)
    counts["dropped_incomplete_questions"] = len(dropped)
    counts["task"] = task or "items"
    counts["translated_questions_from"] = translate_from
    counts["question_translation_failures"] = len(question_failures)
    write_jsonl(out / "pairs.jsonl", pairs.rows)
    write_jsonl(out / "translation_failures.jsonl", pairs.translation_failures)
    sft = sft_rows(samples, votes, train_prompts)
    write_jsonl(out / "sft.jsonl", sft)

    # 4. Training: CALM and the baselines, each from the untouched base model; Table 10's steps
    #    (``after``) each from the adapter of the step before.
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
    # Table 10 (paper §3.4): training "sequentially, beginning with English and incrementally adding
    # French and Chinese". Step k votes over the first k training languages and continues training
    # step k-1's adapter on those pairs. Our reading of the details the paper leaves open: step k
    # trains on all pairs of its k-language vote (not only the new language's), and DPO's reference
    # is the base model (the adapter switched off), not step k-1's model.
    incremental: dict[str, dict] = {}
    after: dict[str, str] = {}
    if c.incremental and len(train_langs) > 1:
        previous = None
        for k in range(1, len(train_langs) + 1):
            sub = train_langs[:k]
            sub_votes = vote_all(samples, sub)
            sub_pairs = build_pairs(
                samples, sub_votes, train_prompts, translator, sub, pairing=pairing
            )
            name = "calm_" + "+".join(sub)
            variants[name] = ("dpo", sub_pairs.rows, c.batching)
            if previous:
                after[name] = previous
            previous = name
            incremental[name] = {
                "langs": sub,
                "continues": after.get(name),
                "counts": pair_counts(samples, sub_votes, sub_pairs, sub),
            }
    counts["incremental"] = {k: v["counts"] for k, v in incremental.items()}
    write_json(out / "counts.json", jsonable(counts), overwrite=True)

    training: dict[str, dict] = {}
    for name, (method, rows, batching) in tqdm(variants.items(), desc="CALM training"):
        if batch_size == 1 and batching == "aligned":
            log.warning(
                "%s: aligned batching with batch_size 1 only changes the order of pairs", name
            )
        # A sequential step whose predecessor trained nothing continues the last step that did.
        init = None
        step = after.get(name)
        while step and init is None:
            init = training.get(step, {}).get("adapter_dir")
            step = after.get(step)
        t0 = time.perf_counter()
        training[name] = _train_variant(
            profile, method, rows, batching, batch_size, out / "train" / name, model, tokenizer,
            init_adapter=init,
        )  # fmt: skip
        walls[f"train_{name}"] = time.perf_counter() - t0

    # 5. Evaluation: base model and every trained adapter, same prompts, decoded as
    #    calm.eval_decoding says (greedy, or one seeded sample at T and top_p as Table 6).
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
            calm_eval_batch_size(profile),
            decoding=c.eval_decoding,
            temperature=c.temperature,
            top_p=c.top_p,
            seed=profile.seed,
        )
        if policy is not model:
            del policy
        write_jsonl(out / "predictions" / f"{name}.jsonl", preds.to_dict("records"))
        evaluation[name] = score(preds)
        walls[f"eval_{name}"] = time.perf_counter() - t0

    # Table 10: one row per sequential step; the last has every training language.
    table10 = {
        name: {"langs": v["langs"], "continues": v["continues"], "metrics": evaluation.get(name)}
        for name, v in incremental.items()
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
