"""The summary report: each reproduced figure next to the paper's, our numbers next to the published ones.

Paper figures are redrawn from ``data/paper`` with the same plotting functions our runs use.

A run's figures stay in that run: ``save_ours`` and ``draw_paper_figures`` write into
``<run>/figures/`` and ``build_report`` shows only those. The tracked gallery (the repository's
``figures/``, shown in the README) changes only through ``refresh_gallery`` (``make gallery
RUN_ID=<id>``, i.e. ``python -m xlalign.report.build --gallery runs/<id>``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pandas as pd

from xlalign import paper
from xlalign.config import REPO_ROOT
from xlalign.report import figures, tables
from xlalign.runs import Run

# The tracked gallery; written only by refresh_gallery.
GALLERY_DIR = REPO_ROOT / "figures"
# The files of one figure.
FIGURE_SUFFIXES = (".png", ".svg", ".csv")
# (paper figure key, our stem, title, plot function name)
FIGURES = [
    ("ba_fig3", "fig3_english_vs_rest", "Fig. 3: English vs Rest (avg.)", "plot_english_vs_rest"),
    ("ba_fig4", "fig4_english_anchor", "Fig. 4: English as anchor", "plot_english_anchor"),
    (
        "ba_fig5",
        "fig5_machine_translated",
        "Fig. 5: machine-translated languages",
        "plot_machine_translated",
    ),
    ("ba_fig6", "fig6_batch_size", "Fig. 6: batch size", "plot_batch_size"),
    (
        "ba_fig7",
        "fig7_size_vs_improvement",
        "Fig. 7: model size vs improvement",
        "plot_size_vs_improvement",
    ),
]


def run_figure_dir(run: Run | str | Path) -> Path:
    """``<run>/figures``: where one run's figures go (a Run or a run directory)."""
    return (run.path if isinstance(run, Run) else Path(run)) / "figures"


def draw_paper_figures(
    run: Run | str | Path | None = None, *, out_dir: str | Path | None = None
) -> dict[str, Path]:
    """Redraw the batch-alignment paper's Figures 3-7 from the transcribed tables.

    Into ``<run>/figures/`` (or ``out_dir``); one of the two is required, so that no call writes
    the tracked gallery by default.
    """
    if out_dir is None:
        if run is None:
            raise TypeError("draw_paper_figures needs a run or an out_dir")
        out_dir = run_figure_dir(run)
    out = {}
    manifest = paper.load_manifest()
    for key, stem, title, fn in FIGURES:
        df = paper.figure_frame(key, manifest)
        blocks = next(f["blocks"] for f in manifest["figures"] if f["key"] == key)
        plot = getattr(figures, fn)
        if fn in ("plot_batch_size", "plot_size_vs_improvement"):
            fig = plot(df, title=f"Paper {title}")
        else:
            fig = plot(df, blocks=blocks, title=f"Paper {title}")
        out[stem] = figures.save_figure(fig, f"paper_{stem}", out_dir, data=df)["png"]
    return out


def save_ours(fig, stem: str, data: pd.DataFrame, run: Run | str | Path) -> Path:
    """Write ``ours_<stem>`` (PNG, SVG and ``data`` as CSV) into ``<run>/figures/``."""
    return figures.save_figure(fig, f"ours_{stem}", run_figure_dir(run), data=data)["png"]


def refresh_gallery(run_dir: str | Path, target: str | Path = GALLERY_DIR) -> list[Path]:
    """Make ``target`` (the tracked ``figures/`` by default) the gallery of one run.

    Copies the run's ``ours_*`` figures (PNG, SVG, CSV) and redraws the ``paper_*`` figures from
    ``data/paper/``. So that the gallery never mixes runs, the run must hold every ``ours_*``
    figure that ``target`` already has. Returns the written paths.
    """
    source, target = run_figure_dir(run_dir), Path(target)
    ours = sorted(p for p in source.glob("ours_*") if p.suffix in FIGURE_SUFFIXES)
    if not ours:
        raise FileNotFoundError(f"no ours_* figures in {source}")
    have = {p.name for p in ours}
    missing = sorted(
        p.name for p in target.glob("ours_*") if p.suffix in FIGURE_SUFFIXES and p.name not in have
    )
    if missing:
        raise FileNotFoundError(
            f"{source} lacks {missing}, which {target} has; the gallery would mix runs"
        )
    target.mkdir(parents=True, exist_ok=True)
    written = [Path(shutil.copy2(p, target / p.name)) for p in ours]
    for png in draw_paper_figures(out_dir=target).values():
        written += [png.with_suffix(s) for s in FIGURE_SUFFIXES]
    return written


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(Path(path).resolve(), base.resolve())


