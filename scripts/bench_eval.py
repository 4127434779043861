"""Benchmark the two probe evaluation modes: items/s of scoring and generation, and their agreement.

Examples:
    # the cpu profile's evaluation set (10 items per training language, as notebook 03 evaluates):
    PYTHONPATH=src python scripts/bench_eval.py
    # more items, balanced over languages, from the same test split:
    PYTHONPATH=src python scripts/bench_eval.py --n 64 --batch-size 8
    # any local transformers model instead of the profile's:
    PYTHONPATH=src python scripts/bench_eval.py --model-dir path/to/model --dtype float32

Loads the profile's model through ``xlalign.models.load_model`` (the cached conversion for the cpu
profile's Gemma-3-270M; converted on first use), builds the profile's probe and runs
``evaluate_probe`` in scoring and then generation mode on the same items. Not a test.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from xlalign.config import load_profile
from xlalign.evaluation.predictions import agreement, evaluate_probe
from xlalign.experiments import eval_subset
from xlalign.lm import encode
from xlalign.models import load_model
from xlalign.probe.build import render_prompt
from xlalign.probe.dataset import build_probe_data


def balanced_sample(rows: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` rows, as equal a number per language as possible, drawn with ``seed``."""
    by_lang: dict[str, list[dict]] = {}
    for r in rows:
        by_lang.setdefault(r["lang"], []).append(r)
    langs = sorted(by_lang)
    rng = random.Random(seed)
    picked = []
    for i, lang in enumerate(langs):
        want = n // len(langs) + (1 if i < n % len(langs) else 0)
        pool = by_lang[lang]
        picked += rng.sample(pool, min(want, len(pool)))
    return picked


def timed(model, tok, rows, out: Path, mode: str, args) -> tuple[object, float]:
    start = time.perf_counter()
    frame = evaluate_probe(
        model,
        tok,
        rows,
        out,
        mode=mode,
        prompt_format=args.prompt_format,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        progress=False,
    )
    return frame, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu", help="model, probe data and eval set")
    parser.add_argument("--model-dir", default="", help="a local transformers model instead")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    parser.add_argument(
        "--n", type=int, default=0, help="items balanced over languages (default: the eval set)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--prompt-format", default="auto", choices=["auto", "plain", "chat"])
    parser.add_argument("--out-dir", default="", help="keep the prediction files here")
    parser.add_argument("overrides", nargs="*", help="profile overrides, section.key=value")
    args = parser.parse_args(argv)

    profile = load_profile(args.profile, overrides=args.overrides)
    if args.model_dir:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model_dir)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(
            args.model_dir, dtype=getattr(torch, args.dtype)
        )
        name = args.model_dir
    else:
        model, tok = load_model(profile)
        name = f"{profile.model.name} ({profile.model.dtype}, profile {args.profile})"
    model.eval()

    data = build_probe_data(profile, tok)
    if args.n:
        rows = balanced_sample(data.test_rows, args.n, args.seed)
    else:
        rows = eval_subset(
            data.test_rows, profile.data.train_langs, profile.eval.max_items_per_lang, profile.seed
        )
    lengths = [len(encode(tok, render_prompt(r["prompt"], tok, args.prompt_format))) for r in rows]
    langs = sorted({r["lang"] for r in rows})
    print(f"model {name}, torch threads {torch.get_num_threads()}")
    # Other processes on the same cores slow both modes; the load average says how much.
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(
        f"{len(rows)} items over {len(langs)} languages ({' '.join(langs)}); prompt tokens "
        f"mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}; batch size {args.batch_size}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(args.out_dir or tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        # One untimed item per mode first: lazy initialisation would otherwise count as work.
        timed(model, tok, rows[:1], out_dir / "warmup_scoring.jsonl", "scoring", args)
        timed(model, tok, rows[:1], out_dir / "warmup_generation.jsonl", "generation", args)
        for name in ("scoring", "generation"):
            (out_dir / f"{name}.jsonl").unlink(missing_ok=True)  # measure a full run, not a resume
        scoring, t_score = timed(model, tok, rows, out_dir / "scoring.jsonl", "scoring", args)
        generation, t_gen = timed(
            model, tok, rows, out_dir / "generation.jsonl", "generation", args
        )

    speed_s, speed_g = len(rows) / t_score, len(rows) / t_gen
    print(f"load average after:  {os.getloadavg()[0]:.2f}")
    agree = agreement(scoring, generation)
    print(f"scoring:    {speed_s:7.2f} items/s ({t_score:.1f} s)")
    print(
        f"generation: {speed_g:7.2f} items/s ({t_gen:.1f} s, max_new_tokens={args.max_new_tokens})"
    )
    print(f"speed ratio scoring/generation: {speed_s / speed_g:.2f}x")
    print(
        f"generation valid: {agree['n_generation_valid']}/{agree['n_items']}; agreement where "
        f"valid: {agree['agreement']:.3f} ({agree['n_agree']} items)"
    )
    for name, frame in (("scoring", scoring), ("generation", generation)):
        print(
            f"{name} accuracy {frame['correct'].mean():.3f}, "
            f"invalid {frame['invalid'].mean():.3f}, "
            f"preds {frame['pred'].value_counts().to_dict()}"
        )
    examples = generation["raw"].head(3).tolist()
    print(f"generation raw examples: {examples}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
