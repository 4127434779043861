"""Draw the papers' figures from tidy result frames (the schema of data/RESULTS_SCHEMA.md).
The same functions draw the published numbers (xlalign.paper) and our own runs' tables.

Figures are built on ``matplotlib.figure.Figure`` without pyplot, so they work under any backend
(Agg included), hold no global state and need no closing. Every plot function returns its Figure.

Over 400 lines because it holds all of the batch-alignment paper's Figures 3-7 and CALM's Figure 3: one
module, so that the paper's numbers and ours are drawn by the very same code (shared bars, error bars,
axes and palette), which is what makes the two comparable.

Where a frame carries ``ci_low``/``ci_high`` (our runs' tables), each bar or point that shows one
cell draws its 95% CI as an error bar; the published numbers have none, so the paper figures draw
without. Accuracy axes run from 0 to 100 so a difference is read against the whole scale, never
against an axis zoomed to the data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from xlalign.paper.tables import (
    LANGUAGES,
    MODEL_PARAMS_B,
    canonical_model,
    model_size_b,
    short_model,
    split_column,
)

BLOCK_LABELS = {
    "baseline": "Baseline",
    "dpo_default": "DPO (default)",
    "dpo_ours": "DPO + batch alignment",
    "orpo_default": "ORPO (default)",
    "orpo_ours": "ORPO + batch alignment",
    "with_english_dpo": "DPO, with English",
    "without_english_dpo": "DPO, without English",
    "with_english_orpo": "ORPO, with English",
    "without_english_orpo": "ORPO, without English",
    "dpo": "DPO + batch alignment",
    "orpo": "ORPO + batch alignment",
    "base": "Base",
    "sft": "+ SFT",
    "calm": "+ CALM",
    "sft_gt": "SFT w/ GT",
    "dpo_gt": "DPO w/ GT",
}
COLUMN_LABELS = {"english": "English", "rest_avg": "Rest (avg.)", "acc_avg": "AVG"}

# Blocks each figure shows by default, in legend order (ba Figs. 3-5, CALM Table 1).
ENGLISH_VS_REST_BLOCKS = ("baseline", "orpo_default", "orpo_ours")
ENGLISH_ANCHOR_BLOCKS = (
    "with_english_dpo",
    "without_english_dpo",
    "with_english_orpo",
    "without_english_orpo",
)
MACHINE_TRANSLATED_BLOCKS = ("baseline", "orpo_default", "orpo_ours")
CALM_BLOCKS = ("base", "sft", "calm")
# (improved block, reference block) per method for ba Fig. 7.
SIZE_IMPROVEMENT_PAIRS = {"DPO": ("dpo_ours", "dpo_default"), "ORPO": ("orpo_ours", "orpo_default")}

_BS_COLUMN = re.compile(r"bs_(\d+)$")
# Accuracy (%) axes show the whole scale.
ACCURACY_LIMITS = (0.0, 100.0)


def block_label(block: str) -> str:
    return BLOCK_LABELS.get(block, block.replace("_", " "))


def column_label(column: str) -> str:
    """'rest_avg' -> 'Rest (avg.)', 'xcsqa_french' -> 'FR', 'medqa_acc_avg' -> 'AVG'."""
    if column in COLUMN_LABELS:
        return COLUMN_LABELS[column]
    language = split_column(column)[1]
    if language:
        return LANGUAGES[language].upper()
    if column.endswith("_acc_avg"):
        return "AVG"
    return column.replace("_", " ")


def _pick_blocks(df: pd.DataFrame, blocks: Iterable[str] | None, preferred: Sequence[str]):
    """Blocks to draw: the requested ones, else the preferred ones present, else all present."""
    present = list(dict.fromkeys(df["block"]))
    if blocks is not None:
        blocks = list(blocks)
        missing = [b for b in blocks if b not in present]
        if missing:
            raise ValueError(f"blocks {missing} not in data (has {present})")
        return blocks
    chosen = [b for b in preferred if b in present]
    return chosen or present


def _rows(df: pd.DataFrame, column: str, blocks: Sequence[str]) -> pd.DataFrame:
    """Cells of ``column`` in ``blocks`` with a plot label per model (variants unified)."""
    part = df[(df["column"] == column) & df["block"].isin(blocks)].copy()
    if part.empty:
        raise ValueError(f"no {column!r} values in blocks {list(blocks)}")
    part["label"] = part["model"].map(short_model)
    part["series"] = part["block"].map(block_label)
    return part


def _palette(blocks: Sequence[str]) -> dict[str, tuple]:
    colors = sns.color_palette("colorblind", max(len(blocks), 3))
    return {block_label(b): colors[i] for i, b in enumerate(blocks)}


def _grouped_bars(ax: Axes, df: pd.DataFrame, column: str, blocks: Sequence[str]) -> None:
    """Bars of ``column`` per model (x), one bar per block (hue), in printed model order."""
    part = _rows(df, column, blocks)
    order = list(dict.fromkeys(part["label"]))
    hue_order = [block_label(b) for b in blocks if b in set(part["block"])]
    _accuracy_bars(ax, part, "label", order, hue_order, blocks)
    ax.set_ylabel(f"{column_label(column)} accuracy (%)")
    _rotate_ticks(ax)


def _ci_of(rows: pd.DataFrame) -> tuple[float, float] | None:
    """The 95% CI of a bar or point that shows exactly one cell with a finite CI, else None."""
    if len(rows) != 1 or not {"ci_low", "ci_high"} <= set(rows.columns):
        return None
    low, high = float(rows["ci_low"].iloc[0]), float(rows["ci_high"].iloc[0])
    return (low, high) if math.isfinite(low) and math.isfinite(high) else None


def _draw_errorbars(ax: Axes, xs, ys, cis) -> None:
    """Error bars from (low, high) CIs around ys; nothing when there are none."""
    if not xs:
        return
    ys = np.asarray(ys, dtype=float)
    lows = np.array([c[0] for c in cis], dtype=float)
    highs = np.array([c[1] for c in cis], dtype=float)
    yerr = np.vstack([np.clip(ys - lows, 0, None), np.clip(highs - ys, 0, None)])
    ax.errorbar(xs, ys, yerr=yerr, fmt="none", ecolor="black", elinewidth=1, capsize=3, zorder=3)


def _accuracy_bars(ax: Axes, part: pd.DataFrame, x: str, order, hue_order, blocks) -> None:
    """Bars of ``value`` per ``x`` and series, each with its 95% CI, on the 0-100 accuracy axis."""
    sns.barplot(
        data=part,
        x=x,
        y="value",
        hue="series",
        order=order,
        hue_order=hue_order,
        palette=_palette(blocks),
        errorbar=None,
        ax=ax,
    )
    _bar_errorbars(ax, part, x, order, hue_order)
    ax.set_ylim(*ACCURACY_LIMITS)
    ax.set_xlabel("")


def _bar_errorbars(
    ax: Axes, part: pd.DataFrame, x: str, order: Sequence[str], hue_order: Sequence[str]
) -> None:
    """95% CIs on the bars seaborn drew for ``part`` (one container per hue level, in order)."""
    xs, ys, cis = [], [], []
    for series, container in zip(hue_order, ax.containers, strict=False):
        for bar in container:
            center = bar.get_x() + bar.get_width() / 2
            index = round(center)
            if not 0 <= index < len(order):
                continue
            rows = part[(part[x] == order[index]) & (part["series"] == series)]
            ci = _ci_of(rows)
            if ci is not None:
                xs.append(center)
                ys.append(float(rows["value"].iloc[0]))
                cis.append(ci)
    _draw_errorbars(ax, xs, ys, cis)


def _rotate_ticks(ax: Axes) -> None:
    ax.tick_params(axis="x", labelrotation=35)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")


def _new_figure(ncols: int = 1, nrows: int = 1, width: float = 6.5, height: float = 4.2):
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _single_legend(fig: Figure, axes: Iterable[Axes]) -> None:
    """One figure legend instead of one per panel (panels share their series)."""
    axes = list(axes)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if handles:
        # Up to 3 entries fit in one row; more go in rows of 2 so a narrow figure does not clip them.
        ncols = len(labels) if len(labels) <= 3 else 2
        fig.legend(handles, labels, loc="outside lower center", ncols=ncols)


# --------------------------------------------------------------------------------------------
# ba Figures 3-5: grouped bars


def plot_english_vs_rest(
    df: pd.DataFrame, blocks: Iterable[str] | None = None, title: str | None = None
) -> Figure:
    """ba Fig. 3: English (left) and Rest (avg.) (right) per model for each block.

    Default blocks: baseline, default ORPO and batch-aligned ORPO (ba Tables 5 + 8).
    """
    blocks = _pick_blocks(df, blocks, ENGLISH_VS_REST_BLOCKS)
    fig, axes = _new_figure(ncols=2)
    for ax, column in zip(axes[0], ("english", "rest_avg"), strict=True):
        _grouped_bars(ax, df, column, blocks)
        ax.set_title(column_label(column))
    _single_legend(fig, axes[0])
    fig.suptitle(title or "English vs non-English accuracy")
    return fig


def plot_english_anchor(
    df: pd.DataFrame,
    blocks: Iterable[str] | None = None,
    column: str = "rest_avg",
    title: str | None = None,
) -> Figure:
    """ba Fig. 4: non-English accuracy with vs without English in the aligned batches.

    Default blocks: with/without English for DPO and ORPO (ba Tables 9 + 10).
    """
    blocks = _pick_blocks(df, blocks, ENGLISH_ANCHOR_BLOCKS)
    fig, axes = _new_figure(width=8.0)
    _grouped_bars(axes[0, 0], df, column, blocks)
    _single_legend(fig, axes[0])
    fig.suptitle(title or "English as an anchor language")
    return fig


def plot_machine_translated(
    df: pd.DataFrame,
    blocks: Iterable[str] | None = None,
    column: str = "rest_avg",
    title: str | None = None,
) -> Figure:
    """ba Fig. 5: training on machine-translated data; per-model average (left), per language
    averaged over models (right). Default blocks: baseline, default and aligned ORPO (Table 11).
    """
    blocks = _pick_blocks(df, blocks, MACHINE_TRANSLATED_BLOCKS)
    fig, axes = _new_figure(ncols=2)
    _grouped_bars(axes[0, 0], df, column, blocks)
    axes[0, 0].set_title(f"{column_label(column)} per model")
    languages = [
        c
        for c in dict.fromkeys(df["column"])
        if split_column(c)[1] and split_column(c)[1] != "english"
    ]
    part = df[df["column"].isin(languages) & df["block"].isin(blocks)].copy()
    if not part.empty:
        part["language"] = part["column"].map(column_label)
        part["series"] = part["block"].map(block_label)
        order = list(dict.fromkeys(part["language"]))
        hue_order = [block_label(b) for b in blocks]
        # A CI only where a bar is one model's cell (a mean over models has none of its own).
        _accuracy_bars(axes[0, 1], part, "language", order, hue_order, blocks)
        axes[0, 1].set_xlabel("")
        axes[0, 1].set_ylabel("accuracy (%), mean over models")
        axes[0, 1].set_title("per language")
    else:
        axes[0, 1].set_visible(False)
    _single_legend(fig, [ax for ax in axes[0] if ax.get_visible()])
    fig.suptitle(title or "Machine-translated training data")
    return fig


# --------------------------------------------------------------------------------------------
# ba Figure 6: batch size


def batch_size_curve(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over models of every ``bs_N`` column, per block: block, batch_size, value, n_models,
    ci_low, ci_high. The CI is the cell's own where a point is one model's cell with ``ci_low`` and
    ``ci_high`` (our runs), NaN otherwise (the published tables, means over models)."""
    part = df[df["column"].str.fullmatch(_BS_COLUMN)].copy()
    if part.empty:
        raise ValueError("no bs_N columns in data")
    part["batch_size"] = part["column"].str.extract(_BS_COLUMN, expand=False).astype(int)
    for c in ("ci_low", "ci_high"):
        part[c] = pd.to_numeric(part[c], errors="coerce") if c in part else math.nan
    groups = part.groupby(["block", "batch_size"], sort=False)
    curve = groups["value"].agg(["mean", "count"])
    curve = curve.rename(columns={"mean": "value", "count": "n_models"})
    single = curve["n_models"] == 1
    for c in ("ci_low", "ci_high"):
        curve[c] = groups[c].first().where(single)
    curve = curve.reset_index()
    return curve.sort_values(["block", "batch_size"], kind="stable", ignore_index=True)


