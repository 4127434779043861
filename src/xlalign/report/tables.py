"""Paper-style result tables in the tidy schema of data/RESULTS_SCHEMA.md, plus wide rendering.

Tidy rows (table, block, model, column, value, delta, ci_low, ci_high); cells like 59.6(+31.3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from xlalign.evaluation.metrics import (
    ac3,
    accuracy_by_language,
    consistency,
    is_correct,
    rest_avg,
    validate_predictions,
)
from xlalign.evaluation.stats import bootstrap_ci, bootstrap_rest_avg_ci

SCHEMA_COLUMNS = ["table", "block", "model", "column", "value", "delta", "ci_low", "ci_high"]

LANG_NAMES = {
    "en": "english",
    "ar": "arabic",
    "es": "spanish",
    "fr": "french",
    "ja": "japanese",
    "pt": "portuguese",
    "zh": "chinese",
    "th": "thai",
    "vi": "vietnamese",
    "hu": "hungarian",
    "ro": "romanian",
    "it": "italian",
    "de": "german",
}

# Summary columns come after the per-language columns, in this order (paper layout).
SUMMARY_COLUMNS = ["rest_avg", "acc_avg", "consistency", "ac3"]


def _lang_name(lang: str) -> str:
    if lang not in LANG_NAMES:
        raise ValueError(f"unknown language code {lang!r}; known: {sorted(LANG_NAMES)}")
    return LANG_NAMES[lang]


def _select_langs(preds: pd.DataFrame, langs) -> pd.DataFrame:
    """Rows of ``preds`` in ``langs``; raises if a requested language has no predictions."""
    validate_predictions(preds)
    absent = [lang for lang in langs if lang not in set(preds["lang"])]
    if absent:
        raise ValueError(f"languages {absent} have no predictions")
    for lang in langs:
        _lang_name(lang)
    return preds[preds["lang"].isin(langs)]


def _tidy(rows: list[dict], table: str, block: str, model: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows).assign(table=table, block=block, model=model)
    for col in ("delta", "ci_low", "ci_high"):
        if col not in frame:
            frame[col] = np.nan
    return frame[SCHEMA_COLUMNS].astype({c: float for c in SCHEMA_COLUMNS[4:]})


def _add_delta(tidy: pd.DataFrame, baseline, model: str, skip=()) -> pd.DataFrame:
    """Fill ``delta`` = value - baseline value, matched on ``column``.

    The baseline rows are those of ``model`` if the baseline has it, else the baseline's only
    model (its name may differ, e.g. "Llama (Base)"). Deltas use unrounded values.
    """
    if baseline is None:
        return tidy
    base = baseline[baseline["model"] == model]
    if base.empty:
        if baseline["model"].nunique() != 1:
            raise ValueError(f"baseline has no model {model!r} and more than one other model")
        base = baseline
    if base["column"].duplicated().any():
        raise ValueError("baseline has several rows per column; pass one table/block")
    ref = base.set_index("column")["value"]
    wanted = [c for c in tidy["column"] if c not in skip]
    missing = [c for c in wanted if c not in ref.index]
    if missing:
        raise ValueError(f"baseline lacks columns {missing}")
    out = tidy.copy()
    mask = out["column"].isin(wanted)
    base_values = ref[out.loc[mask, "column"]].to_numpy()
    out.loc[mask, "delta"] = out.loc[mask, "value"].to_numpy() - base_values
    return out


def _language_rows(sub, acc, langs, with_ci: bool, seed: int, n_resamples: int) -> list[dict]:
    """One tidy row per language: accuracy, and its bootstrap CI when ``with_ci``."""
    correct = is_correct(sub)
    rows = []
    for lang in langs:
        row = {"column": _lang_name(lang), "value": float(acc[lang])}
        if with_ci:
            ci = bootstrap_ci(correct[sub["lang"] == lang], n_resamples=n_resamples, seed=seed)
            row.update(ci_low=ci.low, ci_high=ci.high)
        rows.append(row)
    return rows


def probe_table(
    preds: pd.DataFrame,
    table: str,
    block: str,
    model: str,
    langs,
    with_ci: bool = True,
    baseline: pd.DataFrame | None = None,
    seed: int = 0,
    english: str = "en",
    n_resamples: int = 1000,
) -> pd.DataFrame:
    """Batch-alignment probe table: accuracy per language in ``langs`` and ``rest_avg``.

    CIs: per language via ``bootstrap_ci``; rest_avg via the cluster ``bootstrap_rest_avg_ci``.
    ``delta`` is the gain over ``baseline`` on non-English columns and rest_avg only, as the
    paper prints no improvement for English.
    """
    langs = list(langs)
    sub = _select_langs(preds, langs)
    acc = accuracy_by_language(sub)
    rows = _language_rows(sub, acc, langs, with_ci, seed, n_resamples)
    row = {"column": "rest_avg", "value": rest_avg(acc.reindex(langs), english)}
    if with_ci:
        ci = bootstrap_rest_avg_ci(sub, english=english, n_resamples=n_resamples, seed=seed)
        row.update(ci_low=ci.low, ci_high=ci.high)
    rows.append(row)
    tidy = _tidy(rows, table, block, model)
    return _add_delta(tidy, baseline, model, skip=(_lang_name(english),))


def calm_table(
    preds: pd.DataFrame,
    table: str,
    block: str,
    model: str,
    langs,
    s: int = 2,
    baseline: pd.DataFrame | None = None,
    with_ci: bool = False,
    seed: int = 0,
    n_resamples: int = 1000,
) -> pd.DataFrame:
    """CALM X-CSQA table: accuracy per language, ``acc_avg`` (all languages), Consistency_s, AC3.

    AC3 combines ``acc_avg`` with Consistency_s. CALM prints no CIs; ``with_ci`` adds our bootstrap
    CIs to the per-language accuracies (the summary columns keep empty ci_low/ci_high).
    """
    langs = list(langs)
    sub = _select_langs(preds, langs)
    acc = accuracy_by_language(sub).reindex(langs)
    cons = consistency(sub, s=s, langs=langs)
    rows = _language_rows(sub, acc, langs, with_ci, seed, n_resamples)
    rows += [
        {"column": "acc_avg", "value": float(acc.mean())},
        {"column": "consistency", "value": cons},
        {"column": "ac3", "value": ac3(float(acc.mean()), cons)},
    ]
    return _add_delta(_tidy(rows, table, block, model), baseline, model)


def _column_order(columns) -> list[str]:
    """English, other languages as they appear, the summary columns, then anything else."""
    seen = list(dict.fromkeys(columns))
    lang_cols = [c for c in seen if c in LANG_NAMES.values()]
    langs = sorted(lang_cols, key=lambda c: c != "english")  # stable: English first, rest kept
    summary = [c for c in SUMMARY_COLUMNS if c in seen]
    return langs + summary + [c for c in seen if c not in langs and c not in summary]


def format_cell(value, delta=np.nan, ci_low=np.nan, ci_high=np.nan, show_delta=True, show_ci=False):
    """One table cell like the papers: ``59.6(+31.3)`` and optionally `` [57.1–62.0]``."""
    if pd.isna(value):
        return ""
    text = f"{value:.1f}"
    if show_delta and not pd.isna(delta):
        shown = round(float(delta), 1) + 0.0  # + 0.0 turns -0.0 into 0.0, printed "+0.0"
        text += f"({shown:+.1f})"
    if show_ci and not (pd.isna(ci_low) or pd.isna(ci_high)):
        text += f" [{ci_low:.1f}–{ci_high:.1f}]"
    return text


def _check_tidy(tidy: pd.DataFrame) -> None:
    missing = [c for c in SCHEMA_COLUMNS if c not in tidy.columns]
    if missing:
        raise ValueError(f"tidy frame lacks schema columns {missing}")
    if tidy.empty:
        raise ValueError("tidy frame is empty: nothing to render")


def to_wide(tidy: pd.DataFrame, show_delta: bool = True, show_ci: bool = False) -> pd.DataFrame:
    """Models as rows, paper column order, formatted string cells.

    With several (table, block) pairs in ``tidy`` the row index also carries them, so sub-tables
    such as ``dpo_default`` and ``dpo_ours`` stay apart.
    """
    _check_tidy(tidy)
    keys = [k for k in ("table", "block") if tidy[k].nunique() > 1] + ["model"]
    if tidy.duplicated(keys + ["column"]).any():
        raise ValueError(f"tidy frame has several rows per {keys + ['column']}")
    cells = tidy.assign(
        cell=[
            format_cell(r.value, r.delta, r.ci_low, r.ci_high, show_delta, show_ci)
            for r in tidy.itertuples(index=False)
        ]
    )
    wide = cells.pivot(index=keys, columns="column", values="cell")
    row_order = pd.MultiIndex.from_frame(tidy[keys].drop_duplicates()) if len(keys) > 1 else None
    wide = wide.reindex(
        index=row_order if row_order is not None else pd.unique(tidy["model"]),
        columns=_column_order(tidy["column"]),
    )
    wide.columns.name = None
    return wide.fillna("")


def _pipe_table(wide: pd.DataFrame) -> str:
    """Minimal Markdown pipe table, used only when ``tabulate`` is not installed."""
    index_names = [n or "" for n in wide.index.names]
    header = index_names + [str(c) for c in wide.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for key, row in wide.iterrows():
        key = key if isinstance(key, tuple) else (key,)
        cells = [str(k) for k in key] + [str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_markdown(wide: pd.DataFrame) -> str:
    """Markdown for a wide table: pandas ``to_markdown`` if tabulate exists, else our renderer."""
    try:
        import tabulate  # noqa: F401  (pandas needs it for to_markdown)
    except ImportError:
        return _pipe_table(wide)
    # Cells are already formatted; without this tabulate re-parses "60.0" and prints "60".
    return wide.to_markdown(disable_numparse=True)


def write_table(
    tidy: pd.DataFrame,
    out_dir,
    stem: str,
    overwrite: bool = False,
    show_delta: bool = True,
    show_ci: bool = False,
) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` (tidy) and ``<stem>.md`` (wide Markdown); return both paths.

    Raises FileExistsError before writing anything if either file exists and not ``overwrite``.
    """
    _check_tidy(tidy)
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    existing = [str(p) for p in (csv_path, md_path) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {existing}; pass overwrite=True")
    markdown = to_markdown(to_wide(tidy, show_delta=show_delta, show_ci=show_ci))
    out_dir.mkdir(parents=True, exist_ok=True)
    tidy[SCHEMA_COLUMNS].to_csv(csv_path, index=False)
    md_path.write_text(markdown + "\n", encoding="utf-8")
    return csv_path, md_path


def provenance_markdown(profile) -> str:
    """The profile's training and evaluation settings as a pipe table, each marked as stated by a
    paper (with where) or as this project's choice (``xlalign.paper.settings``)."""
    from xlalign.paper.settings import provenance

    frame = provenance(profile)
    frame["paper_value"] = frame["paper_value"].map(lambda v: "" if v is None else str(v))
    frame["value"] = frame["value"].map(str)
    frame = frame.rename(
        columns={"value": f"{profile.name} profile", "paper_value": "paper's value"}
    ).set_index("key")
    return _pipe_table(frame)
