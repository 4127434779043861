"""Probe answers without generation: first-token log-probs of both answers from one cached forward.

Also greedy generation + NoMIRACL parsing for the probe's generation mode (``generate_prompts``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch

from xlalign.evaluation.parse import INVALID, parse_nomiracl
from xlalign.generation import greedy_generate
from xlalign.lm import batches, encode, eval_mode, input_device, pad_id
from xlalign.probe.build import ANSWER_ABSENT, ANSWER_PRESENT
from xlalign.training.frozen_cache import prefill_reusing

log = logging.getLogger(__name__)

MODES = ("scoring", "generation")
SCORE_COLUMNS = (
    "logp_first_present",
    "logp_first_absent",
    "logp_full_present",
    "logp_full_absent",
)
PRED_COLUMNS = (
    "item_id",
    "sample_id",
    "query_id",
    "lang",
    "label",
    "pred",
    "correct",
    "invalid",
    "raw",
    *SCORE_COLUMNS,
    "mode",
    "fault",
)
# ``fault`` of an item whose first-token log-probs are NaN or infinite: a numerical failure of the
# model, not an answer. The item is Invalid (never "I don't know" by a NaN comparison).
NONFINITE = "nonfinite first-token log-probs"


# --------------------------------------------------------------------------- tokenization


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def answer_tokens(tokenizer, rendered_prompt: str) -> tuple[list[int], list[int], list[int]]:
    """(context ids, ANSWER_PRESENT continuation ids, ANSWER_ABSENT continuation ids).

    Each answer is tokenized together with the prompt, as in training. Where a tokenizer merges the
    prompt's last token with the answer's first (a prompt ending in a space and " Yes" becoming one
    token), the tokenized prompt is not a prefix of prompt + answer; the context then stops where
    the two diverge and the merged token opens both continuations -- TRL's DPO trainer splits its
    training sequences the same way (``common_prefix_length``).
    """
    prompt_ids = encode(tokenizer, rendered_prompt)
    full_present = encode(tokenizer, rendered_prompt + ANSWER_PRESENT)
    full_absent = encode(tokenizer, rendered_prompt + ANSWER_ABSENT)
    n = min(_common_prefix(prompt_ids, full_present), _common_prefix(prompt_ids, full_absent))
    present, absent = full_present[n:], full_absent[n:]
    if n == 0:
        raise ValueError(f"prompt {rendered_prompt[:60]!r} leaves no context token to score from")
    # The first-token decision needs the two answers to part at their first token ("Yes" vs "I").
    if not present or not absent or present[0] == absent[0]:
        raise ValueError(
            f"the two answers do not differ at their first token after prompt "
            f"{rendered_prompt[-60:]!r} (present={present[:3]}, absent={absent[:3]}); "
            "first-token scoring is undefined for this tokenizer/prompt format"
        )
    return full_present[:n], present, absent


# --------------------------------------------------------------------------- scoring mode


@torch.inference_mode()
def score_prompts(
    model, tokenizer, rendered_prompts: Sequence[str], batch_size: int = 8, progress: bool = False
) -> list[dict]:
    """Decide each prompt by the first-token log-probs of the two answers; also score whole answers.

    Per batch, ONE forward pass over the left-padded contexts returns logits at the last position
    only (``logits_to_keep=1``) plus the KV cache. The cache is then repeated for the two answers
    and only their remaining tokens are run through the model, so the prompt is never encoded twice
    and no full-vocabulary logits exist for prompt positions.

    Returns per prompt: ``pred`` (the answer with the larger first-token log-prob; a tie goes to
    ANSWER_ABSENT), ``logp_first_present``/``logp_first_absent`` and ``logp_full_present``/
    ``logp_full_absent`` (sum of token log-probs of the whole answer string, without EOS). Where
    a first-token log-prob is NaN or infinite, ``pred`` is Invalid, ``fault`` says why and the
    non-finite scores are None.

    ``progress`` shows a ``tqdm.auto`` bar over prompts; off by default because
    ``predictions.evaluate_probe`` calls this once per batch under its own per-item bar.
    """
    from tqdm.auto import tqdm

    pad = pad_id(tokenizer)
    results: list[dict] = []
    prompts = list(rendered_prompts)
    with (
        eval_mode(model),
        tqdm(total=len(prompts), desc="scoring", unit="prompt", disable=not progress) as bar,
    ):
        for batch in batches(prompts, batch_size):
            splits = [answer_tokens(tokenizer, p) for p in batch]
            results.extend(_score_batch(model, splits, pad))
            bar.update(len(batch))
    return results


def _score_batch(
    model, splits: list[tuple[list[int], list[int], list[int]]], pad_id: int
) -> list[dict]:
    device = input_device(model)
    # Continuations interleaved (item0 present, item0 absent, item1 present, ...) to line up with
    # ``batch_repeat_interleave(2)`` of the cache.
    conts = [c for _, p, a in splits for c in (p, a)]
    # With a frozen-state store attached (training.frozen_cache), the frozen lower layers are not run.
    out, mask, forward = prefill_reusing(
        model, [ctx for ctx, _, _ in splits], pad_id, device, [c[:-1] for c in conts],
        [j // 2 for j in range(len(conts))],
    )  # fmt: skip
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    first_ids = torch.tensor([[p[0], a[0]] for _, p, a in splits], device=first.device)
    first_lp = first.gather(1, first_ids)  # (B, 2): present, absent

    rest = torch.zeros(len(conts), device=first.device)
    width = max(len(c) for c in conts) - 1
    if width > 0:
        cache = out.past_key_values
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            raise TypeError(f"{type(model).__name__} returned no expandable KV cache")
        cache.batch_repeat_interleave(2)
        # Feed each answer minus its last token; right padding here is safe because the causal
        # mask keeps real continuation tokens from ever seeing the padding after them.
        cont_ids = torch.full((len(conts), width), pad_id, dtype=torch.long)
        targets = torch.zeros((len(conts), width), dtype=torch.long)
        cont_mask = torch.zeros((len(conts), width), dtype=torch.long)
        for i, c in enumerate(conts):
            n = len(c) - 1
            if n:
                cont_ids[i, :n] = torch.tensor(c[:-1])
                targets[i, :n] = torch.tensor(c[1:])
                cont_mask[i, :n] = 1
        cont_ids, targets, cont_mask = cont_ids.to(device), targets.to(device), cont_mask.to(device)
        ctx_mask = mask.repeat_interleave(2, dim=0)
        start = ctx_mask.sum(-1, keepdim=True)
        out2 = forward(
            cont_ids,
            attention_mask=torch.cat([ctx_mask, cont_mask], dim=1),
            position_ids=start + torch.arange(width, device=device),
            past_key_values=cache,
            use_cache=True,
        )
        token_lp = torch.log_softmax(out2.logits.float(), dim=-1)
        token_lp = token_lp.gather(2, targets.to(token_lp.device).unsqueeze(-1)).squeeze(-1)
        rest = (token_lp * cont_mask.to(token_lp.device)).sum(-1).to(first.device)
    full_lp = first_lp + rest.view(-1, 2)

    results = []
    for (fp, fa), (up, ua) in zip(first_lp.tolist(), full_lp.tolist(), strict=True):
        if not (math.isfinite(fp) and math.isfinite(fa)):
            # NaN > x is False: without this a broken model would answer "I don't know" everywhere.
            # Non-finite values are kept out of the file (null; strict JSON has no NaN).
            results.append(
                {
                    "pred": INVALID,
                    "fault": f"{NONFINITE} ({fp}, {fa})",
                    **{
                        c: _finite_or_none(v)
                        for c, v in zip(SCORE_COLUMNS, (fp, fa, up, ua), strict=True)
                    },
                }
            )
            continue
        results.append(
            {
                "pred": ANSWER_PRESENT if fp > fa else ANSWER_ABSENT,
                "logp_first_present": fp,
                "logp_first_absent": fa,
                "logp_full_present": up,
                "logp_full_absent": ua,
            }
        )
    return results


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


# --------------------------------------------------------------------------- generation mode


def generate_prompts(
    model,
    tokenizer,
    rendered_prompts: Sequence[str],
    max_new_tokens: int = 12,
    batch_size: int = 8,
    generation_kwargs: dict | None = None,
) -> list[dict]:
    """Greedy decoding of each prompt; returns ``raw`` (new text only) and ``pred`` (parsed).

    ``generation.greedy_generate`` does the decoding: prompts are tokenized exactly as in scoring
    mode and left-padded, and text stops at the first EOS; an empty output parses as Invalid.
    ``generation_kwargs`` go to ``model.generate`` (e.g. a ``logits_processor``); they cannot switch
    sampling back on.
    """
    texts = greedy_generate(  # evaluate_probe shows the per-item bar; none per batch here
        model,
        tokenizer,
        rendered_prompts,
        max_new_tokens,
        batch_size,
        generation_kwargs,
        progress=False,
    )
    return [{"raw": raw, "pred": parse_nomiracl(raw)} for raw in texts]
