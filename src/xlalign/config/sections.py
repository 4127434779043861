"""The profile schema: one dataclass per YAML section (model, lora, data, train, eval, calm,
experiments) and ``Profile``; every field is checked in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from xlalign.config.values import (
    CALM_LANGS,
    TRAIN_LANGS,
    UNSEEN_LANGS,
    AttnImplementation,
    Batching,
    CalmBatching,
    CalmEvalDecoding,
    CalmTask,
    ConfigError,
    Dtype,
    EvalMode,
    LrScheduler,
    OrpoNllScope,
    Overlong,
    PreferenceMethod,
    ProbeSource,
    PromptFormat,
    Quantization,
    TrainMethod,
    _at_least,
    _between,
    _check_fields,
    _langs,
    _optimizer,
    _translator,
    _where,
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
    # corpus: the shipped corpus (corpus_dir); xquad | belebele | nomiracl through xlalign.sources.rag
    source: ProbeSource = "corpus"
    # xquad: folder of xquad.<lang>.json (required). belebele / nomiracl: a local copy in the hub's
    # file layout; null reads the hub (source_revision pins its commit)
    source_dir: str | None = None
    source_revision: str | None = None
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
        if self.k < 1:
            # k = 1: a positive holds only its relevant document, a negative one irrelevant document
            raise ConfigError(f"data.k={self.k} must be >= 1 (documents per prompt)")
        _at_least(self.topics_per_domain, 0, "data.topics_per_domain", " (0: every topic)")
        _at_least(self.max_prompt_tokens, 1, "data.max_prompt_tokens")
        _translator(self.translator, "data.translator", ("fake", "identity"))
        _langs(self.train_langs + self.unseen_langs + self.mt_langs, "data")
        overlap = set(self.train_langs) & set(self.unseen_langs)
        if overlap:
            raise ConfigError(
                f"data: {sorted(overlap)} cannot be both training and unseen languages"
            )
        if self.source != "corpus":
            # Checked with the profile, so a missing language stops a run before any model loads.
            from xlalign.sources.common import SUPPORTED_LANGS, unavailable_languages

            langs = self.train_langs + self.unseen_langs + self.mt_langs
            missing = unavailable_languages(self.source, langs)
            if missing:
                raise ConfigError(
                    f"data.source={self.source} has no data for language(s) {', '.join(missing)} "
                    f"asked for by data.train_langs/unseen_langs/mt_langs; it has: "
                    f"{' '.join(sorted(SUPPORTED_LANGS[self.source]))}"
                )
            if self.source == "xquad" and not self.source_dir:
                raise ConfigError(
                    "data.source=xquad needs data.source_dir: the folder of xquad.<lang>.json "
                    "files (github.com/google-deepmind/xquad)"
                )


@dataclass
class TrainSection:
    method: TrainMethod = "orpo"
    batching: Batching = "aligned"
    batch_size: int = 7  # languages per aligned batch (paper: 7)
    include_english: bool = True  # C.1 ablation when false
    balance_labels: bool = False  # ours: equal Yes / IDK rows in every optimizer step
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
    reuse_frozen: bool = (
        False  # frozen lower layers' states computed once per prompt (training.frozen_cache)
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
    # Notebook 03's base / uncoupled / aligned comparison, the main result: its own, larger size
    # (0: max_items_per_lang). Its items include max_items_per_lang's (the subsets are nested).
    compare_items_per_lang: int = 0

    @property
    def compare_items(self) -> int:
        return self.compare_items_per_lang or self.max_items_per_lang

    def __post_init__(self) -> None:
        _check_fields(self, "eval")
        _at_least(self.max_new_tokens, 1, "eval.max_new_tokens")
        _at_least(self.batch_size, 1, "eval.batch_size")
        _at_least(self.n_bootstrap, 1, "eval.n_bootstrap")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"eval.alpha={self.alpha} must be in (0, 1)")
        _at_least(self.max_items_per_lang, 0, "eval.max_items_per_lang", " (0: the whole split)")
        _at_least(
            self.compare_items_per_lang,
            0,
            "eval.compare_items_per_lang",
            " (0: as max_items_per_lang)",
        )


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
    # The question sets run_calm resolves when no items are passed, each in its own run (several:
    # calm/<task>/). corpus_mcq: the shipped corpus (cpu/smoke); the paper: xcsqa and medqa.
    tasks: list[CalmTask] = field(default_factory=lambda: ["corpus_mcq"])
    # Public data root, laid out as xcsqa/<lang>/dev.jsonl, medqa/{US,Mainland}/<medqa_split>.jsonl,
    # mgsm/mgsm_<lang>.tsv (the releases' own layouts).
    data_dir: str = "data/public"
    medqa_split: str = "test"  # the MedQA file each bank is read from; questions are split by us
    medqa_eval_langs: list[str] = field(default_factory=list)  # empty: calm.eval_langs
    train_langs: list[str] = field(default_factory=lambda: ["en", "fr", "zh"])
    eval_langs: list[str] = field(default_factory=lambda: ["en", "fr", "zh", "es", "ja", "pt"])
    eval_decoding: CalmEvalDecoding = "greedy"  # sample: T and top_p below, as Table 6
    num_samples: int = 3  # m
    temperature: float = 1.0
    top_p: float = 0.9
    max_new_tokens: int = 512
    sample_batch_size: int = 8
    # Prompts per batch of CALM's evaluation decoding (ours; 0: eval.batch_size, the probe's scoring
    # batch). Decoding a few rows re-reads every weight each token, so it gains from more rows.
    eval_batch_size: int = 0
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
    incremental: bool = True  # Table 10: train sequentially, adding one training language a step

    def __post_init__(self) -> None:
        _check_fields(self, "calm")
        _langs(self.train_langs, "calm.train_langs", CALM_LANGS)
        _langs(self.eval_langs, "calm.eval_langs", CALM_LANGS)
        _langs(self.medqa_eval_langs, "calm.medqa_eval_langs", CALM_LANGS)
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"calm.tasks={self.tasks} must name each task once, at least one")
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
        _at_least(self.eval_batch_size, 0, "calm.eval_batch_size")
        _translator(self.translator, "calm.translator", ("self", "identity", "fake"))
        self.train.validate("calm.train")
        if self.train.batching != "clustered":
            raise ConfigError(
                f"calm.train.batching={self.train.batching!r} is not allowed; CALM trains on "
                "clustered batches (calm.batching chooses shuffled or aligned pairs)"
            )
        if self.train.balance_labels:
            raise ConfigError(
                "calm.train.balance_labels=true is not allowed; CALM's pairs have no Yes / IDK label "
                "to balance (it applies to the probe's train section)"
            )
        if self.sft_learning_rate <= 0:
            raise ConfigError(f"calm.sft_learning_rate={self.sft_learning_rate} must be > 0")
        self.lora.validate("calm.lora")
        _at_least(self.max_questions, 0, "calm.max_questions", " (0: every question)")


@dataclass
class ExperimentsSection:
    models: list[str] = field(default_factory=lambda: ["gemma-3-270m"])  # baseline-gap models
    methods: list[PreferenceMethod] = field(default_factory=lambda: ["dpo", "orpo"])
    # Methods of the English-anchor and batch-size ablations (paper Tables 9/10, 12/13: both).
    ablation_methods: list[PreferenceMethod] = field(default_factory=lambda: ["dpo", "orpo"])
    ablation_max_steps: int = -1  # -1: same as train.max_steps
    batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7])
    # Notebook 06: benchmark keys of evaluation.benchmarks (PAPER_TASKS: mmmlu, mgsm, pawsx, lambada;
    # LOCAL_TASKS: the offline stand-ins xl_local_mc, xl_local_lambada), each expanded to the
    # languages of data.train_langs + data.unseen_langs it has, or explicit lm-eval task names.
    benchmarks: list[str] = field(default_factory=lambda: ["xl_local_mc", "xl_local_lambada"])
    benchmark_limit: int = 0  # 0: whole task

    def __post_init__(self) -> None:
        _check_fields(self, "experiments")
        if not self.ablation_methods:
            raise ConfigError("experiments.ablation_methods must name at least one method")
        if len(set(self.ablation_methods)) != len(self.ablation_methods):
            raise ConfigError(
                f"experiments.ablation_methods={self.ablation_methods} names a method twice"
            )
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
    # Training processes: 0 as accelerate_config says (1 without one); N: N processes; "auto": the
    # config's number, capped at the GPUs found at launch. More than 1: training runs through
    # `accelerate launch` (xlalign.training.launch); 1 trains in the calling process.
    num_processes: int | Literal["auto"] = 0
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    calm: CalmSection = field(default_factory=CalmSection)
    experiments: ExperimentsSection = field(default_factory=ExperimentsSection)

    def __post_init__(self) -> None:
        _at_least(self.seed, 0, "seed")
        if self.num_processes != "auto":
            _at_least(self.num_processes, 0, "num_processes", " (0: as accelerate_config says)")
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
