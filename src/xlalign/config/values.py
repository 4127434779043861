"""Allowed values of the profile's fields, one definition each (``Literal`` types), and the checks
that name the key and the allowed range of a bad value.
"""

from __future__ import annotations

import contextvars
import functools
import math
import typing
from pathlib import Path
from typing import Any, Literal

REPO_ROOT = Path(__file__).resolve().parents[3]
CONFIG_DIR = REPO_ROOT / "configs"

TRAIN_LANGS = ["en", "ar", "es", "fr", "ja", "pt", "zh"]
UNSEEN_LANGS = ["th", "vi", "hu", "ro"]
ALL_LANGS = TRAIN_LANGS + UNSEEN_LANGS
# CALM may also use X-CSQA's German and Italian (its Table 10 evaluates them).
CALM_LANGS = ALL_LANGS + ["de", "it"]


class ConfigError(ValueError):
    """A profile, overlay or override is invalid; the message names the key and the fix."""


# Each fixed set of allowed values is defined once, as the Literal that annotates its field(s);
# ``_coerce`` (YAML, overrides) and the sections' ``__post_init__`` both read the allowed values from it.

Dtype = Literal["float32", "bfloat16", "float16", "auto"]
Quantization = Literal["none", "nf4"]  # nf4: QLoRA, 4-bit NF4, double-quantized
PromptFormat = Literal["auto", "plain", "chat"]  # auto: chat template if the tokenizer has one
AttnImplementation = Literal["sdpa", "eager"]
Overlong = Literal["refuse", "drop_group"]  # what to do when a prompt exceeds max_prompt_tokens
ProbeSource = Literal["corpus", "xquad", "belebele", "nomiracl"]  # the probe's passages
TrainMethod = Literal["dpo", "orpo", "sft"]
PreferenceMethod = Literal["dpo", "orpo"]
Batching = Literal["aligned", "uncoupled", "clustered"]
LrScheduler = Literal["linear", "cosine", "constant"]
OrpoNllScope = Literal["full", "completion"]  # full: TRL stock (chosen prompt+response)
EvalMode = Literal["scoring", "generation"]
CalmBatching = Literal["shuffled", "aligned"]
# CALM's question sets: the shipped corpus's passage MCQs (cpu/smoke stand-in), X-CSQA and MedQA (the
# paper's), MGSM (numeric answers; beyond the paper).
CalmTask = Literal["corpus_mcq", "xcsqa", "medqa", "mgsm"]
CalmEvalDecoding = Literal["greedy", "sample"]  # sample: calm.temperature and calm.top_p (Table 6)

# Optimizers accepted without importing transformers (its import takes seconds); any other name is
# checked against the installed ``transformers.training_args.OptimizerNames``, which is the definition
# (tests/test_config.py checks that these are among its values).
COMMON_OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adafactor",
    "sgd",
    "adamw_8bit",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
)


def allowed_values(tp: Any) -> tuple:
    """The values a ``Literal[...]`` annotation allows (``Optional``/``list`` of one unwrapped)."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    for arg in typing.get_args(tp):
        found = allowed_values(arg)
        if found:
            return found
    return ()


def _choice(value: Any, tp: Any, key: str) -> None:
    allowed = allowed_values(tp)
    if value not in allowed:
        raise ConfigError(
            f"{key}={value!r} is not allowed; choose one of {', '.join(map(str, allowed))}"
        )


# The dotted name of the section being built (``calm.lora`` vs ``lora``), for error messages.
_BUILDING: contextvars.ContextVar[tuple[type, str] | None] = contextvars.ContextVar(
    "xlalign_config_building", default=None
)


def _where(obj: Any, default: str) -> str:
    building = _BUILDING.get()
    return building[1] if building and building[0] is type(obj) else default


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_fields(obj: Any, section: str) -> None:
    """Literal-typed fields hold an allowed value; float fields are finite (YAML ``.nan``, ``.inf``)."""
    for name, tp in _hints(type(obj)).items():
        key = f"{section}.{name}" if section else name
        value = getattr(obj, name)
        origin = typing.get_origin(tp)
        if origin is Literal:
            _choice(value, tp, key)
        elif origin is list and allowed_values(tp) and isinstance(value, list):
            for i, v in enumerate(value):
                _choice(v, tp, f"{key}[{i}]")
        elif tp is float and isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value} must be a finite number")


def _at_least(value: float, low: float, key: str, note: str = "") -> None:
    if value < low:
        raise ConfigError(f"{key}={value} must be >= {low}{note}")


def _between(value: float, low: float, high: float, key: str, *, high_open: bool = False) -> None:
    ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise ConfigError(f"{key}={value} must be in [{low}, {high}{bracket}")


def _langs(langs: list[str], key: str, known: list[str] = ALL_LANGS) -> None:
    for lang in langs:
        if lang not in known:
            raise ConfigError(
                f"{key}: unknown language code {lang!r}; known codes: {' '.join(known)}"
            )


def _translator(spec: str, key: str, names: tuple[str, ...]) -> None:
    if spec not in names and not (spec.startswith("hf:") and len(spec) > 3):
        raise ConfigError(
            f"{key}={spec!r} is not allowed; choose one of {' | '.join(names)} | hf:<hub id>"
        )


def _optimizer(name: str, key: str) -> None:
    if name in COMMON_OPTIMIZERS:
        return
    try:
        from transformers.training_args import OptimizerNames
    except ImportError:  # pragma: no cover - transformers is a dependency
        allowed = COMMON_OPTIMIZERS
    else:
        allowed = tuple(o.value for o in OptimizerNames)
    if name not in allowed:
        raise ConfigError(
            f"{key}={name!r} is not one of transformers' OptimizerNames: {', '.join(allowed)}"
        )
