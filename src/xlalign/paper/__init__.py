"""The two papers' published numbers: transcribed tables (``tables``) and their arithmetic checks (``checks``);
what each paper states about its setup (``settings``). Our own runs' tables and figures live in xlalign.report.
"""

from xlalign.paper.checks import (  # noqa: F401
    check_ac3,
    check_acc_avg,
    check_ci,
    check_cross_table,
    check_deltas,
    check_percent_sums,
    check_rest_avg,
    check_table,
    compare_discrepancies,
    documented_discrepancies,
    run_checks,
)
from xlalign.paper.settings import SETTINGS, Setting, profile_value, provenance  # noqa: F401
from xlalign.paper.tables import (  # noqa: F401
    AC3_TOL,
    DELTA_TOL,
    LANGUAGES,
    MANIFEST_PATH,
    MEAN_TOL,
    MODEL_ACTIVE_PARAMS_B,
    MODEL_ALIASES,
    MODEL_PARAMS_B,
    NUMERIC_COLUMNS,
    PAPER_DIR,
    SAME_NUMBER_TOL,
    SCHEMA_COLUMNS,
    TEXT_COLUMNS,
    Discrepancy,
    PaperDataError,
    canonical_model,
    figure_frame,
    is_language,
    load_all,
    load_manifest,
    load_table,
    model_size_b,
    read_tidy,
    short_model,
    split_column,
    table_keys,
    table_path,
    wide,
)
