"""xlalign.training.shared_prompt: one prefill per prompt gives the concatenated forward's completion logits."""

from __future__ import annotations

import pytest
import torch

from xlalign.training.shared_prompt import shared_prompt_logits, split_pairs, token_logps

PROMPTS = [[5, 17, 23, 9, 41, 8], [7, 3, 99], [12, 13, 14, 15]]
COMPLETIONS = [
    [30, 31, 2],
    [44],
    [50, 51],
    [60, 2],
    [70, 71, 72, 73],
    [80],
]  # chosen x3, rejected x3


def concatenated_logps(model, prompts, completions, pad_id):
    """Reference: prompt + completion as one right-padded row each, log-probs of the completion tokens."""
    n = len(completions) // len(prompts)
    rows = [prompts[r % len(prompts)] + completions[r] for r in range(len(completions))]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    logp = torch.log_softmax(model(ids, attention_mask=mask, use_cache=False).logits.float(), -1)
    out = []
    for r, comp in enumerate(completions):
        start = len(prompts[r % len(prompts)])
        out.append(torch.stack([logp[r, start - 1 + t, tok] for t, tok in enumerate(comp)]))
    assert n == 2
    return out


class ForwardLog:
    """Forward pre-hook on the model: (rows, columns) of the input_ids of every forward call."""

    def __init__(self, model):
        self.calls: list[tuple[int, int]] = []
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls.append(tuple(ids.shape))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_shared_prompt_matches_concatenated_forward_values_and_gradients(tiny_model_and_tokenizer):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny_model_and_tokenizer
    torch.manual_seed(0)
    model = get_peft_model(
        model,
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        ),
    )
    params = [p for p in model.parameters() if p.requires_grad]

    model.zero_grad()
    ref = concatenated_logps(model, PROMPTS, COMPLETIONS, tok.pad_token_id)
    torch.stack([x.sum() for x in ref]).sum().backward()
    g_ref = [p.grad.clone() for p in params]

    model.zero_grad()
    with ForwardLog(model) as log:
        logits, targets, mask = shared_prompt_logits(model, PROMPTS, COMPLETIONS, tok.pad_token_id)
    # One pass over the 3 left-padded prompts (6 columns), one over the 6 completions minus their
    # last token (3 columns): no prompt token is fed twice.
    assert log.calls == [(3, 6), (6, 3)]
    lp = token_logps(logits, targets, mask)
    assert logits.shape[:2] == (6, 4) and mask.sum().item() == sum(len(c) for c in COMPLETIONS)
    for r, comp in enumerate(COMPLETIONS):
        assert targets[r, : len(comp)].tolist() == comp
        torch.testing.assert_close(lp[r, : len(comp)], ref[r].detach(), atol=1e-5, rtol=1e-5)
        assert (lp[r, len(comp) :] == 0).all()
    lp.sum().backward()
    assert any(g.abs().max() > 0 for g in g_ref)
    for a, b in zip(params, g_ref, strict=True):
        torch.testing.assert_close(a.grad, b, atol=1e-5, rtol=1e-4)


def test_single_token_completions_need_no_second_pass(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    comps = [[30], [44], [50], [60], [70], [80]]
    with torch.no_grad(), ForwardLog(model) as log:
        logits, targets, mask = shared_prompt_logits(model, PROMPTS, comps, tok.pad_token_id)
    # Exactly one forward, over the 3 prompts (padded to the longest, 6 tokens): each prompt is
    # encoded once and the single-token completions need nothing more.
    assert log.calls == [(3, 6)]
    with torch.no_grad():
        ref = concatenated_logps(model, PROMPTS, comps, tok.pad_token_id)
    lp = token_logps(logits, targets, mask)
    torch.testing.assert_close(lp[:, 0], torch.stack([x[0] for x in ref]), atol=1e-5, rtol=1e-5)


def test_bad_shapes_are_refused(tiny_model_and_tokenizer):
    model, tok = tiny_model_and_tokenizer
    with pytest.raises(ValueError, match="n per prompt"):
        shared_prompt_logits(model, PROMPTS, COMPLETIONS[:5], tok.pad_token_id)
    with pytest.raises(ValueError, match="at least one token"):
        shared_prompt_logits(model, PROMPTS, COMPLETIONS[:5] + [[]], tok.pad_token_id)


def _batch(rows, completion_starts):
    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    att = torch.zeros_like(ids)
    comp = torch.zeros_like(ids)
    for i, (r, s) in enumerate(zip(rows, completion_starts, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        att[i, : len(r)] = 1
        comp[i, s : len(r)] = 1
    return ids, att, comp


def test_split_pairs_recovers_prompts_and_completions():
    rows = [[1, 2, 3, 10, 11], [4, 5, 12], [1, 2, 3, 20], [4, 5, 21, 22, 23]]
    prompts, comps = split_pairs(*_batch(rows, [3, 2, 3, 2]))
    assert prompts == [[1, 2, 3], [4, 5]]
    assert comps == [[10, 11], [12], [20], [21, 22, 23]]


@pytest.mark.parametrize(
    ("rows", "starts"),
    [
        ([[1, 2, 3, 10], [4, 5, 12], [1, 9, 3, 20], [4, 5, 21]], [3, 2, 3, 2]),  # prompts differ
        ([[1, 2, 3], [4, 5, 12], [1, 2, 3, 20], [4, 5, 21]], [3, 2, 3, 2]),  # empty completion
        ([[1, 2, 3, 10]], [3]),  # odd number of rows
    ],
)
def test_split_pairs_declines_batches_it_cannot_share(rows, starts):
    assert split_pairs(*_batch(rows, starts)) is None