def _method_label(block: str) -> str:
    for method in ("dpo", "orpo"):
        if block == method or block.startswith(method + "_"):
            return method.upper()
    return block_label(block)


def plot_batch_size(
    df: pd.DataFrame, title: str | None = None, reference_column: str | None = "rest_avg"
) -> Figure:
    """ba Fig. 6: non-English accuracy vs batch size, mean over models, one line per block.

    The published Tables 12/13 give per-batch-size numbers only for batch alignment; the default
    appears once, as the Rest (Avg.) column, so ``reference_column`` of each block is drawn as a
    dashed flat line ("default"). Runs that measure the default at each batch size can store it as
    its own block with bs_N columns and pass ``reference_column=None``.
    """
    curve = batch_size_curve(df)
    blocks = list(dict.fromkeys(curve["block"]))
    colors = sns.color_palette("colorblind", max(len(blocks), 3))
    fig, axes = _new_figure(width=7.0)
    ax = axes[0, 0]
    xs, ys, cis = [], [], []
    for color, block in zip(colors, blocks, strict=False):
        line = curve[curve["block"] == block]
        ax.plot(
            line["batch_size"], line["value"], marker="o", color=color, label=block_label(block)
        )
        has_ci = line[line["ci_low"].notna() & line["ci_high"].notna()]
        xs += list(has_ci["batch_size"])
        ys += list(has_ci["value"])
        cis += list(zip(has_ci["ci_low"], has_ci["ci_high"], strict=True))
        ref = df[(df["block"] == block) & (df["column"] == reference_column)]
        if reference_column and not ref.empty:
            label = f"{_method_label(block)} default ({column_label(reference_column)} column)"
            ax.axhline(ref["value"].mean(), color=color, linestyle="--", label=label)
            ci = _ci_of(ref)
            if ci is not None:
                ax.axhspan(*ci, color=color, alpha=0.12, label=f"{label}, 95% CI")
    _draw_errorbars(ax, xs, ys, cis)
    ax.set_ylim(*ACCURACY_LIMITS)
    ax.set_xticks(sorted(curve["batch_size"].unique()))
    ax.set_xlabel("batch size (languages per batch)")
    n_models = int(curve["n_models"].max())
    ax.set_ylabel(f"Rest (avg.) accuracy (%), mean over {n_models} model(s)")
    ax.legend(loc="best", fontsize="small")
    fig.suptitle(title or "Effect of batch size")
    return fig


