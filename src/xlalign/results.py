"""Typed results of the papers' experiments, and the one registry of run labels.

A label names a directory under ``runs/<id>/train/`` or ``eval/``; notebooks, the CLI and the report
build labels only through the functions here, and blocks of our tables only through ``block``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from xlalign.training.run import TrainResult

# --------------------------------------------------------------------------- labels

QUICKSTART = "quickstart"
NO_ENGLISH = "ablation-no-english"


def baseline(model: str) -> str:
    """The untrained model's evaluation (notebooks 02, 03, 06 share it)."""
    return f"baseline-{model}"


def baseline_mt(model: str) -> str:
    """The untrained model on the machine-translation ablation's languages (notebook 05)."""
    return f"baseline-{model}-mt-langs"


def arm(method: str, batching: str) -> str:
    """A notebook-03 training run: ``orpo-aligned``, ``dpo-uncoupled``, ..."""
    return f"{method}-{batching}"


def unseen(method: str) -> str:
    """The aligned arm of notebook 03 evaluated on the unseen languages (notebook 06)."""
    return f"{arm(method, 'aligned')}-unseen"


def batch_size(size: int, uncoupled: bool = False) -> str:
    """The batch-size ablation's runs (notebook 05)."""
    return f"ablation-bs{size}" + ("-uncoupled" if uncoupled else "")


def machine_translated(batching: str) -> str:
    """The machine-translated-data ablation's runs (notebook 05)."""
    return f"ablation-mt-{batching}"


def block(method: str, batching: str) -> str:
    """A table block as the papers name it: uncoupled training is their "default", aligned "ours"."""
    return f"{method}_{'ours' if batching == 'aligned' else 'default'}"


# --------------------------------------------------------------------------- results


@dataclass
class Evaluation:
    """One evaluation: the per-item predictions of ``eval/<label>/predictions.jsonl``."""

    label: str
    path: Path
    preds: pd.DataFrame

    @property
    def accuracy(self) -> float:
        return float(self.preds["correct"].mean()) if len(self.preds) else float("nan")


@dataclass
class TrainedArm:
    """One trained adapter and its held-out evaluation (an arm of Tables 6/8 or of an ablation)."""

    label: str
    method: str
    batching: str
    train: TrainResult
    evaluation: Evaluation

    @property
    def preds(self) -> pd.DataFrame:
        return self.evaluation.preds


@dataclass
class CalmRun:
    """What ``calm.pipeline.run_calm`` measured; ``metrics.json`` holds ``to_dict()``."""

    train_langs: list[str]
    eval_langs: list[str]
    questions_train: int
    questions_test: int
    eval_on_train_questions: bool
    sampling: dict[str, Any]
    counts: dict[str, Any]
    vote_accuracy: dict[str, Any]
    training: dict[str, dict]
    evaluation: dict[str, dict]
    incremental: dict[str, dict]
    batching: dict[str, Any]
    wall_times_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
