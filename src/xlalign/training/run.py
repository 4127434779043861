"""Train one adapter from a profile: build the TRL config and trainer, resume, save, record.

A finished directory is final (reused, never retrained); an interrupted one resumes from its last
complete checkpoint, and only when its recorded training signature matches. A profile asking for more
than one process trains through ``accelerate launch`` (``xlalign.training.launch``) into the same files.

    from xlalign.training.run import train_preference
    result = train_preference(profile, rows, "runs/<id>/train/orpo-aligned", resume=True)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback

from xlalign.config import Profile
from xlalign.training.launch import global_batch
from xlalign.training.sampling import META_KEYS, AlignmentError

log = logging.getLogger(__name__)

RESULT_FILE = "train_result.json"
SIGNATURE_FILE = "xlalign_train_config.json"
WALL_FILE = "xlalign_wall_time.json"  # inside each checkpoint: training seconds up to that step


@dataclass
class TrainResult:
    """What one training run produced; ``train_result.json`` holds the same fields."""

    output_dir: Path
    adapter_dir: Path
    steps: int
    wall_time_s: float
    tokens: int
    tokens_per_s: float
    train_log: Path
    batch_logs: list[Path]
    metrics: dict
    # Rows per optimizer step: per_device x processes x grad_accum = global (launch.global_batch).
    batch: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()} | {
            "batch_logs": [str(p) for p in self.batch_logs]
        }

    @classmethod
    def from_dict(cls, d: dict) -> TrainResult:
        paths = {k: Path(d[k]) for k in ("output_dir", "adapter_dir", "train_log")}
        return cls(**(d | paths | {"batch_logs": [Path(p) for p in d["batch_logs"]]}))


def training_signature(profile: Profile, method: str) -> dict:
    """What must match for a resume to be valid: everything that shapes the optimisation.

    The number of processes shapes the global batch and the data order, so a run on several is
    signed with it (one process adds nothing, so in-process signatures are as before)."""
    from xlalign.training.launch import world_size

    signature = {
        "method": method,
        "model": asdict(profile.model),
        "lora": asdict(profile.lora),
        "train": asdict(profile.train),
        "data": asdict(profile.data),
        "seed": profile.seed,
    }
    processes = world_size(profile)
    if processes > 1:
        signature["processes"] = processes
    return signature


def _dict_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += _dict_diff(a[k], b[k], key + ".")
        elif a.get(k) != b.get(k):
            out.append(f"{key}: {a.get(k)!r} != {b.get(k)!r}")
    return out


def _check_signature(out: Path, signature: dict) -> None:
    path = out / SIGNATURE_FILE
    want = json.loads(json.dumps(signature))
    if path.exists():
        old = json.loads(path.read_text())
        if old != want:
            diffs = _dict_diff(old, want)
            raise ValueError(
                f"{out} holds a training run of a different config ({'; '.join(diffs[:5])}); "
                "use a new output directory or the same config"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(signature, indent=2))


def finished_result(out: Path, signature: dict) -> TrainResult | None:
    """The recorded result of a finished run in ``out`` with this signature (a finished run is final)."""
    done = Path(out) / RESULT_FILE
    if not done.exists():
        return None
    _check_signature(Path(out), signature)
    return TrainResult.from_dict(json.loads(done.read_text()))


def _is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint a kill left half-written lacks its trainer state or its weights."""
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    return weights and (path / "optimizer.pt").exists()


