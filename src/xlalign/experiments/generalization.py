"""Notebook 06 (batch-alignment paper §5.3-5.4): unseen languages and out-of-domain benchmarks for
the base model and notebook 03's adapters.
"""

from __future__ import annotations

import gc
import json
import time

import pandas as pd

from xlalign import results
from xlalign.config import Profile, derive
from xlalign.experiments.steps import (
    adapter_label,
    compare,
    eval_subset,
    evaluate,
    prepare_data,
    probe_tidy,
    train,
)
from xlalign.runs import Run
from xlalign.training.run import TrainResult


def _method(profile: Profile) -> str:
    return "orpo" if "orpo" in profile.experiments.methods else profile.experiments.methods[0]


def aligned_arm_profile(profile: Profile) -> tuple[str, Profile]:
    """The label and profile of notebook 03's aligned arm, which notebook 06 evaluates."""
    method = _method(profile)
    return results.arm(method, "aligned"), derive(
        profile, train={"method": method, "batching": "aligned"}
    )


def benchmark_tasks(profile: Profile) -> tuple[list[str], str | None, int | None]:
    """What ``out_of_domain_study`` runs on each model: (lm-eval task names of
    :func:`benchmark_registry`, include path for the local stand-ins or None, per-task limit)."""
    from xlalign.evaluation import benchmarks

    registry = benchmark_registry(profile)
    tasks = [t for cells in registry.values() for ts in cells.values() for t in ts]
    stand_in = any(benchmarks.is_stand_in(b) for b in registry)
    include = str(benchmarks.LOCAL_TASKS_DIR) if stand_in else None
    return tasks, include, profile.experiments.benchmark_limit or None


def notebook03_arm(profile: Profile, run: Run, method: str, batching: str) -> TrainResult:
    """Notebook 03's ``method``/``batching`` adapter: read from the run, or trained now (the same
    configuration and label as notebook 03's, so notebook 03 then reuses it) when this notebook
    runs on its own."""
    from xlalign.experiments.batch_alignment import arm_profiles
    from xlalign.models import load_tokenizer

    label, p = arm_profiles(profile)[method, batching]  # KeyError: not a method notebook 03 runs
    done = run.path / "train" / label / "train_result.json"
    if done.exists():
        return TrainResult.from_dict(json.loads(done.read_text()))
    print(
        f"[xlalign] {label} (notebook 03's {batching} arm) is not in {run.path}: training it now, "
        f"{p.train.max_steps if p.train.max_steps > 0 else 'all'} steps of batch {p.train.batch_size}"
    )
    data = prepare_data(profile, run, load_tokenizer(profile))
    return train(p, run, label, data)


def aligned_arm(profile: Profile, run: Run) -> TrainResult:
    """Notebook 03's aligned adapter of the profile's main method (ORPO where it runs)."""
    return notebook03_arm(profile, run, _method(profile), "aligned")


def unseen_languages(profile: Profile, run: Run) -> dict:
    """Baseline vs notebook 03's aligned adapter (``aligned_arm``) on English and th/vi/hu/ro."""
    method = _method(profile)
    info = aligned_arm(profile, run)
    data = prepare_data(profile, run)
    langs = ["en"] + profile.data.unseen_langs
    rows = eval_subset(data.test_rows, langs, profile.eval.max_items_per_lang, profile.seed)
    name = profile.model.name
    base = evaluate(profile, run, results.baseline(name), rows)  # reuses notebook 02's predictions
    ours = evaluate(profile, run, results.unseen(method), rows, adapter_dir=info.adapter_dir)
    base_t = probe_tidy(base, "ours_t07", "baseline", name, langs, profile)
    table = pd.concat(
        [
            base_t,
            probe_tidy(
                ours,
                "ours_t07",
                results.block(method, "aligned"),
                name,
                langs,
                profile,
                baseline=base_t,
            ),  # fmt: skip
        ],
        ignore_index=True,
    )
    return {"table": table, "mcnemar": compare(base, ours, profile.eval.alpha)}


def benchmark_registry(profile: Profile) -> dict[str, dict[str, tuple[str, ...]]]:
    """experiments.benchmarks resolved for the profile's languages (data.train_langs +
    data.unseen_langs): benchmark -> language -> lm-eval task names."""
    from xlalign.evaluation import benchmarks

    langs = profile.data.train_langs + profile.data.unseen_langs
    return benchmarks.resolve_benchmarks(profile.experiments.benchmarks, langs)


