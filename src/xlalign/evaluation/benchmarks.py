"""Out-of-domain benchmarks (paper §5.3-5.4: MMMLU, MGSM, PAWS-X, LAMBADA) through lm-eval 0.4.13.

Evaluates an already-loaded model (base or PEFT) on explicitly named tasks and returns tidy rows.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

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

# What every table row of a LOCAL_TASKS benchmark says about itself.
STAND_IN_NOTE = "local stand-in (invented items in lm-eval's format, run offline); not MMMLU/MGSM/PAWS-X/LAMBADA"


def requests_per_item(task: str) -> int:
    """Log-likelihood requests lm-eval sends per item of ``task``, for the up-front estimate: one per
    choice of a multiple-choice task (PAWS-X 2, MMMLU and its stand-in 4), one for LAMBADA's target
    word (its accuracy and perplexity share it) and for a generated MGSM answer (its decoding is not
    counted)."""
    if "lambada" in task or task.startswith("mgsm"):
        return 1
    if task.startswith("paws"):
        return 2
    return 4


def local_task_requests(task: str, limit: int | None = None) -> list[list[str]] | None:
    """Per item of the first ``limit`` items of a shipped stand-in task (``LOCAL_TASKS``), the text
    (context + continuation) of each log-likelihood request lm-eval sends for it, for the up-front
    estimate: one per choice of a multiple-choice item, one per LAMBADA sentence. None for any other
    task."""
    import json

    import yaml

    path = LOCAL_TASKS_DIR / f"{task}.yaml"
    if not task.startswith("xl_local_") or not path.exists():
        return None
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    data = LOCAL_TASKS_DIR / spec["dataset_kwargs"]["data_files"]["test"]
    lines = data.read_text(encoding="utf-8").splitlines()
    docs = [json.loads(line) for line in lines if line.strip()]
    docs = docs[:limit] if limit else docs
    if "lambada" in spec.get("include", ""):
        return [[d["text"]] for d in docs]  # context (all but the last word) + " " + the last word
    out = []
    for d in docs:  # the _xl_local_mc_template prompt, then " A" .. " D"
        options = "".join(f"{c}. {d[c]}\n" for c in "ABCD")
        context = spec.get("description", "") + f"{d['Question'].strip()}\n{options}Answer:"
        out.append([f"{context} {c}" for c in "ABCD"])
    return out


def local_request_texts() -> list[str]:
    """The text of every request lm-eval sends for the shipped stand-in tasks, all items."""
    return [
        text
        for cells in LOCAL_TASKS.values()
        for tasks in cells.values()
        for task in tasks
        for item in local_task_requests(task) or []
        for text in item
    ]


def is_stand_in(benchmark: str) -> bool:
    """True for the shipped offline tasks (LOCAL_TASKS), which stand in for the papers' benchmarks."""
    return benchmark in LOCAL_TASKS