def _table_md(path: Path) -> str:
    return path.read_text() if path.exists() else "_not produced in this run_"


def _figure_cell(path: Path, alt: str, run: Run) -> str:
    return f"![{alt}]({_rel(path, run.path)})" if path.exists() else "_not produced in this run_"


def wall_time_lines(rec: dict) -> list[str]:
    """Each step's wall time; beside each notebook's, and each training's and evaluation's, the
    estimate ``make reproduce`` printed before it started (``run.json`` ``estimate``) and actual /
    estimate. A training's wall time is its whole call (model load, TRL's tokenization, the steps,
    checkpoints and the adapter save), the span its estimate counts; its steps alone are noted."""
    estimate = rec.get("estimate") or {}
    est = estimate.get("notebooks_s") or {}
    per_step = estimate.get("steps_s") or {}
    th = estimate.get("throughput") or {}
    lines = ["## Wall time per step", ""]
    if est:
        lines += [
            f"Estimated before the chain started from a measurement of {th.get('model')} "
            f"({th.get('dtype')}, {th.get('device')}, {th.get('host')}) times the counted work "
            "(`xlalign.estimate`).",
            "",
        ]
    lines += [
        "| step | wall time (s) | estimate (s) | actual / estimate | note |",
        "|---|---|---|---|---|",
    ]
    for step, info in rec.get("steps", {}).items():
        if "wall_time_s" not in info:
            continue
        if step.startswith("notebook/"):
            guess = est.get(step.removeprefix("notebook/"))
        else:
            guess = per_step.get(step)
        wall, note = info["wall_time_s"], ""
        if "call_s" in info:
            wall, note = info["call_s"], f"trainer steps {info['wall_time_s']} s"
        ratio = f"{wall / guess:.2f}" if guess else ""
        lines.append(f"| {step} | {wall} | {guess if guess else ''} | {ratio} | {note} |")
    return lines


def build_report(run: Run) -> Path:
    """Write ``runs/<id>/report.md``, with the figures of ``<run>/figures/`` only."""
    rec = run.record
    lines = [
        f"# xlalign report — run `{run.id}`",
        "",
        f"Profile **{rec['profile']}**, seed {rec['seed']}, commit `{(rec['git'] or {}).get('commit')}`"
        f"{' (dirty)' if (rec['git'] or {}).get('dirty') else ''}, device: {json.dumps(rec['device'])}.",
        "",
        "Our numbers come from this run; the papers' numbers are transcribed in `data/paper/` "
        "(see its README for the discrepancies found there). They are never mixed: every table and "
        "figure says which is which.",
        "",
    ]
    lines += wall_time_lines(rec)
    lines += settings_lines(rec)
    lines += ["", "## Figures: the paper's (left) and ours (right)", ""]
    figure_dir = run_figure_dir(run)
    for _key, stem, title, _ in FIGURES:
        left = _figure_cell(figure_dir / f"paper_{stem}.png", "paper", run)
        right = _figure_cell(figure_dir / f"ours_{stem}.png", "ours", run)
        lines += [f"### {title}", "", "| paper | ours |", "|---|---|", f"| {left} | {right} |", ""]
    lines += evaluation_findings(run)
    lines += ["## Tables (ours, with 95% bootstrap CIs)", ""]
    table_dir = run.path / "tables"
    for md in sorted(table_dir.glob("*.md")):
        if md.name == "published_side_by_side.md":
            continue
        lines += [f"### {md.stem}", "", _table_md(md), ""]
    comp = write_side_by_side(table_dir)
    if comp is not None:
        lines += ["## Our run next to the published numbers", "", comp.read_text(), ""]
    out = run.path / "report.md"
    out.write_text("\n".join(lines))
    return out


