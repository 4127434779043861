"""Readings: one sentence per result, built from a run's own numbers, and the worked examples the
notebooks show (one prompt with its relevant passage marked, one batch, one CALM vote).

Notebooks print these and never type a number in. Every function takes plain frames or rows (the
run's predictions, tidy tables, logs), so tests can check them on hand-built inputs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from xlalign.evaluation.metrics import is_correct, validate_predictions

MINUS = "−"  # U+2212: the readings print signed numbers the way the papers typeset them


# --------------------------------------------------------------------------- recording


def record(run_path: str | Path, notebook: str, **texts: str) -> Path:
    """``readings/<notebook>.json`` in the run: the readings a notebook printed, by name, so the
    report and the tests read the same sentences (rewritten on every run of the notebook)."""
    out = Path(run_path) / "readings" / f"{notebook}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(texts, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(out)
    return out


# --------------------------------------------------------------------------- before a long step


def _run_done(run_path: Path, r) -> bool:
    """Whether the run directory already holds what a planned model run would compute."""
    if r.kind == "train":
        return (run_path / "train" / r.label / "train_result.json").exists()
    if r.kind == "eval":
        path = run_path / "eval" / r.label / "predictions.jsonl"
        if not path.exists():
            return False
        with path.open(encoding="utf-8") as fh:
            return sum(1 for line in fh if line.strip()) >= (r.items or 0)
    if r.kind == "probe":
        return (run_path / "tables" / f"{r.label}.csv").exists()
    if r.kind.startswith("calm"):
        calm = run_path / "calm"  # one task: calm/metrics.json; several: calm/tasks.json
        return (calm / "metrics.json").exists() or (calm / "tasks.json").exists()
    if r.kind == "benchmark":
        return (run_path / "tables" / "out_of_domain.csv").exists()
    return False


def before_compute(profile, run_path: str | Path, notebook: str) -> str:
    """The line a notebook prints before its long steps: what it still has to compute in this run
    directory (``xlalign.plan``'s model runs less those already on disk) and roughly how long that
    takes on this machine (``xlalign.estimate``: measured throughput × counted work).

    The estimate is left out, with the reason, where it cannot be made; the work is always listed."""
    run_path = Path(run_path)
    try:
        from xlalign.plan import plan_notebook

        plan = plan_notebook(profile, notebook, alone=True)
    except Exception as err:  # the line is a courtesy; the notebook's work does not depend on it
        return (
            f"[xlalign] {notebook}: computing what this run directory lacks (no plan: "
            f"{type(err).__name__}: {err})"
        )
    if not plan.runs:
        return f"[xlalign] {plan.notebook}: no model runs, only quick data steps"
    todo = [r for r in plan.runs if not r.reuses and not _run_done(run_path, r)]
    done = len([r for r in plan.runs if not r.reuses]) - len(todo)
    reused = f"; {done} already in this run, reused" if done else ""
    if not todo:
        return f"[xlalign] {plan.notebook}: nothing to compute, all {done} model runs are in {run_path.name}"
    kinds: dict[str, int] = {}
    for r in todo:
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
    what = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
    steps = sum(r.steps or 0 for r in todo if r.kind == "train")
    items = sum(r.items or 0 for r in todo if r.kind == "eval")
    detail = ", ".join(
        x
        for x in (
            f"{steps} training steps" if steps else "",
            f"{items} items scored" if items else "",
        )
        if x
    )
    what = f"{what} run{'s' if len(todo) > 1 else ''}" + (f" ({detail})" if detail else "")
    try:
        from xlalign.estimate import about, estimate_runs, measure

        line = about(what, estimate_runs(todo, measure(profile, startup=False)))
    except (
        Exception
    ) as err:  # the estimate is a courtesy; the notebook's work does not depend on it
        line = f"computing {what} (no time estimate: {type(err).__name__}: {err})"
    return f"[xlalign] {plan.notebook}: {line}{reused}"


# --------------------------------------------------------------------------- formatting


def signed(x: float, digits: int = 1) -> str:
    """``+2.1`` / ``−1.5`` / ``0.0``."""
    if x is None or not math.isfinite(x):
        return "n/a"
    text = f"{abs(x):.{digits}f}"
    if float(text) == 0:
        return text
    return ("+" if x > 0 else MINUS) + text


def interval(low: float, high: float, digits: int = 1, sign: bool = False) -> str:
    """``[−1.5, 5.8]`` (``sign``: with a leading + on positive bounds)."""
    fmt = (lambda v: signed(v, digits)) if sign else (lambda v: _plain(v, digits))
    return f"[{fmt(low)}, {fmt(high)}]"


def _plain(x: float, digits: int) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}".replace("-", MINUS)


def pvalue_text(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "p = n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


# --------------------------------------------------------------------------- paired differences


def paired_difference(
    preds_a: pd.DataFrame,
    preds_b: pd.DataFrame,
    english: str = "en",
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """B − A accuracy (points) on the non-English items, with a 95% paired percentile bootstrap CI
    that resamples whole samples, all their translations together, within each label
    (``stats.paired_accuracy_delta``).

    The two runs must hold the same items (``stats.paired_outcomes`` names any that differ). With
    the same items in every language (``experiments.eval_subset``) the pooled non-English accuracy
    equals Rest (avg.), the mean of the per-language accuracies. The papers give no CI for this
    difference; the resampling is ours.
    """
    from xlalign.evaluation.stats import paired_outcomes, paired_outcomes_delta

    paired = paired_outcomes(preds_a, preds_b)
    paired = paired[paired["lang"] != english]
    if paired.empty:
        raise ValueError("the two prediction sets share no non-English items")
    ci = paired_outcomes_delta(paired, n_resamples, seed)
    return {"delta": ci.point, "ci_low": ci.low, "ci_high": ci.high, "n": len(paired)}


def difference_reading(
    preds_a: pd.DataFrame,
    preds_b: pd.DataFrame,
    mcnemar: pd.DataFrame,
    name_a: str = "uncoupled",
    name_b: str = "aligned",
    alpha: float = 0.01,
    english: str = "en",
    n_resamples: int = 1000,
    seed: int = 0,
) -> str:
    """e.g. "aligned − uncoupled in Rest (avg.): +2.1 points, 95% CI [−1.5, 5.8], McNemar p = 0.31:
    no significant difference on this run (p ≥ 0.01, 120 paired items)."

    ``mcnemar`` is ``experiments.compare``'s table (its ``non_english`` row is read)."""
    if "non_english" not in mcnemar.index:
        raise ValueError(f"McNemar table has no 'non_english' row (rows: {list(mcnemar.index)})")
    diff = paired_difference(preds_a, preds_b, english, n_resamples, seed)
    p = float(mcnemar.loc["non_english", "pvalue"])
    if math.isfinite(p) and p < alpha:
        verdict = f"{name_b} is significantly {'better' if diff['delta'] > 0 else 'worse'}"
        verdict += f" on this run (p < {alpha:g}"
    else:
        verdict = f"no significant difference on this run (p ≥ {alpha:g}"
    return (
        f"{name_b} {MINUS} {name_a} in Rest (avg.): {signed(diff['delta'])} points, 95% CI "
        f"{interval(diff['ci_low'], diff['ci_high'])}, McNemar {pvalue_text(p)}: {verdict}, "
        f"{diff['n']} paired items)."
    )


def _skew_note(preds: pd.DataFrame, threshold: float = 0.95) -> str:
    counts = preds["pred"].astype(str).value_counts()
    share = counts.iloc[0] / len(preds)
    if share >= threshold:
        return (
            f" It answers {counts.index[0]!r} to {share:.0%} of items, so these accuracies restate "
            "the label balance, not a judgement."
        )
    return ""


def gap_reading(
    preds: pd.DataFrame,
    model: str,
    english: str = "en",
    n_resamples: int = 1000,
    seed: int = 0,
) -> str:
    """English accuracy, Rest (avg.) and the gap with its 95% CI (bootstrap over samples of the
    per-sample difference English − mean of the other languages), e.g. "gemma-3-270m: English 60.0%,
    Rest (avg.) 52.5%; gap +7.5 points, 95% CI [−5.0, 20.0] (10 samples)."."""
    from scipy.stats import bootstrap

    validate_predictions(preds)
    frame = preds[["sample_id", "lang"]].assign(ok=is_correct(preds).to_numpy(float))
    wide = frame.pivot_table(index="sample_id", columns="lang", values="ok", aggfunc="mean")
    if english not in wide.columns or len(wide.columns) < 2:
        raise ValueError(f"gap_reading needs {english!r} and another language; has {list(wide)}")
    wide = wide.dropna()
    en = 100.0 * wide[english].to_numpy()
    rest = 100.0 * wide.drop(columns=english).mean(axis=1).to_numpy()
    diff = en - rest
    if len(diff) > 1 and np.ptp(diff) > 0:
        res = bootstrap(
            (diff,),
            np.mean,
            n_resamples=n_resamples,
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    else:
        low = high = float(diff.mean())
    return (
        f"{model}: English {en.mean():.1f}%, Rest (avg.) {rest.mean():.1f}%; gap to English "
        f"{signed(float(diff.mean()))} points, 95% CI {interval(low, high)} ({len(diff)} samples)."
        + _skew_note(preds)
    )


def accuracy_reading(preds: pd.DataFrame, label: str = "the model") -> str:
    """ "the model is right on 3 of 8 items (37.5%) in 4 languages." plus a constant-answer note."""
    validate_predictions(preds)
    ok = is_correct(preds)
    return (
        f"{label} is right on {int(ok.sum())} of {len(ok)} items ({100 * ok.mean():.1f}%) in "
        f"{preds['lang'].nunique()} languages." + _skew_note(preds)
    )


def block_difference_reading(
    tidy: pd.DataFrame, block_b: str, block_a: str, column: str = "rest_avg", name: str = ""
) -> str:
    """Two cells of one tidy table, e.g. "bs_7 − bs_1 in Rest (avg.): +4.0 points (54.0% [40.0,
    68.0] vs 50.0% [36.0, 64.0])". The CIs are each cell's own; overlapping CIs do not test
    anything, which is why the notebooks pair this with McNemar where items are paired."""
    from xlalign.report.figures import column_label

    cells = {}
    for block in (block_a, block_b):
        rows = tidy[(tidy["block"] == block) & (tidy["column"] == column)]
        if rows.empty:
            raise ValueError(f"tidy table has no {column!r} cell for block {block!r}")
        cells[block] = rows.iloc[0]

    def cell(r) -> str:
        ci = ""
        if {"ci_low", "ci_high"} <= set(r.index) and pd.notna(r["ci_low"]):
            ci = " " + interval(r["ci_low"], r["ci_high"])
        return f"{r['value']:.1f}%{ci}"

    a, b = cells[block_a], cells[block_b]
    return (
        f"{name or block_b} {MINUS} {block_a} in {column_label(column)}: "
        f"{signed(b['value'] - a['value'])} points ({cell(b)} vs {cell(a)})."
    )


def versus_reading(
    tidy: pd.DataFrame, reference: str = "baseline", column: str = "rest_avg"
) -> str:
    """Every other block of a tidy table against ``reference`` in ``column``, one line each
    (``block_difference_reading``), e.g. notebook 06's aligned adapter vs the baseline."""
    blocks = [b for b in dict.fromkeys(tidy["block"]) if b != reference]
    if not blocks:
        raise ValueError(f"tidy table has no block besides {reference!r}")
    return "\n".join(block_difference_reading(tidy, b, reference, column) for b in blocks)


def batch_size_reading(table: pd.DataFrame) -> str:
    """From the batch-size ablation's Tables 12/13 layout (one block per method, columns ``bs_N`` =
    Rest (avg.) of aligned training at size N, ``rest_avg`` of the uncoupled default): per method,
    the largest size against the smallest and against the uncoupled default, each with its CI."""
    lines = []
    for block in dict.fromkeys(table["block"]):
        rows = table[table["block"] == block].set_index("column")
        sizes = sorted((int(c.split("_", 1)[1]), c) for c in rows.index if str(c).startswith("bs_"))
        if not sizes:
            raise ValueError(f"block {block!r} has no bs_N columns (has {list(rows.index)})")

        def cell(c: str, rows: pd.DataFrame = rows) -> str:
            r = rows.loc[c]
            ci = f" {interval(r['ci_low'], r['ci_high'])}" if pd.notna(r.get("ci_low")) else ""
            return f"{r['value']:.1f}%{ci}"

        (lo, lo_c), (hi, hi_c) = sizes[0], sizes[-1]
        line = f"{block}: Rest (avg.) at batch size {hi} {cell(hi_c)}"
        if hi != lo:
            delta = rows.loc[hi_c, "value"] - rows.loc[lo_c, "value"]
            line += f" vs {lo} {cell(lo_c)} ({signed(delta)} points)"
        if "rest_avg" in rows.index:
            delta = rows.loc[hi_c, "value"] - rows.loc["rest_avg", "value"]
            line += f"; uncoupled at {hi}: {cell('rest_avg')} ({signed(delta)} points)"
        lines.append(line + ".")
    return "\n".join(lines)


def anchor_reading(table: pd.DataFrame, mcnemar: pd.DataFrame, alpha: float = 0.01) -> str:
    """The English-anchor ablation per method: with − without English in Rest (avg.), with each
    cell's CI, and McNemar's p on the non-English items (``mcnemar``: ``compare`` rows with a
    ``method`` column, as ``ablation_english`` returns them)."""
    lines = []
    for method in dict.fromkeys(mcnemar["method"]):
        line = block_difference_reading(
            table,
            f"with_english_{method}",
            f"without_english_{method}",
            name=f"with_english_{method}",
        )
        rows = mcnemar[mcnemar["method"] == method]
        if "non_english" in rows.index:
            p = float(rows.loc["non_english", "pvalue"])
            sig = "significant" if p < alpha else "not significant"
            line = (
                line[:-1] + f"; McNemar on non-English items {pvalue_text(p)}, {sig} at {alpha:g}."
            )
        lines.append(line)
    return "\n".join(lines)


def mcnemar_reading(mcnemar: pd.DataFrame, alpha: float = 0.01, what: str = "") -> str:
    """One clause per row of an ``experiments.compare`` table: "th +10.0 points (p = 0.50)", and
    how many rows are significant at ``alpha``."""
    parts = [
        f"{idx} {signed(float(r['delta']))} points ({pvalue_text(float(r['pvalue']))})"
        for idx, r in mcnemar.iterrows()
    ]
    sig = int((mcnemar["pvalue"] < alpha).sum())
    head = f"{what}: " if what else ""
    return f"{head}{'; '.join(parts)}; {sig} of {len(mcnemar)} significant at p < {alpha:g}."


def benchmark_tests_reading(tests: pd.DataFrame, alpha: float = 0.01) -> str:
    """Notebook 06's paired tests (``benchmarks.paired_tests`` rows): "orpo-aligned vs baseline,
    mmmlu +1.0 points (p = 0.50)" per row, and how many are significant at ``alpha``."""
    if tests.empty:
        return "No benchmark column had items for both models; nothing to test."
    named = tests.set_index(tests["b"] + " vs " + tests["a"] + ", " + tests["column"])
    return mcnemar_reading(named, alpha, "out-of-domain, ours - reference")


# --------------------------------------------------------------------------- data (notebook 01)


def counts_reading(counts: pd.DataFrame) -> str:
    """From ``probe.counts_table`` (split × label rows, one column per language): whether every
    language holds the same number of samples in every split and label, as the design requires."""
    if counts.empty:
        raise ValueError("counts table is empty")
    same = bool((counts.nunique(axis=1) == 1).all())
    per_lang = counts.sum(axis=0)
    head = (
        "every language holds the same samples"
        if same
        else "languages differ in their counts (see the table)"
    )
    cells = ", ".join(f"{' '.join(map(str, k))}: {int(v.iloc[0])}" for k, v in counts.iterrows())
    return (
        f"{len(counts.columns)} languages, {int(per_lang.iloc[0])} samples each; {head} ({cells})."
    )


def lengths_reading(lengths: pd.DataFrame) -> str:
    """From ``probe.token_length_table``: the longest and shortest language by mean prompt tokens."""
    if lengths.empty:
        raise ValueError("token length table is empty")
    longest, shortest = lengths["mean"].idxmax(), lengths["mean"].idxmin()
    ratio = lengths.loc[longest, "mean"] / lengths.loc[shortest, "mean"]
    return (
        f"Prompts run from {lengths.loc[shortest, 'mean']:.0f} tokens on average ({shortest}) to "
        f"{lengths.loc[longest, 'mean']:.0f} ({longest}), {ratio:.2f} times as many for the same "
        "content; the longest prompt sets the padded batch's cost."
    )


# --------------------------------------------------------------------------- worked examples


def mark_passage(row: Mapping) -> str:
    """A probe row's prompt with the passage from the question's own topic marked ``>>> ... <<<``.

    The contexts are numbered ``[1]``, ``[2]``, ... in the order of ``doc_topics``; in a positive
    sample one of them comes from ``topic_id`` (it holds the answer), in a negative none does."""
    for key in ("prompt", "topic_id", "doc_topics", "label"):
        if key not in row:
            raise ValueError(f"probe row {row.get('item_id', '?')!r} has no field {key!r}")
    lines = str(row["prompt"]).split("\n")
    marked, found = [], False
    for line in lines:
        for i, topic in enumerate(row["doc_topics"], start=1):
            if line.startswith(f"[{i}] ") and topic == row["topic_id"]:
                line, found = f">>> {line} <<< (the question's own topic: answers it)", True
        marked.append(line)
    note = (
        f"label: {row['label']!r}; "
        + ("the relevant passage is marked >>> <<<" if found else "no passage answers it")
        + f"; contexts from topics {', '.join(row['doc_topics'])}"
    )
    return note + "\n\n" + "\n".join(marked)


def _label_of(sample_id: str) -> str:
    from xlalign.probe.build import ANSWER_ABSENT, ANSWER_PRESENT

    return (
        ANSWER_PRESENT
        if sample_id.endswith(".pos")
        else ANSWER_ABSENT
        if sample_id.endswith(".neg")
        else "?"
    )


def batch_frame(log_rows: Sequence[Mapping], step: int = 0, rank: int = 0) -> pd.DataFrame:
    """One micro-batch of a batch log (``training.sampling.read_batch_logs``) as a table: position,
    query id, sample id, language and label of every row."""
    picked = [r for r in log_rows if r["step"] == step and r.get("rank", 0) == rank]
    if not picked:
        steps = sorted({r["step"] for r in log_rows})
        raise ValueError(f"batch log has no step {step} on rank {rank} (steps {steps[:5]}...)")
    r = picked[0]
    return pd.DataFrame(
        {
            "row": range(len(r["sample_ids"])),
            "query_id": [s.rsplit(".", 1)[0] for s in r["sample_ids"]],
            "sample_id": list(r["sample_ids"]),
            "lang": list(r["langs"]),
            "label": [_label_of(s) for s in r["sample_ids"]],
        }
    )


def plan_as_log(rows: Sequence[Mapping], plan: Sequence[Sequence[int]]) -> list[dict]:
    """A sampler's plan (row indices per batch) in the batch log's shape, for ``batch_frame``."""
    return [
        {
            "step": step,
            "rank": 0,
            "sample_ids": [rows[i]["sample_id"] for i in batch],
            "langs": [rows[i]["lang"] for i in batch],
        }
        for step, batch in enumerate(plan)
    ]


def batch_reading(log_rows: Sequence[Mapping], batching: str) -> str:
    """What the batch log shows: how many micro-batches hold one sample in distinct languages (the
    aligned design) and how many mix samples, counted from the log on disk."""
    if not log_rows:
        raise ValueError("empty batch log")
    one_sample = sum(
        len(set(r["sample_ids"])) == 1 and len(set(r["langs"])) == len(r["langs"]) for r in log_rows
    )
    n = len(log_rows)
    size = len(log_rows[0]["langs"])
    langs_per = np.mean([len(set(r["langs"])) for r in log_rows])
    return (
        f"{batching}: {one_sample} of {n} micro-batches (size {size}) hold one sample in {size} "
        f"distinct languages; {n - one_sample} mix samples; {langs_per:.1f} distinct languages "
        "per batch on average."
    )


def read_train_log(path: str | Path) -> list[dict]:
    path = Path(path)
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as err:
                raise ValueError(f"{path}:{i}: not JSON ({err})") from None
    return rows


def curve_reading(log_rows: Sequence[Mapping], label: str) -> str:
    """ "orpo aligned: loss 2.41 → 0.27 over 20 steps; reward margin −0.01 → 0.84"."""
    steps = [r for r in log_rows if "loss" in r and "step" in r]
    if not steps:
        return f"{label}: no loss logged"
    first, last = steps[0], steps[-1]
    text = f"{label}: loss {first['loss']:.3g} → {last['loss']:.3g} over {last['step']} steps"
    key = "rewards/margins"
    if key in first and key in last:
        text += f"; reward margin {_plain(first[key], 2)} → {_plain(last[key], 2)}"
    return text


# --------------------------------------------------------------------------- CALM (notebook 04)


def calm_example(calm_dir: str | Path, qid: str | None = None, width: int = 90) -> dict:
    """One CALM question: its samples in each language (parsed letter, text cut to ``width``), the
    vote across languages, and the preference pairs it produced. Without ``qid`` the first question
    that produced a pair, else the first with a vote, else the first sampled.

    Returns {"qid", "samples": DataFrame, "vote": dict, "pairs": DataFrame}."""
    calm_dir = Path(calm_dir)
    if (calm_dir / "tasks.json").exists() and not (calm_dir / "samples.jsonl").exists():
        tasks = json.loads((calm_dir / "tasks.json").read_text())
        first = tasks[0] if isinstance(tasks, list) else next(iter(tasks))
        calm_dir = calm_dir / str(first)

    def read(name: str) -> list[dict]:
        path = calm_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run the CALM chain (run_calm) first")
        return read_train_log(path)

    samples, votes, pairs = read("samples.jsonl"), read("votes.jsonl"), read("pairs.jsonl")
    if not samples:
        raise ValueError(f"{calm_dir / 'samples.jsonl'} holds no samples")
    if qid is None:
        voted = [v["qid"] for v in votes if v.get("letter")]
        paired = [p["qid"] for p in pairs]
        qid = (paired or voted or [samples[0]["qid"]])[0]
    mine = [s for s in samples if s["qid"] == qid]
    if not mine:
        raise ValueError(f"question {qid!r} not in {calm_dir / 'samples.jsonl'}")
    vote = next((v for v in votes if v["qid"] == qid), {})
    table = pd.DataFrame(
        {
            "lang": [s["lang"] for s in mine],
            "sample": [s["idx"] for s in mine],
            "letter": [s.get("letter") for s in mine],
            "agrees": [
                s.get("letter") is not None and s.get("letter") == vote.get("letter") for s in mine
            ],
            "text": [_cut(s["text"], width) for s in mine],
        }
    )
    pair_rows = pd.DataFrame(
        [
            {
                "lang": p["lang"],
                "chosen_from": p["chosen_lang"],
                "translated": p["translated"],
                "chosen_letter": p["chosen_letter"],
                "rejected_letter": p["rejected_letter"],
                "chosen": _cut(p["chosen"], width),
                "rejected": _cut(p["rejected"], width),
            }
            for p in pairs
            if p["qid"] == qid
        ],
        columns=[
            "lang",
            "chosen_from",
            "translated",
            "chosen_letter",
            "rejected_letter",
            "chosen",
            "rejected",
        ],
    )
    return {"qid": qid, "samples": table, "vote": vote, "pairs": pair_rows}


def _cut(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def vote_reading(example: Mapping) -> str:
    """ "fin-02: 6 samples, 4 parsable; vote B (3 of 4, gold B, right); 2 pairs (1 translated)"."""
    s, vote, pairs = example["samples"], example["vote"], example["pairs"]
    parsable = int(s["letter"].notna().sum())
    head = f"{example['qid']}: {len(s)} samples in {s['lang'].nunique()} languages, {parsable} parsable"
    if not vote or not vote.get("letter"):
        return f"{head}; no vote (no parsable answer), so no pair: the question adds nothing."
    count = vote.get("counts", {}).get(vote["letter"], "?")
    right = "right" if vote.get("correct") else "wrong"
    tie = ", a tie broken by the rule in calm.vote" if vote.get("tied") else ""
    return (
        f"{head}; vote {vote['letter']} ({count} of {vote.get('n_parsable', parsable)}{tie}; gold "
        f"{vote.get('gold')}: {right}); {len(pairs)} pairs, {int(pairs['translated'].sum()) if len(pairs) else 0} "
        "with the chosen answer translated from another language."
    )


def calm_reading(results: pd.DataFrame, base: str = "base", trained: str = "calm") -> str:
    """From ``calm.results_table``'s tidy frame: CALM against the base model on ACC_avg,
    Consistency_s and AC3."""
    out = []
    for column, name in (
        ("acc_avg", "AVG accuracy"),
        ("consistency", "consistency"),
        ("ac3", "AC3"),
    ):
        cells = results[results["column"] == column].set_index("block")["value"]
        if base in cells and trained in cells:
            out.append(
                f"{name} {cells[trained]:.1f} vs {cells[base]:.1f} "
                f"({signed(cells[trained] - cells[base])})"
            )
    if not out:
        blocks = ", ".join(dict.fromkeys(results["block"]))
        return (
            f"No {trained!r} beside {base!r} in this run's results (blocks: {blocks}): the chain "
            "trained no CALM model, e.g. because no question produced a preference pair."
        )
    return f"{trained} vs {base}: " + "; ".join(out) + "."


# --------------------------------------------------------------------------- report (notebook 07)


def report_reading(report_text: str) -> str:
    """Which of the report's sections show our run's results and which say "not produced in this
    run" (a notebook of the chain was not run in this run directory)."""
    heading, sections, missing = None, [], []
    for line in report_text.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            sections.append(heading)
        elif "not produced in this run" in line and heading and heading not in missing:
            missing.append(heading)
    text = f"The report has {len(sections)} sections"
    if missing:
        shown = "; ".join(missing[:6]) + (
            f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        )
        return (
            text + f"; {len(missing)} lack this run's results (not produced in this run): {shown}."
        )
    return text + "; every one shows this run's results."


def try_cost(profile, notebook: str, overrides: Sequence[str]) -> str:
    """What a "Try it" change costs: the notebook's model runs on the profile with ``overrides``,
    run alone, estimated on this machine (``xlalign.estimate``); e.g. "notebook 03 with
    train.batch_size=4: 2 train, 3 eval runs, about 3 min on this machine"."""
    from xlalign.config import derive
    from xlalign.config.values import ConfigError

    what = f"{notebook} with {', '.join(overrides) or 'no change'}"
    try:
        changed = derive(profile, overrides=list(overrides))
    except ConfigError as err:  # a change this profile refuses: say why, the notebook goes on
        return f"{what}: not a valid change for this profile ({err})"
    try:
        from xlalign.estimate import estimate_notebook, format_seconds

        seconds = estimate_notebook(changed, notebook, alone=True)
    except Exception as err:
        return f"{what}: no time estimate ({type(err).__name__}: {err})"
    return f"{what}: about {format_seconds(seconds)} on this machine, run alone"
