"""Profiles: every hyperparameter, seed and path of a run, loaded from ``configs/*.yaml`` and validated.

YAML keys match the dataclass fields below; unknown keys and wrongly typed values are rejected by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"

TRAIN_LANGS = ["en", "ar", "es", "fr", "ja", "pt", "zh"]
UNSEEN_LANGS = ["th", "vi", "hu", "ro"]
ALL_LANGS = TRAIN_LANGS + UNSEEN_LANGS


class ConfigError(ValueError):
    """A profile, overlay or override is invalid; the message names the key and the fix."""


def _choice(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {', '.join(allowed)}")


@dataclass
class ModelSection:
    # preset name from xlalign.models.PRESETS, a hub id, or a local directory
    name: str = "gemma-3-270m"
    revision: str | None = None
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto
    quantization: str = "none"  # none | nf4 (QLoRA: 4-bit NF4, double-quantized)
    prompt_format: str = (
        "auto"  # auto | plain | chat (auto: chat template if the tokenizer has one)
    )
    attn_implementation: str = "sdpa"  # sdpa | eager

    def __post_init__(self) -> None:
        _choice(self.dtype, ("float32", "bfloat16", "float16", "auto"), "model.dtype")
        _choice(self.quantization, ("none", "nf4"), "model.quantization")
        _choice(self.prompt_format, ("auto", "plain", "chat"), "model.prompt_format")
        _choice(self.attn_implementation, ("sdpa", "eager"), "model.attn_implementation")


@dataclass
class LoraSection:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    top_layers: int = (
        0  # 0: every layer; N: adapters only on the top N layers (cheaper backward on CPU)
    )

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r={self.r} must be >= 1")
        if not self.target_modules:
            raise ConfigError("lora.target_modules must name at least one module")


@dataclass
class DataSection:
    corpus_dir: str = "data/corpus"
    train_langs: list[str] = field(default_factory=lambda: list(TRAIN_LANGS))
    unseen_langs: list[str] = field(default_factory=lambda: list(UNSEEN_LANGS))
    domains: list[str] = field(default_factory=list)  # empty: every domain
    topics_per_domain: int = 0  # 0: every topic; >0 keeps the first N topics of each domain
    k: int = 10  # documents per probe sample (paper: 10)
    test_fraction: float = 0.3  # split by topic, never by item
    localized_instruction: bool = False  # paper: English instruction fixed (A.3.3)
    max_prompt_tokens: int = 4096
    overlong: str = (
        "refuse"  # refuse | drop_group: what to do when a prompt exceeds max_prompt_tokens
    )
    mt_langs: list[str] = field(
        default_factory=list
    )  # C.2: languages machine-translated from English
    translator: str = "fake"  # fake | identity | hf:<hub id of an MT model>

    def __post_init__(self) -> None:
        _choice(self.overlong, ("refuse", "drop_group"), "data.overlong")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction={self.test_fraction} must be between 0 and 1")
        if self.k < 2:
            raise ConfigError(f"data.k={self.k} must be >= 2 (one relevant + irrelevant documents)")
        for lang in self.train_langs + self.unseen_langs + self.mt_langs:
            if lang not in ALL_LANGS:
                raise ConfigError(
                    f"data: unknown language code {lang!r}; known codes: {' '.join(ALL_LANGS)}"
                )
        overlap = set(self.train_langs) & set(self.unseen_langs)
        if overlap:
            raise ConfigError(
                f"data: {sorted(overlap)} cannot be both training and unseen languages"
            )


@dataclass
class TrainSection:
    method: str = "orpo"  # dpo | orpo
    batching: str = "aligned"  # aligned | uncoupled | clustered
    batch_size: int = 7  # languages per aligned batch (paper: 7)
    include_english: bool = True  # C.1 ablation when false
    learning_rate: float = 5e-6
    epochs: float = 3.0
    max_steps: int = -1  # >0 overrides epochs
    grad_accum: int = 1
    beta: float = 0.1  # DPO beta / ORPO lambda
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    save_steps: int = 0  # 0: save only at the end
    max_length: int = 4096
    optim: str = "adamw_torch"
    orpo_nll_scope: str = "full"  # full (TRL 1.16 stock: chosen prompt+response) | completion
    share_prompt: bool = (
        True  # encode a pair's prompt once for both completions (same values, less compute)
    )

    def __post_init__(self) -> None:
        _choice(self.method, ("dpo", "orpo", "sft"), "train.method")
        _choice(self.batching, ("aligned", "uncoupled", "clustered"), "train.batching")
        _choice(self.orpo_nll_scope, ("full", "completion"), "train.orpo_nll_scope")
        _choice(self.lr_scheduler, ("linear", "cosine", "constant"), "train.lr_scheduler")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size={self.batch_size} must be >= 1")
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate={self.learning_rate} must be > 0")


@dataclass
class EvalSection:
    mode: str = "scoring"  # scoring | generation
    max_new_tokens: int = 12
    batch_size: int = 8
    n_bootstrap: int = 1000
    alpha: float = 0.01  # McNemar significance level (paper: p < 0.01)
    max_items_per_lang: int = 0  # 0: the whole test split

    def __post_init__(self) -> None:
        _choice(self.mode, ("scoring", "generation"), "eval.mode")


@dataclass
class CalmSection:
    train_langs: list[str] = field(default_factory=lambda: ["en", "fr", "zh"])
    eval_langs: list[str] = field(default_factory=lambda: ["en", "fr", "zh", "es", "ja", "pt"])
    num_samples: int = 3  # m
    temperature: float = 1.0
    top_p: float = 0.9
    max_new_tokens: int = 512
    sample_batch_size: int = 8
    batch_size: int = 1  # preference pairs per micro-batch (paper Table 5: 1)
    translator: str = "self"  # self | identity | hf:<hub id>
    learning_rate: float = 5e-6
    sft_learning_rate: float = 5e-5
    epochs: float = 3.0
    max_steps: int = -1
    beta: float = 0.1
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    lora: LoraSection = field(
        default_factory=lambda: LoraSection(
            r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj"]
        )
    )
    batching: str = (
        "shuffled"  # shuffled | aligned (beyond the paper: one question's pairs per batch)
    )
    max_questions: int = 0  # 0: every question
    incremental: bool = True  # Table 10: add training languages one at a time

    def __post_init__(self) -> None:
        _choice(self.batching, ("shuffled", "aligned"), "calm.batching")
        if self.num_samples < 1:
            raise ConfigError("calm.num_samples must be >= 1")


@dataclass
class ExperimentsSection:
    models: list[str] = field(default_factory=lambda: ["gemma-3-270m"])  # baseline-gap models
    methods: list[str] = field(default_factory=lambda: ["dpo", "orpo"])
    ablation_method: str = "orpo"
    ablation_max_steps: int = -1  # -1: same as train.max_steps
    batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7])
    benchmarks: list[str] = field(default_factory=list)  # lm-eval task names, named explicitly
    benchmark_limit: int = 0  # 0: whole task

    def __post_init__(self) -> None:
        for m in self.methods + [self.ablation_method]:
            _choice(m, ("dpo", "orpo"), "experiments.methods")


@dataclass
class Profile:
    name: str = "cpu"
    seed: int = 0
    run_root: str = "runs"
    cache_dir: str = ""  # empty: $XLALIGN_CACHE or ~/.cache/xlalign
    accelerate_config: str = ""  # configs/accelerate/*.yaml for multi-process runs
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    calm: CalmSection = field(default_factory=CalmSection)
    experiments: ExperimentsSection = field(default_factory=ExperimentsSection)

    def __post_init__(self) -> None:
        # "clustered" batches (CALM's pairs) hold rows of one question, not one row per language.
        n_langs = len(self.data.train_langs) + len(self.data.mt_langs)
        if self.train.batching != "clustered" and self.train.batch_size > n_langs:
            raise ConfigError(
                f"train.batch_size={self.train.batch_size} is larger than the number of training "
                f"languages ({len(self.data.train_langs) + len(self.data.mt_langs)}); an aligned batch "
                "holds one query in distinct languages"
            )
        if self.train.include_english and "en" not in self.data.train_langs:
            raise ConfigError(
                "train.include_english=true but 'en' is not in data.train_langs; add it or set "
                "train.include_english=false"
            )

    @property
    def cache_path(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        return Path(os.environ.get("XLALIGN_CACHE", Path.home() / ".cache" / "xlalign"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- building from dicts


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; allow int->float, nothing else implicit."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key)
    if tp is float:
        # YAML 1.1 reads "5e-6" (no dot) as a string; accept any string that is a float literal.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = (
                f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(names)}"
            )
            raise ConfigError(f"unknown profile key {full!r}{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as exc:  # pragma: no cover - defensive
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from exc


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _resolve_profile_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"unknown profile {name_or_path!r}; known profiles: {', '.join(known)}")


def _profile_dict(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = _resolve_profile_path(name_or_path)
    if str(path) in seen:
        raise ConfigError(f"{path}: circular 'inherit'")
    data = _read_yaml(path)
    parent = data.pop("inherit", None)
    if parent:
        data = _merge(_profile_dict(parent, seen + (str(path),)), data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.learning_rate=1e-4`` -> (["train", "learning_rate"], 1e-4); the value is YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str] | dict[str, Any]) -> dict:
    items = (
        overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    )
    out = dict(data)
    for key, value in items:
        parts = key.split(".") if isinstance(key, str) else key
        node = out
        for part in parts[:-1]:
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node[parts[-1]] = value
    return out


def _overlay_path(overlay: str) -> Path:
    path = Path(overlay)
    if not path.exists():
        path = CONFIG_DIR / "ablations" / f"{overlay}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown overlay {overlay!r} (looked for {path})")
    return path


def _apply(data: dict[str, Any], overlays: typing.Iterable[str], overrides) -> Profile:
    for overlay in overlays:
        data = _merge(data, _read_yaml(_overlay_path(overlay)))
    return _build(Profile, apply_overrides(data, overrides))


def load_profile(
    name_or_path: str = "cpu",
    overrides: typing.Iterable[str] | dict[str, Any] = (),
    overlays: typing.Iterable[str] = (),
) -> Profile:
    """Load ``configs/<name>.yaml`` (following ``inherit``), then overlays, then ``key=value`` overrides."""
    return _apply(_profile_dict(name_or_path), overlays, overrides)


def derive(
    profile: Profile,
    overlays: typing.Iterable[str] = (),
    overrides: typing.Iterable[str] | dict[str, Any] = (),
) -> Profile:
    """``profile`` with ablation overlays and overrides applied, validated again (ablations, CALM)."""
    return _apply(profile.to_dict(), overlays, overrides)


def profile_from_dict(data: dict[str, Any]) -> Profile:
    """Rebuild a profile from ``Profile.to_dict()`` output (e.g. a run record)."""
    return _build(Profile, data)
