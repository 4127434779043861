"""The papers' experiments as library calls, one module per notebook group; notebooks import from here.

``steps`` (data, train, evaluate, tables), ``batch_alignment`` (03), ``ablations`` (05), ``generalization`` (06).
"""

# What a notebook needs besides the experiments, so that notebooks import from one place.
from xlalign.config import (
    ALL_LANGS,  # noqa: F401, E402
    derive,  # noqa: F401  (the one way to derive a profile)
)
from xlalign.evaluation.decisions import answer_skew, auroc_by_language, describe_skew  # noqa: F401, E402
from xlalign.evaluation.predictions import evaluate_probe, load_eval_model  # noqa: F401, E402
from xlalign.experiments.ablations import (  # noqa: F401
    ablation_batch_size,
    ablation_english,
    ablation_machine_translated,
)
from xlalign.experiments.batch_alignment import (  # noqa: F401
    decisions_reading,
    decisions_table,
    effect_markdown,
    effect_reading,
    effect_table,
    probe_for_method,
    training_curves,
    write_effect,
)
from xlalign.experiments.generalization import (  # noqa: F401
    aligned_arm,
    benchmark_arms,
    benchmark_registry,
    notebook03_arm,
    out_of_domain,
    out_of_domain_study,
    unseen_languages,
)
from xlalign.experiments.steps import (  # noqa: F401
    adapter_label,
    compare,
    eval_subset,
    evaluate,
    knows_vs_says,
    knows_vs_says_reading,
    load_run_profile,
    prepare_data,
    probe_layers,
    probe_tidy,
    same_training,
    setup,
    train,
    train_and_evaluate,
    write_tables,
)
from xlalign.models import load_tokenizer  # noqa: F401, E402
from xlalign.probe.build import counts_table  # noqa: F401, E402
from xlalign.probe.dataset import build_probe_data, token_length_table  # noqa: F401, E402
from xlalign.runs import write_json  # noqa: F401, E402
from xlalign.sources.corpus import english_word_check, load_corpus, summary  # noqa: F401, E402
from xlalign.training.sampling import (  # noqa: F401, E402
    GroupedBatchSampler,
    read_batch_logs,
    verify_batch_log,
)
