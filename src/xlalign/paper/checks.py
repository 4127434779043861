"""Arithmetic checks of the published tables: means, deltas, AC3, percent sums, CIs, cross-table copies.

They find where the printed numbers disagree with themselves; data/paper/manifest.yaml documents each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from xlalign.paper.tables import (
    _EPS,
    AC3_TOL,
    DELTA_TOL,
    MEAN_TOL,
    SAME_NUMBER_TOL,
    Discrepancy,
    PaperDataError,
    _in_order,
    canonical_model,
    is_language,
    load_all,
    load_manifest,
    split_column,
)

# --------------------------------------------------------------------------------------------
# Checks


def _rows(df: pd.DataFrame):
    """Each printed row of a long table: its table, block, model and ``{column: value}``."""
    for (block, model), part in df.groupby(["block", "model"], sort=False):
        values = dict(zip(part["column"], part["value"], strict=True))
        yield str(part["table"].iloc[0]), block, model, values


def _mean_check(
    df: pd.DataFrame, target: str, sources: Mapping[tuple[str, str], list[str]], tol: float, name
):
    """Rows where ``target`` differs from the mean of the given columns of the same row."""
    found = []
    for table, block, model, values in _rows(df):
        cols = sources.get((block, model), [])
        if target not in values or not cols or any(c not in values for c in cols):
            continue
        expected = sum(values[c] for c in cols) / len(cols)
        if abs(values[target] - expected) > tol + _EPS:
            found.append(
                Discrepancy(
                    table=table,
                    block=block,
                    model=model,
                    column=target,
                    printed=float(values[target]),
                    expected=round(expected, 4),
                    note=f"{target} is not the mean of {', '.join(cols)}",
                    check=name,
                )
            )
    return found


def check_rest_avg(df: pd.DataFrame, tol: float = MEAN_TOL) -> list[Discrepancy]:
    """Rows whose ``rest_avg`` is not the mean of that row's non-English language columns.

    Rows printing rest_avg without per-language columns (e.g. ba Tables 9, 10, 12) have nothing
    to check. The default tolerance is the largest gap rounding to 1 decimal can produce (MEAN_TOL).
    """
    sources = {}
    for (block, model), part in df.groupby(["block", "model"], sort=False):
        langs = [c for c in part["column"] if c == split_column(c)[1] and c != "english"]
        sources[(block, model)] = langs
    return _mean_check(df, "rest_avg", sources, tol, "rest_avg")


def check_acc_avg(
    df: pd.DataFrame,
    averages: Mapping[str, list[str]] | None = None,
    tol: float = MEAN_TOL,
) -> list[Discrepancy]:
    """Rows whose accuracy-average columns are not the mean of the languages they average.

    ``averages`` maps an average column (e.g. 'medqa_acc_avg') to the columns it averages. An
    average column not listed averages every language column with the same dataset prefix
    (so 'medqa_us_acc_avg' averages medqa_us_english, medqa_us_chinese, medqa_us_french).
    """
    averages = dict(averages or {})
    found = []
    avg_columns = _in_order(c for c in df["column"] if c == "acc_avg" or c.endswith("_acc_avg"))
    for avg in avg_columns:
        prefix = avg[: -len("acc_avg")].rstrip("_") or None
        sources = {}
        for (block, model), part in df.groupby(["block", "model"], sort=False):
            default = [c for c in part["column"] if is_language(c) and split_column(c)[0] == prefix]
            sources[(block, model)] = averages.get(avg, default)
        found += _mean_check(df, avg, sources, tol, "acc_avg")
    return found


def check_deltas(
    df: pd.DataFrame,
    baseline_block: str,
    tol: float = DELTA_TOL,
    blocks: Iterable[str] | None = None,
) -> list[Discrepancy]:
    """Printed deltas that are not (value - value of the same model and column in baseline_block).

    Only rows with a printed delta are checked (optionally only those of ``blocks``). A row with a
    delta but no baseline cell raises, since it means the baseline block is wrong.
    """
    base = {
        (canonical_model(r.model), r.column): r.value
        for r in df[df["block"] == baseline_block].itertuples(index=False)
    }
    if not base:
        raise KeyError(f"baseline block {baseline_block!r} not in {_in_order(df['block'])}")
    rows = df[df["delta"].notna()]
    if blocks is not None:
        rows = rows[rows["block"].isin(list(blocks))]
    found = []
    for r in rows.itertuples(index=False):
        key = (canonical_model(r.model), r.column)
        if key not in base:
            raise KeyError(
                f"{r.table}: no {baseline_block!r} cell for {key} to check delta against"
            )
        expected = r.value - base[key]
        if abs(r.delta - expected) > tol + _EPS:
            found.append(
                Discrepancy(
                    table=r.table,
                    block=r.block,
                    model=r.model,
                    column=r.column,
                    printed=float(r.delta),
                    expected=round(expected, 4),
                    note=f"delta vs {baseline_block}: {r.value:g} - {base[key]:g}",
                    check="delta",
                )
            )
    return found


def check_ac3(
    df: pd.DataFrame,
    column: str,
    consistency: str,
    accuracy: list[str],
    tol: float = AC3_TOL,
) -> list[Discrepancy]:
    """Rows whose AC3 is not 2*A*C/(A+C), A = mean of ``accuracy`` columns, C = ``consistency``."""
    found = []
    for table, block, model, values in _rows(df):
        needed = [column, consistency, *accuracy]
        if any(c not in values for c in needed):
            continue
        acc = sum(values[c] for c in accuracy) / len(accuracy)
        cons = values[consistency]
        expected = 2 * acc * cons / (acc + cons)
        if abs(values[column] - expected) > tol + _EPS:
            found.append(
                Discrepancy(
                    table=table,
                    block=block,
                    model=model,
                    column=column,
                    printed=float(values[column]),
                    expected=round(expected, 4),
                    note=f"AC3 = harmonic mean of accuracy {acc:.3f} and consistency {cons:g}",
                    check="ac3",
                )
            )
    return found


def check_percent_sums(
    df: pd.DataFrame, groups: Iterable[list[str]], total: float = 100.0
) -> list[Discrepancy]:
    """Rows whose shares (each group of columns) do not add up to ``total``.

    Each printed share is off by up to 0.05, so a group of n shares may miss by 0.05 * n.
    The discrepancy is reported on the group's first column.
    """
    found = []
    for group in groups:
        tol = 0.05 * len(group)
        for table, block, model, values in _rows(df):
            if any(c not in values for c in group):
                continue
            got = sum(values[c] for c in group)
            if abs(got - total) > tol + _EPS:
                found.append(
                    Discrepancy(
                        table=table,
                        block=block,
                        model=model,
                        column=group[0],
                        printed=round(got, 4),
                        expected=total,
                        note=f"sum of {', '.join(group)}",
                        check="percent_sum",
                    )
                )
    return found


def check_ci(df: pd.DataFrame) -> list[Discrepancy]:
    """Cells whose printed value lies outside their printed confidence interval."""
    found = []
    rows = df[df["ci_low"].notna() | df["ci_high"].notna()]
    for r in rows.itertuples(index=False):
        if not (r.ci_low - _EPS <= r.value <= r.ci_high + _EPS):
            nearest = min(max(r.value, r.ci_low), r.ci_high)
            found.append(
                Discrepancy(
                    table=r.table,
                    block=r.block,
                    model=r.model,
                    column=r.column,
                    printed=float(r.value),
                    expected=float(nearest),
                    note=f"value outside its CI [{r.ci_low:g}, {r.ci_high:g}]",
                    check="ci",
                )
            )
    return found


def _side_columns(side: Mapping) -> list[str]:
    cols = side.get("columns", [side["column"]] if "column" in side else None)
    if not cols:
        raise PaperDataError(f"cross check side {dict(side)} needs 'column' or 'columns'")
    return list(cols)


def _side_values(tables: Mapping[str, pd.DataFrame], side: Mapping) -> dict[tuple[str, int], Any]:
    frame = tables[side["table"]]
    frame = frame[frame["block"] == side["block"]]
    if frame.empty:
        raise PaperDataError(f"cross check: block {side['block']!r} not in {side['table']}")
    cols = _side_columns(side)
    out = {}
    for r in frame.itertuples(index=False):
        if r.column in cols:
            out[(canonical_model(r.model), cols.index(r.column))] = r
    return out


def check_cross_table(
    tables: Mapping[str, pd.DataFrame] | None = None,
    links: Iterable[Mapping] | None = None,
    tol: float = SAME_NUMBER_TOL,
) -> list[Discrepancy]:
    """Numbers printed in two places that differ.

    Each link (manifest ``cross_checks``) has ``printed`` and ``source`` sides, each a table, a
    block and ``column`` or ``columns`` (paired by position); models are matched by
    canonical_model. A difference is reported on the printed side, with the source value as
    expected. A link matching no model raises, since it would silently check nothing.
    """
    if links is None:
        links = load_manifest().get("cross_checks", [])
    if tables is None:
        tables = load_all()
    found = []
    for link in links:
        printed = _side_values(tables, link["printed"])
        source = _side_values(tables, link["source"])
        common = [k for k in printed if k in source]
        if not common:
            raise PaperDataError(f"cross check {link.get('name', link)} matched no cells")
        src = link["source"]
        for key in common:
            p, s = printed[key], source[key]
            if abs(p.value - s.value) > tol + _EPS:
                found.append(
                    Discrepancy(
                        table=p.table,
                        block=p.block,
                        model=p.model,
                        column=p.column,
                        printed=float(p.value),
                        expected=float(s.value),
                        note=f"{src['table']} {src['block']} {s.column} prints {s.value:g}",
                        check="cross_table",
                    )
                )
    return found


def check_table(df: pd.DataFrame, checks: Mapping | None) -> list[Discrepancy]:
    """Run the per-table checks a manifest entry declares (``checks``) on one table.

    Confidence intervals are checked wherever they are printed, declared or not.
    """
    checks = dict(checks or {})
    found = check_ci(df)
    if checks.get("rest_avg"):
        found += check_rest_avg(df)
    if "acc_avg" in checks:
        spec = checks["acc_avg"]
        found += check_acc_avg(df, spec if isinstance(spec, Mapping) else None)
    if "deltas" in checks:
        spec = checks["deltas"]
        found += check_deltas(df, spec["baseline_block"], blocks=spec.get("blocks"))
    for spec in checks.get("ac3", []):
        found += check_ac3(df, spec["column"], spec["consistency"], spec["accuracy"])
    if "percent_sums" in checks:
        found += check_percent_sums(df, checks["percent_sums"])
    return found


def run_checks(
    tables: Mapping[str, pd.DataFrame] | None = None, manifest: Mapping | None = None
) -> list[Discrepancy]:
    """Every check the manifest declares, over every table, plus the cross-table links."""
    manifest = manifest or load_manifest()
    tables = tables if tables is not None else load_all(manifest)
    found = []
    for entry in manifest["tables"]:
        found += check_table(tables[entry["key"]], entry.get("checks"))
    found += check_cross_table(tables, manifest.get("cross_checks", []))
    return found


def documented_discrepancies(manifest: Mapping | None = None) -> list[Discrepancy]:
    """The manifest's ``discrepancies`` list as Discrepancy objects."""
    manifest = manifest or load_manifest()
    out = []
    for item in manifest.get("discrepancies", []):
        fields = {k: item[k] for k in Discrepancy.__dataclass_fields__ if k in item}
        out.append(Discrepancy(**fields))
    return out


def compare_discrepancies(
    found: Iterable[Discrepancy], documented: Iterable[Discrepancy]
) -> tuple[list[Discrepancy], list[Discrepancy]]:
    """(found but undocumented, documented but not found)."""
    found, documented = list(found), list(documented)
    undocumented = [f for f in found if not any(f.matches(d) for d in documented)]
    stale = [d for d in documented if not any(d.matches(f) for f in found)]
    return undocumented, stale
