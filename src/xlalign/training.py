"""Batch-aligned preference training on TRL: grouped samplers, DPO/ORPO/SFT trainers that keep groups whole.

Every micro-batch's composition (query id and language of each row) is logged and checked on every process.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler
from transformers import TrainerCallback

from xlalign.config import LoraSection, Profile
from xlalign.shared_prompt import shared_prompt_logits, split_pairs, token_logps

META_KEYS = ("sample_id", "lang")


class AlignmentError(RuntimeError):
    """A batch broke the promised composition, or a group lost members before training."""


# --------------------------------------------------------------------------- sampler


class GroupedBatchSampler(Sampler[int]):
    """Yields indices so that consecutive runs of ``batch_size`` indices form the planned batches.

    - ``aligned``: each batch is one group (one sample_id: same query, same label) in ``batch_size``
      languages; with fewer languages than the group has, English plus ``batch_size - 1`` others drawn per
      batch (paper C.3), or ``batch_size`` non-English ones when ``include_english`` is false (C.1).
    - ``uncoupled``: exactly the examples the aligned plan selects, shuffled across groups and languages,
      so both runs see the same examples the same number of times in the same number of steps.
    - ``clustered``: groups kept together in order, batches may straddle two groups (for data whose groups
      have unequal sizes, such as CALM's per-question pairs).

    The plan depends only on (seed, epoch), so every process computes the same one; the trainer's data
    loader then hands whole batches to processes round-robin. Batches per epoch are trimmed to a multiple
    of ``num_replicas * grad_accum`` so that every optimizer step sees whole groups on every process.
    """

    def __init__(
        self,
        sample_ids: list[str],
        langs: list[str],
        batch_size: int,
        batching: str = "aligned",
        include_english: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        grad_accum: int = 1,
        anchor: str = "en",
        require_complete: bool = True,
    ):
        if batching not in ("aligned", "uncoupled", "clustered"):
            raise ValueError(f"unknown batching {batching!r}")
        self.batch_size, self.batching, self.seed = batch_size, batching, seed
        self.include_english, self.anchor = include_english, anchor
        self.unit = max(1, num_replicas) * max(1, grad_accum)
        self.epoch = 0
        groups: dict[str, dict[str, int]] = {}
        for i, (sid, lang) in enumerate(zip(sample_ids, langs, strict=True)):
            members = groups.setdefault(sid, {})
            if lang in members:
                raise AlignmentError(
                    f"group {sid!r} holds language {lang!r} twice (rows {members[lang]}, {i})"
                )
            members[lang] = i
        if not groups:
            raise AlignmentError("the training set is empty")
        self.groups = dict(sorted(groups.items()))
        self.langs = sorted({lang for m in self.groups.values() for lang in m})
        if batching != "clustered" and require_complete:
            incomplete = {
                s: sorted(set(self.langs) - set(m))
                for s, m in self.groups.items()
                if len(m) < len(self.langs)
            }
            if incomplete:
                first = list(incomplete.items())[:5]
                raise AlignmentError(
                    f"{len(incomplete)} group(s) lost members before training, e.g. {first}; refusing to train "
                    "(check the over-length report: drop whole groups, never single languages)"
                )
        if batching != "clustered":
            pool = (
                [lang for lang in self.langs if lang != anchor]
                if not include_english
                else self.langs
            )
            if include_english and anchor not in self.langs:
                raise AlignmentError(
                    f"an English anchor was requested but the data has no {anchor!r} rows"
                )
            if batch_size > len(pool):
                raise AlignmentError(
                    f"batch_size={batch_size} is larger than the {len(pool)} languages available per group "
                    f"({', '.join(pool)})"
                )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _choose_langs(self, members: dict[str, int], rng: np.random.Generator) -> list[str]:
        langs = sorted(members)
        b = self.batch_size
        if not self.include_english:
            pool = [lang for lang in langs if lang != self.anchor]
            return list(rng.choice(pool, size=b, replace=False))
        others = [lang for lang in langs if lang != self.anchor]
        return [self.anchor] + list(rng.choice(others, size=b - 1, replace=False))

    def plan(self, epoch: int | None = None) -> list[list[int]]:
        """The epoch's batches as lists of dataset indices."""
        rng = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch])
        sids = list(self.groups)
        order = [sids[i] for i in rng.permutation(len(sids))]
        if self.batching == "clustered":
            flat = []
            for sid in order:
                members = list(self.groups[sid].values())
                flat += [members[i] for i in rng.permutation(len(members))]
            batches = [flat[i : i + self.batch_size] for i in range(0, len(flat), self.batch_size)]
            batches = [b for b in batches if len(b) == self.batch_size]
        else:
            batches = [
                [self.groups[sid][lang] for lang in self._choose_langs(self.groups[sid], rng)]
                for sid in order
            ]
            if self.batching == "uncoupled":
                flat = [i for b in batches for i in b]
                flat = [flat[i] for i in rng.permutation(len(flat))]
                batches = [
                    flat[i : i + self.batch_size] for i in range(0, len(flat), self.batch_size)
                ]
        keep = len(batches) - len(batches) % self.unit
        return batches[:keep]

    def __iter__(self):
        for batch in self.plan():
            yield from batch

    def __len__(self) -> int:
        return len(self.plan(0)) * self.batch_size


