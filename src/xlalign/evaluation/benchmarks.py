"""Out-of-domain benchmarks (paper §5.3-5.4: MMMLU, MGSM, PAWS-X, LAMBADA) through lm-eval 0.4.13.

Evaluates an already-loaded model (base or PEFT) on explicitly named tasks and returns tidy rows.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Shipped with the package: offline stand-ins for MMMLU (xl_local_mc_<lang>) and LAMBADA
# (xl_local_lambada_<lang>) in lm-eval's YAML format, with invented items as local jsonl.
LOCAL_TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"

# The 57 MMLU subjects, in lm-eval's task-name spelling. Both lm-eval's MMLU (`mmlu_<subject>`) and
# its OpenAI MMMLU port (`mmmlu_<locale>_<subject>`) split the benchmark into one task per subject.
MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology "
    "college_chemistry college_computer_science college_mathematics college_medicine "
    "college_physics computer_security conceptual_physics econometrics electrical_engineering "
    "elementary_mathematics formal_logic global_facts high_school_biology high_school_chemistry "
    "high_school_computer_science high_school_european_history high_school_geography "
    "high_school_government_and_politics high_school_macroeconomics high_school_mathematics "
    "high_school_microeconomics high_school_physics high_school_psychology high_school_statistics "
    "high_school_us_history high_school_world_history human_aging human_sexuality "
    "international_law jurisprudence logical_fallacies machine_learning management marketing "
    "medical_genetics miscellaneous moral_disputes moral_scenarios nutrition philosophy "
    "prehistory professional_accounting professional_law professional_medicine "
    "professional_psychology public_relations security_studies sociology us_foreign_policy "
    "virology world_religions"
).split()

# ISO 639-1 code -> locale slug of lm-eval's `openai-mmmlu` tasks (dataset openai/MMMLU).
MMMLU_LOCALES = {
    "ar": "ar_xy",
    "bn": "bn_bd",
    "de": "de_de",
    "es": "es_la",
    "fr": "fr_fr",
    "hi": "hi_in",
    "id": "id_id",
    "it": "it_it",
    "ja": "ja_jp",
    "ko": "ko_kr",
    "pt": "pt_br",
    "sw": "sw_ke",
    "yo": "yo_ng",
    "zh": "zh_cn",
}


def _mmmlu_tasks() -> dict[str, tuple[str, ...]]:
    # openai/MMMLU holds human translations only, so English is the original MMLU (cais/mmlu),
    # whose lm-eval prompt is the same "question / A.-D. / Answer:" format.
    tasks = {"en": tuple(f"mmlu_{s}" for s in MMLU_SUBJECTS)}
    for lang, locale in MMMLU_LOCALES.items():
        tasks[lang] = tuple(f"mmmlu_{locale}_{s}" for s in MMLU_SUBJECTS)
    return tasks


def _one_each(pattern: str, langs: str) -> dict[str, tuple[str, ...]]:
    return {lang: (pattern.format(lang=lang),) for lang in langs.split()}


# benchmark -> language -> the explicit lm-eval 0.4.13 task names whose results make up that cell.
# Only leaf tasks, never groups or tags: tags can pull in extra variants (`mgsm_cot_native` also
# tags the mgsm_en_cot_* tasks), and group aggregates are recomputed by `language_rows` instead.
# MMMLU is split by lm-eval into 57 subject tasks per language (its per-locale `mmmlu_<locale>`
# names are groups), so its cells hold 57 names; every other cell holds one.
PAPER_TASKS: dict[str, dict[str, tuple[str, ...]]] = {
    "mmmlu": _mmmlu_tasks(),
    # Direct answering, scored by exact match (Table 3); lm-eval's default MGSM variant.
    "mgsm": _one_each("mgsm_direct_{lang}", "bn de en es fr ja ru sw te th zh"),
    # Chain of thought in the question's language, for comparison with the direct variant.
    "mgsm_native_cot": _one_each("mgsm_native_cot_{lang}", "bn de en es fr ja ru sw te th zh"),
    "pawsx": _one_each("paws_{lang}", "de en es fr ja ko zh"),
    # EleutherAI's LAMBADA multilingual, the version the paper cites; reports perplexity and acc.
    "lambada": _one_each("lambada_openai_mt_{lang}", "de en es fr it"),
    # Stability AI's separate LAMBADA translation; the only one with Portuguese. Kept apart from
    # "lambada" because scores across the two translations are not comparable.
    "lambada_stablelm": _one_each("lambada_openai_mt_stablelm_{lang}", "de en es fr it nl pt"),
}

# The shipped offline tasks, in the same shape as PAPER_TASKS (used by tests and smoke runs).
LOCAL_TASKS: dict[str, dict[str, tuple[str, ...]]] = {
    "xl_local_mc": _one_each("xl_local_mc_{lang}", "en es"),
    "xl_local_lambada": _one_each("xl_local_lambada_{lang}", "en es"),
}

# Metrics lm-eval aggregates as a plain mean over items, so a size-weighted mean of per-task values
# equals the pooled value; perplexity (exp of the mean negative log-likelihood) pools in log space.
_MEAN_METRICS = {"acc", "acc_norm", "exact_match", "f1", "mcc"}
_LOG_MEAN_METRICS = {"perplexity"}


class BenchmarkError(ValueError):
    """A benchmark request that cannot be run as given; the message says what to change."""


def paper_task_names(
    benchmarks: str | Iterable[str],
    langs: str | Iterable[str],
    *,
    registry: Mapping[str, Mapping[str, tuple[str, ...]]] = PAPER_TASKS,
    skip_missing: bool = False,
) -> list[str]:
    """Explicit lm-eval task names for ``benchmarks`` x ``langs``, in that order.

    A language a benchmark lacks raises :class:`BenchmarkError` naming both and the languages the
    benchmark has, unless ``skip_missing`` drops such pairs (e.g. to ask for every project
    language and take what exists).
    """
    benchmarks = [benchmarks] if isinstance(benchmarks, str) else list(benchmarks)
    langs = [langs] if isinstance(langs, str) else list(langs)
    names: list[str] = []
    for bench in benchmarks:
        if bench not in registry:
            raise BenchmarkError(
                f"unknown benchmark {bench!r}; known: {', '.join(sorted(registry))}"
            )
        for lang in langs:
            if lang not in registry[bench]:
                if skip_missing:
                    continue
                raise BenchmarkError(
                    f"benchmark {bench!r} has no task for language {lang!r} in lm-eval 0.4.13; "
                    f"it has: {' '.join(sorted(registry[bench]))}"
                )
            names.extend(n for n in registry[bench][lang] if n not in names)
    return names


def missing_languages(
    langs: Iterable[str], registry: Mapping[str, Mapping[str, tuple[str, ...]]] = PAPER_TASKS
) -> dict[str, list[str]]:
    """For each benchmark, the languages of ``langs`` it has no task for."""
    langs = list(langs)
    return {
        bench: [lang for lang in langs if lang not in cells] for bench, cells in registry.items()
    }


@functools.lru_cache(maxsize=4)
def _cached_task_manager(paths: tuple[str, ...]):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths))


def task_manager(include_path: str | Path | Iterable[str | Path] | None = None):
    """lm-eval ``TaskManager`` over its built-in tasks, LOCAL_TASKS_DIR and ``include_path``.

    Cached per set of paths because indexing lm-eval's ~15k task YAMLs takes ~10 s; a cached
    manager does not see task files added to those folders after its first use.
    """
    if include_path is None:
        extra = []
    elif isinstance(include_path, str | Path):
        extra = [include_path]
    else:
        extra = list(include_path)
    paths = [str(LOCAL_TASKS_DIR)] + [str(Path(p).resolve()) for p in extra]
    return _cached_task_manager(tuple(dict.fromkeys(paths)))


def check_task_names(names: Iterable[str], manager) -> None:
    """Raise :class:`BenchmarkError` unless every name is a registered leaf task of ``manager``.

    Unknown names are reported with the closest registered names; groups and tags are refused
    with their members, because they can expand to variants nobody asked for.
    """
    known = manager.all_tasks
    leaf = set(manager.all_subtasks)
    problems = []
    for name in names:
        if name in leaf:
            continue
        if name not in manager.task_index:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
            hint = f"closest known: {', '.join(close)}" if close else "no close match"
            problems.append(f"unknown lm-eval task {name!r} ({hint})")
            continue
        entry = manager.task_index[name]
        if name in manager.all_tags:
            members = sorted(entry.tags)
            kind = "tag"
        else:
            members = list((entry.cfg or {}).get("task") or [])
            kind = "group"
        shown = ", ".join(str(m) for m in members[:6]) + (", ..." if len(members) > 6 else "")
        problems.append(f"{name!r} is an lm-eval {kind}, not a task; name its tasks: {shown}")
    if problems:
        raise BenchmarkError("; ".join(problems))


def wrap_model(model, tokenizer, batch_size: int = 1, max_length: int | None = None):
    """An lm-eval ``HFLM`` around an already-loaded causal LM (``PreTrainedModel`` or PEFT model).

    A ``PeftModel`` is passed through unmerged: HFLM only calls ``model(input_ids).logits``, which
    runs the adapter, so nothing is copied. Merging instead would need a second copy of the
    weights (``merge_and_unload`` on a deepcopy) or would destroy the caller's adapter in place,
    and on a 4-bit QLoRA base it would also round the merged weights. Note that HFLM puts the
    model in eval mode and may set ``tokenizer.pad_token``; ``run_benchmarks`` restores the mode.
    """
    from lm_eval.models.huggingface import HFLM

    if tokenizer is None:
        # HFLM would otherwise load one from model.name_or_path, possibly from the hub.
        raise BenchmarkError("wrap_model needs the model's tokenizer; got None")
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def _as_float(value: Any) -> float | None:
    """lm-eval writes "N/A" where it has no stderr; keep numbers, map anything else to None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def result_rows(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Tidy rows ``{task, metric, filter, value, stderr, n}`` from a ``simple_evaluate`` result.

    lm-eval keys each value as ``"<metric>,<filter>"`` (e.g. ``"exact_match,flexible-extract"``
    for MGSM, ``"perplexity,none"`` for LAMBADA) next to ``"<metric>_stderr,<filter>"``; ``n`` is
    the number of items actually scored (after ``limit``).
    """
    rows = []
    n_samples = raw.get("n-samples", {})
    for task, metrics in raw["results"].items():
        n = n_samples.get(task, {}).get("effective")
        for key, value in metrics.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "filter": filt,
                    "value": _as_float(value),
                    "stderr": _as_float(metrics.get(f"{metric}_stderr,{filt}")),
                    "n": n,
                }
            )
    return rows


def item_rows(raw: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-item scores ``{task, doc_id, filter, metric, value}`` for paired tests (stats.py).

    Needs ``log_samples`` (run_benchmarks keeps it on). lm-eval stores a LAMBADA item's target
    log-likelihood under ``perplexity``; it is emitted here as ``nll`` (= -loglikelihood), so that
    ``stats.paired_bootstrap_ppl_delta(nll_a, 1, nll_b, 1)`` reproduces lm-eval's perplexity.
    """
    rows = []
    for task, samples in (raw.get("samples") or {}).items():
        for sample in samples:
            for metric in sample["metrics"]:
                value = sample[metric]
                if metric in _LOG_MEAN_METRICS:
                    metric, value = "nll", -value
                rows.append(
                    {
                        "task": task,
                        "doc_id": sample["doc_id"],
                        "filter": sample["filter"],
                        "metric": metric,
                        "value": float(value),
                    }
                )
    return rows


def language_rows(
    rows: Iterable[Mapping[str, Any]],
    registry: Mapping[str, Mapping[str, tuple[str, ...]]] = PAPER_TASKS,
) -> list[dict[str, Any]]:
    """One row per (benchmark, language, metric, filter) whose tasks were all evaluated.

    Multi-task cells (MMMLU's 57 subjects) are pooled weighted by items scored, as lm-eval's own
    ``weight_by_size`` groups do: a mean for acc-like metrics (stderr pooled with lm-eval's
    ``pooled_sample_stderr``), a log-space mean for perplexity (stderr None). Metrics that cannot
    be pooled this way are only passed through for single-task cells.
    """
    from lm_eval.api.metrics import pooled_sample_stderr

    by_key = {(row["task"], row["metric"], row["filter"]): row for row in rows}
    done = {task for task, _, _ in by_key}
    out = []
    for bench, cells in registry.items():
        for lang, tasks in cells.items():
            if not set(tasks) <= done:
                continue
            pairs = sorted({(m, f) for (t, m, f) in by_key if t == tasks[0]})
            for metric, filt in pairs:
                parts = [by_key.get((t, metric, filt)) for t in tasks]
                if any(p is None or p["value"] is None or not p["n"] for p in parts):
                    continue
                sizes = [p["n"] for p in parts]
                total = sum(sizes)
                if len(parts) == 1:
                    value, stderr = parts[0]["value"], parts[0]["stderr"]
                elif metric in _MEAN_METRICS:
                    value = sum(p["value"] * s for p, s in zip(parts, sizes, strict=True)) / total
                    errs = [p["stderr"] for p in parts]
                    stderr = None if None in errs else float(pooled_sample_stderr(errs, sizes))
                elif metric in _LOG_MEAN_METRICS:
                    logs = sum(math.log(p["value"]) * s for p, s in zip(parts, sizes, strict=True))
                    value, stderr = math.exp(logs / total), None
                else:
                    continue
                out.append(
                    {
                        "benchmark": bench,
                        "lang": lang,
                        "metric": metric,
                        "filter": filt,
                        "value": value,
                        "stderr": stderr,
                        "n": total,
                        "tasks": len(tasks),
                    }
                )
    return out


def run_benchmarks(
    model,
    tokenizer,
    tasks: Iterable[str],
    limit: int | float | None = None,
    include_path: str | Path | Iterable[str | Path] | None = None,
    batch_size: int = 1,
    seed: int = 0,
    *,
    num_fewshot: int | None = None,
    bootstrap_iters: int = 1000,
    **evaluate_kwargs: Any,
) -> dict[str, Any]:
    """Evaluate ``model`` on explicitly named lm-eval tasks; returns ``{"rows", "raw"}``.

    ``rows`` are :func:`result_rows` of ``raw``, lm-eval's ``simple_evaluate`` result (with
    per-item ``samples``). Task names are checked before anything runs (see
    :func:`check_task_names`); LOCAL_TASKS_DIR is always searched, ``include_path`` adds folders.
    ``limit`` caps items per task (0 or None: all; a float < 1 is a fraction); all four of
    lm-eval's seeds are set to ``seed``. ``bootstrap_iters`` is only used for stderrs of
    non-mean metrics such as perplexity (lm-eval's default of 100000 is slow on CPU); other
    ``simple_evaluate`` arguments (e.g. ``apply_chat_template``) pass through.
    """
    import lm_eval

    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks:
        raise BenchmarkError("run_benchmarks needs at least one task name")
    manager = task_manager(include_path)
    check_task_names(tasks, manager)

    was_training = getattr(model, "training", False)
    try:
        raw = lm_eval.simple_evaluate(
            model=wrap_model(model, tokenizer, batch_size=batch_size),
            tasks=tasks,
            task_manager=manager,
            num_fewshot=num_fewshot,
            limit=limit or None,
            bootstrap_iters=bootstrap_iters,
            log_samples=True,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            **evaluate_kwargs,
        )
    finally:
        # HFLM switched the caller's model to eval mode; give it back as it came.
        if was_training:
            model.train()
    return {"rows": result_rows(raw), "raw": raw}
