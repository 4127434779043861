"""Profiles: every hyperparameter, seed and path of a run, loaded from ``configs/*.yaml`` and validated.

YAML keys match the dataclass fields below; unknown keys and wrongly typed values are rejected by name.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import functools
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"

TRAIN_LANGS = ["en", "ar", "es", "fr", "ja", "pt", "zh"]
UNSEEN_LANGS = ["th", "vi", "hu", "ro"]
ALL_LANGS = TRAIN_LANGS + UNSEEN_LANGS


class ConfigError(ValueError):
    """A profile, overlay or override is invalid; the message names the key and the fix."""


# --------------------------------------------------------------------------- allowed values
# Each fixed set of allowed values is defined once, as the Literal that annotates its field(s);
# ``_coerce`` (YAML, overrides) and the sections' ``__post_init__`` both read the allowed values from it.

Dtype = Literal["float32", "bfloat16", "float16", "auto"]
Quantization = Literal["none", "nf4"]  # nf4: QLoRA, 4-bit NF4, double-quantized
PromptFormat = Literal["auto", "plain", "chat"]  # auto: chat template if the tokenizer has one
AttnImplementation = Literal["sdpa", "eager"]
Overlong = Literal["refuse", "drop_group"]  # what to do when a prompt exceeds max_prompt_tokens
TrainMethod = Literal["dpo", "orpo", "sft"]
PreferenceMethod = Literal["dpo", "orpo"]
Batching = Literal["aligned", "uncoupled", "clustered"]
LrScheduler = Literal["linear", "cosine", "constant"]
OrpoNllScope = Literal["full", "completion"]  # full: TRL stock (chosen prompt+response)
EvalMode = Literal["scoring", "generation"]
CalmBatching = Literal["shuffled", "aligned"]

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


def _langs(langs: list[str], key: str) -> None:
    for lang in langs:
        if lang not in ALL_LANGS:
            raise ConfigError(
                f"{key}: unknown language code {lang!r}; known codes: {' '.join(ALL_LANGS)}"
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


@dataclass
class ModelSection:
    # preset name from xlalign.models.PRESETS, a hub id, or a local directory
    name: str = "gemma-3-270m"
    revision: str | None = None
    dtype: Dtype = "float32"
    quantization: Quantization = "none"
    prompt_format: PromptFormat = "auto"
    attn_implementation: AttnImplementation = "sdpa"

    def __post_init__(self) -> None:
        _check_fields(self, "model")


@dataclass
class LoraSection:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    top_layers: int = (
        0  # 0: every layer; N: adapters only on the top N layers (cheaper backward on CPU)
    )

    def validate(self, section: str) -> None:
        _check_fields(self, section)
        _at_least(self.r, 1, f"{section}.r")
        _at_least(self.alpha, 1, f"{section}.alpha")
        _between(self.dropout, 0.0, 1.0, f"{section}.dropout", high_open=True)
        _at_least(self.top_layers, 0, f"{section}.top_layers", " (0: every layer)")
        if not self.target_modules:
            raise ConfigError(f"{section}.target_modules must name at least one module")

    def __post_init__(self) -> None:
        self.validate(_where(self, "lora"))


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
    overlong: Overlong = "refuse"
    mt_langs: list[str] = field(
        default_factory=list
    )  # C.2: languages machine-translated from English
    translator: str = "fake"  # fake | identity | hf:<hub id of an MT model>

    def __post_init__(self) -> None:
        _check_fields(self, "data")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction={self.test_fraction} must be between 0 and 1")
        if self.k < 2:
            raise ConfigError(f"data.k={self.k} must be >= 2 (one relevant + irrelevant documents)")
        _at_least(self.topics_per_domain, 0, "data.topics_per_domain", " (0: every topic)")
        _at_least(self.max_prompt_tokens, 1, "data.max_prompt_tokens")
        _translator(self.translator, "data.translator", ("fake", "identity"))
        _langs(self.train_langs + self.unseen_langs + self.mt_langs, "data")
        overlap = set(self.train_langs) & set(self.unseen_langs)
        if overlap:
            raise ConfigError(
                f"data: {sorted(overlap)} cannot be both training and unseen languages"
            )


@dataclass
class TrainSection:
    method: TrainMethod = "orpo"
    batching: Batching = "aligned"
    batch_size: int = 7  # languages per aligned batch (paper: 7)
    include_english: bool = True  # C.1 ablation when false
    learning_rate: float = 5e-6
    epochs: float = 3.0
    max_steps: int = -1  # >0 overrides epochs
    grad_accum: int = 1
    beta: float = 0.1  # DPO beta / ORPO lambda
    lr_scheduler: LrScheduler = "linear"
    warmup_ratio: float = 0.0
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    save_steps: int = 0  # 0: save only at the end
    max_length: int = 4096
    optim: str = "adamw_torch"  # one of transformers' OptimizerNames
    orpo_nll_scope: OrpoNllScope = (
        "full"  # full (TRL 1.16 stock: chosen prompt+response) | completion
    )
    share_prompt: bool = (
        True  # encode a pair's prompt once for both completions (same values, less compute)
    )

    def validate(self, section: str) -> None:
        _check_fields(self, section)
        _at_least(self.batch_size, 1, f"{section}.batch_size")
        if self.learning_rate <= 0:
            raise ConfigError(f"{section}.learning_rate={self.learning_rate} must be > 0")
        if self.epochs <= 0:
            raise ConfigError(f"{section}.epochs={self.epochs} must be > 0")
        _at_least(self.max_steps, -1, f"{section}.max_steps", " (-1: train for epochs)")
        _at_least(self.grad_accum, 1, f"{section}.grad_accum")
        if self.beta <= 0:
            raise ConfigError(f"{section}.beta={self.beta} must be > 0")
        _between(self.warmup_ratio, 0.0, 1.0, f"{section}.warmup_ratio")
        _at_least(self.logging_steps, 1, f"{section}.logging_steps")
        _at_least(self.save_steps, 0, f"{section}.save_steps", " (0: save only at the end)")
        _at_least(self.max_length, 1, f"{section}.max_length")
        _optimizer(self.optim, f"{section}.optim")

    def __post_init__(self) -> None:
        self.validate(_where(self, "train"))


@dataclass
class EvalSection:
    mode: EvalMode = "scoring"
    max_new_tokens: int = 12
    batch_size: int = 8
    n_bootstrap: int = 1000
    alpha: float = 0.01  # McNemar significance level (paper: p < 0.01)
    max_items_per_lang: int = 0  # 0: the whole test split

    def __post_init__(self) -> None:
        _check_fields(self, "eval")
        _at_least(self.max_new_tokens, 1, "eval.max_new_tokens")
        _at_least(self.batch_size, 1, "eval.batch_size")
        _at_least(self.n_bootstrap, 1, "eval.n_bootstrap")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"eval.alpha={self.alpha} must be in (0, 1)")
        _at_least(self.max_items_per_lang, 0, "eval.max_items_per_lang", " (0: the whole split)")


def calm_train_defaults() -> TrainSection:
    """CALM's training section (paper Table 5): DPO, one pair per micro-batch, lr 5e-6 cosine, warmup
    0.1, beta 0.1, 3 epochs. ``clustered`` batches hold the rows ``calm.variants.trainer_rows`` keys."""
    return TrainSection(
        method="dpo",
        batching="clustered",
        batch_size=1,
        include_english=False,  # only the probe's aligned sampler reads it
        learning_rate=5e-6,
        epochs=3.0,
        beta=0.1,
        lr_scheduler="cosine",
        warmup_ratio=0.1,
    )


@dataclass
class CalmSection:
    train_langs: list[str] = field(default_factory=lambda: ["en", "fr", "zh"])
    eval_langs: list[str] = field(default_factory=lambda: ["en", "fr", "zh", "es", "ja", "pt"])
    num_samples: int = 3  # m
    temperature: float = 1.0
    top_p: float = 0.9
    max_new_tokens: int = 512
    sample_batch_size: int = 8
    translator: str = "self"  # self | identity | fake | hf:<hub id>
    # CALM's own training section: the trainer runs CALM with it (and calm.lora), not with the
    # top-level train/lora; train.method and train.batch_size are set per variant and batch size.
    train: TrainSection = field(default_factory=calm_train_defaults)
    sft_learning_rate: float = 5e-5  # the SFT baselines' rate; SFT has no warmup (Table 5)
    lora: LoraSection = field(
        default_factory=lambda: LoraSection(
            r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj"]
        )
    )
    batching: CalmBatching = (
        "shuffled"  # shuffled | aligned (beyond the paper: one question's pairs per batch)
    )
    max_questions: int = 0  # 0: every question
    incremental: bool = True  # Table 10: add training languages one at a time

    def __post_init__(self) -> None:
        _check_fields(self, "calm")
        _langs(self.train_langs, "calm.train_langs")
        _langs(self.eval_langs, "calm.eval_langs")
        if not self.train_langs or not self.eval_langs:
            raise ConfigError(
                "calm.train_langs and calm.eval_langs must name at least one language"
            )
        _at_least(self.num_samples, 1, "calm.num_samples")
        if self.temperature <= 0:
            raise ConfigError(f"calm.temperature={self.temperature} must be > 0 (sampling)")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"calm.top_p={self.top_p} must be in (0, 1]")
        _at_least(self.max_new_tokens, 1, "calm.max_new_tokens")
        _at_least(self.sample_batch_size, 1, "calm.sample_batch_size")
        _translator(self.translator, "calm.translator", ("self", "identity", "fake"))
        self.train.validate("calm.train")
        if self.train.batching != "clustered":
            raise ConfigError(
                f"calm.train.batching={self.train.batching!r} is not allowed; CALM trains on "
                "clustered batches (calm.batching chooses shuffled or aligned pairs)"
            )
        if self.sft_learning_rate <= 0:
            raise ConfigError(f"calm.sft_learning_rate={self.sft_learning_rate} must be > 0")
        self.lora.validate("calm.lora")
        _at_least(self.max_questions, 0, "calm.max_questions", " (0: every question)")


@dataclass
class ExperimentsSection:
    models: list[str] = field(default_factory=lambda: ["gemma-3-270m"])  # baseline-gap models
    methods: list[PreferenceMethod] = field(default_factory=lambda: ["dpo", "orpo"])
    ablation_method: PreferenceMethod = "orpo"
    ablation_max_steps: int = -1  # -1: same as train.max_steps
    batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7])
    benchmarks: list[str] = field(default_factory=list)  # lm-eval task names, named explicitly
    benchmark_limit: int = 0  # 0: whole task

    def __post_init__(self) -> None:
        _check_fields(self, "experiments")
        _at_least(self.ablation_max_steps, -1, "experiments.ablation_max_steps")
        if not self.batch_sizes:
            raise ConfigError("experiments.batch_sizes must name at least one batch size")
        _at_least(self.benchmark_limit, 0, "experiments.benchmark_limit", " (0: whole task)")


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
        _at_least(self.seed, 0, "seed")
        # "clustered" batches (CALM's pairs) hold rows of one question, not one row per language.
        n_langs = len(self.data.train_langs) + len(self.data.mt_langs)
        if self.train.batching != "clustered" and self.train.batch_size > n_langs:
            raise ConfigError(
                f"train.batch_size={self.train.batch_size} is larger than the number of training "
                f"languages ({n_langs}); an aligned batch holds one query in distinct languages"
            )
        if self.train.include_english and "en" not in self.data.train_langs:
            raise ConfigError(
                "train.include_english=true but 'en' is not in data.train_langs; add it or set "
                "train.include_english=false"
            )
        for b in self.experiments.batch_sizes:
            if not 1 <= b <= n_langs:
                raise ConfigError(
                    f"experiments.batch_sizes: {b} is not in 1..{n_langs} (the number of training "
                    "languages); notebook 05 trains one aligned batch of distinct languages per size"
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
    if origin is Literal:
        _choice(value, tp, key)
        return value
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
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value} must be a finite number")
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


def _section_default(cls: type, name: str) -> Any:
    """A field's default value, if it is a dataclass (``calm.train`` starts from CALM's defaults)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
        return default if dataclasses.is_dataclass(default) else None
    return None


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = _hints(cls)
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
        if isinstance(value, dict) and dataclasses.is_dataclass(hints[key]):
            # Keys a mapping leaves out keep the field's default section, not the class defaults.
            default = _section_default(cls, key)
            if default is not None:
                value = _merge(dataclasses.asdict(default), value)
        kwargs[key] = _coerce(value, hints[key], full)
    token = _BUILDING.set((cls, prefix))
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as exc:  # pragma: no cover - defensive
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from exc
    finally:
        _BUILDING.reset(token)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {key!r} (line {line})")
        self.key, self.line = key, line


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a repeated key (plain YAML keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = _load_yaml(path.read_text(encoding="utf-8")) or {}
    except _DuplicateKey as exc:
        raise ConfigError(
            f"{path}: duplicate key {exc.key!r} (line {exc.line}); each key may appear once per mapping"
        ) from exc
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
        value = _load_yaml(raw) if raw.strip() else ""
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


def _apply(
    data: dict[str, Any],
    overlays: typing.Iterable[str],
    overrides: typing.Iterable[str] | dict[str, Any] | None,
    sections: dict[str, Any] | None = None,
) -> Profile:
    for overlay in overlays:
        data = _merge(data, _read_yaml(_overlay_path(overlay)))
    for name, value in (sections or {}).items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            data = {**data, name: dataclasses.asdict(value)}  # the whole section, replaced
        elif isinstance(value, dict):
            data = _merge(data, {name: value})  # these fields of the section, merged
        else:
            data = {**data, name: value}  # a top-level value (name, seed, ...)
    return _build(Profile, apply_overrides(data, overrides or ()))


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
    overrides: typing.Iterable[str] | dict[str, Any] | None = None,
    **sections: Any,
) -> Profile:
    """The one way to make a profile from another: ``profile`` with, in this order,

    1. ``overlays``: ``configs/ablations/<name>.yaml`` names or paths, merged like YAML;
    2. ``sections``: keyword per top-level field; a mapping sets those fields of the section
       (``train={"method": "dpo"}``, ``model={"name": "smollm2-135m"}``), a section instance replaces
       it whole (``lora=profile.calm.lora``), any other value sets the field (``seed=1``);
    3. ``overrides``: ``["train.max_steps=5"]`` or ``{"train.max_steps": 5}``;

    then built and validated again exactly as a loaded profile is (``ConfigError`` names the key).
    ``profile`` itself is never changed.
    """
    return _apply(profile.to_dict(), overlays, overrides, sections)


def profile_from_dict(data: dict[str, Any]) -> Profile:
    """Rebuild a profile from ``Profile.to_dict()`` output (e.g. a run record)."""
    return _build(Profile, data)
