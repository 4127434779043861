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

# C.2: "repeat the experiments ... with ORPO only" (Table 11, Fig. 5).
MT_METHOD = "orpo"


def _label(label: str, method: str) -> str:
    # Ablations run once per method, so their run labels carry it (results.py's ablation labels
    # predate the second method and take none).
    return f"{label}-{method}"


def _ablation_profile(
    profile: Profile, overlays: list[str], method: str | None = None, **extra
) -> Profile:
    """``profile`` with ``overlays``, ``method`` (default: the first of experiments.ablation_methods)
    and the ablations' step budget."""
    steps = profile.experiments.ablation_max_steps
    train_ = {"method": method or profile.experiments.ablation_methods[0], **extra}
    if steps and steps > 0:
        train_["max_steps"] = steps
    return derive(profile, overlays, train=train_)


def _rest_avg_cell(tidy: pd.DataFrame, block: str, model: str, column: str, source: str) -> dict:
    row = tidy.loc[tidy["column"] == source].iloc[0]
    cell = {k: float(row[k]) for k in ("value", "ci_low", "ci_high")}
    base = {"table": "ours_t12_13", "block": block, "model": model, "column": column}
    return base | {"delta": float("nan")} | cell


def batch_size_runs(profile: Profile, method: str) -> dict[int | str, tuple[str, Profile]]:
    """The training runs ``ablation_batch_size`` performs for ``method``: batch size -> (label,
    profile), aligned at every size in ``experiments.batch_sizes``, then ``"default"``: uncoupled at
    the largest (also what the dry-run plan and the time estimate count)."""
    top = max(profile.experiments.batch_sizes)
    runs: dict[int | str, tuple[str, Profile]] = {
        b: (
            _label(results.batch_size(b), method),
            _ablation_profile(profile, [f"batch_size_{b}"], method),
        )
        for b in profile.experiments.batch_sizes
    }
    runs["default"] = (
        _label(results.batch_size(top, uncoupled=True), method),
        _ablation_profile(profile, [f"batch_size_{top}", "uncoupled"], method),
    )
    return runs


def english_run(profile: Profile, method: str) -> tuple[str, Profile]:
    """The training run ``ablation_english`` adds for ``method``: aligned batches without English."""
    others = [lang for lang in profile.data.train_langs if lang != "en"]
    p = _ablation_profile(profile, ["no_english"], method, batch_size=len(others))
    return _label(results.NO_ENGLISH, method), p


def machine_translated_runs(profile: Profile) -> tuple[Profile, dict[str, tuple[str, Profile]]]:
    """``ablation_machine_translated``'s data profile and its training runs: batching -> (label,
    profile), uncoupled then aligned."""
    method = mt_method(profile)
    p_al = _ablation_profile(profile, ["machine_translated"], method)
    runs = {
        batching: (
            _label(results.machine_translated(batching), method),
            derive(p_al, train={"batching": batching}),
        )
        for batching in ("uncoupled", "aligned")
    }
    return p_al, runs


