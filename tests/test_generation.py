"""Tests for xlalign.generation on the tiny model: greedy decoding, and shared-prefill sampling that
encodes each prompt once, matches ``generate`` under greedy settings and is seeded."""

from __future__ import annotations

import pytest
import torch

from xlalign.generation import SamplingStats, greedy_generate, sample_shared_prefill
from xlalign.lm import encode, left_pad, pad_id

PROMPTS = [
    "Question: which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Mercury\nAnswer:",
    "Pregunta: ¿cuál es la capital de Francia?",
    "问题：哪个选项正确？",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tiny model's ops are microseconds long: on a shared 2-core machine, torch's second
    OpenMP thread spin-waits for a busy core and makes them ~15x slower. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(tiny_profile, tiny_model_dir, tiny_tokenizer):
    """One float32 tiny model for the module: these tests only run inference."""
    from xlalign.models import load_model

    model, _ = load_model(tiny_profile)
    model.eval()
    return model, tiny_tokenizer


class ForwardLog:
    """Records (rows, new tokens) of every forward call of ``model``."""

    def __init__(self, model):
        self.calls: list[tuple[int, int]] = []
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls.append(tuple(ids.shape))

    @property
    def prefills(self) -> list[tuple[int, int]]:
        return [c for c in self.calls if c[1] > 1]

    def close(self):
        self.handle.remove()


def _generate_greedy(model, tok, prompts, n):
    pad = pad_id(tok)
    ids, mask = left_pad([encode(tok, p) for p in prompts], pad, model.device)
    out = model.generate(
        input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n, pad_token_id=pad,
        temperature=None, top_p=None, top_k=None,
    )  # fmt: skip
    return out[:, ids.shape[1] :]


def test_greedy_generate_returns_new_text_only_and_ignores_batching(tiny):
    model, tok = tiny
    one_by_one = [greedy_generate(model, tok, [p], 8)[0] for p in PROMPTS]
    batched = greedy_generate(model, tok, PROMPTS, 8, batch_size=2)
    assert batched == one_by_one  # left padding does not change a row's continuation
    assert len(batched) == len(PROMPTS)
    assert not any(b.startswith(p[:10]) for b, p in zip(batched, PROMPTS, strict=True))


def test_each_prompt_is_prefilled_exactly_once(tiny):
    model, tok = tiny
    m, batch_size = 3, 2
    log = ForwardLog(model)
    stats = SamplingStats()
    try:
        out = sample_shared_prefill(
            model, tok, PROMPTS, m, max_new_tokens=5, batch_size=batch_size, stats=stats
        )
    finally:
        log.close()
    # One prefill per prompt batch, covering each prompt once (not m times) ...
    assert [rows for rows, _ in log.prefills] == [2, 1]
    assert sum(rows for rows, _ in log.prefills) == len(PROMPTS)
    # ... and every other call decodes one token for the m expanded rows of a batch.
    decodes = [c for c in log.calls if c[1] == 1]
    assert decodes and all(rows in (2 * m, 1 * m) for rows, _ in decodes)
    assert stats.prefill_rows == len(PROMPTS) and stats.prefill_calls == 2
    assert stats.prefills_per_prompt == 1.0 and stats.samples == len(PROMPTS) * m
    assert [len(row) for row in out] == [m] * len(PROMPTS)


def test_plain_generate_prefills_each_prompt_m_times(tiny):
    """The cost shared prefill removes: ``num_return_sequences`` repeats the prompt before encoding."""
    model, tok = tiny
    log = ForwardLog(model)
    pad = pad_id(tok)
    ids, mask = left_pad([encode(tok, p) for p in PROMPTS], pad, model.device)
    try:
        with torch.inference_mode():
            model.generate(
                input_ids=ids, attention_mask=mask, do_sample=True, num_return_sequences=3,
                max_new_tokens=3, pad_token_id=pad,
            )  # fmt: skip
    finally:
        log.close()
    assert [rows for rows, _ in log.prefills] == [3 * len(PROMPTS)]


@pytest.mark.parametrize("setting", [{"top_k": 1}, {"temperature": 0.0}])
def test_greedy_settings_reproduce_generate(tiny, setting):
    model, tok = tiny
    n = 10
    ref = _generate_greedy(model, tok, PROMPTS, n)
    stop = {tok.eos_token_id}
    texts = []
    for row in ref.tolist():
        cut = next((i for i, t in enumerate(row) if t in stop), len(row))
        texts.append(tok.decode(row[:cut], skip_special_tokens=True))
    out = sample_shared_prefill(
        model, tok, PROMPTS, 2, max_new_tokens=n, batch_size=3, seed=5, **setting
    )
    assert out == [[t, t] for t in texts]


def test_sampling_is_seeded_and_varies_with_the_seed(tiny):
    model, tok = tiny
    kwargs = dict(temperature=1.0, top_p=0.9, max_new_tokens=6, batch_size=2)
    a = sample_shared_prefill(model, tok, PROMPTS, 3, seed=11, **kwargs)
    b = sample_shared_prefill(model, tok, PROMPTS, 3, seed=11, **kwargs)
    c = sample_shared_prefill(model, tok, PROMPTS, 3, seed=12, **kwargs)
    assert a == b
    assert a != c
    # A random model at temperature 1 draws different continuations for the m samples.
    assert any(len(set(row)) > 1 for row in a)
    # The global RNG is untouched: sampling draws from its own generators.
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    sample_shared_prefill(model, tok, PROMPTS[:1], 2, seed=3, max_new_tokens=2)
    assert torch.equal(torch.rand(1), expected)


def test_top_p_keeps_the_smallest_set_reaching_p():
    from xlalign.generation import _next_tokens

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    draws = {int(_next_tokens(logits, 1.0, 0.7, 0, gen)) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 < 0.7 needs the second token; 0.8 >= 0.7 stops there
    draws = {int(_next_tokens(logits, 1.0, 0.4, 0, gen)) for _ in range(100)}
    assert draws == {0}  # the most likely token always survives
    draws = {int(_next_tokens(logits, 1.0, 1.0, 3, gen)) for _ in range(300)}
    assert draws == {0, 1, 2}


def test_top_p_from_candidates_equals_the_full_sort():
    from xlalign.generation import _top_p_candidates, _top_p_full

    gen = torch.Generator().manual_seed(0)
    peaked = torch.randn(3, 5000, generator=gen) * 4.0  # most mass in a few dozen tokens
    full = torch.softmax(_top_p_full(peaked, 0.9), dim=-1)
    values, ids = _top_p_candidates(peaked, 0.9, n=256)
    from_candidates = torch.zeros_like(full).scatter(-1, ids, torch.softmax(values, dim=-1))
    assert torch.allclose(full, from_candidates, atol=1e-6)
    assert ((full > 0).sum(-1) > 1).all()  # a real nucleus, not just the argmax
    flat = torch.zeros(2, 5000)  # 256 of 5000 equal tokens hold 5% of the mass: must sort
    assert _top_p_candidates(flat, 0.9, n=256) is None


def test_bad_m_is_refused(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="m=0"):
        sample_shared_prefill(model, tok, PROMPTS, 0)