def last_complete_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint of ``out`` that can be resumed from; incomplete ones are skipped (logged)."""
    ckpts = sorted(
        (p for p in Path(out).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for ckpt in ckpts:
        if _is_complete_checkpoint(ckpt):
            return ckpt
        log.warning("%s is incomplete (interrupted while saving?); skipping it", ckpt)
    return None


def _truncate_logs(out: Path, step: int) -> None:
    """Keep the log lines of the ``step`` steps a checkpoint holds; a resume replays the rest."""
    for path in [out / "train_log.jsonl", *out.glob("batches.rank*.jsonl")]:
        if not path.exists():
            continue
        batch_log = path.name.startswith("batches")
        kept = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line torn by the kill
            # Batch logs record the step a micro-batch trains (0-based); the train log the steps done.
            if (row["step"] < step) if batch_log else (row["step"] <= step):
                kept.append(line)
        path.write_text("".join(x + "\n" for x in kept))


def _training_args(profile: Profile, out: Path) -> dict:
    """TrainingArguments shared by every method, from the profile's train section."""
    from xlalign.models import resolve_dtype

    t = profile.train
    cpu = not torch.cuda.is_available()
    return dict(
        # Across processes (DDP): every LoRA parameter takes part in every step, and non-reentrant
        # checkpointing keeps DDP from seeing a parameter used twice (models.build_qlora does the same).
        ddp_find_unused_parameters=False,
        gradient_checkpointing_kwargs={"use_reentrant": False}
        if t.gradient_checkpointing
        else None,
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
        bf16=(not cpu) and resolve_dtype(profile.model.dtype, "cuda")[0] == torch.bfloat16,
        dataloader_num_workers=0,
        disable_tqdm=False,
        save_only_model=False,
        batching=t.batching,
        include_english=t.include_english,
        balance_labels=t.balance_labels,
        max_length=t.max_length,
    )


def _share_prompt(t) -> bool:
    """``train.share_prompt``, except under gradient checkpointing, which keeps no KV cache in training
    (transformers turns ``use_cache`` off), so the prompt's cache cannot be reused: TRL's concatenated
    forward runs instead. It gives the same values (tests/test_shared_prompt.py); only speed differs."""
    if t.share_prompt and t.gradient_checkpointing:
        log.warning(
            "train.share_prompt is off for this run: gradient checkpointing keeps no KV cache to "
            "share; TRL's concatenated forward runs (same values, more compute)"
        )
        return False
    return t.share_prompt


def trainer_config(
    profile: Profile,
    out: Path,
    method: str | None = None,
    frozen_cache_dir: str | Path | None = None,
):
    """The TRL config subclass for ``method`` (default ``profile.train.method``), filled from the
    profile. ``frozen_cache_dir``: where ``train.reuse_frozen`` also keeps the frozen layers' states
    on disk (a run's ``cache/frozen-train``, which later notebooks' trainings of the run read); None: in
    memory only, for this process."""
    from xlalign.training.trainers import AlignedDPOConfig, AlignedORPOConfig, AlignedSFTConfig

    method = method or profile.train.method
    args = _training_args(profile, out)
    t = profile.train
    share = _share_prompt(t)
    cache_dir = str(frozen_cache_dir) if (t.reuse_frozen and frozen_cache_dir) else None
    if method == "dpo":
        return AlignedDPOConfig(
            **args,
            beta=t.beta,
            loss_type=["sigmoid"],
            precompute_ref_log_probs=False,
            share_prompt=share,
            reuse_frozen=t.reuse_frozen,
            frozen_cache_dir=cache_dir,
        )
    if method == "orpo":
        return AlignedORPOConfig(
            **args,
            beta=t.beta,
            nll_scope=t.orpo_nll_scope,
            share_prompt=share,
            reuse_frozen=t.reuse_frozen,
            frozen_cache_dir=cache_dir,
        )
    if method == "sft":
        return AlignedSFTConfig(**args, completion_only_loss=True)
    raise ValueError(f"unknown training method {method!r}")


def _load_policy(profile: Profile):
    from xlalign.models import build_qlora, load_model

    if profile.model.quantization == "nf4":
        model, _, tok = build_qlora(profile)
    else:
        model, tok = load_model(profile)
    return model, tok


def _as_dataset(dataset, columns: tuple[str, ...]):
    from datasets import Dataset

    if isinstance(dataset, list):
        dataset = Dataset.from_list(dataset)
    missing = [k for k in (*columns, *META_KEYS) if k not in dataset.column_names]
    if missing:
        raise AlignmentError(f"the training dataset lacks column(s) {missing}")
    return dataset


