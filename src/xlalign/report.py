"""The summary report: each reproduced figure next to the paper's, our numbers next to the published ones.

Paper figures are redrawn from ``data/paper`` with the same plotting functions our runs use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from xlalign import figures, paper
from xlalign.config import REPO_ROOT
from xlalign.runs import Run

# XLALIGN_FIGURES lets tests and scratch runs write figures elsewhere than the repository's figures/.
FIGURE_DIR = Path(os.environ.get("XLALIGN_FIGURES", REPO_ROOT / "figures"))
# (paper figure key, our stem, title, plot function name)
FIGURES = [
    ("ba_fig3", "fig3_english_vs_rest", "Fig. 3: English vs Rest (avg.)", "plot_english_vs_rest"),
    ("ba_fig4", "fig4_english_anchor", "Fig. 4: English as anchor", "plot_english_anchor"),
    ("ba_fig5", "fig5_machine_translated", "Fig. 5: machine-translated languages", "plot_machine_translated"),
    ("ba_fig6", "fig6_batch_size", "Fig. 6: batch size", "plot_batch_size"),
    ("ba_fig7", "fig7_size_vs_improvement", "Fig. 7: model size vs improvement", "plot_size_vs_improvement"),
]


def draw_paper_figures(out_dir: Path = FIGURE_DIR) -> dict[str, Path]:
    """Redraw the batch-alignment paper's Figures 3-7 from the transcribed tables."""
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


def save_ours(fig, stem: str, data: pd.DataFrame, out_dir: Path = FIGURE_DIR) -> Path:
    return figures.save_figure(fig, f"ours_{stem}", out_dir, data=data)["png"]


def _rel(path: Path, base: Path) -> str:
    return os.path.relpath(Path(path).resolve(), base.resolve())


def _table_md(path: Path) -> str:
    return path.read_text() if path.exists() else "_not produced in this run_"


def build_report(run: Run, figure_dir: Path = FIGURE_DIR) -> Path:
    """Write ``runs/<id>/report.md``."""
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
        "## Wall time per step",
        "",
        "| step | wall time (s) |",
        "|---|---|",
    ]
    for step, info in rec.get("steps", {}).items():
        if "wall_time_s" in info:
            lines.append(f"| {step} | {info['wall_time_s']} |")
    lines += ["", "## Figures: the paper's (left) and ours (right)", ""]
    for _key, stem, title, _ in FIGURES:
        ours = figure_dir / f"ours_{stem}.png"
        theirs = figure_dir / f"paper_{stem}.png"
        left = f"![paper]({_rel(theirs, run.path)})" if theirs.exists() else "_missing_"
        right = f"![ours]({_rel(ours, run.path)})" if ours.exists() else "_not produced in this run_"
        lines += [f"### {title}", "", "| paper | ours |", "|---|---|", f"| {left} | {right} |", ""]
    lines += ["## Tables (ours, with 95% bootstrap CIs) and the published counterparts", ""]
    table_dir = run.path / "tables"
    for md in sorted(table_dir.glob("*.md")):
        lines += [f"### {md.stem}", "", _table_md(md), ""]
    comp = run.path / "tables" / "published_side_by_side.md"
    if comp.exists():
        lines += ["## Our run next to the published numbers", "", comp.read_text(), ""]
    out = run.path / "report.md"
    out.write_text("\n".join(lines))
    return out


def side_by_side(ours: pd.DataFrame, published: pd.DataFrame, columns=("english", "rest_avg")) -> pd.DataFrame:
    """One row per (source, block, model) with the chosen columns, ours marked as such."""
    frames = []
    for source, df in (("ours", ours), ("paper", published)):
        d = df[df["column"].isin(columns)].copy()
        d["source"] = source
        frames.append(d)
    both = pd.concat(frames, ignore_index=True)
    return both.pivot_table(index=["source", "block", "model"], columns="column", values="value").reset_index()
