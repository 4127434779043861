"""Probe answers without generation: first-token log-probs of both answers from one cached forward.

Also the NoMIRACL-compatible parser and greedy generation for the probe's generation mode.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import torch

from xlalign.probe.build import ANSWER_ABSENT, ANSWER_PRESENT

log = logging.getLogger(__name__)

INVALID = "Invalid"
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
)

# NoMIRACL's VanillaTemplate(count=10) builds f"\[(\d+|{max_count})\]"; spelled out here.
_REFERENCE_RE = re.compile(r"\[(\d+|10)\]")


# --------------------------------------------------------------------------- parsing


def parse_nomiracl(text) -> str:
    """Map a model output to ANSWER_PRESENT, ANSWER_ABSENT or "Invalid", as NoMIRACL does.

    Mirrors ``nomiracl.prompts.template.VanillaTemplate().postprocess`` (nomiracl 1.0.0) branch for
    branch: newlines and tabs become spaces, the text is lower-cased (``str.lower``, not casefold),
    then

    1. both phrases present -> Invalid;
    2. "i don't know" present -> ANSWER_ABSENT;
    3. "yes, answer is present" present -> ANSWER_PRESENT;
    4. "answer is present" -> ANSWER_PRESENT, then "answer is not present" -> ANSWER_ABSENT;
    5. a "[n]" reference in a response shorter than 10 characters -> ANSWER_PRESENT;
    6. anything else (including "") -> Invalid.

    Nothing is stripped and "\\r" is kept, exactly as in the reference; a curly apostrophe
    ("I don’t know") is therefore Invalid there and here.

    Where we deliberately differ:

    * Both phrases present. The reference tests ``count_word(response, answer) > 1``, but
      ``count_word`` compares whitespace-split single words with the multi-word phrase, so it is
      always 0 and the branch always ends in Invalid. We return Invalid directly instead of
      "taking the phrase that occurs first": with a 12-token budget both phrases appear almost only
      when the model echoes the instruction's '"Yes, answer is present" or "I don't know"', and the
      first-phrase rule would score every such echo as "present" -- a free 50% on a balanced test
      set for a model that did not answer. Same result as the reference, without its dead code.
    * Input that is not ``str``. The reference raises (``None`` has no ``.replace``; ``bytes``
      gets a TypeError); we decode ``bytes`` as UTF-8 with replacement characters and map any
      other non-string (e.g. ``None`` from a failed generation) to Invalid, so one bad output
      cannot abort a long evaluation.
    """
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return INVALID
    response = text.replace("\n", " ").replace("\t", " ").lower()
    has_present = ANSWER_PRESENT.lower() in response
    has_absent = ANSWER_ABSENT.lower() in response
    if has_present and has_absent:
        return INVALID
    if has_absent:
        return ANSWER_ABSENT
    if has_present:
        return ANSWER_PRESENT
    if "answer is present" in response:
        return ANSWER_PRESENT
    if "answer is not present" in response:
        return ANSWER_ABSENT
    if _REFERENCE_RE.search(response) and len(response) < 10:
        return ANSWER_PRESENT
    return INVALID


# --------------------------------------------------------------------------- tokenization


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt (or prompt + answer) as the model sees them.

    Chat templates write the BOS token into the text themselves; adding it again would give the
    model a double BOS it was not trained with (TRL's ORPO adds BOS only "if needed" for the same
    reason). Plain prompts get the tokenizer's usual special tokens, e.g. Gemma's <bos>.
    """
    bos = tokenizer.bos_token
    add_special = not (bos and text.startswith(bos))
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]


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


# --------------------------------------------------------------------------- model helpers


