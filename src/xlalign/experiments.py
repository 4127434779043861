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

from xlalign import stats, tables
from xlalign.config import Profile, load_profile
from xlalign.data import ProbeData, build_probe_data, save_probe_data
from xlalign.runs import Run


def profile_for(profile: Profile, overlays: list[str] = (), **train) -> Profile:
    """The run's profile with ablation overlays and ``train`` fields applied (validated again)."""
    from xlalign.config import _build, _merge, _read_yaml
    from xlalign.config import CONFIG_DIR

    data = profile.to_dict()
    for overlay in overlays:
        path = Path(overlay) if Path(overlay).exists() else CONFIG_DIR / "ablations" / f"{overlay}.yaml"
        data = _merge(data, _read_yaml(path))
    data["train"] = dict(data["train"], **train)
    return _build(Profile, data)


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
    for label, sids in sorted(by_label.items()):
        idx = rng.permutation(len(sids))[:per_label]
        keep |= {sids[i] for i in idx}
    return [r for r in rows if r["sample_id"] in keep]


# --------------------------------------------------------------------------- evaluate / train


def evaluate(profile: Profile, run: Run, label: str, rows: list[dict], adapter_dir=None, model=None,
             tokenizer=None) -> pd.DataFrame:
    """Evaluate base or adapter model on ``rows``; predictions go to ``eval/<label>/predictions.jsonl``."""
    from xlalign.evaluation import evaluate_probe, load_eval_model

    out = run.sub("eval", label) / "predictions.jsonl"
    t0 = time.perf_counter()
    if model is None:
        model, tokenizer = load_eval_model(profile, adapter_dir)
    df = evaluate_probe(model, tokenizer, rows, out, mode=profile.eval.mode,
                        prompt_format=profile.model.prompt_format, batch_size=profile.eval.batch_size,
                        max_new_tokens=profile.eval.max_new_tokens)
    run.step(f"eval/{label}", wall_time_s=round(time.perf_counter() - t0, 1), items=len(df))
    return df


def train(profile: Profile, run: Run, label: str, data: ProbeData) -> dict:
    """Train one adapter into ``train/<label>``; a finished run is reused, an interrupted one resumes."""
    from xlalign.training import train_preference

    out = run.path / "train" / label
    done = out / "train_result.json"
    if done.exists():
        return json.loads(done.read_text())
    res = train_preference(profile, data.train_dataset(), out, resume=True)
    run.step(f"train/{label}", wall_time_s=round(res.wall_time_s, 1), steps=res.steps,
             tokens_per_s=round(res.tokens_per_s, 1))
    gc.collect()
    return res.to_dict()


def train_and_evaluate(profile: Profile, run: Run, label: str, data: ProbeData, langs: list[str]) -> dict:
    info = train(profile, run, label, data)
    rows = eval_subset(data.test_rows, langs, profile.eval.max_items_per_lang, profile.seed)
    preds = evaluate(profile, run, label, rows, adapter_dir=info["adapter_dir"])
    return {"train": info, "preds": preds}


# --------------------------------------------------------------------------- comparisons and tables


def compare(preds_a: pd.DataFrame, preds_b: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """McNemar per language and pooled non-English, b vs a on the same items (paper's p < alpha rule)."""
    res = stats.compare_runs(preds_a, preds_b)
    res["significant"] = res["pvalue"] < alpha
    return res


def probe_tidy(preds: pd.DataFrame, table: str, block: str, model: str, langs: list[str], profile: Profile,
               baseline: pd.DataFrame | None = None) -> pd.DataFrame:
    return tables.probe_table(preds, table, block, model, langs, with_ci=True, baseline=baseline,
                              seed=profile.seed, n_resamples=profile.eval.n_bootstrap)


def write_tables(run: Run, stem: str, tidy: pd.DataFrame) -> dict:
    paths = tables.write_table(tidy, run.sub("tables"), stem, overwrite=True)
    return {k: str(v) for k, v in (paths.items() if isinstance(paths, dict) else enumerate(paths))}


def load_run_profile(run_dir: str | Path, name: str, overrides: list[str] = ()) -> tuple[Profile, Run]:
    """Notebook helper: the profile (with overrides) and the run directory it writes into."""
    from xlalign.runs import start_run

    profile = load_profile(name, overrides=list(overrides))
    run = start_run(profile, run_dir or None, resume=True) if run_dir else start_run(profile)
    return profile, run


def model_label(profile: Profile) -> str:
    return profile.model.name


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)


def replace_model(profile: Profile, name: str) -> Profile:
    return replace(profile, model=replace(profile.model, name=name))
