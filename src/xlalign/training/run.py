"""Train one adapter from a profile: build the TRL config and trainer, resume, save, record.

A directory's recorded training signature must match for a resume.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from xlalign.config import LoraSection, Profile
from xlalign.training.sampling import META_KEYS, AlignmentError
from xlalign.training.trainers import (
    MetaCollator,
    _dpo_classes,
    _JsonlLogCallback,
    _orpo_classes,
    _sft_classes,
)

# --------------------------------------------------------------------------- entry points


@dataclass
class TrainResult:
    output_dir: Path
    adapter_dir: Path
    steps: int
    wall_time_s: float
    tokens: int
    tokens_per_s: float
    train_log: Path
    batch_logs: list[Path]
    metrics: dict

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()} | {
            "batch_logs": [str(p) for p in self.batch_logs]
        }


def training_signature(profile: Profile, method: str) -> dict:
    """What must match for a resume to be valid: everything that shapes the optimisation."""
    return {
        "method": method,
        "model": asdict(profile.model),
        "lora": asdict(profile.lora),
        "train": asdict(profile.train),
        "data": asdict(profile.data),
        "seed": profile.seed,
    }


def _check_resume(out: Path, signature: dict) -> None:
    path = out / "xlalign_train_config.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(signature)):
            diffs = _dict_diff(old, json.loads(json.dumps(signature)))
            raise ValueError(
                f"{out} holds a checkpoint of a different config ({'; '.join(diffs[:5])}); "
                "use a new output directory or the same config"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(signature, indent=2))


def _dict_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _dict_diff(a[k], b[k], key + ".")
        elif a.get(k) != b.get(k):
            out.append(f"{key}: {a.get(k)!r} != {b.get(k)!r}")
    return out


def build_lora_config(profile: Profile, model, section: LoraSection | None = None):
    """Kept for callers of this module; the one implementation is ``models.lora_config``."""
    from xlalign.models import lora_config

    return lora_config(profile, model, section)


def _common_args(profile: Profile, out: Path) -> dict:
    t = profile.train
    cpu = not torch.cuda.is_available()
    return dict(
        output_dir=str(out),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=t.save_steps if t.save_steps > 0 else 500,
        seed=profile.seed,
        data_seed=profile.seed,
        report_to="none",
        remove_unused_columns=False,
        gradient_checkpointing=t.gradient_checkpointing,
        optim=t.optim,
        use_cpu=cpu,
        bf16=(not cpu) and profile.model.dtype in ("bfloat16", "auto"),
        dataloader_num_workers=0,
        disable_tqdm=False,
        save_only_model=False,
    )


def _load_policy(profile: Profile):
    from xlalign.models import build_qlora, load_model

    if profile.model.quantization == "nf4":
        model, _, tok = build_qlora(profile)
    else:
        model, tok = load_model(profile)
    return model, tok


def train_preference(
    profile: Profile,
    dataset,
    output_dir: str | Path,
    model=None,
    tokenizer=None,
    resume: bool = False,
    callbacks: list | None = None,
) -> TrainResult:
    """DPO or ORPO (``profile.train.method``) with LoRA/QLoRA and the profile's batching.

    ``dataset``: a ``datasets.Dataset`` (or list of dicts) with prompt, chosen, rejected, sample_id, lang.
    For DPO the reference is the adapter-disabled base model: no second copy is held in memory.
    """
    from datasets import Dataset

    from xlalign.models import model_source, resolved_commit

    method = profile.train.method
    out = Path(output_dir)
    if out.exists() and any(out.glob("checkpoint-*")) and not resume:
        raise FileExistsError(
            f"{out} already holds checkpoints; pass resume=True or use a new directory"
        )
    _check_resume(out, training_signature(profile, method))
    if isinstance(dataset, list):
        dataset = Dataset.from_list(dataset)
    missing = [
        k for k in ("prompt", "chosen", "rejected", *META_KEYS) if k not in dataset.column_names
    ]
    if missing:
        raise AlignmentError(f"the preference dataset lacks column(s) {missing}")
    if model is None:
        model, tokenizer = _load_policy(profile)
    t = profile.train
    args = _common_args(profile, out)
    if method == "dpo":
        Config, Trainer = _dpo_classes()
        cfg = Config(
            **args,
            beta=t.beta,
            loss_type=["sigmoid"],
            max_length=t.max_length,
            precompute_ref_log_probs=False,
        )
    else:
        Config, Trainer = _orpo_classes()
        cfg = Config(**args, beta=t.beta, max_length=t.max_length, max_completion_length=32)
    peft_config = build_lora_config(profile, model) if not hasattr(model, "peft_config") else None
    trainer = Trainer(
        model=model,
        args=cfg,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    if method == "orpo":
        trainer.xl_nll_scope = profile.train.orpo_nll_scope
    trainer.xl_share_prompt = profile.train.share_prompt
    _configure(trainer, profile.train, out)
    result = _run(trainer, out, resume)
    result.metrics["model_source"] = model_source(profile)[0]
    result.metrics["model_commit"] = resolved_commit(getattr(model, "base_model", model))
    if trainer.args.process_index == 0:
        (out / "train_result.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def train_sft(
    profile: Profile,
    dataset,
    output_dir: str | Path,
    model=None,
    tokenizer=None,
    resume: bool = False,
) -> TrainResult:
    """Supervised fine-tuning on prompt/completion rows (CALM's SFT baselines) with the same batching."""
    from datasets import Dataset

    out = Path(output_dir)
    _check_resume(out, training_signature(profile, "sft"))
    if isinstance(dataset, list):
        dataset = Dataset.from_list(dataset)
    if model is None:
        model, tokenizer = _load_policy(profile)
    Config, Trainer = _sft_classes()
    cfg = Config(
        **_common_args(profile, out), max_length=profile.train.max_length, completion_only_loss=True
    )
    trainer = Trainer(
        model=model,
        args=cfg,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=build_lora_config(profile, model),
    )
    _configure(trainer, profile.train, out)
    return _run(trainer, out, resume)


def _configure(trainer, train, out: Path) -> None:
    """Give a TRL trainer the profile's batching (``train``: the profile's train section)."""
    trainer.xl_batch_size = train.batch_size
    trainer.xl_batching = train.batching
    trainer.xl_include_english = train.include_english
    trainer.xl_log_dir = out
    trainer.data_collator = MetaCollator(trainer.data_collator)
    trainer.add_callback(_JsonlLogCallback(out / "train_log.jsonl"))


def _run(trainer, out: Path, resume: bool) -> TrainResult:
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(out)) if resume and out.exists() else None
    if trainer.args.process_index == 0 and not last:
        for stale in [out / "train_log.jsonl", *out.glob("batches.rank*.jsonl")]:
            stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=last)
    wall = time.perf_counter() - t0
    adapter_dir = out / "adapter"
    trainer.save_model(str(adapter_dir))
    tokens = getattr(trainer, "xl_tokens", 0)
    result = TrainResult(
        output_dir=out,
        adapter_dir=adapter_dir,
        steps=trainer.state.global_step,
        wall_time_s=wall,
        tokens=tokens,
        tokens_per_s=tokens / wall if wall > 0 else 0.0,
        train_log=out / "train_log.jsonl",
        batch_logs=sorted(out.glob("batches.rank*.jsonl")),
        metrics=dict(output.metrics),
    )
    if trainer.args.process_index == 0:
        (out / "train_result.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def read_batch_logs(out: Path) -> list[dict]:
    rows = []
    for path in sorted(Path(out).glob("batches.rank*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def verify_batch_log(rows: list[dict], batching: str, batch_size: int) -> dict:
    """Re-check a run's batch log from disk: every aligned micro-batch one group in distinct languages,
    groups disjoint across processes within a step. Returns summary counts; raises on a violation."""
    by_step: dict[tuple[int, int], list[dict]] = {}
    for r in rows:
        if len(r["langs"]) != batch_size:
            raise AlignmentError(
                f"batch of {len(r['langs'])} rows at step {r['step']} rank {r['rank']}"
            )
        if batching == "aligned" and (
            len(set(r["sample_ids"])) != 1 or len(set(r["langs"])) != batch_size
        ):
            raise AlignmentError(f"mixed aligned batch at step {r['step']} rank {r['rank']}: {r}")
        by_step.setdefault(r["step"], []).append(r)
    for step, entries in by_step.items():
        if batching == "aligned":
            seen: dict[str, int] = {}
            for e in entries:
                sid = e["sample_ids"][0]
                if sid in seen and seen[sid] != e["rank"]:
                    raise AlignmentError(
                        f"group {sid} split across ranks {seen[sid]} and {e['rank']} at step {step}"
                    )
                seen[sid] = e["rank"]
    return {
        "micro_batches": len(rows),
        "ranks": sorted({r["rank"] for r in rows}),
        "steps": len(by_step),
    }


def derive_profile(profile: Profile, **train_overrides) -> Profile:
    """A copy of ``profile`` with some ``train`` fields replaced (ablations, CALM)."""
    return replace(profile, train=replace(profile.train, **train_overrides))
