"""Which training and evaluation settings each paper states, and which of our profile values are ours.

Every entry quotes where the paper says it; a key marked as not stated holds this project's choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class Setting:
    """One profile key: the paper's value and where it is stated, or why the value is ours."""

    key: str  # dotted profile key, e.g. "train.learning_rate"
    stated: bool
    value: Any = None  # the paper's value where ``stated``
    source: str = ""  # section/table of the paper, or what the paper says instead


BA = "batch-alignment paper"
CALM = "CALM paper"

# Agarwal et al. A.3 ("Training Pipeline"): "a learning rate of 5e-6, batch size of 7, and a maximum
# sequence length of 4096 tokens ... 3 epochs using mixed-precision on 4 NVIDIA A100 GPUs"; §3.2
# "ten irrelevant documents"; A.3 70/30 split; §4.1 bootstrap (B=1000) and McNemar at p < 0.01.
BATCH_ALIGNMENT: tuple[Setting, ...] = (
    Setting("train.learning_rate", True, 5e-6, f"{BA}, A.3"),
    Setting("train.batch_size", True, 7, f"{BA}, A.3"),
    Setting("train.max_length", True, 4096, f"{BA}, A.3"),
    Setting("train.epochs", True, 3, f"{BA}, A.3"),
    Setting("data.k", True, 10, f"{BA}, §3.2 (ten irrelevant documents)"),
    Setting("data.test_fraction", True, 0.3, f"{BA}, A.3 (70% training, 30% testing)"),
    Setting("data.train_langs", True, ["en", "ar", "es", "fr", "ja", "pt", "zh"], f"{BA}, §3.2"),
    Setting("data.unseen_langs", True, ["th", "vi", "hu", "ro"], f"{BA}, §5.2"),
    Setting("eval.n_bootstrap", True, 1000, f"{BA}, §4.1 (B=1000)"),
    Setting("eval.alpha", True, 0.01, f"{BA}, §4.1 (McNemar, p < 0.01)"),
    Setting("experiments.methods", True, ["dpo", "orpo"], f"{BA}, §3.3 (DPO and ORPO)"),
    # Not stated: the paper says "mixed-precision" and nothing about adapters.
    Setting("model.quantization", False, source=f"{BA}: no quantization or QLoRA is mentioned"),
    Setting("model.dtype", False, source=f"{BA}: 'mixed-precision', no dtype named"),
    Setting(
        "lora.r", False, source=f"{BA}: LoRA is not mentioned (nor whether adapters were used)"
    ),
    Setting("lora.alpha", False, source=f"{BA}: LoRA is not mentioned"),
    Setting("lora.dropout", False, source=f"{BA}: LoRA is not mentioned"),
    Setting("lora.target_modules", False, source=f"{BA}: LoRA is not mentioned"),
    Setting("train.beta", False, source=f"{BA}: neither DPO's beta nor ORPO's lambda is given"),
    Setting("train.lr_scheduler", False, source=f"{BA}: no learning-rate schedule is given"),
    Setting("train.warmup_ratio", False, source=f"{BA}: no warmup is given"),
    Setting("train.orpo_nll_scope", False, source=f"{BA}: not given; ours follows TRL's ORPO"),
    Setting("eval.mode", True, "generation", f"{BA}, A.3.1 (exact match of the generated answer)"),
    Setting("eval.max_new_tokens", False, source=f"{BA}: not given"),
    Setting("experiments.benchmarks", False, source=f"{BA}: benchmarks named, not their languages"),
)

# Wang et al. Appendix A, Table 5 (DPO / SFT training) and Table 6 (inference).
CALM_SETTINGS: tuple[Setting, ...] = (
    Setting("calm.train.learning_rate", True, 5e-6, f"{CALM}, Table 5"),
    Setting("calm.sft_learning_rate", True, 5e-5, f"{CALM}, Table 5"),
    Setting("calm.train.epochs", True, 3, f"{CALM}, Table 5"),
    Setting("calm.train.lr_scheduler", True, "cosine", f"{CALM}, Table 5"),
    Setting("calm.train.warmup_ratio", True, 0.1, f"{CALM}, Table 5"),
    Setting("calm.train.beta", True, 0.1, f"{CALM}, Table 5 (pref_beta)"),
    Setting("calm.lora.r", True, 8, f"{CALM}, Table 5"),
    Setting("calm.lora.alpha", True, 16, f"{CALM}, Table 5"),
    Setting("calm.lora.target_modules", True, ["q_proj", "v_proj"], f"{CALM}, Table 5"),
    Setting("calm.num_samples", True, 3, f"{CALM}, Appendix A (m=3)"),
    Setting("calm.temperature", True, 1.0, f"{CALM}, Table 6"),
    Setting("calm.top_p", True, 0.9, f"{CALM}, Table 6"),
    Setting("calm.max_new_tokens", True, 512, f"{CALM}, Table 6"),
    Setting("calm.lora.dropout", False, source=f"{CALM}: Table 5 gives no LoRA dropout"),
    Setting("calm.train.max_length", False, source=f"{CALM}: no maximum length is given"),
)

SETTINGS: tuple[Setting, ...] = BATCH_ALIGNMENT + CALM_SETTINGS


def profile_value(profile_dict: dict, key: str) -> Any:
    """The value of dotted ``key`` in ``Profile.to_dict()``; KeyError names the missing part."""
    node: Any = profile_dict
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"profile has no key {key!r} (stopped at {part!r})")
        node = node[part]
    return node


def provenance(profile) -> pd.DataFrame:
    """One row per setting: key, the profile's value, the paper's value, and its origin, either
    ``"paper"`` with the section, or ``"ours"`` with what the paper says instead."""
    values = profile.to_dict()
    rows = []
    for s in SETTINGS:
        rows.append(
            {
                "key": s.key,
                "value": profile_value(values, s.key),
                "paper_value": s.value if s.stated else None,
                "origin": "paper" if s.stated else "ours (not stated in the paper)",
                "source": s.source,
            }
        )
    return pd.DataFrame(rows)
