"""Batched greedy decoding, and m-way sampling that encodes each prompt once and shares its KV cache.

Used by CALM (sampling m chain-of-thought answers per question and language) and the self-translator.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from xlalign.lm import (
    batches,
    decode_new,
    encode,
    eval_mode,
    input_device,
    left_pad,
    pad_id,
    prefill,
    stop_ids,
)


@dataclass
class SamplingStats:
    """What one or more sampling calls cost; ``prefill_rows`` counts prompt encodings.

    Shared-prefill sampling encodes every prompt once (``prefill_rows == prompts``); transformers'
    ``generate(num_return_sequences=m)`` encodes it m times.
    """

    prompts: int = 0
    samples: int = 0
    prefill_calls: int = 0  # forward passes over prompt tokens (one per prompt batch)
    prefill_rows: int = 0  # prompt rows those passes encoded
    prompt_tokens: int = 0  # real (unpadded) prompt tokens encoded
    decode_steps: int = 0  # one-token forward passes over the expanded batch
    new_tokens: int = 0  # tokens kept in the returned texts' rows, up to and including a stop token
    wall_s: float = 0.0

    @property
    def prefills_per_prompt(self) -> float:
        return self.prefill_rows / self.prompts if self.prompts else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"prefills_per_prompt": self.prefills_per_prompt}


@torch.inference_mode()
def greedy_generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 8,
    generation_kwargs: dict | None = None,
    progress: bool = True,
) -> list[str]:
    """Greedy continuation of each (already rendered) prompt; returns the new text only.

    Prompts are tokenized like the scorer (``lm.encode``: no second BOS after a chat template),
    left-padded so every row's new tokens start at the same column, and cut at the first stop token
    (an output that starts with one is ""). ``generation_kwargs`` go to ``model.generate`` (e.g. a
    ``logits_processor``); they cannot switch sampling back on. ``progress`` shows a ``tqdm.auto``
    bar over prompts (a widget in Jupyter, a line on the console).
    """
    from tqdm.auto import tqdm

    pad = pad_id(tokenizer)
    stop = stop_ids(model, tokenizer)
    kwargs = dict(generation_kwargs or {})
    kwargs.update(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad)
    # Greedy decoding ignores temperature/top_p/top_k; unsetting them silences transformers' warning
    # about a sampling-flavoured generation_config.
    kwargs.update(temperature=None, top_p=None, top_k=None)
    out: list[str] = []
    prompts = list(prompts)
    with (
        eval_mode(model),
        tqdm(total=len(prompts), desc="generating", unit="prompt", disable=not progress) as bar,
    ):
        for batch in batches(prompts, batch_size):
            ids, mask = left_pad([encode(tokenizer, p) for p in batch], pad, input_device(model))
            gen = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            out.extend(decode_new(tokenizer, row, stop) for row in gen[:, ids.shape[1] :].tolist())
            bar.update(len(batch))
    return out


def _batch_seed(seed: int, batch_index: int) -> int:
    # A batch's draws depend only on (seed, its index), not on how many tokens earlier batches drew.
    return (seed * 1_000_003 + batch_index) % (2**63)


# Top-p candidates taken with ``topk`` before falling back to a full sort (see ``_top_p_candidates``).
TOP_P_CANDIDATES = 1024


def _top_p_full(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` with every token outside the top-p nucleus set to -inf (sorts the vocabulary)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(-1) - probs
    sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def _top_p_candidates(
    logits: torch.Tensor, top_p: float, n: int = TOP_P_CANDIDATES
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The nucleus from the ``n`` most likely tokens only: (masked candidate logits, token ids).

    Exact whenever those ``n`` tokens hold at least ``top_p`` of the mass in every row: every token
    outside them is then preceded by >= top_p and dropped anyway, and the candidates' running mass
    is the same as in a full sort. Returns None otherwise (a flat distribution), and the caller
    sorts. A full sort of a 262k vocabulary costs more than the rest of a Gemma-3-270M decode step
    on CPU; ``topk`` of 1024 costs a few percent of it.
    """
    n = min(n, logits.shape[-1])
    values, ids = torch.topk(logits, n, dim=-1)  # descending
    probs = torch.exp(values - torch.logsumexp(logits, dim=-1, keepdim=True))
    if bool((probs.sum(-1) < top_p).any()):
        return None
    mass_before = probs.cumsum(-1) - probs
    return values.masked_fill(mass_before >= top_p, float("-inf")), ids


