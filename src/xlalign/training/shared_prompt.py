"""Encode a prompt once for several completions: differentiable prefill + KV-cache continuation.

A preference pair is one prompt with two completions. Concatenating ``prompt + chosen`` and
``prompt + rejected`` (what TRL does) runs the prompt through the model twice, although the probe's
prompts are ~340-530 tokens and its completions 3-6. Here the prompt is encoded once, with gradients,
its KV cache is repeated for the completions, and only the completion tokens go through the model a
second time. The logits at completion positions are the same values as in the concatenated forward
(``tests/test_shared_prompt.py`` checks values and gradients against it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from xlalign.training.frozen_cache import prefill_reusing


def shared_prompt_logits(
    model,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits that predict every completion token, with each prompt encoded once.

    ``prompts``: B token lists. ``completions``: n*B token lists, branch-major: row ``k*B + b``
    continues prompt ``b`` (for a preference batch, the B chosen then the B rejected completions).
    Every completion needs at least one token.

    Returns ``(logits, targets, mask)``, each with n*B rows and ``C = max completion length`` columns:
    ``logits[r, t]`` (float, vocabulary last) predicts ``targets[r, t]`` = token t of completion r;
    ``mask`` is 1 where that token exists. Gradients flow into the prompt's encoding.

    With a ``frozen_cache.FrozenStates`` attached to the model, the frozen lower layers are not run:
    their states come from the store (``frozen_cache.prefill_reusing``), the same values.
    """
    n_prompts = len(prompts)
    if n_prompts == 0 or len(completions) % n_prompts:
        raise ValueError(
            f"{len(completions)} completions for {n_prompts} prompts: need n per prompt"
        )
    if any(len(p) == 0 for p in prompts) or any(len(c) == 0 for c in completions):
        raise ValueError("every prompt and every completion needs at least one token")
    n = len(completions) // n_prompts
    device = next(model.parameters()).device
    # Row order for the continuation pass: interleaved (prompt b, branch k) -> b*n + k, which lines up
    # with ``batch_repeat_interleave(n)`` of the cache; ``back`` maps it to branch-major order.
    inter = [k * n_prompts + b for b in range(n_prompts) for k in range(n)]
    feeds = [list(completions[r])[:-1] for r in inter]
    owner = [r % n_prompts for r in inter]
    out, mask, forward = prefill_reusing(model, prompts, pad_id, device, feeds, owner)
    last = out.logits[:, -1]  # (B, V): predicts each completion's first token

    back = torch.empty(len(inter), dtype=torch.long)
    back[torch.as_tensor(inter)] = torch.arange(len(inter))
    back = back.to(device)
    width = max(len(c) for c in completions)
    targets = torch.zeros((len(completions), width), dtype=torch.long)
    comp_mask = torch.zeros((len(completions), width), dtype=torch.long)
    for r, c in enumerate(completions):
        targets[r, : len(c)] = torch.as_tensor(list(c), dtype=torch.long)
        comp_mask[r, : len(c)] = 1
    targets, comp_mask = targets.to(device), comp_mask.to(device)

    first = last.repeat_interleave(n, dim=0)  # interleaved order
    if width > 1:
        cache = out.past_key_values
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            raise TypeError(f"{type(model).__name__} returned no expandable KV cache")
        cache.batch_repeat_interleave(n)
        # Feed each completion but its last token; right padding is safe here because the causal mask
        # keeps real tokens from seeing the padding after them.
        cont_ids = targets[inter, :-1].masked_fill(comp_mask[inter, :-1] == 0, pad_id)
        cont_mask = comp_mask[inter, :-1]
        ctx_mask = mask.repeat_interleave(n, dim=0)
        start = ctx_mask.sum(-1, keepdim=True)
        out2 = forward(
            cont_ids,
            attention_mask=torch.cat([ctx_mask, cont_mask], dim=1),
            position_ids=start + torch.arange(width - 1, device=device),
            past_key_values=cache,
            use_cache=True,
        )
        logits = torch.cat([first.unsqueeze(1), out2.logits], dim=1)
    else:
        logits = first.unsqueeze(1)
    return logits[back].float(), targets, comp_mask


def token_logps(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token log-probabilities of ``targets`` (0 where ``mask`` is 0)."""
    lp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return lp * mask


def split_pairs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor
) -> tuple[list[list[int]], list[list[int]]] | None:
    """(prompts, completions) of a TRL preference batch whose rows are [chosen..., rejected...].

    Each row's prompt is its attended tokens outside the completion; the completion, the attended
    tokens inside it. Returns None when a pair's two prompts differ, when a prompt does not precede
    its completion, or when a completion is empty: the caller then uses the concatenated forward.
    """
    rows = input_ids.shape[0]
    if rows % 2:
        return None
    prompts, comps = [], []
    for r in range(rows):
        att = attention_mask[r].bool()
        comp = completion_mask[r].bool() & att
        prompt = att & ~comp
        idx_p = prompt.nonzero().flatten()
        idx_c = comp.nonzero().flatten()
        if len(idx_c) == 0 or len(idx_p) == 0 or idx_p.max() > idx_c.min():
            return None
        prompts.append(input_ids[r, idx_p].tolist())
        comps.append(input_ids[r, idx_c].tolist())
    half = rows // 2
    if any(prompts[b] != prompts[b + half] for b in range(half)):
        return None
    return prompts[:half], comps