def _prepare(profile: Profile, method: str, dataset, out: Path, resume: bool):
    """(the finished result or None, the dataset): the checks made before any model loads."""
    signature = training_signature(profile, method)
    done = finished_result(out, signature)
    if done is not None:
        log.info("%s finished earlier (%d steps); reusing it", out, done.steps)
        return done, None
    if out.exists() and any(out.glob("checkpoint-*")) and not resume:
        raise FileExistsError(
            f"{out} already holds checkpoints; pass resume=True or use a new directory"
        )
    columns = ("prompt", "completion") if method == "sft" else ("prompt", "chosen", "rejected")
    dataset = _as_dataset(dataset, columns)
    _check_signature(out, signature)
    return None, dataset


def _train(
    profile: Profile,
    method: str,
    dataset,
    output_dir,
    model,
    tokenizer,
    resume: bool,
    callbacks,
    frozen_cache_dir=None,
) -> TrainResult:
    """In this process, or through ``accelerate launch`` when the profile asks for more processes
    (whose ranks keep the frozen states in memory: ``frozen_cache_dir`` is for one process)."""
    from xlalign.training import launch

    if not launch.needs_launch(profile):
        return train_in_process(
            profile, method, dataset, output_dir, model, tokenizer, resume, callbacks,
            frozen_cache_dir,
        )  # fmt: skip
    if callbacks:
        raise ValueError(
            f"callbacks cannot reach the {launch.process_count(profile)} processes "
            f"{profile.accelerate_config} starts; pass num_processes=1 to train in this process"
        )
    if model is not None:
        log.warning("the model passed in is not used: each of the launched processes loads its own")
    out = Path(output_dir)
    done, dataset = _prepare(profile, method, dataset, out, resume)
    if done is not None:
        return done
    return launch.train_launched(profile, method, dataset, out, resume)


def train_in_process(
    profile: Profile,
    method: str,
    dataset,
    output_dir,
    model=None,
    tokenizer=None,
    resume: bool = False,
    callbacks=None,
    frozen_cache_dir: str | Path | None = None,
) -> TrainResult:
    """Train in this process: alone, or as one rank of an ``accelerate launch`` (launch.main).
    ``frozen_cache_dir``: see ``trainer_config``."""
    from xlalign.models import lora_config, model_source, resolved_commit
    from xlalign.training.trainers import AlignedDPOTrainer, AlignedORPOTrainer, AlignedSFTTrainer

    out = Path(output_dir)
    done, dataset = _prepare(profile, method, dataset, out, resume)
    if done is not None:
        return done
    if model is None:
        model, tokenizer = _load_policy(profile)
    trainer_cls = {"dpo": AlignedDPOTrainer, "orpo": AlignedORPOTrainer, "sft": AlignedSFTTrainer}
    trainer = trainer_cls[method](
        model=model,
        args=trainer_config(profile, out, method, frozen_cache_dir),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(profile, model) if not hasattr(model, "peft_config") else None,
        callbacks=[_WallClock(out), *(callbacks or [])],  # the clock writes before any user hook
    )
    result = _run(trainer, out, resume)
    if trainer.args.world_size > 1:
        result.metrics["replica_adapter_sha256"] = _replica_digests(trainer)
    result.metrics["model_source"] = model_source(profile)[0]
    result.metrics["model_commit"] = resolved_commit(getattr(model, "base_model", model))
    if trainer.args.process_index == 0:
        (out / RESULT_FILE).write_text(json.dumps(result.to_dict(), indent=2))
    return result


