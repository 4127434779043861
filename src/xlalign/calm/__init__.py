"""CALM (Wang et al.): sample chain-of-thought answers per language, vote across languages, pair the
voted answer against inconsistent ones, DPO with LoRA. prompts -> parse -> items -> vote -> pairs -> variants -> pipeline.
Tasks: the shipped corpus's MCQs (cpu/smoke), X-CSQA and MedQA (the paper), MGSM (numeric answers).
"""

from xlalign.calm.items import (  # noqa: F401
    CalmItemError,
    TaskItems,
    check_items,
    corpus_items,
    gold,
    group_items,
    load_calm_items,
    load_task_items,
    n_options,
    split_questions,
    task_eval_langs,
    translate_items,
)
from xlalign.calm.pairs import (  # noqa: F401
    PairSet,
    build_pairs,
    ground_truth_pairs,
    gt_sft_rows,
    pair_counts,
    sft_rows,
)
from xlalign.calm.parse import (  # noqa: F401
    canonical_number,
    parse_answer,
    parse_letter,
    parse_number,
    read_number,
    split_answer,
)
from xlalign.calm.pipeline import (  # noqa: F401
    CalmTaskRuns,
    run_calm,
)
from xlalign.calm.prompts import (  # noqa: F401
    MATH_TEMPLATES,
    TEMPLATES,
    LangTemplate,
    build_prompt,
    format_completion,
    template,
)
from xlalign.calm.variants import (  # noqa: F401
    PAPER_BLOCKS,
    calm_train_profile,
    predict,
    results_table,
    score,
    trainer_rows,
)
from xlalign.calm.vote import (  # noqa: F401
    Sample,
    SamplerFn,
    Vote,
    majority_vote,
    render_prompts,
    sample_answers,
    vote_accuracy,
    vote_all,
)
from xlalign.evaluation.parse import INVALID  # noqa: F401
from xlalign.sources.common import LETTERS  # noqa: F401
