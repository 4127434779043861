"""Notebook 06 (batch-alignment paper §5.3-5.4): unseen languages and out-of-domain benchmarks for
the base model and notebook 03's aligned adapter.
"""

from __future__ import annotations

import gc
import json

import pandas as pd

from xlalign import results
from xlalign.config import Profile, derive
from xlalign.experiments.steps import (
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
    """What ``out_of_domain`` runs: (lm-eval task names, include path or None, per-task limit)."""
    from xlalign.evaluation import benchmarks

    if profile.experiments.benchmarks:
        tasks, include = list(profile.experiments.benchmarks), None
    else:
        tasks = benchmarks.paper_task_names(
            list(benchmarks.LOCAL_TASKS), ["en", "es"], registry=benchmarks.LOCAL_TASKS
        )
        include = str(benchmarks.LOCAL_TASKS_DIR)
    return tasks, include, profile.experiments.benchmark_limit or None


def aligned_arm(profile: Profile, run: Run) -> TrainResult:
    """Notebook 03's aligned adapter: read from the run, or trained now (the same configuration and
    label as notebook 03's, so notebook 03 then reuses it) when this notebook runs on its own."""
    from xlalign.models import load_tokenizer

    label, p = aligned_arm_profile(profile)
    done = run.path / "train" / label / "train_result.json"
    if done.exists():
        return TrainResult.from_dict(json.loads(done.read_text()))
    print(
        f"[xlalign] {label} (notebook 03's aligned arm) is not in {run.path}: training it now, "
        f"{p.train.max_steps if p.train.max_steps > 0 else 'all'} steps of batch {p.train.batch_size}"
    )
    data = prepare_data(profile, run, load_tokenizer(profile))
    return train(p, run, label, data)


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


def out_of_domain(profile: Profile, run: Run) -> pd.DataFrame:
    """lm-eval benchmarks for the base model and the aligned adapter (local tasks off the paper profile)."""
    from xlalign.evaluation import benchmarks
    from xlalign.evaluation.predictions import load_eval_model

    method = _method(profile)
    adapter = aligned_arm(profile, run).adapter_dir
    tasks, include, limit = benchmark_tasks(profile)
    frames = []
    for label, adapter_dir in (
        ("baseline", None),
        (results.block(method, "aligned"), adapter),
    ):
        model, tok = load_eval_model(profile, adapter_dir)
        res = benchmarks.run_benchmarks(
            model, tok, tasks, limit=limit, include_path=include, seed=profile.seed
        )
        frames.append(pd.DataFrame(res["rows"]).assign(block=label))
        del model
        gc.collect()
    return pd.concat(frames, ignore_index=True)