def benchmark_arms(profile: Profile) -> list[tuple[str, str | None, str | None]]:
    """Tables 2-4's rows: (block, method, batching) for the base model, then per method of
    experiments.methods its default (uncoupled) and ours (aligned)."""
    arms: list[tuple[str, str | None, str | None]] = [("baseline", None, None)]
    for method in profile.experiments.methods:
        for batching in ("uncoupled", "aligned"):
            arms.append((results.block(method, batching), method, batching))
    return arms


def _benchmark_results(
    profile: Profile, run: Run, label: str, adapter_dir, tasks: list[str], include
) -> dict:
    """``eval/<label>/benchmarks.json``: lm-eval's task rows and per-item scores for one model,
    reused when an earlier call ran the same tasks, limit and seed."""
    from xlalign.evaluation import benchmarks
    from xlalign.evaluation.predictions import load_eval_model
    from xlalign.runs import write_json

    limit = profile.experiments.benchmark_limit or None
    key = {"tasks": tasks, "limit": limit, "seed": profile.seed}
    path = run.path / "eval" / label / "benchmarks.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if {k: saved.get(k) for k in key} == key:
            return saved
    t0 = time.perf_counter()
    model, tok = load_eval_model(profile, adapter_dir)
    res = benchmarks.run_benchmarks(
        model, tok, tasks, limit=limit, include_path=include, seed=profile.seed
    )
    del model
    gc.collect()
    out = key | {"rows": res["rows"], "items": benchmarks.item_rows(res["raw"])}
    run.sub("eval", label)
    write_json(path, out, overwrite=True)  # a different task list, limit or seed: recomputed
    run.step(
        f"benchmarks/{label}", wall_time_s=round(time.perf_counter() - t0, 1), tasks=len(tasks)
    )
    return out


def out_of_domain_study(profile: Profile, run: Run) -> dict:
    """Tables 2-4 (§5.3-5.4): lm-eval benchmarks for the base model and, per method of
    experiments.methods, notebook 03's default (uncoupled) and ours (aligned) adapters.

    Returns ``rows`` (lm-eval's per-task results, one column ``block``), ``cells`` (per benchmark and
    language), ``table`` (Tables 2-4's layout with 95% CIs), ``tests`` (a paired test per benchmark
    column: ours vs baseline and ours vs default, see ``benchmarks.paired_tests``), ``stem`` (the
    table's file name) and ``stand_in`` (True where the local stand-in tasks ran, not the paper's).
    """
    from xlalign.evaluation import benchmarks

    registry = benchmark_registry(profile)
    tasks, include, _ = benchmark_tasks(profile)
    stand_in = include is not None
    name = profile.model.name
    frames, cells, items = [], [], {}
    for block, method, batching in benchmark_arms(profile):
        if method is None:
            label, adapter = results.baseline(name), None
        else:
            info = notebook03_arm(profile, run, method, batching)
            label, adapter = adapter_label(info), info.adapter_dir
        res = _benchmark_results(profile, run, label, adapter, tasks, include)
        rows = pd.DataFrame(res["rows"]).assign(block=block)
        frames.append(rows)
        lang_rows = pd.DataFrame(benchmarks.language_rows(res["rows"], registry))
        cells.append(lang_rows.assign(block=block))
        items[block] = res["items"]
    rows = pd.concat(frames, ignore_index=True)
    bench_of = {t: b for b, c in registry.items() for ts in c.values() for t in ts}
    rows["benchmark"] = rows["task"].map(bench_of)
    rows["suite"] = [
        benchmarks.STAND_IN_NOTE if benchmarks.is_stand_in(b) else "lm-eval"
        for b in rows["benchmark"]
    ]
    cells = pd.concat(cells, ignore_index=True)
    table = benchmarks.benchmark_table(
        items, registry, name, n_resamples=profile.eval.n_bootstrap, seed=profile.seed
    )
    tests = []
    for method in profile.experiments.methods:
        ours, default = results.block(method, "aligned"), results.block(method, "uncoupled")
        for ref in ("baseline", default):
            tests += benchmarks.paired_tests(
                items[ref],
                items[ours],
                registry,
                a=ref,
                b=ours,
                alpha=profile.eval.alpha,
                n_resamples=profile.eval.n_bootstrap,
                seed=profile.seed,
            )
    return {
        "rows": rows,
        "cells": cells,
        "table": table,
        "tests": pd.DataFrame(tests),
        "stem": "out_of_domain_local_stand_in" if stand_in else "table02_04_out_of_domain",
        "stand_in": stand_in,
    }


def out_of_domain(profile: Profile, run: Run) -> pd.DataFrame:
    """lm-eval's per-task rows of :func:`out_of_domain_study` (column ``suite`` says where the local
    stand-in tasks ran instead of the paper's benchmarks)."""
    return out_of_domain_study(profile, run)["rows"]
