"""TRL's DPO, ORPO and SFT configs and trainers, extended for grouped batches and one prompt encoding per pair.

The new settings are fields of config subclasses, checked in ``__post_init__``; each trainer override
says what it changes, and tests compare each with the stock TRL path. Over 400 lines because each
config sits next to the trainer that reads its fields (DPO's and ORPO's shared-prompt losses are most
of it); splitting them would separate a setting from the override it switches.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO lives in trl.experimental in TRL 1.16
from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # noqa: E402

from xlalign.lm import positions  # noqa: E402
from xlalign.training.fingerprint import register_tokenizer_hash  # noqa: E402
from xlalign.training.frozen_cache import attach  # noqa: E402
from xlalign.training.sampling import (  # noqa: E402
    BATCHINGS,
    META_KEYS,
    AlignmentError,
    GroupedBatchSampler,
    MetaCollator,
)
from xlalign.training.shared_prompt import shared_prompt_logits, split_pairs, token_logps  # noqa: E402

NLL_SCOPES = ("full", "completion")

# --------------------------------------------------------------------------- configs


@dataclass
class GroupedBatchingArguments:
    """The batch-alignment paper's batching, shared by the three configs below.

    ``per_device_train_batch_size`` is the number of rows per micro-batch: in an aligned batch, the
    number of languages one query is shown in.
    """

    batching: str = field(
        default="aligned",
        metadata={"help": "aligned: one query in several languages per batch; uncoupled: the same "
                  "rows shuffled; clustered: groups kept together in order (CALM's pairs)"},
    )  # fmt: skip
    include_english: bool = field(
        default=True, metadata={"help": "aligned batches always hold the English row (paper C.1)"}
    )

    balance_labels: bool = field(
        default=False,
        metadata={"help": "every optimizer step holds as many rows of each label (ours, not the "
                  "papers'; needs a 'label' column; see GroupedBatchSampler)"},
    )  # fmt: skip
    reuse_frozen: bool = field(
        default=False,
        metadata={"help": "compute the frozen lower layers' states once per unique prompt and reuse "
                  "them (xlalign.training.frozen_cache; same values, used where the layers are frozen)"},
    )  # fmt: skip
    frozen_cache_dir: str | None = field(
        default=None,
        metadata={"help": "where reused states are also kept on disk (e.g. <run>/cache/frozen); "
                  "None: in memory only"},
    )  # fmt: skip

    def _check_batching(self) -> None:
        if self.batching not in BATCHINGS:
            raise ValueError(f"batching={self.batching!r}: choose one of {', '.join(BATCHINGS)}")
        if self.batching == "aligned" and self.per_device_train_batch_size < 1:
            raise ValueError("an aligned batch needs per_device_train_batch_size >= 1")


@dataclass
class AlignedDPOConfig(GroupedBatchingArguments, DPOConfig):
    """``trl.DPOConfig`` plus grouped batching and ``share_prompt``."""

    share_prompt: bool = field(
        default=True,
        metadata={"help": "encode each pair's prompt once for the chosen and the rejected completion "
                  "(same values; used where the loss configuration allows, see AlignedDPOTrainer)"},
    )  # fmt: skip

    def __post_init__(self):
        self._check_batching()
        super().__post_init__()


@dataclass
class AlignedORPOConfig(GroupedBatchingArguments, ORPOConfig):
    """``trl.experimental.orpo.ORPOConfig`` plus grouped batching, ``nll_scope`` and ``share_prompt``.

    ``max_completion_length`` defaults to 32 tokens here (our choice: the probe's answers are 3-6
    tokens, CALM's pairs are truncated at their sampling length; TRL's default keeps whole rows).
    """

    max_completion_length: int | None = 32
    nll_scope: str = field(
        default="full",
        metadata={"help": "full: NLL over the chosen prompt and response (TRL 1.16 stock); "
                  "completion: over the response only (the ORPO paper's definition)"},
    )  # fmt: skip
    share_prompt: bool = field(
        default=True,
        metadata={"help": "with nll_scope=completion, encode each pair's prompt once"},
    )

    def __post_init__(self):
        self._check_batching()
        if self.nll_scope not in NLL_SCOPES:
            raise ValueError(f"nll_scope={self.nll_scope!r}: choose one of {', '.join(NLL_SCOPES)}")
        if self.max_completion_length is not None and self.max_completion_length < 1:
            raise ValueError(f"max_completion_length={self.max_completion_length} must be >= 1")
        super().__post_init__()


@dataclass
class AlignedSFTConfig(GroupedBatchingArguments, SFTConfig):
    """``trl.SFTConfig`` plus grouped batching (CALM's SFT baselines)."""

    def __post_init__(self):
        self._check_batching()
        super().__post_init__()


# --------------------------------------------------------------------------- callbacks and the mixin


class JsonlLogCallback(TrainerCallback):
    """Appends every log line (loss, rewards, learning rate, ...) with its step to a JSONL file."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as fh:
                fh.write(
                    json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n"
                )


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``); False where there is no
    glibc. Training with reused frozen states keeps many ~1 MB tensors alive between the step's
    short-lived activations, and glibc's heap then holds the freed space: measured here, a 60-step
    ORPO run (28 pairs a step) grew to 10.3 GB of RSS with 1.7 GB in use and 7.5 GB free inside the
    heap after 17 steps. Cheaper than a smaller mmap threshold (``MALLOC_MMAP_THRESHOLD_`` = 1 MB
    made the same step 2.8x slower)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, looked up once (``find_library`` runs a subprocess); None elsewhere."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl, macOS)
    trim.argtypes = [ctypes.c_size_t]
    return trim


class ReleaseFreedMemoryCallback(TrainerCallback):
    """``release_freed_memory`` after every optimizer step (on the CPU, where the C heap holds the
    activations)."""

    def on_step_end(self, args, state, control, **kwargs):
        release_freed_memory()


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
    import trl.trainer.utils as trl_utils

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

    def __init__(self, *args, **kwargs):
        # TRL's Dataset.map calls fingerprint the tokenizer: by its Rust serialization's sha256, not
        # entry by entry (xlalign.training.fingerprint; seconds per hash for a 262k vocabulary)
        register_tokenizer_hash(kwargs.get("processing_class"))
        super().__init__(*args, **kwargs)
        # Grouping columns travel beside the batch, and every log line goes to train_log.jsonl.
        self.data_collator = MetaCollator(self.data_collator)
        self.add_callback(JsonlLogCallback(Path(self.args.output_dir) / "train_log.jsonl"))
        if self.args.device.type == "cpu":
            self.add_callback(ReleaseFreedMemoryCallback())
        # The frozen lower layers' states, computed once per prompt for the whole process (and run).
        self.xl_frozen = (
            attach(self.model, directory=self.args.frozen_cache_dir)
            if self.args.reuse_frozen
            else None
        )

    def _get_train_sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        missing = [k for k in META_KEYS if k not in ds.column_names]
        if missing:
            raise AlignmentError(f"the training dataset lacks grouping column(s) {missing}")
        # Built from the dataset the trainer actually trains on: after TRL's tokenization and filtering.
        self.xl_sampler = GroupedBatchSampler(
            ds["sample_id"],
            ds["lang"],
            self.args.per_device_train_batch_size,
            self.args.batching,
            include_english=self.args.include_english,
            seed=self.args.seed,
            num_replicas=self.args.world_size,
            grad_accum=self.args.gradient_accumulation_steps,
            require_complete=self.args.batching != "clustered",
            labels=ds["label"] if "label" in ds.column_names else None,
            balance_labels=self.args.balance_labels,
            # Where max_steps stops inside an epoch, the uncoupled arm shuffles the examples the
            # aligned arm reaches (identical examples in the same steps).
            max_batches=self.args.max_steps
            * self.args.gradient_accumulation_steps
            * self.args.world_size
            if self.args.max_steps > 0
            else None,
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
        with (Path(self.args.output_dir) / f"batches.rank{rank}.jsonl").open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        self.xl_tokens = getattr(self, "xl_tokens", 0) + n_tokens
        if self.args.batching == "aligned" and (
            len(set(sids)) != 1 or len(set(langs)) != len(langs)
        ):
            raise AlignmentError(
                f"aligned batch is mixed at step {self.state.global_step} on rank {rank}: {entry}"
            )
        if len(meta) != self.args.per_device_train_batch_size:
            raise AlignmentError(
                f"micro-batch of {len(meta)} rows, expected {self.args.per_device_train_batch_size}: {entry}"
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


class AlignedDPOTrainer(GroupedTrainingMixin, DPOTrainer):
    """TRL's DPOTrainer with grouped batching, and each pair's prompt encoded once.

    With ``args.share_prompt`` (``train.share_prompt``) and the configuration the profiles use (sigmoid
    loss, LoRA with the adapter-disabled base as reference, no precomputed reference log-probs),
    the policy and the reference each encode a pair's prompt once and continue it with the chosen
    and the rejected completion (``xlalign.training.shared_prompt``). Loss, gradients and the logged metrics
    are those of TRL's ``_compute_loss`` (tested); any other configuration runs TRL's own code.
    """

    def _xl_can_share(self, return_outputs: bool) -> bool:
        from accelerate.utils import is_peft_model

        return (
            self.args.share_prompt
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
            use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None),
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
            m["rewards/rejected"].append(self.accelerator.gather(rejected_rewards).mean().item())
            acc = (chosen_rewards > rejected_rewards).float()
            m["rewards/accuracies"].append(self.accelerator.gather(acc).mean().item())
            m["rewards/margins"].append(
                self.accelerator.gather(chosen_rewards - rejected_rewards).mean().item()
            )
            m["logps/chosen"].append(self.accelerator.gather(chosen_logps.detach()).mean().item())
            m["logps/rejected"].append(
                self.accelerator.gather(rejected_logps.detach()).mean().item()
            )
        return loss


class AlignedORPOTrainer(GroupedTrainingMixin, ORPOTrainer):
    """TRL's ORPOTrainer with grouped batching and completion-only logits.

    Stock ORPO projects hidden states onto the full vocabulary at every position of every sequence.
    Its odds-ratio term only needs completion positions; its NLL term, in TRL 1.16, covers the chosen
    prompt *and* response (``nll_scope="full"``, the stock behaviour and the paper profile's choice) or,
    as in the ORPO paper's definition, the chosen response only (``nll_scope="completion"``). Rows are
    moved to left padding so that completion positions sit at the end, and the model computes logits
    only for the last ``max completion length + 1`` positions (``logits_to_keep``).
    """

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
        if self.args.nll_scope == "completion" and self.args.share_prompt:
            split = split_pairs(ids, mask, (labels != -100).long())
            if split is not None:
                return self._xl_shared_forward(model, *split)
        ids_l, mask_l, labels_l = _to_left_padding(ids, mask, labels)
        comp = (labels_l != -100).sum(-1)
        keep = int(comp.max().item()) + 1
        pos = positions(mask_l)
        if self.args.nll_scope == "full":
            # Chosen rows need logits everywhere for the prompt+response NLL (stock behaviour).
            out_c = model(ids[:n_chosen], attention_mask=mask[:n_chosen], use_cache=False)
            logits_c_full = out_c.logits
            lab_full = torch.where(mask[:n_chosen] == 1, ids[:n_chosen], -100)
            nll = torch.nn.functional.cross_entropy(
                logits_c_full[:, :-1].reshape(-1, logits_c_full.shape[-1]),
                lab_full[:, 1:].reshape(-1),
            )
            logps_c = self.get_batch_logps(logits_c_full, labels[:n_chosen], average_log_prob=True)
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
        (``xlalign.training.shared_prompt``); the same values as the concatenated completion-scope forward.
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


class AlignedSFTTrainer(GroupedTrainingMixin, SFTTrainer):
    """TRL's SFTTrainer (prompt-completion loss) with grouped batching, for CALM's SFT baselines."""