def ablation_batch_size(profile: Profile, run: Run, data: ProbeData) -> dict:
    """Aligned training at each batch size (C.3) and uncoupled at the largest as the default, for
    each of experiments.ablation_methods (Table 12: DPO, Table 13: ORPO).

    ``table`` is Tables 12/13's layout: one block per method, ``english`` and ``rest_avg`` of the
    uncoupled default, ``bs_N`` = Rest (avg.) of aligned training at batch size N, each with its
    95% CI (Fig. 6 draws the same frame, ``figure_data``). ``detail`` holds every run's per-language
    table (blocks ``<method>_bs_N`` and ``<method>_default``); ``preds[method][N]`` and
    ``default[method]`` the predictions.
    """
    langs = profile.data.train_langs
    rows = eval_subset(data.test_rows, langs, profile.eval.max_items_per_lang, profile.seed)
    name = profile.model.name
    top = max(profile.experiments.batch_sizes)
    detail, layout, preds, defaults = [], [], {}, {}
    for method in profile.experiments.ablation_methods:
        preds[method] = {}
        runs = batch_size_runs(profile, method)
        for b in profile.experiments.batch_sizes:
            label, p = runs[b]
            info = train(p, run, label, data)
            preds[method][b] = evaluate(
                p, run, adapter_label(info), rows, adapter_dir=info.adapter_dir
            )
            tidy = probe_tidy(
                preds[method][b], "ours_t12_13", f"{method}_bs_{b}", name, langs, profile
            )
            detail.append(tidy.assign(batch_size=b))
            # The paper's Tables 12/13 start at BS = 2; BS = 1 (English only, C.3's starting point)
            # is trained and evaluated here too, so our table and Fig. 6 carry it as an extra column.
            layout.append(_rest_avg_cell(tidy, method, name, f"bs_{b}", "rest_avg"))
        label, p = runs["default"]
        info = train(p, run, label, data)
        defaults[method] = evaluate(p, run, adapter_label(info), rows, adapter_dir=info.adapter_dir)
        block = results.block(method, "uncoupled")
        tidy = probe_tidy(defaults[method], "ours_t12_13", block, name, langs, profile)
        detail.append(tidy.assign(batch_size=top))
        for column in ("english", "rest_avg"):
            layout.append(_rest_avg_cell(tidy, method, name, column, column))
    table = pd.DataFrame(layout)
    return {
        "table": table,
        "figure_data": table,
        "detail": pd.concat(detail, ignore_index=True),
        "preds": preds,
        "default": defaults,
    }


def ablation_english(profile: Profile, run: Run, data: ProbeData, batch_size_result: dict) -> dict:
    """Aligned batches without English (C.1) against the with-English run of the same step budget
    (the batch-size ablation's largest batch), for each of experiments.ablation_methods (Table 9:
    DPO, Table 10: ORPO; Fig. 4 draws both)."""
    langs = profile.data.train_langs
    rows = eval_subset(data.test_rows, langs, profile.eval.max_items_per_lang, profile.seed)
    name = profile.model.name
    frames, tests = [], []
    for method in profile.experiments.ablation_methods:
        label, p = english_run(profile, method)
        info = train(p, run, label, data)
        without = evaluate(p, run, adapter_label(info), rows, adapter_dir=info.adapter_dir)
        with_en = batch_size_result["preds"][method][max(batch_size_result["preds"][method])]
        frames += [
            probe_tidy(with_en, "ours_t09_10", f"with_english_{method}", name, langs, profile),
            probe_tidy(without, "ours_t09_10", f"without_english_{method}", name, langs, profile),
        ]
        tests.append(compare(without, with_en, profile.eval.alpha).assign(method=method))
    table = pd.concat(frames, ignore_index=True)
    return {"table": table, "figure_data": table, "mcnemar": pd.concat(tests)}


def mt_method(profile: Profile) -> str:
    """The machine-translation ablation's method: ORPO as in C.2 where the profile ablates it."""
    methods = profile.experiments.ablation_methods
    return MT_METHOD if MT_METHOD in methods else methods[0]


def ablation_machine_translated(profile: Profile, run: Run) -> dict:
    """Train on the profile's training languages + machine-translated th/vi/hu/ro at batch size 7
    (C.2, Table 11), aligned vs uncoupled, test English and th/vi/hu/ro on the shipped human
    translations; the baseline is the untrained model on the same items."""
    name = profile.model.name
    method = mt_method(profile)
    p_al, runs = machine_translated_runs(profile)
    data = build_probe_data(p_al, _tokenizer(p_al))
    langs = ["en"] + p_al.data.mt_langs
    rows = eval_subset(data.test_rows, langs, profile.eval.max_items_per_lang, profile.seed)
    base = evaluate(profile, run, results.baseline_mt(name), rows)
    out = {}
    for batching, (label, p) in runs.items():
        info = train(p, run, label, data)
        out[batching] = evaluate(p, run, adapter_label(info), rows, adapter_dir=info.adapter_dir)
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
    return {
        "table": table,
        "figure_data": table,
        "translator": p_al.data.translator,
        "batch_size": p_al.train.batch_size,
        "train_langs": p_al.data.train_langs + p_al.data.mt_langs,
    }


def _tokenizer(profile: Profile):
    from xlalign.models import load_tokenizer

    return load_tokenizer(profile)
