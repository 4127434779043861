"""Train the smoke profile (tiny-random model, tiny data) on every process of an ``accelerate launch``.

Used by tests/test_training.py to show that groups stay whole across processes:

    PYTHONPATH=src accelerate launch --config_file configs/accelerate/cpu_2proc.yaml \
        scripts/train_2proc.py /tmp/xl2 aligned orpo --steps 2
    PYTHONPATH=src accelerate launch --config_file configs/accelerate/cpu_2proc.yaml \
        scripts/train_2proc.py /tmp/xl2u uncoupled dpo --steps 2 --grad-accum 2

Every process writes ``<out_dir>/batches.rank{r}.jsonl``; rank 0 also writes train_log.jsonl and
train_result.json. The model cache is ``$XLALIGN_CACHE`` (or the default cache directory).

This script is launched by hand; the library launches itself for profiles that ask for several
processes (``xlalign.training.launch``, tested in tests/test_launch.py).
"""

from __future__ import annotations

import argparse
import json

from xlalign.config import load_profile
from xlalign.models import load_model
from xlalign.probe.dataset import build_probe_data
from xlalign.training.run import train_preference


def shorten(rows: list[dict], chars: int) -> list[dict]:
    """Keep the first and the last ``chars // 2`` characters of each prompt (the tests need the grouping,
    not the documents); lengths still differ across languages."""
    if chars <= 0:
        return rows
    half = chars // 2
    return [dict(r, prompt=r["prompt"][:half] + " ... " + r["prompt"][-half:]) for r in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("batching", choices=["aligned", "uncoupled"])
    parser.add_argument("method", choices=["dpo", "orpo"])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=3)
    parser.add_argument(
        "--prompt-chars",
        type=int,
        default=140,
        help="keep this many prompt characters, half from the start, half from the end; 0: all",
    )
    args = parser.parse_args(argv)

    profile = load_profile(
        "smoke",
        overrides={
            "train.method": args.method,
            "train.batching": args.batching,
            "train.max_steps": args.steps,
            "train.grad_accum": args.grad_accum,
            "train.batch_size": args.batch_size,
        },
    )
    model, tokenizer = load_model(profile)
    rows = shorten(build_probe_data(profile, tokenizer).train_pref, args.prompt_chars)
    result = train_preference(profile, rows, args.out_dir, model=model, tokenizer=tokenizer)
    print(
        json.dumps({"steps": result.steps, "tokens": result.tokens, "wall_s": result.wall_time_s})
    )


if __name__ == "__main__":
    main()
