"""Notebook 05 (batch-alignment paper C.1-C.3): batch size, the English anchor, machine-translated data.
Each trains through ``steps.train``, so a run identical to notebook 03's is reused.
"""

from __future__ import annotations

import pandas as pd

from xlalign import results
from xlalign.config import Profile, derive
from xlalign.experiments.steps import (
    adapter_label,
    compare,
    eval_subset,
    evaluate,
    probe_tidy,
    train,
)
from xlalign.probe.dataset import ProbeData, build_probe_data
from xlalign.runs import Run


def _ablation_profile(profile: Profile, overlays: list[str], **extra) -> Profile:
    steps = profile.experiments.ablation_max_steps
    train = {"method": profile.experiments.ablation_method, **extra}
    if steps and steps > 0:
        train["max_steps"] = steps
    return derive(profile, overlays, train=train)


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
        p = derive(p_al, train={"batching": batching})
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
