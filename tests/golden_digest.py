"""A machine-independent digest of a smoke run: what must not change when code is moved, not changed.

Covers every result table (values rounded to 0.1 points), every evaluation's per-item predictions,
every training run's batch plan (query ids and languages per step), the probe's counts and CALM's
counts and predictions. Log-probabilities, the perplexities built from them (rows of a ``*_ppl``
column: exponentiated, a last-bit difference moves the first decimal) and wall times are left out:
they differ in the last bits between CPUs. ``--exact A B`` instead compares two runs' files byte for byte, timing fields aside
(same machine only).

    python tests/golden_digest.py runs/<id> > tests/golden/smoke.json
    python tests/golden_digest.py --exact runs/<a> runs/<b>
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

TIMING_KEYS = {
    "wall_time_s", "wall_s", "wall_times_s", "tokens_per_s", "train_runtime", "train_samples_per_second",
    "train_steps_per_second", "started", "finished", "time", "elapsed_s", "estimate_s", "total_flos",
    "output_dir", "adapter_dir", "train_log", "batch_logs", "path", "run_dir", "notebook", "train_loss",
}  # fmt: skip


def _round(value: str, digits: int = 1):
    try:
        x = float(value)
    except ValueError:
        return value
    return None if math.isnan(x) else round(x, digits)


def _table_row(row: list[str]) -> list:
    """A result row rounded to 0.1; a perplexity row keeps its labels and drops its numbers."""
    values = [_round(v) for v in row]
    if any(isinstance(v, str) and v.endswith("_ppl") for v in row):
        return [None if isinstance(v, float) else v for v in values]
    return values


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def digest(run: Path) -> dict:
    out: dict = {"tables": {}, "predictions": {}, "batches": {}, "calm": {}}
    for path in sorted((run / "tables").glob("*.csv")):
        with path.open(encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        if path.name == "token_lengths.csv":  # tokenizer-dependent but exact
            out["tables"][path.stem] = rows
            continue
        out["tables"][path.stem] = [rows[0]] + [_table_row(r) for r in rows[1:]]
    for path in sorted((run / "eval").glob("*/predictions.jsonl")):
        out["predictions"][path.parent.name] = sorted(
            (r["item_id"], r["pred"]) for r in _jsonl(path)
        )
    for path in sorted((run / "train").glob("*/batches.rank*.jsonl")):
        out["batches"][f"{path.parent.name}/{path.name}"] = [
            (r["step"], r["sample_ids"], r["langs"]) for r in _jsonl(path)
        ]
    calm = run / "calm"
    if (calm / "counts.json").exists():
        out["calm"]["counts"] = json.loads((calm / "counts.json").read_text())
        for path in sorted((calm / "predictions").glob("*.jsonl")):
            out["calm"][path.stem] = sorted((r["item_id"], r["pred"]) for r in _jsonl(path))
    counts = run / "data" / "counts.csv"
    if counts.exists():
        out["data_counts"] = counts.read_text(encoding="utf-8").splitlines()
    return json.loads(json.dumps(out))


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def exact_differences(a: Path, b: Path) -> list[str]:
    """Files of run ``a`` whose content differs in run ``b`` (JSON compared without timing fields)."""
    diffs = []
    globs = ["tables/*.csv", "eval/*/predictions.jsonl", "train/*/batches.rank*.jsonl",
             "train/*/train_log.jsonl", "calm/*.jsonl", "calm/*.json", "calm/predictions/*.jsonl",
             "data/*.csv", "data/data_report.json"]  # fmt: skip
    for pattern in globs:
        for fa in sorted(a.glob(pattern)):
            fb = b / fa.relative_to(a)
            if not fb.exists():
                diffs.append(f"{fa.relative_to(a)}: missing in {b}")
                continue
            if fa.suffix == ".jsonl":
                # Fields added since run ``a`` (e.g. a new per-item flag) are not differences.
                rows_a, rows_b = _jsonl(fa), _jsonl(fb)
                same = len(rows_a) == len(rows_b) and all(
                    _strip(ra) == _strip({k: rb.get(k) for k in ra})
                    for ra, rb in zip(rows_a, rows_b, strict=True)
                )
            elif fa.suffix == ".json":
                same = _strip(json.loads(fa.read_text())) == _strip(json.loads(fb.read_text()))
            else:
                same = fa.read_bytes() == fb.read_bytes()
            if not same:
                diffs.append(str(fa.relative_to(a)))
    return diffs


if __name__ == "__main__":
    if sys.argv[1] == "--exact":
        found = exact_differences(Path(sys.argv[2]), Path(sys.argv[3]))
        print("\n".join(found) or "identical")
        sys.exit(1 if found else 0)
    json.dump(digest(Path(sys.argv[1])), sys.stdout, indent=1, ensure_ascii=False)
    print()
