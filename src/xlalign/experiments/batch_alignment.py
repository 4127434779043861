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