def settings_lines(rec: dict) -> list[str]:
    """Report lines: the run's settings, each marked as a paper's (with where it says so) or ours."""
    from xlalign.config.loading import profile_from_dict
    from xlalign.report.tables import provenance_markdown

    if not rec.get("config"):
        return []
    try:
        profile = profile_from_dict(rec["config"])
    except Exception as exc:  # an older run's config: the report still builds, and says why
        return ["", f"(Settings table left out: this run's config does not load here: {exc})"]
    return [
        "",
        "## Settings: which the papers state and which are ours",
        "",
        provenance_markdown(profile),
    ]


def evaluation_findings(run: Run, threshold: float = 0.95) -> list[str]:
    """Report lines: per evaluation of the run, its answer skew and first-token-margin AUROC (95% CI).

    An evaluation whose model gives one answer to at least ``threshold`` of its items is listed as a
    finding: its accuracy measures the label balance of the items, not what the model learned.
    """
    from xlalign.evaluation.decisions import answer_skew, auroc_by_language
    from xlalign.evaluation.predictions import read_predictions_frame

    rows, constant = [], []
    for path in sorted((run.path / "eval").glob("*/predictions.jsonl")):
        preds = read_predictions_frame(path)
        if preds.empty:
            continue
        skew = answer_skew(preds, threshold=threshold)
        pooled = skew[skew["lang"] == "all"].iloc[0]
        auroc = "n/a"
        if {"logp_first_present", "logp_first_absent"} <= set(preds.columns):
            a = auroc_by_language(preds, n_resamples=200, seed=0)
            a = a[a["lang"] == "all"].iloc[0]
            auroc = f"{a['auroc']:.2f} [{a['ci_low']:.2f}–{a['ci_high']:.2f}]"
        name = path.parent.name
        rows.append(
            f"| {name} | {len(preds)} | {pooled['top_answer']} | {100 * pooled['share']:.0f}% | {auroc} |"
        )
        if pooled["constant"]:
            constant.append(name)
    if not rows:
        return []
    lines = [
        "## What each evaluation's model answered",
        "",
        "Share of the most frequent answer, and the AUROC of the first-token margin (log p(present) − "
        "log p(absent)) against the label, pooled over languages, 95% bootstrap CI. An AUROC near 0.5 "
        "means the model's scores do not separate the labels, whatever its accuracy.",
        "",
        "| evaluation | items | most frequent answer | share | margin AUROC |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]
    if constant:
        lines += [
            f"**Finding, not a result:** {', '.join(constant)} gave one answer to at least "
            f"{100 * threshold:.0f}% of the items. Their accuracies in the tables below only restate "
            "the label balance of the test items.",
            "",
        ]
    return lines


# Our table stem -> (the published tables it reproduces, the columns compared side by side).
COMPARISONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "table05_baseline": (("ba_t05",), ("english", "rest_avg")),
    "table06_08_batch_alignment": (("ba_t06", "ba_t08"), ("english", "rest_avg")),
    "table07_unseen_languages": (("ba_t07",), ("english", "rest_avg")),
    "table09_10_english_anchor": (("ba_t09", "ba_t10"), ("english", "rest_avg")),
    "table11_machine_translated": (("ba_t11",), ("english", "rest_avg")),
    # Tables 2-4 on the paper profile only: the cpu/smoke stand-in tasks (out_of_domain_local_stand_in)
    # measure something else and are never set beside the paper's numbers.
    "table02_04_out_of_domain": (
        ("ba_t02", "ba_t03", "ba_t04"),
        ("mmmlu", "mgsm_em", "lambada_ppl", "lambada_acc", "pawsx_acc"),
    ),
    "table12_13_batch_size": (
        ("ba_t12", "ba_t13"),
        ("english", "rest_avg", "bs_1", "bs_2", "bs_3", "bs_4", "bs_5", "bs_6", "bs_7"),
    ),
    # CALM prints X-CSQA and MEDQA side by side; our MCQs compare with its X-CSQA columns.
    "calm_table01_03": (
        ("calm_t01", "calm_t03"),
        ("english", "chinese", "french", "acc_avg", "consistency", "ac3"),
    ),
}
_BATCH_BLOCK = re.compile(r"^bs_(\d+)$")


