"""The papers' experiments as library calls: baseline gap, aligned vs uncoupled, ablations, unseen languages.

Each step writes into the run directory and is skipped when its results are already there (resume).
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from xlalign import results
from xlalign.config import Profile, derive, load_profile
from xlalign.evaluation import stats
from xlalign.probe.dataset import ProbeData, build_probe_data, save_probe_data
from xlalign.report import tables
from xlalign.results import Evaluation, TrainedArm
from xlalign.runs import Run
from xlalign.training.run import TrainResult


def profile_for(profile: Profile, overlays: list[str] = (), **train) -> Profile:
    """The run's profile with ablation overlays and ``train`` fields applied (validated again)."""
    return derive(profile, overlays, {f"train.{k}": v for k, v in train.items()})


# --------------------------------------------------------------------------- data


def prepare_data(profile: Profile, run: Run, tokenizer=None) -> ProbeData:
    """Build and save the probe datasets once per run (notebook 01); later calls reload the report."""
    out = run.path / "data"
    data = build_probe_data(profile, tokenizer)
    if not (out / "data_report.json").exists():
        save_probe_data(data, out)
    return data


def eval_subset(rows: list[dict], langs: list[str], max_per_lang: int, seed: int) -> list[dict]:
    """Test rows for ``langs``; with ``max_per_lang``, a seeded label-balanced subset of samples that is
    the same in every language (paired comparisons need identical items)."""
    rows = [r for r in rows if r["lang"] in langs]
    if not max_per_lang:
        return rows
    by_label: dict[str, list[str]] = {}
    for sid, label in sorted({(r["sample_id"], r["label"]) for r in rows}):
        by_label.setdefault(label, []).append(sid)
    rng = np.random.default_rng(seed)
    keep = set()
    per_label = max(1, max_per_lang // len(by_label))
    for _label, sids in sorted(by_label.items()):
        idx = rng.permutation(len(sids))[:per_label]
        keep |= {sids[i] for i in idx}
    return [r for r in rows if r["sample_id"] in keep]


# --------------------------------------------------------------------------- evaluate / train


def evaluate(
    profile: Profile,
    run: Run,
    label: str,
    rows: list[dict],
    adapter_dir=None,
    model=None,
    tokenizer=None,
) -> pd.DataFrame:
    """Evaluate base or adapter model on ``rows``; predictions go to ``eval/<label>/predictions.jsonl``."""
    from xlalign.evaluation.predictions import (
        evaluate_probe,
        load_eval_model,
        predictions_frame,
        read_predictions,
    )

    out = run.sub("eval", label) / "predictions.jsonl"
    wanted = {r["item_id"] for r in rows}
    if out.exists():
        done = read_predictions(out, repair=True)  # a torn tail is cut here, evaluate_probe resumes
        if done and wanted <= {r["item_id"] for r in done}:
            # An earlier step evaluated a superset of these items (e.g. more languages): reuse it.
            done = predictions_frame(done)
            return done[done["item_id"].isin(wanted)].reset_index(drop=True)
    t0 = time.perf_counter()
    if model is None:
        model, tokenizer = load_eval_model(profile, adapter_dir)
    df = evaluate_probe(
        model,
        tokenizer,
        rows,
        out,
        mode=profile.eval.mode,
        prompt_format=profile.model.prompt_format,
        batch_size=profile.eval.batch_size,
        max_new_tokens=profile.eval.max_new_tokens,
    )
    from xlalign.models import resolved_commit

    run.step(
        f"eval/{label}",
        wall_time_s=round(time.perf_counter() - t0, 1),
        items=len(df),
        model_commit=resolved_commit(model),  # the hub commit; None for local and PyPI models
    )
    return df


def same_training(run: Run, profile: Profile) -> Path | None:
    """A finished training directory of this run whose configuration equals ``profile``'s, if any.

    The ablations share runs with notebook 03: aligned ORPO at batch size 7 *is* notebook 03's aligned
    ORPO run when the step budgets agree, so it is trained once."""
    from xlalign.training.run import training_signature

    want = json.loads(json.dumps(training_signature(profile, profile.train.method)))
    for cfg in sorted((run.path / "train").glob("*/xlalign_train_config.json")):
        if (cfg.parent / "train_result.json").exists() and json.loads(cfg.read_text()) == want:
            return cfg.parent
    return None


def adapter_label(info: TrainResult) -> str:
    """The evaluation label of an adapter: its training directory's name (shared runs share predictions)."""
    return Path(info.output_dir).name


def train(profile: Profile, run: Run, label: str, data: ProbeData) -> TrainResult:
    """Train one adapter into ``train/<label>``; a finished run is reused, an interrupted one resumes,
    and a finished run of the same configuration under another label is used instead of retraining."""
    from xlalign.training.run import train_preference

    out = run.path / "train" / label
    done = out / "train_result.json"
    if done.exists():
        return TrainResult.from_dict(json.loads(done.read_text()))
    twin = same_training(run, profile) if not out.exists() else None
    if twin is not None:
        run.step(f"train/{label}", reused=str(twin.relative_to(run.path)))
        return TrainResult.from_dict(json.loads((twin / "train_result.json").read_text()))
    res = train_preference(profile, data.train_dataset(), out, resume=True)
    run.step(
        f"train/{label}",
        wall_time_s=round(res.wall_time_s, 1),
        steps=res.steps,
        tokens_per_s=round(res.tokens_per_s, 1),
    )
    gc.collect()
    return res


def train_and_evaluate(
    profile: Profile, run: Run, label: str, data: ProbeData, langs: list[str]
) -> TrainedArm:
    """Train ``label`` (or reuse it) and evaluate its adapter on the held-out items of ``langs``."""
    info = train(profile, run, label, data)
    rows = eval_subset(data.test_rows, langs, profile.eval.max_items_per_lang, profile.seed)
    eval_label = adapter_label(info)
    preds = evaluate(profile, run, eval_label, rows, adapter_dir=info.adapter_dir)
    evaluation = Evaluation(eval_label, run.path / "eval" / eval_label / "predictions.jsonl", preds)
    return TrainedArm(label, profile.train.method, profile.train.batching, info, evaluation)


# --------------------------------------------------------------------------- comparisons and tables


def compare(preds_a: pd.DataFrame, preds_b: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """McNemar per language and pooled non-English, b vs a on the same items (paper's p < alpha rule)."""
    res = stats.compare_runs(preds_a, preds_b)
    res["significant"] = res["pvalue"] < alpha
    return res


def probe_tidy(
    preds: pd.DataFrame,
    table: str,
    block: str,
    model: str,
    langs: list[str],
    profile: Profile,
    baseline: pd.DataFrame | None = None,
) -> pd.DataFrame:
    return tables.probe_table(
        preds,
        table,
        block,
        model,
        langs,
        with_ci=True,
        baseline=baseline,
        seed=profile.seed,
        n_resamples=profile.eval.n_bootstrap,
    )


def write_tables(run: Run, stem: str, tidy: pd.DataFrame) -> dict:
    """``tables/<stem>.csv`` (tidy) and ``.md`` (paper layout with CIs); a rerun of the notebook
    that made them replaces them."""
    paths = tables.write_table(tidy, run.sub("tables"), stem, overwrite=True, show_ci=True)
    return {k: str(v) for k, v in (paths.items() if isinstance(paths, dict) else enumerate(paths))}


def load_run_profile(
    run_dir: str | Path, name: str, overrides: list[str] = ()
) -> tuple[Profile, Run]:
    """The profile (with overrides) and the run directory it writes into: ``run_dir`` resumes that
    run, "" starts a new one."""
    from xlalign.runs import start_run

    profile = load_profile(name, overrides=list(overrides))
    run = start_run(profile, run_dir or None, resume=True) if run_dir else start_run(profile)
    return profile, run


def setup(
    profile: str, run_dir: str | Path = "", seed: int | None = None, overrides: list[str] = ()
) -> tuple[Profile, Run]:
    """Every notebook's first call: the profile and its run, with package versions and the device
    printed. ``seed`` replaces the profile's; ``overrides`` are ``section.key=value`` strings."""
    from xlalign.runs import device_info, package_versions

    overrides = [*overrides, *([f"seed={seed}"] if seed is not None else [])]
    prof, run = load_run_profile(run_dir, profile, overrides)
    versions = {k: v for k, v in package_versions().items() if v}
    print("packages:", ", ".join(f"{k} {v}" for k, v in versions.items()))
    print("device:", ", ".join(f"{k}={v}" for k, v in device_info().items()))
    print(
        f"profile: {prof.name} (model {prof.model.name}, dtype {prof.model.dtype}); run: {run.path}"
    )
    return prof, run


def replace_model(profile: Profile, name: str) -> Profile:
    return replace(profile, model=replace(profile.model, name=name))


# --------------------------------------------------------------------------- notebook 03


def probe_for_method(
    arms: dict[tuple[str, str], TrainedArm],
    baseline: pd.DataFrame,
    profile: Profile,
    langs: list[str],
) -> pd.DataFrame:
    """Tables 6/8 layout: baseline, <method>_default (uncoupled), <method>_ours (aligned, deltas vs default)."""
    name = profile.model.name
    parts = [probe_tidy(baseline, "ours_t06_08", "baseline", name, langs, profile)]
    for method in profile.experiments.methods:
        default = probe_tidy(
            arms[method, "uncoupled"].preds,
            "ours_t06_08",
            results.block(method, "uncoupled"),
            name,
            langs,
            profile,
        )
        ours = probe_tidy(
            arms[method, "aligned"].preds,
            "ours_t06_08",
            results.block(method, "aligned"),
            name,
            langs,
            profile,
            baseline=default,
        )
        parts += [default, ours]
    return pd.concat(parts, ignore_index=True)


def training_curves(arms: dict[tuple[str, str], TrainedArm]):
    """Loss per step of every training run (a matplotlib Figure)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for (method, batching), arm in sorted(arms.items()):
        log = Path(arm.train.train_log)
        if not log.exists():
            continue
        rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        steps = [r for r in rows if "loss" in r]
        ax.plot(
            [r["step"] for r in steps], [r["loss"] for r in steps], label=f"{method} {batching}"
        )
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend()
    plt.close(fig)
    return fig


# --------------------------------------------------------------------------- notebook 05


def _ablation_profile(profile: Profile, overlays: list[str], **extra) -> Profile:
    steps = profile.experiments.ablation_max_steps
    train = {"method": profile.experiments.ablation_method, **extra}
    if steps and steps > 0:
        train["max_steps"] = steps
    return profile_for(profile, overlays, **train)


def ablation_batch_size(profile: Profile, run: Run, data: ProbeData) -> dict:
    """Rest (avg.) of aligned training at each batch size (C.3); uncoupled at the largest as the default."""
    langs = profile.data.train_langs
    rows = eval_subset(data.test_rows, langs, profile.eval.max_items_per_lang, profile.seed)
    method = profile.experiments.ablation_method
    name = profile.model.name
    cells, preds = [], {}
    for b in profile.experiments.batch_sizes:
        p = _ablation_profile(profile, [f"batch_size_{b}"])
        info = train(p, run, results.batch_size(b), data)
        preds[b] = evaluate(p, run, adapter_label(info), rows, adapter_dir=info.adapter_dir)
        tidy = probe_tidy(preds[b], "ours_t12_13", f"bs_{b}", name, langs, profile)
        cells.append(tidy.assign(batch_size=b))
    top = max(profile.experiments.batch_sizes)
    pd_ = _ablation_profile(profile, [f"batch_size_{top}", "uncoupled"])
    info = train(pd_, run, results.batch_size(top, uncoupled=True), data)
    default = evaluate(pd_, run, adapter_label(info), rows, adapter_dir=info.adapter_dir)
    default_tidy = probe_tidy(
        default, "ours_t12_13", results.block(method, "uncoupled"), name, langs, profile
    )
    table = pd.concat(cells + [default_tidy], ignore_index=True)

    # Figure 6 layout: one block per method, bs_N columns = Rest (avg.) at batch size N with its 95% CI,
    # rest_avg = the uncoupled default's.
    def rest_avg(tidy: pd.DataFrame, column: str) -> dict:
        row = tidy.loc[tidy["column"] == "rest_avg"].iloc[0]
        cell = {k: float(row[k]) for k in ("value", "ci_low", "ci_high")}
        return {"table": "ours_t12_13", "block": method, "model": name, "column": column} | cell

    fig_rows = [
        rest_avg(c, f"bs_{c['batch_size'].iloc[0]}") for c in cells if c["batch_size"].iloc[0] >= 2
    ]
    fig_rows.append(rest_avg(default_tidy, "rest_avg"))
    return {
        "table": table,
        "figure_data": pd.DataFrame(fig_rows),
        "preds": preds,
        "default": default,
    }


def ablation_english(profile: Profile, run: Run, data: ProbeData, batch_size_result: dict) -> dict:
    """Aligned batches without English (C.1) against the with-English run of the same step budget."""
    langs = profile.data.train_langs
    rows = eval_subset(data.test_rows, langs, profile.eval.max_items_per_lang, profile.seed)
    method = profile.experiments.ablation_method
    name = profile.model.name
    others = [lang for lang in profile.data.train_langs if lang != "en"]
    p = _ablation_profile(profile, ["no_english"], batch_size=len(others))
    info = train(p, run, results.NO_ENGLISH, data)
    without = evaluate(p, run, adapter_label(info), rows, adapter_dir=info.adapter_dir)
    with_en = batch_size_result["preds"][max(batch_size_result["preds"])]
    table = pd.concat(
        [
            probe_tidy(with_en, "ours_t09_10", f"with_english_{method}", name, langs, profile),
            probe_tidy(without, "ours_t09_10", f"without_english_{method}", name, langs, profile),
        ],
        ignore_index=True,
    )
    return {
        "table": table,
        "figure_data": table,
        "mcnemar": compare(without, with_en, profile.eval.alpha),
    }


def ablation_machine_translated(profile: Profile, run: Run) -> dict:
    """Train on English + machine-translated th/vi/hu/ro (C.2), aligned vs uncoupled, test on the shipped
    human translations; the baseline is the untrained model on the same items."""
    name = profile.model.name
    p_al = _ablation_profile(profile, ["machine_translated"])
    data = build_probe_data(p_al, _tokenizer(p_al))
    langs = ["en"] + p_al.data.mt_langs
    rows = eval_subset(data.test_rows, langs, profile.eval.max_items_per_lang, profile.seed)
    base = evaluate(profile, run, results.baseline_mt(name), rows)
    out = {}
    for batching in ("uncoupled", "aligned"):
        p = profile_for(p_al, batching=batching)
        info = train(p, run, results.machine_translated(batching), data)
        out[batching] = evaluate(p, run, adapter_label(info), rows, adapter_dir=info.adapter_dir)
    method = profile.experiments.ablation_method
    default = probe_tidy(
        out["uncoupled"], "ours_t11", results.block(method, "uncoupled"), name, langs, profile
    )
    table = pd.concat(
        [
            probe_tidy(base, "ours_t11", "baseline", name, langs, profile),
            default,
            probe_tidy(
                out["aligned"],
                "ours_t11",
                results.block(method, "aligned"),
                name,
                langs,
                profile,
                baseline=default,
            ),
        ],
        ignore_index=True,
    )
    return {"table": table, "figure_data": table, "translator": p_al.data.translator}


def _tokenizer(profile: Profile):
    from xlalign.models import load_tokenizer

    return load_tokenizer(profile)


# --------------------------------------------------------------------------- notebook 06


def unseen_languages(profile: Profile, run: Run) -> dict:
    """Baseline vs the aligned adapter of ``experiments.ablation_method`` from notebook 03, on th/vi/hu/ro."""
    method = "orpo" if "orpo" in profile.experiments.methods else profile.experiments.methods[0]
    label = results.arm(method, "aligned")
    info_path = run.path / "train" / label / "train_result.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{info_path} missing: run notebook 03 in this run directory first")
    info = json.loads(info_path.read_text())
    data = prepare_data(profile, run)
    langs = ["en"] + profile.data.unseen_langs
    rows = eval_subset(data.test_rows, langs, profile.eval.max_items_per_lang, profile.seed)
    name = profile.model.name
    base = evaluate(profile, run, results.baseline(name), rows)  # reuses notebook 02's predictions
    ours = evaluate(profile, run, results.unseen(method), rows, adapter_dir=info["adapter_dir"])
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

    method = "orpo" if "orpo" in profile.experiments.methods else profile.experiments.methods[0]
    adapter = run.path / "train" / results.arm(method, "aligned") / "adapter"
    if profile.experiments.benchmarks:
        tasks, include = list(profile.experiments.benchmarks), None
    else:
        tasks = benchmarks.paper_task_names(
            list(benchmarks.LOCAL_TASKS), ["en", "es"], registry=benchmarks.LOCAL_TASKS
        )
        include = str(benchmarks.LOCAL_TASKS_DIR)
    limit = profile.experiments.benchmark_limit or None
    frames = []
    for label, adapter_dir in (
        ("baseline", None),
        (results.block(method, "aligned"), adapter if adapter.exists() else None),
    ):
        if label != "baseline" and adapter_dir is None:
            continue
        model, tok = load_eval_model(profile, adapter_dir)
        res = benchmarks.run_benchmarks(
            model, tok, tasks, limit=limit, include_path=include, seed=profile.seed
        )
        frames.append(pd.DataFrame(res["rows"]).assign(block=label))
        del model
        gc.collect()
    return pd.concat(frames, ignore_index=True)
