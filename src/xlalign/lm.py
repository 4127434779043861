"""The token-level helpers every stage that runs the language model shares (evaluation, generation,
training): prompt encoding, left padding and its positions, pad and stop ids, batching, eval mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import torch


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt (or prompt + answer) as the model sees them.

    Chat templates write the BOS token into the text themselves; adding it again would give the
    model a double BOS it was not trained with (TRL's ORPO adds BOS only "if needed" for the same
    reason). Plain prompts get the tokenizer's usual special tokens, e.g. Gemma's <bos>.
    """
    bos = tokenizer.bos_token
    add_special = not (bos and text.startswith(bos))
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]


def pad_id(tokenizer) -> int:
    """The id that fills padded positions: the pad token, else EOS, else 0.

    The pad id only fills masked positions, so any valid id works when the tokenizer has none.
    """
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def left_pad(
    rows: Sequence[Sequence[int]], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids, mask), padded on the left so that every row ends at the last column.

    An empty row is all padding (mask 0).
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: left padding shifts every real token, so positions count
    real tokens only (the first real token is at 0; padding gets 0 too)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def prefill(model, rows: Sequence[Sequence[int]], pad: int, device):
    """Encode left-padded token rows once, keeping the KV cache and the last position's logits only.

    Returns ``(output, mask)``: ``output.logits[:, -1]`` predicts each row's next token and
    ``output.past_key_values`` continues every row (scoring, sampling, shared-prompt training).
    Gradients flow when called outside ``torch.no_grad``.
    """
    ids, mask = left_pad(rows, pad, device)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=positions(mask),
        use_cache=True,
        logits_to_keep=1,
    )
    return out, mask


def stop_ids(model, tokenizer) -> set[int]:
    """Every EOS id of the model's generation config and of the tokenizer."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            ids.update(eos if isinstance(eos, list | tuple) else [eos])
    return {int(i) for i in ids}


def decode_new(tokenizer, new_ids: list[int], stop: set[int]) -> str:
    """The text of generated ``new_ids`` up to (not including) the first id in ``stop``."""
    cut = next((i for i, t in enumerate(new_ids) if t in stop), len(new_ids))
    text = tokenizer.decode(new_ids[:cut], skip_special_tokens=True)
    # A token cut mid-character decodes to U+FFFD already; lone surrogates would still break the
    # UTF-8 JSONL writer, so round-trip through UTF-8 with replacement.
    return text.encode("utf-8", errors="replace").decode("utf-8")


@contextmanager
def eval_mode(model):
    """Dropout off for the duration (evaluation may run mid-training); restores the old mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def input_device(model) -> torch.device:
    """Where the model's inputs go: ``model.device`` when it has one, else its first parameter's."""
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def batches(items: Sequence, size: int) -> Iterable[Sequence]:
    """Consecutive slices of ``items`` of length ``size`` (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"batch_size={size} must be >= 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]
