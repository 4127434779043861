"""The papers' experiments as library calls, one module per notebook group; notebooks import from here.

``steps`` (data, train, evaluate, tables), ``batch_alignment`` (03), ``ablations`` (05), ``generalization`` (06).
"""

from xlalign.config import derive  # noqa: F401  (the one way to derive a profile)
from xlalign.experiments.ablations import (  # noqa: F401
    ablation_batch_size,
    ablation_english,
    ablation_machine_translated,
)
from xlalign.experiments.batch_alignment import (  # noqa: F401
    probe_for_method,
    training_curves,
)
from xlalign.experiments.generalization import (  # noqa: F401
    aligned_arm,
    out_of_domain,
    unseen_languages,
)
from xlalign.experiments.steps import (  # noqa: F401
    adapter_label,
    compare,
    eval_subset,
    evaluate,
    knows_vs_says,
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