# Columns of the paper's Tables 2-4 (data/paper/ba_t02..04) -> (benchmark, metric, filter, scale).
# Each cell is the unweighted mean over the benchmark's evaluated languages (the paper prints one
# number per model and does not say how it averaged). MGSM "exact match" is lm-eval's
# flexible-extract filter (the number taken from the answer), our choice of its two filters.
PAPER_COLUMNS: dict[str, tuple[str, str, str, float]] = {
    "mmmlu": ("mmmlu", "acc", "none", 100.0),
    "mgsm_em": ("mgsm", "exact_match", "flexible-extract", 100.0),
    "lambada_ppl": ("lambada", "perplexity", "none", 1.0),
    "lambada_acc": ("lambada", "acc", "none", 100.0),
    "pawsx_acc": ("pawsx", "acc", "none", 100.0),
}
# The stand-ins' columns, named so that no table can mistake them for the paper's.
LOCAL_COLUMNS: dict[str, tuple[str, str, str, float]] = {
    "local_stand_in_mc_acc": ("xl_local_mc", "acc", "none", 100.0),
    "local_stand_in_lambada_ppl": ("xl_local_lambada", "perplexity", "none", 1.0),
    "local_stand_in_lambada_acc": ("xl_local_lambada", "acc", "none", 100.0),
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


def resolve_benchmarks(
    names: Iterable[str], langs: Iterable[str]
) -> dict[str, dict[str, tuple[str, ...]]]:
    """A registry (benchmark -> language -> tasks) for a profile's ``experiments.benchmarks``.

    A key of PAPER_TASKS or LOCAL_TASKS becomes its cells for the languages of ``langs`` it has
    (in the order of ``langs``); a key with none of them raises :class:`BenchmarkError` naming the
    languages it has. Any other name is taken as one explicit lm-eval task (language ""), checked
    against lm-eval's index when it runs.
    """
    langs = list(dict.fromkeys(langs))
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for name in dict.fromkeys(names):
        registry = PAPER_TASKS if name in PAPER_TASKS else LOCAL_TASKS
        if name not in registry:
            out[name] = {"": (name,)}
            continue
        cells = {lang: registry[name][lang] for lang in langs if lang in registry[name]}
        if not cells:
            raise BenchmarkError(
                f"benchmark {name!r} has no task in any of the profile's languages "
                f"{' '.join(langs)}; it has: {' '.join(sorted(registry[name]))}"
            )
        out[name] = cells
    return out


def benchmark_plan(names: Iterable[str], langs: Iterable[str]) -> list[dict[str, Any]]:
    """What notebook 06 would run, without lm-eval: one row per benchmark with its languages, the
    number of lm-eval tasks, whether it is a local stand-in, and the languages it lacks."""
    langs = list(dict.fromkeys(langs))
    rows = []
    for bench, cells in resolve_benchmarks(names, langs).items():
        known = PAPER_TASKS.get(bench) or LOCAL_TASKS.get(bench) or cells
        rows.append(
            {
                "benchmark": bench,
                "langs": [lang for lang in cells if lang],
                "tasks": sum(len(t) for t in cells.values()),
                "stand_in": is_stand_in(bench),
                "not_available": [lang for lang in langs if lang not in known],
            }
        )
    return rows


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


# --------------------------------------------------------------------------- Tables 2-4 and tests

# Per-item 0/1 metrics: paired by McNemar. Anything else (LAMBADA's per-item NLL) by paired bootstrap.
_BINARY_METRICS = {"acc", "acc_norm", "exact_match"}


def table_columns(registry: Mapping[str, Any]) -> dict[str, tuple[str, str, str, float]]:
    """The Tables 2-4 columns (PAPER_COLUMNS) and stand-in columns (LOCAL_COLUMNS) of ``registry``."""
    every = PAPER_COLUMNS | LOCAL_COLUMNS
    return {col: spec for col, spec in every.items() if spec[0] in registry}


def _item_metric(metric: str) -> str:
    # item_rows stores a LAMBADA item's target log-likelihood as its NLL.
    return "nll" if metric in _LOG_MEAN_METRICS else metric


def _per_language(
    items: Iterable[Mapping[str, Any]],
    registry: Mapping[str, Mapping[str, tuple[str, ...]]],
    bench: str,
    metric: str,
    filt: str,
) -> dict[str, pd.Series]:
    """Per language of ``bench``: the items' values indexed by (task, doc_id), sorted."""
    import pandas as pd

    lang_of = {t: lang for lang, tasks in registry[bench].items() for t in tasks}
    want = _item_metric(metric)
    keep = [
        (lang_of[r["task"]], r["task"], r["doc_id"], r["value"])
        for r in items
        if r["task"] in lang_of and r["metric"] == want and r["filter"] == filt
    ]
    if not keep:
        return {}
    frame = pd.DataFrame(keep, columns=["lang", "task", "doc_id", "value"])
    out = {}
    for lang in registry[bench]:
        part = frame[frame["lang"] == lang]
        if len(part):
            out[lang] = part.set_index(["task", "doc_id"])["value"].sort_index()
    return out


def _cell(arrays: Iterable[np.ndarray], metric: str) -> float:
    """Unweighted mean over languages of each language's value (perplexity: exp of mean NLL)."""
    per = [math.exp(a.mean()) if metric in _LOG_MEAN_METRICS else a.mean() for a in arrays]
    return float(np.mean(per))


def _bootstrap(
    langs: list[list[np.ndarray]], metric: str, n_resamples: int, seed: int
) -> np.ndarray:
    """(n_resamples, arms) bootstrap values of :func:`_cell`: items resampled within each language,
    with one draw shared by all arms (the arrays of a language are paired item by item)."""
    rng = np.random.default_rng(seed)
    arms = len(langs[0])
    out = np.zeros((n_resamples, arms))
    for arrays in langs:
        n = len(arrays[0])
        for start in range(0, n_resamples, 50):
            size = min(50, n_resamples - start)
            idx = rng.integers(0, n, size=(size, n))
            for k, a in enumerate(arrays):
                means = a[idx].mean(axis=1)
                out[start : start + size, k] += (
                    np.exp(means) if metric in _LOG_MEAN_METRICS else means
                )
    return out / len(langs)


def _aligned(
    series: list[dict[str, pd.Series]], labels: list[str], column: str
) -> dict[str, list[np.ndarray]]:
    """Per language, each arm's values on the same items; raises naming what differs."""
    langs = list(series[0])
    for s, label in zip(series[1:], labels[1:], strict=True):
        if list(s) != langs:
            raise BenchmarkError(
                f"{column}: {label!r} was evaluated in languages {list(s)}, {labels[0]!r} in {langs}"
            )
    out = {}
    for lang in langs:
        first = series[0][lang]
        for s, label in zip(series[1:], labels[1:], strict=True):
            other = s[lang]
            if not first.index.equals(other.index):
                only = first.index.symmetric_difference(other.index)
                raise BenchmarkError(
                    f"{column} ({lang}): {labels[0]!r} and {label!r} scored different items "
                    f"({len(first)} vs {len(other)}; e.g. {list(only[:3])}); evaluate both with "
                    "the same tasks and limit"
                )
        out[lang] = [s[lang].to_numpy(dtype=float) for s in series]
    return out


def benchmark_table(
    items: Mapping[str, Iterable[Mapping[str, Any]]],
    registry: Mapping[str, Mapping[str, tuple[str, ...]]],
    model: str,
    *,
    baseline: str = "baseline",
    n_resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Tables 2-4's layout in the tidy schema: per block of ``items`` (block -> item_rows), one row
    per column of :func:`table_columns` with a 95% bootstrap CI and ``delta`` = value - ``baseline``.

    Accuracies are in percent, perplexities as is. Stand-in columns go to table
    ``ours_local_stand_in``, the paper's to ``ours_t02_04``.
    """
    import pandas as pd

    rows = []
    blocks = list(items)
    for column, (bench, metric, filt, scale) in table_columns(registry).items():
        per_block = {b: _per_language(items[b], registry, bench, metric, filt) for b in blocks}
        have = [b for b in blocks if per_block[b]]
        if not have:
            continue
        base = baseline if baseline in have else None
        for block in have:
            arms = [block] + ([base] if base and base != block else [])
            langs = _aligned([per_block[b] for b in arms], arms, column)
            value = _cell([a[0] for a in langs.values()], metric) * scale
            boot = _bootstrap(list(langs.values()), metric, n_resamples, seed) * scale
            low, high = np.percentile(boot[:, 0], [2.5, 97.5])
            delta = np.nan
            if base and base != block:
                delta = value - _cell([a[1] for a in langs.values()], metric) * scale
            rows.append(
                {
                    "table": "ours_local_stand_in" if is_stand_in(bench) else "ours_t02_04",
                    "block": block,
                    "model": model,
                    "column": column,
                    "value": value,
                    "delta": delta,
                    "ci_low": float(low),
                    "ci_high": float(high),
                }
            )
    return pd.DataFrame(
        rows, columns=["table", "block", "model", "column", "value", "delta", "ci_low", "ci_high"]
    )


def paired_tests(
    items_a: Iterable[Mapping[str, Any]],
    items_b: Iterable[Mapping[str, Any]],
    registry: Mapping[str, Mapping[str, tuple[str, ...]]],
    *,
    a: str = "a",
    b: str = "b",
    alpha: float = 0.01,
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One paired test of B against A per column of :func:`table_columns`, on the same items.

    0/1 metrics (accuracy, exact match): McNemar over all items of the benchmark's languages
    (``stats.mcnemar_test``: exact below 25 discordant pairs). Others (perplexity): a paired
    bootstrap, items resampled within each language with one draw for both models; its p-value is
    two-sided, twice the smaller share of resampled deltas on either side of 0 (at least
    1/(n_resamples + 1)). Every row has delta = B - A with its 95% paired-bootstrap CI.
    """
    from xlalign.evaluation.stats import mcnemar_test

    items_a, items_b = list(items_a), list(items_b)
    out = []
    for column, (bench, metric, filt, scale) in table_columns(registry).items():
        sa = _per_language(items_a, registry, bench, metric, filt)
        sb = _per_language(items_b, registry, bench, metric, filt)
        if not sa or not sb:
            continue
        langs = _aligned([sa, sb], [a, b], column)
        value_a = _cell([x[0] for x in langs.values()], metric) * scale
        value_b = _cell([x[1] for x in langs.values()], metric) * scale
        boot = _bootstrap(list(langs.values()), metric, n_resamples, seed) * scale
        deltas = boot[:, 1] - boot[:, 0]
        low, high = np.percentile(deltas, [2.5, 97.5])
        pooled_a = np.concatenate([x[0] for x in langs.values()])
        pooled_b = np.concatenate([x[1] for x in langs.values()])
        binary = metric in _BINARY_METRICS and set(np.unique(np.r_[pooled_a, pooled_b])) <= {0, 1}
        row = {
            "column": column,
            "benchmark": bench,
            "metric": metric,
            "filter": filt,
            "stand_in": is_stand_in(bench),
            "a": a,
            "b": b,
            "langs": " ".join(langs),
            "n": int(pooled_a.size),
            "value_a": value_a,
            "value_b": value_b,
            "delta": value_b - value_a,
            "ci_low": float(low),
            "ci_high": float(high),
        }
        if binary:
            res = mcnemar_test(pooled_a, pooled_b, alpha=alpha)
            row |= {"test": "mcnemar", "statistic": res.statistic, "pvalue": res.pvalue}
            row |= {"discordant_b": res.b, "discordant_c": res.c}
        else:
            below = (np.sum(deltas <= 0) + 1) / (n_resamples + 1)
            above = (np.sum(deltas >= 0) + 1) / (n_resamples + 1)
            pvalue = float(min(1.0, 2 * min(below, above)))
            row |= {"test": "paired bootstrap", "statistic": float("nan"), "pvalue": pvalue}
            row |= {"discordant_b": None, "discordant_c": None}
        row["significant"] = row["pvalue"] < alpha
        out.append(row)
    return out