@contextmanager
def _eval_mode(model):
    """Dropout off for the duration (evaluation may run mid-training); restores the old mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _input_device(model) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    # The pad id only fills masked positions, so any valid id works when the tokenizer has none.
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _left_pad(
    seqs: Sequence[Sequence[int]], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    if size < 1:
        raise ValueError(f"batch_size={size} must be >= 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------- scoring mode


@torch.inference_mode()
def score_prompts(
    model, tokenizer, rendered_prompts: Sequence[str], batch_size: int = 8
) -> list[dict]:
    """Decide each prompt by the first-token log-probs of the two answers; also score whole answers.

    Per batch, ONE forward pass over the left-padded contexts returns logits at the last position
    only (``logits_to_keep=1``) plus the KV cache. The cache is then repeated for the two answers
    and only their remaining tokens are run through the model, so the prompt is never encoded twice
    and no full-vocabulary logits exist for prompt positions.

    Returns per prompt: ``pred`` (the answer with the larger first-token log-prob; a tie goes to
    ANSWER_ABSENT), ``logp_first_present``/``logp_first_absent`` and ``logp_full_present``/
    ``logp_full_absent`` (sum of token log-probs of the whole answer string, without EOS).
    """
    pad_id = _pad_id(tokenizer)
    results: list[dict] = []
    with _eval_mode(model):
        for batch in _batches(list(rendered_prompts), batch_size):
            splits = [answer_tokens(tokenizer, p) for p in batch]
            results.extend(_score_batch(model, splits, pad_id))
    return results


def _score_batch(
    model, splits: list[tuple[list[int], list[int], list[int]]], pad_id: int
) -> list[dict]:
    device = _input_device(model)
    ids, mask = _left_pad([ctx for ctx, _, _ in splits], pad_id, device)
    # Left padding shifts every real token; positions must count real tokens only.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=1,
    )
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    first_ids = torch.tensor([[p[0], a[0]] for _, p, a in splits], device=first.device)
    first_lp = first.gather(1, first_ids)  # (B, 2): present, absent

    # Continuations interleaved (item0 present, item0 absent, item1 present, ...) to line up with
    # ``batch_repeat_interleave(2)`` of the cache.
    conts = [c for _, p, a in splits for c in (p, a)]
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
        out2 = model(
            input_ids=cont_ids,
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


# --------------------------------------------------------------------------- generation mode


def _stop_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update(eos if isinstance(eos, list | tuple) else [eos])
    return {int(i) for i in ids}


def _decode_new(tokenizer, new_ids: list[int], stop: set[int]) -> str:
    cut = next((i for i, t in enumerate(new_ids) if t in stop), len(new_ids))
    text = tokenizer.decode(new_ids[:cut], skip_special_tokens=True)
    # A token cut mid-character decodes to U+FFFD already; lone surrogates would still break the
    # UTF-8 JSONL writer, so round-trip through UTF-8 with replacement.
    return text.encode("utf-8", errors="replace").decode("utf-8")


@torch.inference_mode()
def generate_prompts(
    model,
    tokenizer,
    rendered_prompts: Sequence[str],
    max_new_tokens: int = 12,
    batch_size: int = 8,
    generation_kwargs: dict | None = None,
) -> list[dict]:
    """Greedy decoding of each prompt; returns ``raw`` (new text only) and ``pred`` (parsed).

    Prompts are tokenized exactly as in scoring mode and left-padded. Text stops at the first EOS;
    an empty output parses as Invalid. ``generation_kwargs`` go to ``model.generate`` (e.g. a
    ``logits_processor``); they cannot switch sampling back on.
    """
    pad_id = _pad_id(tokenizer)
    stop = _stop_ids(model, tokenizer)
    kwargs = dict(generation_kwargs or {})
    kwargs.update(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_id)
    # Greedy decoding ignores these; unsetting them keeps transformers from warning per batch.
    kwargs.update(temperature=None, top_p=None, top_k=None)
    results: list[dict] = []
    with _eval_mode(model):
        for batch in _batches(list(rendered_prompts), batch_size):
            ids, mask = _left_pad(
                [encode(tokenizer, p) for p in batch], pad_id, _input_device(model)
            )
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            for row in out[:, ids.shape[1] :].tolist():
                raw = _decode_new(tokenizer, row, stop)
                results.append({"raw": raw, "pred": parse_nomiracl(raw)})
    return results
