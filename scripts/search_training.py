"""Search: which training setting makes the probe's held-out decisions move (issue 12's learning curve).

Examples:
    # one setting: uncoupled ORPO, LoRA on attention + MLP of the top 12 layers, a checkpoint every 10 steps
    PYTHONPATH=src python scripts/search_training.py --name mlp12 --out /tmp/search \\
        train.batching=uncoupled lora.top_layers=12 train.max_steps=60 train.save_steps=10 \\
        'lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]'
    # the base model only (the reference every setting is compared with)
    PYTHONPATH=src python scripts/search_training.py --base-only --out /tmp/search

Trains one adapter with the cpu profile plus the overrides, then scores the base model (once per
output directory, cached) and every saved checkpoint on the same held-out items: ``--n-test``
label-balanced test samples per training language, identical in every language. For each checkpoint
it prints pairs seen, minutes of training so far, accuracy with the paired-bootstrap 95% CI of
(trained - base), first-token-margin AUROC with its CI, and the share of "Yes" answers, and appends a
row to ``<out>/search.jsonl``. Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from xlalign.config import load_profile
from xlalign.evaluation.decisions import answer_skew, auroc_by_language
from xlalign.evaluation.predictions import evaluate_probe, load_eval_model
from xlalign.experiments import eval_subset
from xlalign.probe.dataset import build_probe_data
from xlalign.training.run import WALL_FILE, train_preference


def score(profile, rows, adapter, out: Path) -> pd.DataFrame:
    """Predictions of the base model (``adapter`` None) or one checkpoint, cached in ``out``."""
    model, tok = load_eval_model(profile, adapter)
    df = evaluate_probe(
        model,
        tok,
        rows,
        out,
        mode="scoring",
        prompt_format=profile.model.prompt_format,
        batch_size=profile.eval.batch_size,
    )
    df["correct"] = df["pred"] == df["label"]
    return df


def minutes_at(ckpt: Path) -> float | None:
    """Training minutes up to this checkpoint, from the wall clock the trainer writes into it."""
    wall = ckpt / WALL_FILE
    return round(json.loads(wall.read_text())["wall_time_s"] / 60, 1) if wall.exists() else None


def paired_diff_ci(a: pd.DataFrame, b: pd.DataFrame, seed: int) -> tuple[float, float, float]:
    """Accuracy of b minus a in points on the same items, with a paired percentile-bootstrap 95% CI."""
    m = a[["item_id", "correct"]].merge(
        b[["item_id", "correct"]], on="item_id", suffixes=("_a", "_b")
    )
    d = m["correct_b"].astype(float).to_numpy() - m["correct_a"].astype(float).to_numpy()
    res = sps.bootstrap(
        (d,), np.mean, n_resamples=2000, method="percentile", random_state=seed
    ).confidence_interval
    return 100 * d.mean(), 100 * res.low, 100 * res.high


def summary(df: pd.DataFrame, seed: int) -> dict:
    auc = auroc_by_language(df, 1000, seed).set_index("lang").loc["all"]
    skew = answer_skew(df)
    pooled = skew.set_index("lang").loc["all"]
    return {
        "accuracy": round(100 * df["correct"].mean(), 1),
        "auroc": round(float(auc["auroc"]), 3),
        "auroc_ci": [round(float(auc["ci_low"]), 3), round(float(auc["ci_high"]), 3)],
        "top_answer": str(pooled["top_answer"]),
        "top_share": round(float(pooled["share"]), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--name", default="base")
    parser.add_argument("--out", default="/tmp/search")
    parser.add_argument("--n-test", type=int, default=20, help="test samples per training language")
    parser.add_argument("--base-only", action="store_true")
    parser.add_argument(
        "--eval-only", action="store_true", help="score the checkpoints already saved; no training"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="profile overrides, section.key=value")
    args = parser.parse_args(argv)

    profile = load_profile(args.profile, overrides=args.overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = build_probe_data(profile)
    langs = profile.data.train_langs
    rows = eval_subset(data.test_rows, langs, args.n_test, args.seed)
    print(
        f"{len(rows)} test items ({len(rows) // len(langs)} per language), {len(data.train_pref)} train pairs"
    )
    # The base model's predictions depend only on the model and the prompts (k, languages).
    base_key = f"base_k{profile.data.k}_n{args.n_test}_{profile.model.name}_{profile.model.dtype}"
    t0 = time.perf_counter()
    base = score(profile, rows, None, out / f"{base_key}.jsonl")
    print(f"base scored in {time.perf_counter() - t0:.0f} s: {summary(base, args.seed)}")
    if args.base_only:
        return 0

    run_dir = out / args.name
    t0 = time.perf_counter()
    if not args.eval_only:
        res = train_preference(profile, data.train_dataset(), run_dir, resume=True)
        print(f"trained {res.steps} steps in {(time.perf_counter() - t0) / 60:.1f} min")
    per_step = profile.train.batch_size * profile.train.grad_accum
    ckpts = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for ck in ckpts:
        step = int(ck.name.split("-")[1])
        df = score(profile, rows, ck, run_dir / f"eval_{ck.name}.jsonl")
        diff = paired_diff_ci(base, df, args.seed)
        rec = {
            "setting": args.name,
            "overrides": args.overrides,
            "step": step,
            "pairs": step * per_step,
            "minutes_at_step": minutes_at(ck),
            **summary(df, args.seed),
            "diff_vs_base": [round(x, 1) for x in diff],
        }
        print(json.dumps(rec))
        with open(out / "search.jsonl", "a") as fh:
            fh.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
