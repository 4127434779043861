"""Benchmark: what the frozen model knows (linear probes per layer) vs what it says (first-token margin).

Examples:
    # the cpu profile's Gemma-3-270M, 30 training and 20 test items per training language:
    PYTHONPATH=src python scripts/bench_probing.py
    PYTHONPATH=src python scripts/bench_probing.py --n-train 10 --n-test 10 --layers 6,12 --no-says

Training items come from the probe's train split, test items from its test split (topics never
cross), label-balanced and the same samples in every language (``experiments.eval_subset``). Prints
per-layer probe AUROC (bootstrap 95% CI) and accuracy, the scoring pass's margin AUROC and answer
skew on the same test items, and the seconds each part took. Prints figures; not a test.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import pandas as pd
import torch

from xlalign.config import load_profile
from xlalign.evaluation.decisions import answer_skew, auroc_by_language, describe_skew
from xlalign.evaluation.probing import probe_by_layer, probe_prompts
from xlalign.experiments import eval_subset
from xlalign.models import load_model
from xlalign.probe.dataset import build_probe_data


def says(model, tok, rows, prompt_format, batch_size, n_resamples, seed) -> tuple[str, str]:
    """The scoring pass on ``rows``: pooled accuracy and margin AUROC line, and the skew line."""
    from xlalign.evaluation.scoring import score_prompts

    scored = score_prompts(model, tok, probe_prompts(rows, tok, prompt_format), batch_size)
    preds = pd.DataFrame(
        [
            {k: r[k] for k in ("item_id", "sample_id", "lang", "label")} | s
            for r, s in zip(rows, scored, strict=True)
        ]
    )
    preds["correct"] = preds["pred"] == preds["label"]
    auroc = auroc_by_language(preds, n_resamples, seed).set_index("lang").loc["all"]
    line = (
        f"accuracy {preds['correct'].mean():.3f}, first-token margin AUROC {auroc['auroc']:.3f} "
        f"[{auroc['ci_low']:.3f}, {auroc['ci_high']:.3f}] (n={int(auroc['n'])})"
    )
    return line, describe_skew(answer_skew(preds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu", help="model and probe data")
    parser.add_argument("--n-train", type=int, default=30, help="training items per language")
    parser.add_argument("--n-test", type=int, default=20, help="test items per language")
    parser.add_argument(
        "--layers", default="6,12,15,18", help="comma-separated hidden-state layers"
    )
    parser.add_argument("--C", type=float, default=0.1, help="inverse L2 strength of the probe")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-says", action="store_true", help="skip the scoring pass")
    parser.add_argument("overrides", nargs="*", help="profile overrides, section.key=value")
    args = parser.parse_args(argv)

    profile = load_profile(args.profile, overrides=args.overrides)
    start = time.perf_counter()
    model, tok = load_model(profile)
    model.eval()
    t_load = time.perf_counter() - start
    langs = profile.data.train_langs
    data = build_probe_data(profile, tok)
    train_pool = [r for r in data.rows if r["split"] == "train"]
    train = eval_subset(train_pool, langs, args.n_train, args.seed)
    test = eval_subset(data.test_rows, langs, args.n_test, args.seed)
    layers = [int(x) for x in args.layers.split(",") if x.strip()]
    fmt = profile.model.prompt_format
    print(
        f"model {profile.model.name} ({profile.model.dtype}), torch threads {torch.get_num_threads()}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(
        f"{len(train)} training / {len(test)} test items over {len(langs)} languages "
        f"({' '.join(langs)}); layers {layers}; C={args.C}; model loaded in {t_load:.1f} s"
    )

    start = time.perf_counter()
    table = probe_by_layer(
        model,
        tok,
        train,
        test,
        layers,
        prompt_format=fmt,
        C=args.C,
        seed=args.seed,
        n_resamples=args.n_resamples,
        batch_size=args.batch_size,
    )
    t_probe = time.perf_counter() - start
    pooled = table[table["lang"] == "all"]
    print("\nknows: linear probe on the last-position hidden state (held-out test items)")
    for r in pooled.itertuples():
        print(
            f"  layer {r.layer:2d}: AUROC {r.auroc:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}], "
            f"accuracy {r.accuracy:.3f}"
        )
    per_lang = table[table["lang"] != "all"].pivot(index="layer", columns="lang", values="auroc")
    print("  AUROC per language:")
    print(per_lang[list(dict.fromkeys(r["lang"] for r in test))].round(3).to_string())
    print(f"  {t_probe:.1f} s for hidden states of {len(train) + len(test)} prompts and the probes")

    if not args.no_says:
        start = time.perf_counter()
        line, skew = says(model, tok, test, fmt, args.batch_size, args.n_resamples, args.seed)
        print("\nsays: the scoring pass on the same test items")
        print(f"  {line}\n  {skew}\n  {time.perf_counter() - start:.1f} s")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