def _batch_size_layout(ours: pd.DataFrame) -> pd.DataFrame:
    """Our batch-size ablation in Tables 12/13's layout: one row per method, ``bs_N`` = Rest (avg.)
    of aligned training at batch size N, English and Rest (avg.) of the uncoupled default."""
    defaults = ours[ours["block"].str.endswith("_default")]
    if defaults["block"].nunique() != 1:
        return ours
    method = defaults["block"].iloc[0].removesuffix("_default")
    rows = defaults[defaults["column"].isin(["english", "rest_avg"])].assign(block=method)
    sized = []
    for block, part in ours.groupby("block", sort=False):
        match = _BATCH_BLOCK.match(block)
        if match:
            rest = part[part["column"] == "rest_avg"].assign(block=method, column=f"bs_{match[1]}")
            sized.append(rest)
    return pd.concat([rows, *sized], ignore_index=True)


def published_side_by_side(tables_dir: Path) -> dict[str, pd.DataFrame]:
    """Per table of ours in ``tables_dir``: our rows and the published rows of the same blocks.

    Returns ``{stem: wide frame}`` indexed by source (ours, paper) with table, block and model
    columns, then the compared columns. Cells show the value, the gain in parentheses where the
    table prints one, and the 95% CI where there is one (ours always, the paper's only in its
    Table 7). Published numbers are read from ``data/paper/``.
    """
    out = {}
    for stem, (keys, columns) in COMPARISONS.items():
        path = Path(tables_dir) / f"{stem}.csv"
        if not path.exists():
            continue
        ours = paper.read_tidy(path)
        if stem == "table12_13_batch_size":
            ours = _batch_size_layout(ours)
        published = pd.concat([paper.load_table(k) for k in keys], ignore_index=True)
        published = published.assign(
            column=published["column"].str.removeprefix("xcsqa_"),
            model=published["model"].map(paper.canonical_model),
        )
        published = published[published["block"].isin(set(ours["block"]))]
        frames = []
        for source, frame in (("ours", ours), ("paper", published)):
            frame = frame[frame["column"].isin(columns)]
            if not frame.empty:
                frames.append(frame.assign(source=source))
        both = pd.concat(frames, ignore_index=True)
        both["cell"] = [
            tables.format_cell(r.value, r.delta, r.ci_low, r.ci_high, show_ci=True)
            for r in both.itertuples(index=False)
        ]
        keys_ = ["source", "table", "block", "model"]
        wide = both.pivot_table(
            index=keys_, columns="column", values="cell", aggfunc="first", sort=False
        )
        wide = wide.reindex(columns=[c for c in columns if c in wide.columns]).fillna("")
        wide.columns.name = None
        out[stem] = wide.reset_index().set_index("source")
    return out


def write_side_by_side(tables_dir: Path) -> Path | None:
    """``published_side_by_side.md`` in ``tables_dir``: one section per reproduced table."""
    sections = published_side_by_side(tables_dir)
    if not sections:
        return None
    lines = [
        "Ours come from this run (95% bootstrap CIs in brackets); the paper's are transcribed in "
        "`data/paper/` (CIs only where the paper prints them). Only the blocks that this run "
        "reproduced are listed. CALM's acc_avg and AC3 average over its six X-CSQA languages, "
        "ours over this run's evaluation languages.",
        "",
    ]
    for stem, wide in sections.items():
        keys = ", ".join(COMPARISONS[stem][0])
        lines += [f"### {stem} (published: {keys})", "", tables.to_markdown(wide), ""]
    path = Path(tables_dir) / "published_side_by_side.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xlalign.report.build",
        description="Refresh the tracked figure gallery from one run (make gallery RUN_ID=<id>).",
    )
    parser.add_argument("--gallery", metavar="RUN_DIR", required=True, help="e.g. runs/<id>")
    parser.add_argument("--target", default=str(GALLERY_DIR), help="default: the tracked figures/")
    args = parser.parse_args(argv)
    try:
        written = refresh_gallery(args.gallery, args.target)
    except FileNotFoundError as err:
        print(f"xlalign gallery: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
