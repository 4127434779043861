"""The steps every experiment is built from: the run's profile and data, train (or reuse), evaluate,
compare and tabulate; each writes into the run directory and is skipped when already done.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from xlalign.config import Profile, load_profile
from xlalign.evaluation import stats
from xlalign.probe.dataset import ProbeData, build_probe_data, save_probe_data
from xlalign.report import tables
from xlalign.results import Evaluation, TrainedArm
from xlalign.runs import Run
from xlalign.training.run import TrainResult


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
    extra: list[dict] = []
    if out.exists():
        done = read_predictions(out, repair=True)  # a torn tail is cut here, evaluate_probe resumes
        if done and wanted <= {r["item_id"] for r in done}:
            # An earlier step evaluated a superset of these items (e.g. more languages): reuse it.
            done = predictions_frame(done).set_index("item_id", drop=False)
            return done.loc[[r["item_id"] for r in rows]].reset_index(drop=True)  # rows' order
        # Another notebook of a shared run evaluated other items under this label (notebook 03's
        # training languages, then notebook 06's unseen ones): keep them in the file, add ours.
        extra = [
            {"item_id": r["item_id"], "label": r["label"]}
            for r in done
            if r["item_id"] not in wanted
        ]
    t0 = time.perf_counter()
    if model is None:
        model, tokenizer = load_eval_model(profile, adapter_dir)
    from xlalign.training.frozen_cache import attach_for_profile

    # The test prompts' frozen-layer states, kept in the run: every model of the run scores the same
    # prompts, so the base model's pass serves the adapters' (train.reuse_frozen; same values).
    attach_for_profile(model, profile, run.path)
    df = evaluate_probe(
        model,
        tokenizer,
        [*rows, *extra],
        out,
        mode=profile.eval.mode,
        prompt_format=profile.model.prompt_format,
        batch_size=profile.eval.batch_size,
        max_new_tokens=profile.eval.max_new_tokens,
    )
    df = df[df["item_id"].isin(wanted)].reset_index(drop=True)
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


def train_cache_dir(run: Run) -> Path:
    """Where a run's trainings keep the frozen layers' states (``train.reuse_frozen``)."""
    return run.path / "cache" / "frozen-train"


def train(profile: Profile, run: Run, label: str, data: ProbeData) -> TrainResult:
    """Train one adapter into ``train/<label>``; a finished run is reused, an interrupted one resumes,
    and a finished run of the same configuration under another label is used instead of retraining.
    A profile asking for several processes trains through ``accelerate launch`` (a subprocess of this
    one, which keeps the run's lock and records the step); ``batch`` records the global batch."""
    from xlalign.training.run import train_preference

    out = run.path / "train" / label
    done = out / "train_result.json"
    if done.exists():
        return TrainResult.from_dict(json.loads(done.read_text()))
    twin = same_training(run, profile) if not out.exists() else None
    if twin is not None:
        run.step(f"train/{label}", reused=str(twin.relative_to(run.path)))
        return TrainResult.from_dict(json.loads((twin / "train_result.json").read_text()))
    t0 = time.perf_counter()
    # The prompts' frozen-layer states are kept in the run (train.reuse_frozen; same values), so
    # notebook 05's trainings read the ones notebook 03's computed. Apart from the evaluations'
    # (cache/frozen): those are made under inference mode, which a training must not reuse in memory.
    res = train_preference(
        profile, data.train_dataset(), out, resume=True, frozen_cache_dir=train_cache_dir(run)
    )
    run.step(
        f"train/{label}",
        wall_time_s=round(res.wall_time_s, 1),  # the trainer's steps (a resumed run: all of them)
        # this call: model load, TRL's tokenization, the steps, checkpoints and the adapter save
        call_s=round(time.perf_counter() - t0, 1),
        steps=res.steps,
        tokens_per_s=round(res.tokens_per_s, 1),
        batch=res.batch,  # per_device x processes x grad_accum = global
    )
    gc.collect()
    return res


def train_and_evaluate(
    profile: Profile,
    run: Run,
    label: str,
    data: ProbeData,
    langs: list[str],
    items_per_lang: int | None = None,
) -> TrainedArm:
    """Train ``label`` (or reuse it) and evaluate its adapter on the held-out items of ``langs``
    (``items_per_lang`` label-balanced samples per language; default ``eval.max_items_per_lang``)."""
    info = train(profile, run, label, data)
    n = profile.eval.max_items_per_lang if items_per_lang is None else items_per_lang
    rows = eval_subset(data.test_rows, langs, n, profile.seed)
    eval_label = adapter_label(info)
    preds = evaluate(profile, run, eval_label, rows, adapter_dir=info.adapter_dir)
    evaluation = Evaluation(eval_label, run.path / "eval" / eval_label / "predictions.jsonl", preds)
    return TrainedArm(label, profile.train.method, profile.train.batching, info, evaluation)


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
    run, "" the profile's current one (``runs.open_run``: ``runs/<profile>-current``)."""
    from xlalign.runs import open_run

    profile = load_profile(name, overrides=list(overrides))
    return profile, open_run(profile, run_dir)


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


def probe_layers(n_layers: int, count: int = 6) -> list[int]:
    """About ``count`` evenly spaced layers, the last included (Gemma-3-270M: 3, 6, 9, 12, 15, 18)."""
    step = max(1, round(n_layers / count))
    return sorted({*range(step, n_layers + 1, step), n_layers})


def knows_vs_says(
    profile: Profile,
    run: Run,
    data: ProbeData,
    langs: list[str],
    train_per_lang: int = 30,
    model=None,
    tokenizer=None,
) -> pd.DataFrame:
    """What the frozen model knows (a linear probe on its last-position hidden state, per layer) beside
    what it says (its first-token margin), on the same held-out items; ``tables/knows_vs_says.csv``.

    The probe trains on ``train_per_lang`` label-balanced training-split samples per language (the
    same samples in every language); the test items are ``eval_subset``'s, as for the answers.
    """
    from xlalign.evaluation.predictions import load_eval_model
    from xlalign.evaluation.probing import probe_by_layer

    out = run.sub("tables") / "knows_vs_says.csv"
    if out.exists():
        return pd.read_csv(out)
    train_rows = [r for r in data.rows if r.get("split") == "train"]
    train_rows = eval_subset(train_rows, langs, train_per_lang, profile.seed)
    test_rows = eval_subset(data.test_rows, langs, profile.eval.max_items_per_lang, profile.seed)
    t0 = time.perf_counter()
    if model is None:
        model, tokenizer = load_eval_model(profile)
    n_layers = model.config.get_text_config().num_hidden_layers
    table = probe_by_layer(
        model,
        tokenizer,
        train_rows,
        test_rows,
        probe_layers(n_layers),
        prompt_format=profile.model.prompt_format,
        seed=profile.seed,
        n_resamples=profile.eval.n_bootstrap,
        batch_size=profile.eval.batch_size,
    )
    table.to_csv(out, index=False)
    run.step(
        "knows_vs_says",
        wall_time_s=round(time.perf_counter() - t0, 1),
        train_items=len(train_rows),
        test_items=len(test_rows),
    )
    return table


def knows_vs_says_reading(says: pd.DataFrame, knows: pd.DataFrame) -> str:
    """The pooled margin AUROC (what the model says) beside the best layer's probe AUROC (what it
    knows), with CIs, as one sentence built from the two tables."""
    best = knows[knows["lang"] == "all"].sort_values("auroc").iloc[-1]
    said = says[says["lang"] == "all"].iloc[0]
    return (
        f"The model says: margin AUROC {said['auroc']:.2f} [{said['ci_low']:.2f}, "
        f"{said['ci_high']:.2f}]; it knows: probe AUROC {best['auroc']:.2f} [{best['ci_low']:.2f}, "
        f"{best['ci_high']:.2f}] at layer {int(best['layer'])} (accuracy "
        f"{100 * best['accuracy']:.0f}%), on the same {int(said['n'])} items."
    )