# --------------------------------------------------------------------------- collator + logging


class MetaCollator:
    """Strips string columns before TRL's collator and keeps (sample_id, lang) beside the batch."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        meta = [{k: e.get(k) for k in META_KEYS} for e in examples]

        def keep(v):
            return not isinstance(v, str) and not (
                isinstance(v, list) and v and isinstance(v[0], str)
            )

        batch = self.inner([{k: v for k, v in e.items() if keep(v)} for e in examples])
        batch["xl_meta"] = meta
        return batch


class _JsonlLogCallback(TrainerCallback):
    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as fh:
                fh.write(
                    json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n"
                )


@contextlib.contextmanager
def compact_fused_lm_head():
    """Score only labelled positions in TRL's fused LM head, on every device.

    TRL 1.16's DPO (and SFT) forward, ``model(..., labels=..., fused_lm_head=True)``, projects hidden states
    onto the vocabulary in tiles. On Triton devices it keeps only the positions whose label is not -100
    (the completion); elsewhere it projects *every* position so that tile shapes stay fixed for compilers
    such as Neuron's, and masks the result afterwards. On a CPU that means the whole prompt times a
    262,144-word vocabulary for Gemma-3: 14 rows of ~430 tokens, against ~4 completion tokens per row.
    The choice is made by ``trl.trainer.utils._use_triton``, looked up at call time; this context makes it
    answer "compact" while the loss is computed. The log-probabilities are the same values either way
    (``tests/test_training.py`` checks DPO's loss and gradients against the stock path), and the
    projection kernel itself still picks its own implementation per device.
    """
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:  # pragma: no cover - trl is a dependency
        yield
        return
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._use_triton = original


class GroupedTrainingMixin:
    """Override the sampler, check and log every micro-batch; shared by the DPO, ORPO and SFT trainers."""

    xl_batch_size: int
    xl_batching: str
    xl_include_english: bool
    xl_log_dir: Path

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        missing = [k for k in META_KEYS if k not in ds.column_names]
        if missing:
            raise AlignmentError(f"the training dataset lacks grouping column(s) {missing}")
        # Built from the dataset the trainer actually trains on: after TRL's tokenization and filtering.
        self.xl_sampler = GroupedBatchSampler(
            ds["sample_id"],
            ds["lang"],
            self.xl_batch_size,
            self.xl_batching,
            include_english=self.xl_include_english,
            seed=self.args.seed,
            num_replicas=self.args.world_size,
            grad_accum=self.args.gradient_accumulation_steps,
            require_complete=self.xl_batching != "clustered",
        )
        return self.xl_sampler

    def _xl_record(self, meta: list[dict], n_tokens: int) -> None:
        sids = [m["sample_id"] for m in meta]
        langs = [m["lang"] for m in meta]
        rank = self.args.process_index
        entry = {
            "step": self.state.global_step,
            "rank": rank,
            "sample_ids": sids,
            "langs": langs,
            "tokens": n_tokens,
        }
        with (self.xl_log_dir / f"batches.rank{rank}.jsonl").open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        self.xl_tokens = getattr(self, "xl_tokens", 0) + n_tokens
        if self.xl_batching == "aligned" and (len(set(sids)) != 1 or len(set(langs)) != len(langs)):
            raise AlignmentError(
                f"aligned batch is mixed at step {self.state.global_step} on rank {rank}: {entry}"
            )
        if len(meta) != self.xl_batch_size:
            raise AlignmentError(
                f"micro-batch of {len(meta)} rows, expected {self.xl_batch_size}: {entry}"
            )

    @staticmethod
    def _count_tokens(inputs: dict) -> int:
        keys = [k for k, v in inputs.items() if k.endswith("attention_mask") and torch.is_tensor(v)]
        if any(k.startswith(("chosen_", "rejected_")) for k in keys):
            # ORPO batches also carry the prompt alone; its tokens are inside the chosen/rejected rows.
            keys = [k for k in keys if k.startswith(("chosen_", "rejected_"))]
        return int(sum(inputs[k].sum().item() for k in keys))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        meta = inputs.pop("xl_meta", None)
        if meta is not None and model.training:
            self._xl_record(meta, self._count_tokens(inputs))
        with compact_fused_lm_head():
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop("xl_meta", None)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


# --------------------------------------------------------------------------- trainers


def _dpo_classes():
    from trl import DPOConfig, DPOTrainer

    class AlignedDPOTrainer(GroupedTrainingMixin, DPOTrainer):
        """TRL's DPOTrainer with grouped batching, and each pair's prompt encoded once.

        With ``xl_share_prompt`` (``train.share_prompt``) and the configuration the profiles use (sigmoid
        loss, LoRA with the adapter-disabled base as reference, no precomputed reference log-probs),
        the policy and the reference each encode a pair's prompt once and continue it with the chosen
        and the rejected completion (``xlalign.shared_prompt``). Loss, gradients and the logged metrics
        are those of TRL's ``_compute_loss`` (tested); any other configuration runs TRL's own code.
        """

        xl_share_prompt = True

        def _xl_can_share(self, return_outputs: bool) -> bool:
            from accelerate.utils import is_peft_model

            return (
                self.xl_share_prompt
                and not return_outputs
                and list(self.loss_types) == ["sigmoid"]
                and self.ld_alpha is None
                and str(self.f_divergence_type) in ("reverse_kl", "FDivergenceType.REVERSE_KL")
                and not self.precompute_ref_logps
                and not self.aux_loss_enabled
                and not self.use_weighting
                and self.ref_model is None
                and is_peft_model(self.accelerator.unwrap_model(self.model))
            )

        def _compute_loss(self, model, inputs, return_outputs):
            split = None
            if self._xl_can_share(return_outputs):
                split = split_pairs(
                    inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
                )
            if split is None:
                return super()._compute_loss(model, inputs, return_outputs)
            return self._xl_shared_loss(model, inputs, *split)

        def _xl_shared_loss(self, model, inputs, prompts, completions):
            from trl.trainer.utils import use_adapter

            mode = "train" if self.model.training else "eval"
            tok = getattr(self, "_tokenizer", None) or self.processing_class
            pad = (
                tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            )  # masked: any id
            logits, targets, cmask = shared_prompt_logits(model, prompts, completions, pad)
            per_token = token_logps(logits, targets, cmask)
            logps = per_token.sum(-1)
            unwrapped = self.accelerator.unwrap_model(self.model)
            with (
                torch.no_grad(),
                use_adapter(
                    unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None
                ),
            ):
                ref_logits, _, _ = shared_prompt_logits(model, prompts, completions, pad)
                ref_logps = token_logps(ref_logits, targets, cmask).sum(-1)
                del ref_logits
            n = len(prompts)
            chosen_logps, rejected_logps = logps[:n], logps[n:]
            chosen_logratios = chosen_logps - ref_logps[:n]
            rejected_logratios = rejected_logps - ref_logps[n:]
            loss = -torch.nn.functional.logsigmoid(
                self.beta * (chosen_logratios - rejected_logratios)
            ).mean()
            loss = loss * self.loss_weights[0]

            gather = self.accelerator.gather_for_metrics
            m = self._metrics[mode]
            with torch.no_grad():
                maskf = cmask.float()
                logp_all = torch.log_softmax(logits, dim=-1)
                entropy = -(logp_all.exp() * logp_all).sum(-1)
                m["entropy"].append(
                    (gather((entropy * maskf).sum()).sum() / gather(maskf.sum()).sum()).item()
                )
                if mode == "train":
                    self._total_train_tokens += (
                        gather(inputs["attention_mask"].sum()).sum().item() // self._tp_size
                    )
                m["num_tokens"] = [self._total_train_tokens]
                mean_logits = logits.mean(-1) * maskf
                for side, rows in (("chosen", slice(0, n)), ("rejected", slice(n, None))):
                    tot = gather(mean_logits[rows].sum()).sum().item()
                    cnt = gather(maskf[rows].sum()).sum().item()
                    m[f"logits/{side}"].append(tot / cnt if cnt > 0 else 0.0)
                top1 = (logits[:n].argmax(-1) == targets[:n]) & cmask[:n].bool()
                m["mean_token_accuracy"].append(
                    (gather(top1.sum()).sum() / gather(cmask[:n].sum()).sum()).item()
                )
                chosen_rewards = self.beta * chosen_logratios.detach()
                rejected_rewards = self.beta * rejected_logratios.detach()
                m["rewards/chosen"].append(self.accelerator.gather(chosen_rewards).mean().item())
                m["rewards/rejected"].append(
                    self.accelerator.gather(rejected_rewards).mean().item()
                )
                acc = (chosen_rewards > rejected_rewards).float()
                m["rewards/accuracies"].append(self.accelerator.gather(acc).mean().item())
                m["rewards/margins"].append(
                    self.accelerator.gather(chosen_rewards - rejected_rewards).mean().item()
                )
                m["logps/chosen"].append(
                    self.accelerator.gather(chosen_logps.detach()).mean().item()
                )
                m["logps/rejected"].append(
                    self.accelerator.gather(rejected_logps.detach()).mean().item()
                )
            return loss

    return DPOConfig, AlignedDPOTrainer


def _orpo_classes():
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    class AlignedORPOTrainer(GroupedTrainingMixin, ORPOTrainer):
        """TRL's ORPOTrainer with grouped batching and completion-only logits.

        Stock ORPO projects hidden states onto the full vocabulary at every position of every sequence.
        Its odds-ratio term only needs completion positions; its NLL term, in TRL 1.16, covers the chosen
        prompt *and* response (``nll_scope="full"``, the stock behaviour and the paper profile's choice) or,
        as in the ORPO paper's definition, the chosen response only (``nll_scope="completion"``). Rows are
        moved to left padding so that completion positions sit at the end, and the model computes logits
        only for the last ``max completion length + 1`` positions (``logits_to_keep``).
        """

        xl_nll_scope = "completion"
        xl_share_prompt = True

        def concatenated_forward(self, model, batch):
            if self.is_encoder_decoder or self.aux_loss_enabled:
                return super().concatenated_forward(model, batch)
            cat = self.concatenated_inputs(
                batch,
                is_encoder_decoder=False,
                padding_value=self.padding_value,
                device=self.accelerator.device,
            )
            ids, mask, labels = (
                cat["concatenated_input_ids"],
                cat["concatenated_attention_mask"],
                cat["concatenated_labels"],
            )
            n_chosen = batch["chosen_labels"].shape[0]
            if self.xl_nll_scope == "completion" and self.xl_share_prompt:
                split = split_pairs(ids, mask, (labels != -100).long())
                if split is not None:
                    return self._xl_shared_forward(model, *split)
            ids_l, mask_l, labels_l = _to_left_padding(ids, mask, labels)
            comp = (labels_l != -100).sum(-1)
            keep = int(comp.max().item()) + 1
            pos = (mask_l.cumsum(-1) - 1).clamp(min=0)
            if self.xl_nll_scope == "full":
                # Chosen rows need logits everywhere for the prompt+response NLL (stock behaviour).
                out_c = model(ids[:n_chosen], attention_mask=mask[:n_chosen], use_cache=False)
                logits_c_full = out_c.logits
                lab_full = torch.where(mask[:n_chosen] == 1, ids[:n_chosen], -100)
                nll = torch.nn.functional.cross_entropy(
                    logits_c_full[:, :-1].reshape(-1, logits_c_full.shape[-1]),
                    lab_full[:, 1:].reshape(-1),
                )
                logps_c = self.get_batch_logps(
                    logits_c_full, labels[:n_chosen], average_log_prob=True
                )
                out_r = model(
                    ids_l[n_chosen:],
                    attention_mask=mask_l[n_chosen:],
                    position_ids=pos[n_chosen:],
                    use_cache=False,
                    logits_to_keep=keep,
                )
                logps_r = self.get_batch_logps(
                    out_r.logits.float(), labels_l[n_chosen:, -keep:], average_log_prob=True
                )
                chosen_logits = logits_c_full[:, :-1]
                rejected_logits = out_r.logits[:, :-1]
            else:
                out = model(
                    ids_l,
                    attention_mask=mask_l,
                    position_ids=pos,
                    use_cache=False,
                    logits_to_keep=keep,
                )
                logits = out.logits.float()
                tail_labels = labels_l[:, -keep:]
                logps = self.get_batch_logps(logits, tail_labels, average_log_prob=True)
                logps_c, logps_r = logps[:n_chosen], logps[n_chosen:]
                shift_logits = logits[:n_chosen, :-1]
                shift_labels = tail_labels[:n_chosen, 1:]
                nll = torch.nn.functional.cross_entropy(
                    shift_logits.reshape(-1, shift_logits.shape[-1]),
                    shift_labels.reshape(-1),
                    ignore_index=-100,
                )
                chosen_logits, rejected_logits = logits[:n_chosen, :-1], logits[n_chosen:, :-1]
            return (logps_c, logps_r, chosen_logits, rejected_logits, nll)

        def _xl_shared_forward(self, model, prompts, completions):
            """Completion scope with each prompt encoded once for its chosen and rejected completion
            (``xlalign.shared_prompt``); the same values as the concatenated completion-scope forward.
            ``logits/chosen`` and ``logits/rejected`` then average over completion positions only."""
            logits, targets, cmask = shared_prompt_logits(
                model, prompts, completions, self.padding_value
            )
            n = len(prompts)
            lp = token_logps(logits, targets, cmask)
            avg = lp.sum(-1) / cmask.sum(-1)
            nll = torch.nn.functional.cross_entropy(
                logits[:n].reshape(-1, logits.shape[-1]),
                targets[:n].masked_fill(cmask[:n] == 0, -100).reshape(-1),
                ignore_index=-100,
            )
            keep = cmask.bool()
            return (avg[:n], avg[n:], logits[:n][keep[:n]], logits[n:][keep[n:]], nll)

    return ORPOConfig, AlignedORPOTrainer


def _to_left_padding(ids, mask, labels):
    """Roll right-padded rows so that padding is on the left (completion tokens end every row)."""
    lengths = mask.sum(-1)
    width = ids.shape[1]
    ids_l, mask_l, labels_l = ids.clone(), mask.clone(), labels.clone()
    for r in range(ids.shape[0]):
        shift = int(width - lengths[r].item())
        if shift:
            ids_l[r] = torch.roll(ids[r], shift)
            mask_l[r] = torch.roll(mask[r], shift)
            labels_l[r] = torch.roll(labels[r], shift)
            labels_l[r, :shift] = -100
    return ids_l, mask_l, labels_l


def _sft_classes():
    from trl import SFTConfig, SFTTrainer

    class AlignedSFTTrainer(GroupedTrainingMixin, SFTTrainer):
        """TRL's SFTTrainer (prompt-completion loss) with grouped batching, for CALM's SFT baselines."""

    return SFTConfig, AlignedSFTTrainer


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
