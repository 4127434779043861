"""The over-length check counts what TRL trains (prompt, the longer answer, special tokens) and checks
the test prompts against the evaluation's limit."""

from __future__ import annotations

import pytest

from xlalign.config import derive
from xlalign.probe import build as probe
from xlalign.probe.dataset import build_probe_data


def test_pair_lengths_count_the_longer_answer_and_special_tokens(tiny_tokenizer):
    tok = tiny_tokenizer
    row = {
        "prompt": "Question and passages",
        "chosen": "I don't know",
        "rejected": "Yes, answer is present",
    }
    (n,) = probe.pair_lengths([row], tok)
    prompt = len(tok(row["prompt"], add_special_tokens=True)["input_ids"])
    rejected = len(tok(row["rejected"], add_special_tokens=False)["input_ids"])
    chosen = len(tok(row["chosen"], add_special_tokens=False)["input_ids"])
    assert rejected > chosen  # the case the old prompt + chosen count missed
    assert n == prompt + rejected + 1  # + the EOS TRL appends


def test_a_pair_whose_rejected_answer_crosses_the_limit_drops_its_group(
    tiny_profile, tiny_tokenizer
):
    data = build_probe_data(tiny_profile, tiny_tokenizer)
    lengths = probe.pair_lengths(data.train_pref, tiny_tokenizer)
    # A limit between prompt + chosen and prompt + rejected for some "I don't know" pair.
    neg = [
        (r, n)
        for r, n in zip(data.train_pref, lengths, strict=True)
        if r["chosen"].startswith("I don")
    ]
    row, n = max(neg, key=lambda x: x[1])
    old_count = sum(probe.token_lengths([row], tiny_tokenizer, f)[0] for f in ("prompt", "chosen"))
    assert old_count < n
    p = derive(tiny_profile, train={"max_length": n}, data={"overlong": "drop_group"})
    kept = build_probe_data(p, tiny_tokenizer)
    assert row["sample_id"] in kept.report["length_check"]["overlong_groups"]
    assert all(r["sample_id"] != row["sample_id"] for r in kept.train_pref)


def test_test_prompts_are_checked_against_the_prompt_limit(tiny_profile, tiny_tokenizer):
    longest = max(
        len(tiny_tokenizer(probe.render_prompt(r["prompt"], tiny_tokenizer, "plain"))["input_ids"])
        for r in build_probe_data(tiny_profile, tiny_tokenizer).test_rows
    )
    p = derive(tiny_profile, data={"max_prompt_tokens": longest})
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        build_probe_data(p, tiny_tokenizer)
