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


# The comparisons of notebook 03's effect table, as (A, B): each row reports B − A.
EFFECT_COMPARISONS = (("base", "uncoupled"), ("base", "aligned"), ("uncoupled", "aligned"))
EFFECT_COLUMNS = (
    "method", "comparison", "group", "items", "acc_a", "acc_b", "delta", "ci_low", "ci_high",
    "only_a_right", "only_b_right", "pvalue", "exact", "significant", "one_answer_a", "one_answer_b",
)  # fmt: skip


def _one_answer(preds: pd.DataFrame, keys: pd.DataFrame) -> bool:
    """Whether ``preds`` gives one answer to at least 95% of the (sample_id, lang) items in ``keys``."""
    from xlalign.evaluation.decisions import POOLED, answer_skew

    mine = preds.merge(keys, on=["sample_id", "lang"], validate="one_to_one")
    return bool(answer_skew(mine).set_index("lang").loc[POOLED, "constant"])


def _one_answer_models(row) -> list[str]:
    """The models of an ``effect_table`` row ("B − A") flagged as giving one answer, A first."""
    name_b, name_a = row["comparison"].split(" − ")
    return [name_a] * bool(row["one_answer_a"]) + [name_b] * bool(row["one_answer_b"])


def effect_table(
    arms: dict[tuple[str, str], TrainedArm], base: pd.DataFrame, profile: Profile, langs: list[str]
) -> pd.DataFrame:
    """Each trained arm against the base model, and aligned against uncoupled, on the same items:
    per method and comparison (B − A), for English, Rest (avg.) and all of ``langs``, the accuracy
    difference in points with a paired 95% bootstrap CI that resamples whole samples within each
    label, as the label-balanced items were drawn (``stats.paired_accuracy_delta``), and McNemar's
    test (``stats.mcnemar_test``; ``only_a_right`` and ``only_b_right`` are its discordant counts). ``one_answer_a``/``_b`` flag a model that gives
    one answer to at least 95% of the group's items (``answer_skew``): beside such a model the
    difference measures the other model, not a change of decision.
    """
    from xlalign.evaluation.stats import mcnemar_test, paired_outcomes, paired_outcomes_delta

    english = "en"  # the papers' pivot language, as everywhere in the project
    n, seed, alpha = profile.eval.n_bootstrap, profile.seed, profile.eval.alpha
    rows = []
    for method in profile.experiments.methods:
        models = {
            "base": base,
            "uncoupled": arms[method, "uncoupled"].preds,
            "aligned": arms[method, "aligned"].preds,
        }
        models = {k: v[v["lang"].isin(langs)] for k, v in models.items()}
        for name_a, name_b in EFFECT_COMPARISONS:
            a, b = models[name_a], models[name_b]
            paired = paired_outcomes(a, b)
            groups = {
                "English": paired["lang"] == english,
                "Rest (avg.)": paired["lang"] != english,
                "all": paired["lang"].notna(),
            }
            for group, sel in groups.items():
                part = paired[sel.to_numpy()]
                if part.empty:
                    continue
                keys = part[["sample_id", "lang"]]
                ci = paired_outcomes_delta(part, n, seed)
                test = mcnemar_test(part["correct_a"], part["correct_b"], alpha=alpha)
                rows.append(
                    {
                        "method": method,
                        "comparison": f"{name_b} − {name_a}",
                        "group": group,
                        "items": len(part),
                        "acc_a": 100.0 * part["correct_a"].mean(),
                        "acc_b": 100.0 * part["correct_b"].mean(),
                        "delta": ci.point,
                        "ci_low": ci.low,
                        "ci_high": ci.high,
                        "only_a_right": test.b,
                        "only_b_right": test.c,
                        "pvalue": test.pvalue,
                        "exact": test.exact,
                        "significant": test.significant,
                        "one_answer_a": _one_answer(a, keys),
                        "one_answer_b": _one_answer(b, keys),
                    }
                )
    return pd.DataFrame(rows, columns=list(EFFECT_COLUMNS))


def effect_markdown(table: pd.DataFrame) -> str:
    """``effect_table`` as a pipe table: accuracies, B − A [95% CI], McNemar p, and "one answer"
    where a model answers one way to at least 95% of the items."""
    from xlalign.report.readings import interval, pvalue_text, signed

    frame = pd.DataFrame(
        {
            "method": table["method"],
            "comparison (B − A)": table["comparison"],
            "group": table["group"],
            "items": table["items"],
            "A": table["acc_a"].map(lambda x: f"{x:.1f}"),
            "B": table["acc_b"].map(lambda x: f"{x:.1f}"),
            "B − A [95% CI]": [
                f"{signed(r.delta)} {interval(r.ci_low, r.ci_high, sign=True)}"
                for r in table.itertuples()
            ],
            "McNemar": table["pvalue"].map(pvalue_text),
            "one answer to ≥95% of items": [
                ", ".join(_one_answer_models(r)) or "—" for _, r in table.iterrows()
            ],
        }
    )
    return frame.to_markdown(index=False)


def effect_reading(table: pd.DataFrame) -> str:
    """One line per method and comparison: B − A over all languages and in Rest (avg.), with CIs and
    McNemar p; a comparison beside a model that gives one answer to nearly every item says so."""
    from xlalign.report.readings import interval, pvalue_text, signed

    lines = []
    for (method, comparison), grp in table.groupby(["method", "comparison"], sort=False):
        parts = []
        for _, r in grp[grp["group"].isin(["all", "Rest (avg.)"])].iterrows():
            parts.append(
                f"{r['group']} {signed(r['delta'])} points {interval(r['ci_low'], r['ci_high'], sign=True)}"
                f" ({r['acc_a']:.1f} → {r['acc_b']:.1f}, {r['items']} items, {pvalue_text(r['pvalue'])})"
            )
        whole = grp[grp["group"] == "all"].iloc[0]
        one = _one_answer_models(whole)
        verdict = (
            "CI excludes 0" if whole["ci_low"] > 0 or whole["ci_high"] < 0 else "CI includes 0"
        )
        note = (
            f"; {' and '.join(one)} gives one answer to at least 95% of the items, so this "
            "measures the other model's decisions, not a change of them"
            if one
            else ""
        )
        lines.append(f"{method} {comparison}: {'; '.join(parts)}: {verdict}{note}.")
    return "\n".join(lines)


def write_effect(run, table: pd.DataFrame, stem: str = "effect_vs_base") -> dict:
    """``tables/<stem>.csv`` (``effect_table``'s columns) and ``.md`` (``effect_markdown``), which the
    report shows among its tables; a rerun of the notebook replaces them."""
    out = run.sub("tables")
    csv, md = out / f"{stem}.csv", out / f"{stem}.md"
    table.to_csv(csv, index=False)
    md.write_text(effect_markdown(table) + "\n", encoding="utf-8")
    return {"csv": str(csv), "md": str(md)}
