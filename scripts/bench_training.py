"""Benchmark batch-aligned against uncoupled preference training, the sampler, and ORPO's forward.

Examples:
    # cpu profile (Gemma-3-270M, bf16, LoRA on the top 6 layers), 3 steps per run:
    XLALIGN_CACHE=/tmp/xlcache PYTHONPATH=src python scripts/bench_training.py --steps 3
    # ORPO only, more steps, results also written as JSON:
    XLALIGN_CACHE=/tmp/xlcache PYTHONPATH=src python scripts/bench_training.py \
        --methods orpo --steps 10 --json /tmp/bench_training.json
    # tiny-random model (seconds; checks that the script runs, the numbers mean nothing):
    PYTHONPATH=src python scripts/bench_training.py --profile smoke --steps 2 --orpo-reps 1
    # one GPU, before the paper profile (`make gpu-smoke` runs this after a launched training):
    python scripts/bench_training.py --profile gpu-smoke --methods orpo --steps 6 --stock-trl \
        --skip-orpo-forward

For each method (DPO, ORPO) it trains aligned and uncoupled for N steps on the same data, each from a
fresh copy of the model, and prints the step time (steps 2..N; step 1 carries the warm-up) and tokens/s
(non-padding tokens of the chosen and rejected sequences) for each, and their ratio. Then:

- sampler: the time to compute one epoch's ``plan()`` and iterate it, against one training step
  (it must stay under 1%), and the time spent in ``plan()`` during the real runs against their wall time;
- ORPO forward: one optimizer-free step (loss + backward) on the same aligned batch with TRL's stock
  ``ORPOTrainer.concatenated_forward`` (full-vocabulary logits at every position) and with ours,
  ``orpo_nll_scope`` "full" and "completion", and "completion" with each prompt encoded once
  (``train.share_prompt``), with their ratios.

Every training run starts with no frozen-layer states in memory (``train.reuse_frozen``), so none reads
states an earlier run of the same process computed. The training runs use the profile's
``train.share_prompt``; pass ``train.share_prompt=false`` to time
TRL's concatenated forward instead. ``--stock-trl`` also trains TRL's own trainer (``DPOTrainer`` /
``ORPOTrainer``, its default shuffled sampler, the same model, LoRA, rows and arguments) for the same
steps in the same process, so our tokens/s stand next to stock TRL's. Every run reports its peak memory:
``torch.cuda.max_memory_allocated`` on a GPU (reset per run), the process's peak RSS on a CPU. The
benchmark trains in one process (``num_processes=1``), whatever the profile's launch says.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from xlalign.config import derive, load_profile
from xlalign.models import load_model, load_tokenizer, lora_config
from xlalign.probe.dataset import build_probe_data
from xlalign.training import frozen_cache
from xlalign.training.run import _load_policy, _training_args, train_preference, trainer_config
from xlalign.training.sampling import GroupedBatchSampler, read_batch_logs
from xlalign.training.trainers import AlignedORPOTrainer


def with_train(profile, **train):
    return derive(profile, train=train)


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step, from the end of the previous one (data loading included)."""

    def __init__(self):
        self.times: list[float] = []
        self._last = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


class PlanTimer:
    """Counts the calls of ``GroupedBatchSampler.plan`` and the time spent in them."""

    def __init__(self):
        self.calls, self.seconds = 0, 0.0
        self._orig = GroupedBatchSampler.plan

    def __enter__(self):
        timer, orig = self, self._orig

        def plan(sampler, epoch=None):
            t0 = time.perf_counter()
            try:
                return orig(sampler, epoch)
            finally:
                timer.calls += 1
                timer.seconds += time.perf_counter() - t0

        GroupedBatchSampler.plan = plan
        return self

    def __exit__(self, *exc):
        GroupedBatchSampler.plan = self._orig


