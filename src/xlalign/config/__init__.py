"""Profiles: every hyperparameter, seed and path of a run, loaded from ``configs/*.yaml`` and validated.

YAML keys match the dataclass fields of ``sections``; ``values`` holds the allowed values and range checks,
``loading`` the YAML loader, overrides and ``derive``.
"""

from xlalign.config.loading import (  # noqa: F401
    UniqueKeyLoader,
    apply_overrides,
    derive,
    load_profile,
    parse_override,
    profile_from_dict,
)
from xlalign.config.sections import (  # noqa: F401
    CalmSection,
    DataSection,
    EvalSection,
    ExperimentsSection,
    LoraSection,
    ModelSection,
    Profile,
    TrainSection,
    calm_train_defaults,
)
from xlalign.config.values import (  # noqa: F401
    ALL_LANGS,
    COMMON_OPTIMIZERS,
    CONFIG_DIR,
    REPO_ROOT,
    TRAIN_LANGS,
    UNSEEN_LANGS,
    AttnImplementation,
    Batching,
    CalmBatching,
    ConfigError,
    Dtype,
    EvalMode,
    LrScheduler,
    OrpoNllScope,
    Overlong,
    PreferenceMethod,
    PromptFormat,
    Quantization,
    TrainMethod,
    allowed_values,
)