def train_preference(
    profile: Profile,
    dataset,
    output_dir: str | Path,
    model=None,
    tokenizer=None,
    resume: bool = False,
    callbacks: list | None = None,
    frozen_cache_dir: str | Path | None = None,
) -> TrainResult:
    """DPO or ORPO (``profile.train.method``) with LoRA/QLoRA and the profile's batching.

    ``dataset``: a ``datasets.Dataset`` (or list of dicts) with prompt, chosen, rejected, sample_id, lang.
    For DPO the reference is the adapter-disabled base model: no second copy is held in memory.
    ``frozen_cache_dir``: with ``train.reuse_frozen``, the frozen layers' states are also kept there
    (``trainer_config``), so a later training of the same prompts in another process reads them.
    """
    method = profile.train.method
    if method not in ("dpo", "orpo"):
        raise ValueError(f"train_preference trains dpo or orpo, not {method!r}")
    return _train(
        profile, method, dataset, output_dir, model, tokenizer, resume, callbacks, frozen_cache_dir
    )


def train_sft(
    profile: Profile,
    dataset,
    output_dir: str | Path,
    model=None,
    tokenizer=None,
    resume: bool = False,
) -> TrainResult:
    """Supervised fine-tuning on prompt/completion rows (CALM's SFT baselines) with the same batching."""
    return _train(profile, "sft", dataset, output_dir, model, tokenizer, resume, None)


class _WallClock(TrainerCallback):
    """Writes the training seconds so far into every checkpoint saved, so a resume counts them."""

    def __init__(self, out: Path):
        self.out, self.before, self.t0 = out, 0.0, None

    def elapsed(self) -> float:
        return self.before + (time.perf_counter() - self.t0 if self.t0 is not None else 0.0)

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0 = time.perf_counter()

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            ckpt = self.out / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                (ckpt / WALL_FILE).write_text(json.dumps({"wall_time_s": self.elapsed()}))


def _trainable_sha256(model) -> str:
    """sha256 of the trainable parameters (names and float32 values), to compare across ranks."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda x: x[0]):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _replica_digests(trainer) -> list[str]:
    """Each rank's adapter digest, in rank order; data-parallel training must leave them all equal."""
    from accelerate.utils import gather_object

    digests = gather_object([_trainable_sha256(trainer.model)])
    if len(set(digests)) != 1 and trainer.args.process_index == 0:
        log.error(
            "the ranks ended with different adapters (gradients were not synchronised): %s", digests
        )
    return digests


def _run(trainer, out: Path, resume: bool) -> TrainResult:
    last = last_complete_checkpoint(out) if resume and out.exists() else None
    clock = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, _WallClock))
    if trainer.args.process_index == 0:
        if last is None:
            for stale in [out / "train_log.jsonl", *out.glob("batches.rank*.jsonl")]:
                stale.unlink(missing_ok=True)
        else:
            step = json.loads((last / "trainer_state.json").read_text())["global_step"]
            _truncate_logs(out, step)
            wall = last / WALL_FILE
            clock.before = json.loads(wall.read_text())["wall_time_s"] if wall.exists() else 0.0
    output = trainer.train(resume_from_checkpoint=str(last) if last else None)
    wall = clock.elapsed()
    adapter_dir = out / "adapter"
    trainer.save_model(str(adapter_dir))
    batch_logs = sorted(out.glob("batches.rank*.jsonl"))
    # Counted from the logs, so a resumed run reports its whole training, not its last segment.
    tokens = sum(
        json.loads(line)["tokens"] for p in batch_logs for line in p.read_text().splitlines()
    )
    metrics = dict(output.metrics)
    losses = [
        json.loads(x)["loss"]
        for x in (out / "train_log.jsonl").read_text().splitlines()
        if '"loss"' in x
    ] if (out / "train_log.jsonl").exists() else []  # fmt: skip
    if losses and last is not None:
        metrics["train_loss"] = sum(losses) / len(losses)  # transformers' covers the last segment
    return TrainResult(
        output_dir=out,
        adapter_dir=adapter_dir,
        steps=trainer.state.global_step,
        wall_time_s=wall,
        tokens=tokens,
        tokens_per_s=tokens / wall if wall > 0 else 0.0,
        train_log=out / "train_log.jsonl",
        batch_logs=batch_logs,
        metrics=metrics,
        batch=global_batch(
            trainer.args.per_device_train_batch_size,
            trainer.args.world_size,
            trainer.args.gradient_accumulation_steps,
        ),
    )