def select_groups(rows: list[dict], n: int) -> list[dict]:
    """The rows of the first ``n`` groups (all when n <= 0), in their original order."""
    if n <= 0:
        return rows
    keep = list(dict.fromkeys(r["sample_id"] for r in rows))[:n]
    keep_set = set(keep)
    return [r for r in rows if r["sample_id"] in keep_set]


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict:
    """GPU: the peak allocated since the last reset. CPU: the process's peak RSS (never reset)."""
    if torch.cuda.is_available():
        return {"peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30}
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def memory_text(r: dict) -> str:
    if "peak_gpu_gib" in r:
        return f"peak GPU memory {r['peak_gpu_gib']:.2f} GiB"
    return f"peak RSS {r['peak_rss_gib']:.2f} GiB"


def step_summary(times: list[float], tokens: list[int]) -> dict:
    steady = slice(1, None) if len(times) > 1 else slice(None)
    return {
        "step_times_s": [round(t, 3) for t in times],
        "step_s": statistics.mean(times[steady]),
        "tokens_per_step": statistics.mean(tokens[steady]),
        "tokens_per_s": sum(tokens[steady]) / sum(times[steady]),
    }


def train_once(profile, rows, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    frozen_cache.forget_all()  # every run computes its own frozen states: no run reads another's
    model, tokenizer = load_model(profile) if profile.model.quantization == "none" else (None, None)
    timer = StepTimer()
    reset_peak_memory()
    with PlanTimer() as plans:
        t0 = time.perf_counter()
        result = train_preference(
            profile, rows, out, model=model, tokenizer=tokenizer, callbacks=[timer]
        )
        wall = time.perf_counter() - t0
    tokens_by_step: dict[int, int] = {}
    for entry in read_batch_logs(out):
        tokens_by_step[entry["step"]] = tokens_by_step.get(entry["step"], 0) + entry["tokens"]
    tokens = [tokens_by_step.get(i, 0) for i in range(len(timer.times))]
    return {
        "steps": result.steps,
        **step_summary(timer.times, tokens),
        "plan_calls": plans.calls,
        "plan_s": plans.seconds,
        "wall_s": wall,
        **peak_memory(),
    }


class TokenCounter(TrainerCallback):
    """Non-padding tokens of every micro-batch a stock trainer trains on, summed per optimizer step."""

    def __init__(self):
        self.per_step: list[int] = []
        self._pending = 0

    def add(self, n: int) -> None:
        self._pending += n

    def on_step_end(self, args, state, control, **kwargs):
        self.per_step.append(self._pending)
        self._pending = 0


def stock_trl_once(profile, rows, out: Path) -> dict:
    """TRL's own trainer on the same model, LoRA, rows and arguments (its default sampler)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from xlalign.training.trainers import GroupedTrainingMixin

    shutil.rmtree(out, ignore_errors=True)
    method = profile.train.method
    ours_only = ("batching", "include_english")
    args = {k: v for k, v in _training_args(profile, out).items() if k not in ours_only}
    if method == "dpo":
        config = DPOConfig(
            **args, beta=profile.train.beta, loss_type=["sigmoid"], precompute_ref_log_probs=False
        )
        base = DPOTrainer
    else:
        config = ORPOConfig(**args, beta=profile.train.beta)
        base = ORPOTrainer
    counter, timer = TokenCounter(), StepTimer()

    class Counting(base):
        def compute_loss(self, model, inputs, *a, **kw):  # counts, then TRL's own loss
            if model.training:
                counter.add(GroupedTrainingMixin._count_tokens(inputs))
            return super().compute_loss(model, inputs, *a, **kw)

    keep = ("prompt", "chosen", "rejected")
    model, tokenizer = _load_policy(profile)
    reset_peak_memory()
    trainer = Counting(
        model=model,
        args=config,
        train_dataset=Dataset.from_list([{k: r[k] for k in keep} for r in rows]),
        processing_class=tokenizer,
        peft_config=lora_config(profile, model),
        callbacks=[timer, counter],
    )
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    return {
        "steps": trainer.state.global_step,
        **step_summary(timer.times, counter.per_step),
        "wall_s": wall,
        **peak_memory(),
    }


def sampler_cost(rows: list[dict], profile, reps: int = 20) -> float:
    """Seconds to compute one epoch's plan and iterate it, as the trainer's sampler does."""
    t = profile.train
    sampler = GroupedBatchSampler(
        [r["sample_id"] for r in rows],
        [r["lang"] for r in rows],
        t.batch_size,
        t.batching,
        include_english=t.include_english,
        seed=profile.seed,
        grad_accum=t.grad_accum,
    )
    t0 = time.perf_counter()
    for epoch in range(reps):
        sampler.set_epoch(epoch)
        sum(1 for _ in sampler)
    return (time.perf_counter() - t0) / reps


def orpo_forward_variants(profile, rows: list[dict], out: Path, reps: int) -> dict:
    """Loss + backward on one aligned batch: stock TRL ORPO, ours with nll scope full and completion."""
    from datasets import Dataset
    from peft import get_peft_model
    from trl.experimental.orpo import ORPOTrainer

    profile = with_train(profile, method="orpo", batching="aligned")
    sampler = GroupedBatchSampler(
        [r["sample_id"] for r in rows], [r["lang"] for r in rows], profile.train.batch_size
    )
    batch_rows = [rows[i] for i in sampler.plan(0)[0]]
    model, tokenizer = load_model(profile)
    model = get_peft_model(model, lora_config(profile, model))
    args = trainer_config(profile, out, "orpo")
    dataset = Dataset.from_list(batch_rows)
    stock = ORPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    ours = AlignedORPOTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer
    )
    batch = stock.data_collator([stock.train_dataset[i] for i in range(len(batch_rows))])
    model.train()

    def step(trainer, scope=None, share=False):
        if scope:
            trainer.args.nll_scope = scope
            trainer.args.share_prompt = share
        model.zero_grad(set_to_none=True)
        loss, _ = trainer.get_batch_loss_metrics(model, batch)
        loss.backward()
        return loss.item()

    variants = {
        "stock": (stock, None, False),
        "full": (ours, "full", False),
        "completion": (ours, "completion", False),
        "completion_shared": (ours, "completion", True),
    }
    result = {
        "rows": len(batch_rows),
        "tokens": int(
            batch["chosen_attention_mask"].sum() + batch["rejected_attention_mask"].sum()
        ),
    }
    for name, (trainer, scope, share) in variants.items():
        loss = step(trainer, scope, share)  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            step(trainer, scope, share)
            times.append(time.perf_counter() - t0)
        result[name] = {"loss": loss, "step_s": statistics.median(times)}
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=["dpo", "orpo"], choices=["dpo", "orpo"])
    parser.add_argument(
        "--groups", type=int, default=48, help="train on the first N groups (0: all); >= steps"
    )
    parser.add_argument("--orpo-reps", type=int, default=2, help="timed repeats per ORPO variant")
    parser.add_argument("--skip-orpo-forward", action="store_true")
    parser.add_argument(
        "--stock-trl", action="store_true", help="also train TRL's own trainer, same steps and rows"
    )
    parser.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("overrides", nargs="*", help="profile overrides, section.key=value")
    args = parser.parse_args(argv)

    profile = load_profile(args.profile, overrides=args.overrides)
    profile = with_train(profile, max_steps=args.steps, save_steps=0, logging_steps=1)
    profile = derive(profile, num_processes=1)  # one process: callbacks time the steps
    out = Path(args.out or tempfile.mkdtemp(prefix="xl-bench-"))
    tokenizer = load_tokenizer(profile)
    rows = select_groups(build_probe_data(profile, tokenizer).train_pref, args.groups)
    print(
        f"profile={profile.name} model={profile.model.name} dtype={profile.model.dtype} "
        f"batch_size={profile.train.batch_size} orpo_nll_scope={profile.train.orpo_nll_scope} "
        f"rows={len(rows)} groups={len({r['sample_id'] for r in rows})} steps={args.steps} "
        f"threads={torch.get_num_threads()} device={'cuda' if torch.cuda.is_available() else 'cpu'}"
        f" quantization={profile.model.quantization}",
        flush=True,
    )

    results: dict = {"profile": profile.name, "steps": args.steps, "train": {}}
    for method in args.methods:
        runs = {}
        for batching in ("aligned", "uncoupled"):
            p = with_train(profile, method=method, batching=batching)
            runs[batching] = r = train_once(p, rows, out / f"{method}-{batching}")
            print(
                f"{method:4s} {batching:9s} step {r['step_s']:7.2f} s  "
                f"{r['tokens_per_step']:7.0f} tok/step  {r['tokens_per_s']:7.1f} tok/s  "
                f"{memory_text(r)}  (steps: {r['step_times_s']})",
                flush=True,
            )
        if args.stock_trl:
            p = with_train(profile, method=method)
            runs["stock_trl"] = r = stock_trl_once(p, rows, out / f"{method}-stock")
            runs["ratio_tokens_per_s_vs_stock"] = (
                runs["aligned"]["tokens_per_s"] / r["tokens_per_s"]
            )
            print(
                f"{method:4s} stock TRL step {r['step_s']:7.2f} s  "
                f"{r['tokens_per_step']:7.0f} tok/step  {r['tokens_per_s']:7.1f} tok/s  "
                f"{memory_text(r)}  (steps: {r['step_times_s']}); aligned/stock tokens/s "
                f"x{runs['ratio_tokens_per_s_vs_stock']:.3f}",
                flush=True,
            )
        a, u = runs["aligned"], runs["uncoupled"]
        runs["ratio_step_time"] = a["step_s"] / u["step_s"]
        runs["ratio_tokens_per_s"] = a["tokens_per_s"] / u["tokens_per_s"]
        print(
            f"{method:4s} aligned/uncoupled: step time x{runs['ratio_step_time']:.3f}, "
            f"tokens/s x{runs['ratio_tokens_per_s']:.3f}",
            flush=True,
        )
        results["train"][method] = runs

    ours = ("aligned", "uncoupled")
    step_times = [r["step_s"] for m in results["train"].values() for k, r in m.items() if k in ours]
    if step_times:
        plan_s = sampler_cost(rows, profile)
        runs = [r for m in results["train"].values() for k, r in m.items() if k in ours]
        in_training = sum(r["plan_s"] for r in runs) / sum(r["wall_s"] for r in runs)
        results["sampler"] = {
            "epoch_plan_and_iterate_s": plan_s,
            "pct_of_fastest_step": 100 * plan_s / min(step_times),
            "plan_calls_per_run": [r["plan_calls"] for r in runs],
            "pct_of_training_wall": 100 * in_training,
        }
        s = results["sampler"]
        print(
            f"sampler: one epoch's plan()+iteration {1000 * plan_s:.2f} ms = "
            f"{s['pct_of_fastest_step']:.3f}% of the fastest step; plan() calls per run "
            f"{s['plan_calls_per_run']}, {s['pct_of_training_wall']:.3f}% of training wall time",
            flush=True,
        )

    if not args.skip_orpo_forward:
        o = orpo_forward_variants(profile, rows, out / "orpo-forward", args.orpo_reps)
        o["completion_vs_stock"] = o["completion"]["step_s"] / o["stock"]["step_s"]
        o["full_vs_stock"] = o["full"]["step_s"] / o["stock"]["step_s"]
        o["completion_vs_full"] = o["completion"]["step_s"] / o["full"]["step_s"]
        o["shared_vs_completion"] = o["completion_shared"]["step_s"] / o["completion"]["step_s"]
        o["shared_vs_stock"] = o["completion_shared"]["step_s"] / o["stock"]["step_s"]
        results["orpo_forward"] = o
        print(
            f"orpo forward+backward on one aligned batch ({o['rows']} rows, {o['tokens']} tokens): "
            f"stock {o['stock']['step_s']:.2f} s (loss {o['stock']['loss']:.5f}), "
            f"full {o['full']['step_s']:.2f} s (loss {o['full']['loss']:.5f}), "
            f"completion {o['completion']['step_s']:.2f} s (loss {o['completion']['loss']:.5f}), "
            f"completion with the prompt encoded once {o['completion_shared']['step_s']:.2f} s "
            f"(loss {o['completion_shared']['loss']:.5f})",
            flush=True,
        )
        print(
            f"orpo ratios: completion/stock x{o['completion_vs_stock']:.3f}, "
            f"full/stock x{o['full_vs_stock']:.3f}, completion/full x{o['completion_vs_full']:.3f}, "
            f"shared/completion x{o['shared_vs_completion']:.3f}, shared/stock x{o['shared_vs_stock']:.3f}",
            flush=True,
        )

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