def _next_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, top_k: int, gen: torch.Generator
) -> torch.Tensor:
    """One token per row: argmax when temperature <= 0 or top_k == 1, else top-k/top-p sampling.

    Top-p keeps the smallest set of most likely tokens whose mass reaches ``top_p`` (the most likely
    token always survives), as transformers' ``TopPLogitsWarper`` does.
    """
    if temperature <= 0 or top_k == 1:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        nucleus = _top_p_candidates(logits, top_p)
        if nucleus is not None:
            values, ids = nucleus
            pick = torch.multinomial(torch.softmax(values, dim=-1), 1, generator=gen)
            return ids.gather(-1, pick).squeeze(-1)
        logits = _top_p_full(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


@torch.inference_mode()
def sample_shared_prefill(
    model,
    tokenizer,
    prompts: Sequence[str],
    m: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 8,
    top_k: int = 0,
    stats: SamplingStats | None = None,
    progress: bool = True,
) -> list[list[str]]:
    """``m`` sampled continuations of each rendered prompt, each prompt encoded exactly once.

    ``generate(num_return_sequences=m)`` repeats every prompt m times before its prefill, so a long
    prompt (a passage plus options) is encoded m times. Here each batch of prompts gets ONE forward
    pass over all its tokens (left-padded, logits only at the last position), the KV cache and those
    last logits are repeated m times (``Cache.batch_repeat_interleave``), and the m rows are then
    decoded token by token with temperature, top-k and top-p. Prefilling every prompt token (rather
    than all but the last and re-feeding it m times) gives the same first-token distribution with no
    repeated work.

    Deterministic for a fixed ``seed`` and batch composition: batch b draws from its own
    ``torch.Generator`` seeded from (seed, b), so the global RNG is neither used nor disturbed.
    ``temperature <= 0`` or ``top_k == 1`` decodes greedily. Returns ``out[i][j]``: the j-th sample
    for prompt i, new text only, cut at the first stop token. ``stats`` (if given) accumulates the
    prefill and decode counts. ``progress`` shows a ``tqdm.auto`` bar over prompts.
    """
    from tqdm.auto import tqdm

    if m < 1:
        raise ValueError(f"m={m} must be >= 1")
    stats = stats if stats is not None else SamplingStats()
    pad = pad_id(tokenizer)
    stop = stop_ids(model, tokenizer)
    device = input_device(model)
    stop_tensor = torch.tensor(sorted(stop) or [pad], device=device)
    t0 = time.perf_counter()
    out: list[list[str]] = []
    prompts = list(prompts)
    with (
        eval_mode(model),
        tqdm(
            total=len(prompts), desc=f"sampling (m={m})", unit="prompt", disable=not progress
        ) as bar,
    ):
        for b, batch in enumerate(batches(prompts, batch_size)):
            gen = torch.Generator(device=device).manual_seed(_batch_seed(seed, b))
            first, mask = prefill(model, [encode(tokenizer, p) for p in batch], pad, device)
            stats.prefill_calls += 1
            stats.prefill_rows += len(batch)
            stats.prompt_tokens += int(mask.sum().item())
            cache = first.past_key_values
            if cache is None or not hasattr(cache, "batch_repeat_interleave"):
                raise TypeError(f"{type(model).__name__} returned no expandable KV cache")
            cache.batch_repeat_interleave(m)
            logits = first.logits[:, -1].float().repeat_interleave(m, dim=0)
            mask = mask.repeat_interleave(m, dim=0)
            next_pos = mask.sum(-1, keepdim=True)
            done = torch.zeros(len(batch) * m, dtype=torch.bool, device=device)
            steps: list[torch.Tensor] = []
            for step in range(max_new_tokens):
                tok = _next_tokens(logits, temperature, top_p, top_k, gen)
                # Finished rows keep decoding (cheaper than reshaping the cache) but emit padding.
                tok = torch.where(done, torch.full_like(tok, pad), tok)
                stats.new_tokens += int((~done).sum().item())
                steps.append(tok)
                done |= torch.isin(tok, stop_tensor)
                if bool(done.all()) or step == max_new_tokens - 1:
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                step_out = model(
                    input_ids=tok[:, None],
                    attention_mask=mask,
                    position_ids=next_pos,
                    past_key_values=cache,
                    use_cache=True,
                )
                stats.decode_steps += 1
                next_pos = next_pos + 1
                logits = step_out.logits[:, -1].float()
            rows = (
                torch.stack(steps, dim=1).tolist() if steps else [[] for _ in range(len(batch) * m)]
            )
            texts = [decode_new(tokenizer, row, stop) for row in rows]
            out.extend(texts[i * m : (i + 1) * m] for i in range(len(batch)))
            bar.update(len(batch))
    stats.prompts += len(prompts)
    stats.samples += len(prompts) * m
    stats.wall_s += time.perf_counter() - t0
    return out
