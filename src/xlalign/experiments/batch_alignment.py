"""Notebook 03 (batch-alignment paper §5.1, Tables 6/8, Fig. 3): aligned against uncoupled training,
in the papers' table layout, and the training curves.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from xlalign import results
from xlalign.config import Profile
from xlalign.experiments.steps import probe_tidy
from xlalign.results import TrainedArm


def arm_profiles(profile: Profile) -> dict[tuple[str, str], tuple[str, Profile]]:
    """Notebook 03's training runs: (method, batching) -> (label, profile), uncoupled then aligned for
    every method in ``experiments.methods`` (also what the dry-run plan and the estimate count)."""
    from xlalign.config import derive

    return {
        (method, batching): (
            results.arm(method, batching),
            derive(profile, train={"method": method, "batching": batching}),
        )
        for method in profile.experiments.methods
        for batching in ("uncoupled", "aligned")
    }


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


def decisions_table(
    arms: dict[tuple[str, str], TrainedArm], base: pd.DataFrame, profile: Profile, langs: list[str]
) -> pd.DataFrame:
    """Per model (base and every arm), on the same held-out items: cross-lingual consistency (share of
    samples decided the same way in every language of ``langs``), mean agreement with English, the
    first-token-margin AUROC (pooled) and the answer skew, each share with its 95% bootstrap CI.

    CALM's consistency idea applied to the first paper's probe; a model flagged ``constant`` gives one
    answer to nearly every item, and its consistency is then trivially high.
    """
    from xlalign.evaluation.decisions import (
        POOLED,
        agreement_with_english,
        answer_skew,
        auroc_by_language,
        probe_consistency,
    )

    n, seed = profile.eval.n_bootstrap, profile.seed
    models = {"baseline": base} | {
        results.block(method, batching): arm.preds for (method, batching), arm in arms.items()
    }
    rows = []
    for name, preds in models.items():
        preds = preds[preds["lang"].isin(langs)]
        cons = probe_consistency(preds, langs, n_resamples=n, seed=seed)
        agree = agreement_with_english(preds, n_resamples=n, seed=seed)
        auroc = auroc_by_language(preds, n_resamples=n, seed=seed).set_index("lang").loc[POOLED]
        skew = answer_skew(preds).set_index("lang").loc[POOLED]
        rows.append(
            {
                "model": name,
                "consistency": cons["share"],
                "consistency_ci_low": cons["ci_low"],
                "consistency_ci_high": cons["ci_high"],
                "agreement_with_en": float(agree["share"].mean()),
                "margin_auroc": auroc["auroc"],
                "auroc_ci_low": auroc["ci_low"],
                "auroc_ci_high": auroc["ci_high"],
                "top_answer": skew["top_answer"],
                "top_share": skew["share"],
                "constant": bool(skew["constant"]),
                "samples": cons["n"],
            }
        )
    return pd.DataFrame(rows)


def decisions_reading(decisions: pd.DataFrame, methods: list[str]) -> str:
    """One sentence per method from ``decisions_table``: aligned vs uncoupled consistency with CIs,
    saying so when either model answers one way almost everywhere."""
    by_model = decisions.set_index("model")
    lines = []
    for m in methods:
        ours, default = (by_model.loc[results.block(m, b)] for b in ("aligned", "uncoupled"))
        note = (
            " (at least one of them answers one way almost everywhere)"
            if ours["constant"] or default["constant"]
            else ""
        )

        def cell(r) -> str:
            return (
                f"{100 * r['consistency']:.1f}% "
                f"[{100 * r['consistency_ci_low']:.1f}, {100 * r['consistency_ci_high']:.1f}]"
            )

        lines.append(
            f"{m}: consistency aligned {cell(ours)} vs uncoupled {cell(default)} "
            f"on {int(ours['samples'])} samples{note}"
        )
    return "\n".join(lines)
