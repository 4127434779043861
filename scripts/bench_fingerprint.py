"""What ``datasets`` spends fingerprinting a profile's tokenizer: its stock reducer against
``xlalign.training.fingerprint`` (the sha256 of the Rust tokenizer's serialization), in one process.

    XLALIGN_CACHE=/tmp/xlcache .venv/bin/python scripts/bench_fingerprint.py --profile cpu

Prints each hash's seconds (best of ``--repeat``), their ratio, and whether each changes when the
tokenizer's padding side does (a fingerprint must follow what the tokenizer computes).
"""

from __future__ import annotations

import argparse
import time

from datasets.fingerprint import Hasher
from datasets.utils._dill import Pickler

from xlalign.config import load_profile
from xlalign.models import load_tokenizer
from xlalign.training.fingerprint import register_tokenizer_hash


def best_of(fn, repeat: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def timed_hashes(tok, repeat: int) -> tuple[float, bool]:
    s, before = best_of(lambda: Hasher.hash(tok), repeat)
    side = tok.padding_side
    tok.padding_side = "right" if side == "left" else "left"
    after = Hasher.hash(tok)
    tok.padding_side = side
    return s, before != after


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    tok = load_tokenizer(load_profile(args.profile))
    Pickler.dispatch.pop(type(tok), None)  # the stock reducer, registered by datasets on first use
    stock, stock_follows = timed_hashes(tok, args.repeat)
    registered = register_tokenizer_hash(tok)
    ours, ours_follows = timed_hashes(tok, args.repeat)
    print(f"tokenizer: {type(tok).__name__} of {args.profile} ({len(tok)} tokens)")
    print(f"stock datasets hash: {stock:.2f} s (changes with padding side: {stock_follows})")
    print(
        f"xlalign hash: {ours:.3f} s (registered: {registered}; "
        f"changes with padding side: {ours_follows})"
    )
    print(f"ratio: {stock / ours:.1f}x")


if __name__ == "__main__":
    main()
