"""Benchmark reusing the frozen lower layers' states (``train.reuse_frozen``) on a fraction of the chain.

Examples:
    # cpu profile (Gemma-3-270M, LoRA on the top 6 of 18 layers), 2 repeats, 3 steps per run, 14 items:
    XLALIGN_CACHE=/tmp/xlcache PYTHONPATH=src python scripts/bench_reuse.py
    # more repeats, the states also written to (and in the last part read from) files:
    XLALIGN_CACHE=/tmp/xlcache PYTHONPATH=src python scripts/bench_reuse.py --repeats 3 --disk
    # tiny-random model (seconds; checks that the script runs, the numbers mean nothing):
    PYTHONPATH=src python scripts/bench_reuse.py --profile smoke train.batch_size=3 lora.top_layers=1 \
        --steps 2 --items 6 --repeats 1

The chain fraction (our choice; the cpu chain repeats these pieces with more steps and items):

1. scoring the base model on ``--items`` held-out items (notebook 02's baseline);
2. aligned and uncoupled ORPO, ``--steps`` steps each at the profile's batch size on the same pairs
   (notebook 03's two arms; the uncoupled run sees the aligned run's examples);
3. scoring both adapters on the same items (notebook 03's evaluation).

It runs the fraction without reuse and with it (a fresh store each time, so the first use of every
prompt pays for computing its states), alternating which goes first, ``--repeats`` times, and prints
each piece's seconds, the fraction's ratio (without / with) per repeat, and their mean and range. The
machine may be shared, hence the interleaving and the ratio per repeat. Training time is the sum of the
optimizer steps (model loading and trainer setup excluded, the same in both arms); scoring time is
``score_prompts``'s wall time. With ``--disk`` the store writes safetensors files, and a last part
scores the base model once more from a new store on those files (what a later notebook's process
finds) against computing in full.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from xlalign.config import derive, load_profile
from xlalign.evaluation.predictions import load_eval_model
from xlalign.evaluation.scoring import score_prompts
from xlalign.models import load_model, load_tokenizer
from xlalign.probe.build import render_prompt
from xlalign.probe.dataset import build_probe_data
from xlalign.training import frozen_cache as fc
from xlalign.training.run import train_preference


class StepTimer(TrainerCallback):
    """Seconds of every optimizer step; attaches (or detaches) the store when training begins, once
    the trainer has wrapped the model with LoRA (its lower layers are frozen from then on)."""

    def __init__(self, reuse: bool, directory):
        self.reuse, self.directory, self.times, self._last = reuse, directory, [], 0.0
        self.store = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.reuse:
            self.store = fc.attach(model, directory=self.directory)
            if self.store is None:
                raise SystemExit("frozen-state reuse does not apply to this profile's LoRA")
        else:
            fc.detach(model)
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


def groups(rows: list[dict], n: int) -> list[dict]:
    keep = set(list(dict.fromkeys(r["sample_id"] for r in rows))[:n])
    return [r for r in rows if r["sample_id"] in keep]


def score(profile, tok, prompts, reuse: bool, directory, adapter=None) -> tuple[float, list]:
    if adapter is None:
        model, _ = load_model(profile)
        model.eval()
    else:
        model, _ = load_eval_model(profile, adapter)
    if reuse:
        boundary = fc.profile_boundary(model, profile)
        if fc.attach(model, boundary, directory, grad=False) is None:
            raise SystemExit("frozen-state reuse does not apply to this profile")
    t0 = time.perf_counter()
    out = score_prompts(model, tok, prompts, batch_size=profile.eval.batch_size)
    return time.perf_counter() - t0, out


def fraction(profile, tok, rows, prompts, reuse: bool, work: Path, disk: bool) -> dict:
    fc.forget_all()  # a fresh store: nothing from an earlier repeat
    directory = work / "frozen" if (reuse and disk) else None
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
    # The trainings keep their own store, as the chain's do (<run>/cache/frozen-train): states made
    # under inference mode for scoring cannot enter autograd. Files, because a store is keyed by its
    # directory, and an in-memory key would be the scoring store's.
    train_dir = work / "frozen-train" if reuse else None
    if train_dir is not None:
        shutil.rmtree(train_dir, ignore_errors=True)
    t = {}
    t["score_base_s"], base_scores = score(profile, tok, prompts, reuse, directory)
    adapters = {}
    for batching in ("aligned", "uncoupled"):
        arm = derive(profile, train={"batching": batching})
        out = work / f"{batching}-{'reuse' if reuse else 'full'}"
        shutil.rmtree(out, ignore_errors=True)
        model, _ = load_model(arm)
        timer = StepTimer(reuse, train_dir)
        res = train_preference(arm, rows, out, model=model, tokenizer=tok, callbacks=[timer])
        t[f"train_{batching}_s"] = sum(timer.times)
        t[f"loss_{batching}"] = res.metrics.get("train_loss")
        adapters[batching] = res.adapter_dir
        del model
    for batching, adapter in adapters.items():
        t[f"score_{batching}_s"], _ = score(profile, tok, prompts, reuse, directory, adapter)
    t["total_s"] = sum(v for k, v in t.items() if k.endswith("_s"))
    stores = list(fc._REGISTRY.values()) if reuse else []  # scoring's and the trainings'
    if stores:
        for key in ("hits", "misses", "rebuilt"):
            t[key] = sum(getattr(store, key) for store in stores)
    t["base_scores"] = [s.get("logp_first_present") for s in base_scores]
    return t


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per training run")
    parser.add_argument("--items", type=int, default=14, help="held-out items scored per model")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--disk", action="store_true", help="the store also writes files")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    profile = load_profile(args.profile, overrides=args.overrides)
    profile = derive(profile, train={"max_steps": args.steps, "save_steps": 0, "method": "orpo"})
    tok = load_tokenizer(profile)
    data = build_probe_data(profile, tok)
    rows = groups(data.train_pref, args.steps * profile.train.grad_accum)
    fmt = profile.model.prompt_format
    test = [r for r in data.test_rows if r["lang"] in profile.data.train_langs][: args.items]
    prompts = [render_prompt(r["prompt"], tok, fmt) for r in test]
    print(
        f"profile {profile.name}: {profile.model.name}, dtype {profile.model.dtype}, LoRA on the top "
        f"{profile.lora.top_layers} layers; {args.steps} ORPO steps x batch {profile.train.batch_size} "
        f"per arm ({len(rows)} pairs), {len(prompts)} items per scoring, {args.repeats} repeats"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_reuse_") as tmp:
        work = Path(tmp)
        for rep in range(args.repeats):
            order = (False, True) if rep % 2 == 0 else (True, False)
            pair = {}
            for reuse in order:
                pair["reuse" if reuse else "full"] = fraction(
                    profile, tok, rows, prompts, reuse, work, args.disk
                )
            full, reuse = pair["full"], pair["reuse"]
            diff = max(
                abs(a - b) for a, b in zip(full["base_scores"], reuse["base_scores"], strict=True)
            )
            ratio = full["total_s"] / reuse["total_s"]
            results.append({"full": full, "reuse": reuse, "ratio": ratio, "max_score_diff": diff})
            print(f"\nrepeat {rep + 1} (first: {'reuse' if order[0] else 'full'})")
            for key in full:
                if key.endswith("_s"):
                    print(f"  {key:<20} full {full[key]:8.1f}   reuse {reuse[key]:8.1f}")
            print(
                f"  ratio full/reuse {ratio:.2f}; store hits {reuse.get('hits')}, misses "
                f"{reuse.get('misses')}; largest base-score difference {diff:.2e} nats"
            )
        ratios = [r["ratio"] for r in results]
        summary = {
            "ratio_mean": statistics.mean(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "ratios": ratios,
        }
        print(
            f"\nchain fraction, without / with reuse: {summary['ratio_mean']:.2f} "
            f"(range {summary['ratio_min']:.2f}-{summary['ratio_max']:.2f} over {len(ratios)} repeats)"
        )
        if args.disk:
            directory = work / "frozen"
            files = list(directory.rglob("*.safetensors"))
            size = sum(f.stat().st_size for f in files)
            fc.forget_all()
            t_disk, _ = score(profile, tok, prompts, True, directory)
            fc.forget_all()
            t_full, _ = score(profile, tok, prompts, False, None)
            summary |= {"disk_files": len(files), "disk_mib": size / 2**20}
            summary |= {"score_from_disk_s": t_disk, "score_full_s": t_full}
            print(
                f"files: {len(files)} entries, {size / 2**20:.0f} MiB; scoring {len(prompts)} items "
                f"in a new store from those files {t_disk:.1f} s, in full {t_full:.1f} s "
                f"({t_full / t_disk:.2f}x)"
            )
    out = {"results": results, "summary": summary, "args": vars(args) | {"json": str(args.json)}}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return out


if __name__ == "__main__":
    main()