# --------------------------------------------------------------------------------------------
# ba Figure 7: model size vs improvement


def pearson_r(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when it is undefined (fewer than 2 points or a constant input)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def size_improvement_points(
    df: pd.DataFrame,
    pairs: Mapping[str, tuple[str, str]] | None = None,
    sizes: Mapping[str, float] | None = None,
    column: str = "rest_avg",
) -> pd.DataFrame:
    """One point per (method, model): size in billions and ``column`` of improved - reference.

    ``pairs`` maps a method label to (improved block, reference block); by default DPO and ORPO
    batch alignment vs their defaults, keeping the pairs present in ``df``. ``sizes`` defaults to
    total parameters (MODEL_PARAMS_B: Mixtral-8x22B = 141); names not in it are parsed
    (``gemma-3-270m`` -> 0.27).
    """
    pairs = dict(pairs or SIZE_IMPROVEMENT_PAIRS)
    sizes = MODEL_PARAMS_B if sizes is None else sizes
    cells = df[df["column"] == column].assign(key=lambda d: d["model"].map(canonical_model))
    rows = []
    for method, (improved, reference) in pairs.items():
        a = cells[cells["block"] == improved].set_index("key")["value"]
        b = cells[cells["block"] == reference].set_index("key")["value"]
        for key in a.index.intersection(b.index):
            rows.append(
                {
                    "method": method,
                    "model": key,
                    "size_b": model_size_b(key, sizes),
                    "improvement": float(a[key] - b[key]),
                }
            )
    if not rows:
        raise ValueError(f"no model has both blocks of any pair {pairs} in column {column!r}")
    return pd.DataFrame(rows)


def plot_size_vs_improvement(
    df: pd.DataFrame,
    pairs: Mapping[str, tuple[str, str]] | None = None,
    sizes: Mapping[str, float] | None = None,
    title: str | None = None,
    logx: bool = False,
) -> Figure:
    """ba Fig. 7: model size vs Rest (avg.) improvement, Pearson r per method in the legend."""
    points = size_improvement_points(df, pairs, sizes)
    methods = list(dict.fromkeys(points["method"]))
    colors = sns.color_palette("colorblind", max(len(methods), 3))
    fig, axes = _new_figure(width=6.5)
    ax = axes[0, 0]
    for color, method in zip(colors, methods, strict=False):
        part = points[points["method"] == method]
        r = pearson_r(part["size_b"], part["improvement"])
        r_text = "n/a" if math.isnan(r) else f"{r:.2f}"
        ax.scatter(
            part["size_b"], part["improvement"], color=color, label=f"{method} (r = {r_text})"
        )
    ax.axhline(0.0, color="grey", linewidth=0.8)  # no improvement: a reader judges the sign
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel("model size (billions of parameters)")
    ax.set_ylabel("Rest (avg.) improvement (points)")
    ax.legend(loc="best", title="Pearson correlation")
    fig.suptitle(title or "Model size vs non-English improvement")
    return fig


# --------------------------------------------------------------------------------------------
# CALM Table 1 as bars


def _datasets(df: pd.DataFrame) -> list[str | None]:
    return list(dict.fromkeys(split_column(c)[0] for c in df["column"] if split_column(c)[1]))


def plot_calm_accuracy(
    df: pd.DataFrame,
    dataset: str | None = None,
    blocks: Iterable[str] | None = None,
    include_avg: bool = True,
    title: str | None = None,
) -> Figure:
    """CALM Table 1 as bars: accuracy per language (x) for base / SFT / CALM (hue).

    One row of panels per dataset prefix (all present unless ``dataset`` is given; language
    columns without a prefix form one unnamed dataset), one panel per model with data.
    """
    blocks = _pick_blocks(df, blocks, CALM_BLOCKS)
    datasets = [dataset] if dataset is not None else _datasets(df)
    if not datasets:
        raise ValueError("no language columns in data")
    models = list(dict.fromkeys(df["model"]))
    fig, axes = _new_figure(ncols=len(models), nrows=len(datasets), width=5.0, height=3.8)
    drawn = []
    for i, ds in enumerate(datasets):
        prefix = f"{ds}_" if ds else ""
        wanted = [c for c in dict.fromkeys(df["column"]) if split_column(c)[0] == ds]
        wanted = [c for c in wanted if split_column(c)[1]]
        if include_avg and f"{prefix}acc_avg" in set(df["column"]):
            wanted.append(f"{prefix}acc_avg")
        for j, model in enumerate(models):
            ax = axes[i, j]
            part = df[(df["model"] == model) & df["column"].isin(wanted) & df["block"].isin(blocks)]
            if part.empty:
                ax.set_visible(False)
                continue
            part = part.assign(
                language=part["column"].map(column_label), series=part["block"].map(block_label)
            )
            order = [column_label(c) for c in wanted if c in set(part["column"])]
            hue_order = [block_label(b) for b in blocks]
            _accuracy_bars(ax, part, "language", order, hue_order, blocks)
            ax.set_ylabel("accuracy (%)")
            ax.set_title(f"{(ds or '').upper()} {short_model(model)}".strip())
            drawn.append(ax)
    if not drawn:
        raise ValueError(f"no data for dataset(s) {datasets} in blocks {blocks}")
    _single_legend(fig, drawn)
    fig.suptitle(title or "Accuracy per language")
    return fig


# --------------------------------------------------------------------------------------------
# Our runs only: accuracy per language with CIs, training curves (the notebooks' teaching figures)


def plot_accuracy_by_language(
    df: pd.DataFrame, blocks: Iterable[str] | None = None, title: str | None = None
) -> Figure:
    """Accuracy per language column (x) for each block (hue), each bar with its 95% CI where the
    frame has one; Rest (avg.) last. ``df`` is a tidy table (``tables.probe_table``)."""
    blocks = _pick_blocks(df, blocks, ())
    part = df[df["block"].isin(blocks)].copy()
    part = part[~part["column"].isin(["gap", "consistency", "ac3"])]
    if part.empty:
        raise ValueError(f"no accuracy columns in blocks {list(blocks)}")
    part["label"] = part["column"].map(column_label)
    part["series"] = part["block"].map(block_label)
    order = list(dict.fromkeys(part.loc[part["column"] != "rest_avg", "label"]))
    order += [column_label("rest_avg")] if (part["column"] == "rest_avg").any() else []
    hue_order = [block_label(b) for b in blocks]
    fig, axes = _new_figure(width=max(6.5, 0.9 * len(order) + 2))
    ax = axes[0][0]
    _accuracy_bars(ax, part, "label", order, hue_order, blocks)
    ax.set_ylabel("accuracy (%), 95% CI")
    _rotate_ticks(ax)
    _single_legend(fig, [ax])
    fig.suptitle(title or "Accuracy per language")
    return fig


def plot_training_curves(
    logs: Mapping[str, Sequence[Mapping]], metrics: Sequence[str] = ("loss", "rewards/margins")
) -> Figure:
    """One panel per metric of the training logs (``train_log.jsonl`` rows), one line per run.

    ``logs`` maps a run's label to its logged rows; rows without the metric (the final summary row,
    say) are skipped, and a metric no run logged gets an empty panel saying so."""
    if not logs:
        raise ValueError("no training logs to draw")
    fig, axes = _new_figure(ncols=len(metrics), width=4.6, height=3.4)
    for ax, metric in zip(axes[0], metrics, strict=True):
        drawn = 0
        for label, rows in logs.items():
            points = [(r["step"], r[metric]) for r in rows if metric in r and "step" in r]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, label=label)
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, f"no run logged {metric}", ha="center", transform=ax.transAxes)
        ax.set_xlabel("step")
        ax.set_title(metric)
    _single_legend(fig, axes[0])
    fig.suptitle("Training curves")
    return fig


# --------------------------------------------------------------------------------------------
# Saving


def save_figure(
    fig: Figure, stem: str, out_dir: str | Path, data: pd.DataFrame | None = None
) -> dict[str, Path]:
    """Write ``<stem>.png`` and ``<stem>.svg`` (and ``<stem>.csv`` of ``data``) into ``out_dir``.

    Returns the written paths keyed by extension. SVG output is made reproducible (fixed id salt,
    no date) so re-running a notebook does not change unchanged figures.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"png": out_dir / f"{stem}.png", "svg": out_dir / f"{stem}.svg"}
    fig.savefig(paths["png"], dpi=150)
    with matplotlib.rc_context({"svg.hashsalt": "xlalign"}):
        fig.savefig(paths["svg"], metadata={"Date": None})
    if data is not None:
        paths["csv"] = out_dir / f"{stem}.csv"
        data.to_csv(paths["csv"], index=False)
    return paths
