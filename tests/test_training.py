"""Tests for xlalign.training: the grouped sampler, end-to-end DPO/ORPO runs on the tiny model, ORPO's
completion-only forward against TRL's stock one, two processes, gradient accumulation and resuming."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerCallback

from xlalign.config import derive
from xlalign.models import load_model
from xlalign.training import trainers
from xlalign.training.run import train_preference
from xlalign.training.sampling import (
    AlignmentError,
    GroupedBatchSampler,
    MetaCollator,
    read_batch_logs,
    verify_batch_log,
)
from xlalign.training.trainers import GroupedTrainingMixin

REPO = Path(__file__).resolve().parents[1]
LANGS = ["en", "ar", "es", "fr", "zh"]


def with_train(profile, **train):
    """``profile`` with some train fields replaced, through the one derive function."""
    return derive(profile, train=train)


def grouped_rows(n_groups: int = 10, langs: list[str] = LANGS) -> tuple[list[str], list[str]]:
    """(sample_ids, langs) ordered by language, so that a group's rows are not adjacent."""
    sids = [f"g{g:02d}" for lang in langs for g in range(n_groups)]
    return sids, [lang for lang in langs for _ in range(n_groups)]


def describe(
    plan: list[list[int]], sids: list[str], langs: list[str]
) -> list[list[tuple[str, str]]]:
    return [[(sids[i], langs[i]) for i in batch] for batch in plan]


# --------------------------------------------------------------------------- sampler (pure)


def _random_lora(model):
    """LoRA r4 on q/v with non-zero B, so gradients reach every LoRA matrix (equality tests)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def test_aligned_batch_is_one_group_in_distinct_languages():
    sids, langs = grouped_rows()
    plan = GroupedBatchSampler(sids, langs, batch_size=5).plan()
    assert len(plan) == 10
    for batch in describe(plan, sids, langs):
        assert len({sid for sid, _ in batch}) == 1
        assert sorted(lang for _, lang in batch) == sorted(LANGS)
    # Every group once per epoch.
    assert Counter(sids[b[0]] for b in plan) == Counter({f"g{g:02d}": 1 for g in range(10)})


def test_english_anchor_plus_languages_drawn_per_batch():
    sids, langs = grouped_rows(n_groups=20)
    sampler = GroupedBatchSampler(sids, langs, batch_size=3)
    per_epoch = []
    for epoch in (0, 1):
        chosen = {}
        for batch in describe(sampler.plan(epoch), sids, langs):
            batch_langs = [lang for _, lang in batch]
            assert len({sid for sid, _ in batch}) == 1
            assert batch_langs[0] == "en" and len(set(batch_langs)) == 3
            chosen[batch[0][0]] = frozenset(batch_langs)
        assert len(set(chosen.values())) > 1, "the same languages were drawn for every batch"
        per_epoch.append(chosen)
    assert per_epoch[0] != per_epoch[1], "the drawn languages did not change between epochs"


def test_without_english_anchor():
    sids, langs = grouped_rows()
    plan = GroupedBatchSampler(sids, langs, batch_size=4, include_english=False).plan()
    for batch in describe(plan, sids, langs):
        assert "en" not in {lang for _, lang in batch}
        assert len({lang for _, lang in batch}) == 4 and len({sid for sid, _ in batch}) == 1
    with pytest.raises(AlignmentError, match="batch_size=5"):
        GroupedBatchSampler(sids, langs, batch_size=5, include_english=False)


@pytest.mark.parametrize(("batch_size", "seed", "epoch"), [(5, 0, 0), (3, 0, 1), (2, 7, 3)])
def test_uncoupled_sees_the_aligned_examples(batch_size, seed, epoch):
    sids, langs = grouped_rows()
    aligned = GroupedBatchSampler(sids, langs, batch_size, "aligned", seed=seed).plan(epoch)
    uncoupled = GroupedBatchSampler(sids, langs, batch_size, "uncoupled", seed=seed).plan(epoch)
    assert len(uncoupled) == len(aligned)
    assert all(len(b) == batch_size for b in uncoupled)
    assert Counter(i for b in uncoupled for i in b) == Counter(i for b in aligned for i in b)
    assert any(len({sids[i] for i in b}) > 1 for b in uncoupled), (
        "uncoupled batches never mix groups"
    )


@pytest.mark.parametrize(
    ("balance", "max_batches"), [(False, 4), (False, 12), (True, 4), (True, 14)]
)
def test_uncoupled_stopped_early_sees_the_aligned_examples(balance, max_batches):
    sids, langs, labels = labelled_rows(10, 10)
    kw = dict(grad_accum=2, seed=2, max_batches=max_batches, labels=labels, balance_labels=balance)
    aligned = GroupedBatchSampler(sids, langs, 3, "aligned", **kw)
    uncoupled = GroupedBatchSampler(sids, langs, 3, "uncoupled", **kw)
    assert aligned.plan(0) == GroupedBatchSampler(
        sids, langs, 3, "aligned", **{**kw, "max_batches": None}
    ).plan(0)
    n = len(aligned.plan(0))  # 20 batches per epoch
    for epoch in range(3):
        left = max_batches - epoch * n
        reached = min(n, left) if left > 0 else n
        a, u = aligned.plan(epoch)[:reached], uncoupled.plan(epoch)[:reached]
        assert Counter(i for b in u for i in b) == Counter(i for b in a for i in b)
        assert any(len({sids[i] for i in b}) > 1 for b in u)
    # Without the stop, the first batches of the two arms hold different examples.
    free = GroupedBatchSampler(sids, langs, 3, "uncoupled", **{**kw, "max_batches": None}).plan(0)
    assert Counter(i for b in free[:4] for i in b) != Counter(
        i for b in aligned.plan(0)[:4] for i in b
    )
    with pytest.raises(ValueError, match="max_batches=0"):
        GroupedBatchSampler(sids, langs, 3, max_batches=0)


def test_plan_depends_only_on_seed_and_epoch():
    sids, langs = grouped_rows()
    a = GroupedBatchSampler(sids, langs, 3, seed=1)
    b = GroupedBatchSampler(sids, langs, 3, seed=1)
    assert a.plan() == b.plan() and list(a) == list(b)
    assert list(a) == [i for batch in a.plan(0) for i in batch]
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first, "set_epoch did not reshuffle"
    b.set_epoch(1)
    assert list(a) == list(b)
    assert GroupedBatchSampler(sids, langs, 3, seed=2).plan(0) != b.plan(0)
    assert len(a) == len(first) == 10 * 3


@pytest.mark.parametrize(
    ("batching", "replicas", "accum", "expected"),
    [("aligned", 2, 2, 8), ("aligned", 3, 1, 9), ("uncoupled", 2, 2, 8), ("aligned", 1, 1, 10)],
)
def test_batches_trimmed_to_whole_steps_on_every_process(batching, replicas, accum, expected):
    sids, langs = grouped_rows()
    sampler = GroupedBatchSampler(sids, langs, 5, batching, num_replicas=replicas, grad_accum=accum)
    for epoch in (0, 1):
        plan = sampler.plan(epoch)
        assert len(plan) == expected and len(plan) % (replicas * accum) == 0
    assert len(sampler) == expected * 5


def test_dataloader_yields_the_planned_batches():
    sids, langs = grouped_rows()
    sampler = GroupedBatchSampler(sids, langs, 3, seed=4)
    loader = torch.utils.data.DataLoader(list(range(len(sids))), batch_size=3, sampler=sampler)
    assert [b.tolist() for b in loader] == sampler.plan(0)


def test_group_that_lost_a_member_is_refused():
    sids, langs = grouped_rows()
    drop = next(
        i
        for i, (s, lang) in enumerate(zip(sids, langs, strict=True))
        if s == "g03" and lang == "ar"
    )
    sids, langs = sids[:drop] + sids[drop + 1 :], langs[:drop] + langs[drop + 1 :]
    with pytest.raises(AlignmentError, match=r"g03.*\['ar'\]"):
        GroupedBatchSampler(sids, langs, 3)
    with pytest.raises(AlignmentError, match="g03"):
        GroupedBatchSampler(sids, langs, 3, "uncoupled")
    # Clustered batching is for groups of unequal size.
    assert GroupedBatchSampler(sids, langs, 3, "clustered").plan()


def test_language_twice_in_a_group_is_refused():
    sids, langs = grouped_rows()
    with pytest.raises(AlignmentError, match="g01.*'zh' twice"):
        GroupedBatchSampler(sids + ["g01"], langs + ["zh"], 3)


def test_batch_size_larger_than_the_languages_is_refused():
    sids, langs = grouped_rows()
    with pytest.raises(AlignmentError, match="batch_size=6 is larger than the 5 languages"):
        GroupedBatchSampler(sids, langs, 6)


def test_english_anchor_without_english_rows_is_refused():
    sids, langs = grouped_rows(langs=["ar", "es", "fr"])
    with pytest.raises(AlignmentError, match="no 'en' rows"):
        GroupedBatchSampler(sids, langs, 2)
    assert GroupedBatchSampler(sids, langs, 2, include_english=False).plan()


def labelled_rows(n_yes: int, n_idk: int, langs: list[str] = LANGS):
    """(sample_ids, langs, labels): n_yes "Yes" groups then n_idk "IDK" groups, ordered by language."""
    labels_of = {f"g{g:02d}": "Yes" if g < n_yes else "IDK" for g in range(n_yes + n_idk)}
    sids, row_langs = grouped_rows(n_yes + n_idk, langs)
    return sids, row_langs, [labels_of[s] for s in sids]


def step_label_counts(plan, labels, unit):
    steps = [plan[i : i + unit] for i in range(0, len(plan), unit)]
    return [Counter(labels[i] for b in st for i in b) for st in steps]


@pytest.mark.parametrize(
    ("batching", "accum"), [("aligned", 2), ("aligned", 4), ("uncoupled", 2), ("uncoupled", 4)]
)
def test_balanced_steps_hold_each_label_equally(batching, accum):
    sids, langs, labels = labelled_rows(6, 10)  # unbalanced data: 6 Yes groups, 10 IDK groups
    kw = dict(grad_accum=accum, labels=labels, balance_labels=True, seed=3)
    for epoch in (0, 1):
        plan = GroupedBatchSampler(sids, langs, 3, batching, **kw).plan(epoch)
        counts = step_label_counts(plan, labels, accum)
        assert counts and all(c["Yes"] == c["IDK"] for c in counts), counts
        # Without balancing, the same data gives unbalanced steps.
    plain = GroupedBatchSampler(sids, langs, 3, batching, grad_accum=accum, seed=3).plan(0)
    assert any(c["Yes"] != c["IDK"] for c in step_label_counts(plain, labels, accum))


@pytest.mark.parametrize("seed", [0, 5])
def test_balanced_uncoupled_sees_the_balanced_aligned_examples(seed):
    sids, langs, labels = labelled_rows(6, 10)
    kw = dict(grad_accum=2, labels=labels, balance_labels=True, seed=seed)
    aligned = GroupedBatchSampler(sids, langs, 3, "aligned", **kw).plan(1)
    uncoupled = GroupedBatchSampler(sids, langs, 3, "uncoupled", **kw).plan(1)
    assert Counter(i for b in uncoupled for i in b) == Counter(i for b in aligned for i in b)
    # 6 of each label: the 4 IDK groups beyond the rarer label's count are dropped from the epoch.
    assert len(aligned) == 12 and Counter(labels[b[0]] for b in aligned) == {"Yes": 6, "IDK": 6}
    for batch in describe(aligned, sids, langs):
        assert len({s for s, _ in batch}) == 1
    assert any(len({sids[i] for i in b}) > 1 for b in uncoupled)
    # The dropped groups change with the epoch's shuffle.
    other = GroupedBatchSampler(sids, langs, 3, "aligned", **kw).plan(2)
    assert {sids[b[0]] for b in other} != {sids[b[0]] for b in aligned}


def test_balance_labels_refuses_mixed_groups_and_missing_labels():
    sids, langs, labels = labelled_rows(3, 3)
    labels[1] = "Yes" if labels[1] == "IDK" else "IDK"
    with pytest.raises(AlignmentError, match=f"group '{sids[1]}' mixes labels"):
        GroupedBatchSampler(sids, langs, 3, labels=labels, balance_labels=True)
    with pytest.raises(AlignmentError, match="needs each row's label"):
        GroupedBatchSampler(sids, langs, 3, balance_labels=True)
    with pytest.raises(AlignmentError, match="needs two labels"):
        GroupedBatchSampler(sids, langs, 3, labels=["Yes"] * len(sids), balance_labels=True)
    with pytest.raises(ValueError, match="not clustered"):
        GroupedBatchSampler(sids, langs, 3, "clustered", labels=labels, balance_labels=True)


def test_unknown_batching_is_refused():
    with pytest.raises(ValueError, match="unknown batching"):
        GroupedBatchSampler(*grouped_rows(), 3, "shuffled")


def test_trainer_sampler_needs_grouping_columns():
    from datasets import Dataset

    stub = GroupedTrainingMixin.__new__(GroupedTrainingMixin)  # only the sampler hook is under test
    stub.train_dataset = Dataset.from_dict({"prompt": ["a", "b"], "sample_id": ["s", "s"]})
    stub.args = SimpleNamespace(
        seed=0,
        world_size=1,
        gradient_accumulation_steps=1,
        per_device_train_batch_size=2,
        batching="aligned",
        include_english=True,
    )
    with pytest.raises(AlignmentError, match="lang"):
        stub._get_train_sampler()


def test_dataset_without_grouping_columns_fails_before_training(
    tiny_profile, tiny_pref_rows, tmp_path
):
    rows = [{k: v for k, v in r.items() if k != "sample_id"} for r in tiny_pref_rows]
    out = tmp_path / "run"
    # model=None: the check must come before the model is even loaded.
    with pytest.raises(AlignmentError, match="sample_id"):
        train_preference(tiny_profile, rows, out)
    assert not list(out.glob("checkpoint-*")) and not list(out.glob("batches.rank*.jsonl"))


def test_meta_collator_keeps_grouping_beside_the_batch():
    seen = []

    def inner(examples):
        seen.extend(examples)
        return {"input_ids": torch.tensor([e["input_ids"] for e in examples])}

    batch = MetaCollator(inner)(
        [
            {"input_ids": [1, 2], "sample_id": "s1", "lang": "en", "prompt": "p", "tags": ["x"]},
            {"input_ids": [3, 4], "sample_id": "s1", "lang": "ar", "prompt": "q", "tags": ["y"]},
        ]
    )
    assert batch["xl_meta"] == [
        {"sample_id": "s1", "lang": "en"},
        {"sample_id": "s1", "lang": "ar"},
    ]
    assert all(set(e) == {"input_ids"} for e in seen)


def test_token_count_counts_each_sequence_once():
    ones = torch.ones
    # ORPO's batches carry the prompt alone besides the chosen and rejected sequences that contain it.
    orpo = {
        "prompt_attention_mask": ones(2, 4),
        "chosen_attention_mask": ones(2, 6),
        "rejected_attention_mask": ones(2, 5),
    }
    assert GroupedTrainingMixin._count_tokens(orpo) == 2 * 6 + 2 * 5
    dpo = {"attention_mask": ones(4, 7), "completion_mask": ones(4, 7), "input_ids": ones(4, 7)}
    assert GroupedTrainingMixin._count_tokens(dpo) == 4 * 7


# --------------------------------------------------------------------------- end to end, one process

LOG_KEYS = {
    "dpo": {"loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"},
    "orpo": {"loss", "log_odds_ratio", "nll_loss"},
}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("batching", ["aligned", "uncoupled"])
@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_train_end_to_end(
    method, batching, tiny_profile, tiny_model_and_tokenizer, tiny_pref_rows, tmp_path
):
    model, tokenizer = tiny_model_and_tokenizer
    steps = 1 if method == "dpo" else 2  # a DPO step costs ~3x an ORPO step here
    profile = with_train(tiny_profile, method=method, batching=batching, max_steps=steps)
    result = train_preference(
        profile, tiny_pref_rows, tmp_path / "run", model=model, tokenizer=tokenizer
    )

    assert result.steps == steps
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    assert (result.adapter_dir / "adapter_config.json").exists()
    rows = read_batch_logs(result.output_dir)
    summary = verify_batch_log(rows, batching, 3)
    assert summary == {"micro_batches": steps, "ranks": [0], "steps": steps}
    assert result.tokens == sum(r["tokens"] for r in rows) > 0
    by_lang_group = {
        (s, lang) for r in rows for s, lang in zip(r["sample_ids"], r["langs"], strict=True)
    }
    assert len(by_lang_group) == 3 * steps, "an example was seen twice within one epoch"

    logs = [e for e in read_jsonl(result.train_log) if "loss" in e]
    assert [e["step"] for e in logs] == list(range(1, steps + 1))
    for entry in logs:
        missing = LOG_KEYS[method] - set(entry)
        assert not missing, f"train_log.jsonl lacks {missing}"
        assert all(math.isfinite(entry[k]) for k in LOG_KEYS[method])
    assert json.loads((result.output_dir / "train_result.json").read_text())["steps"] == steps


def test_gradient_accumulation_keeps_groups_whole(
    tiny_profile, tiny_model_and_tokenizer, tiny_pref_rows, tmp_path
):
    model, tokenizer = tiny_model_and_tokenizer
    profile = with_train(tiny_profile, method="orpo", grad_accum=2, max_steps=2)
    result = train_preference(
        profile, tiny_pref_rows, tmp_path / "run", model=model, tokenizer=tokenizer
    )
    rows = read_batch_logs(result.output_dir)
    assert verify_batch_log(rows, "aligned", 3)["micro_batches"] == 4
    # Two micro-batches per optimizer step, each one whole group, two different groups.
    per_step = Counter(r["step"] for r in rows)
    assert per_step == Counter({0: 2, 1: 2})
    for step in per_step:
        groups = [r["sample_ids"] for r in rows if r["step"] == step]
        assert all(len(set(g)) == 1 for g in groups) and groups[0][0] != groups[1][0]
    assert len([e for e in read_jsonl(result.train_log) if "loss" in e]) == 2


# --------------------------------------------------------------------------- ORPO forward vs stock TRL


@pytest.fixture
def orpo_pair(tiny_model_and_tokenizer, tiny_pref_rows, tmp_path):
    """Stock and aligned ORPO trainers sharing one LoRA model, and one collated batch.

    The batch mixes a "present" and an "absent" group so that chosen completions differ in length, and
    languages whose prompts differ in length (the aligned forward moves rows to left padding)."""
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from xlalign.training.trainers import AlignedORPOConfig, AlignedORPOTrainer

    model, tokenizer = tiny_model_and_tokenizer
    pos = next(r for r in tiny_pref_rows if r["sample_id"].endswith(".pos") and r["lang"] == "en")
    neg = [
        r for r in tiny_pref_rows if r["sample_id"].endswith(".neg") and r["lang"] in ("ar", "zh")
    ]
    rows = [pos, neg[0], next(r for r in neg if r["lang"] != neg[0]["lang"])]
    torch.manual_seed(0)
    model = _random_lora(model)
    common = dict(
        output_dir=str(tmp_path / "orpo"),
        per_device_train_batch_size=3,
        max_length=2048,
        max_completion_length=32,
        beta=0.1,
        remove_unused_columns=False,
        report_to="none",
        use_cpu=True,
        gradient_checkpointing=False,
    )
    dataset = Dataset.from_list(rows)
    stock = ORPOTrainer(
        model=model, args=ORPOConfig(**common), train_dataset=dataset, processing_class=tokenizer
    )
    ours = AlignedORPOTrainer(
        model=model,
        args=AlignedORPOConfig(**common, nll_scope="completion"),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    batch = stock.data_collator([stock.train_dataset[i] for i in range(len(rows))])
    comp = (batch["chosen_labels"] != -100).sum(-1)
    assert (
        len(set(comp.tolist())) > 1
        and len(set(batch["chosen_attention_mask"].sum(-1).tolist())) == 3
    )
    model.train()
    return model, stock, ours, batch


def loss_and_grads(model, compute) -> tuple[torch.Tensor, dict, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss, metrics = compute()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g.abs().max() > 0 for g in grads.values())
    return loss.detach(), metrics, grads


def assert_grads_close(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-4, msg=name)


def test_orpo_full_scope_equals_stock_trl(orpo_pair):
    model, stock, ours, batch = orpo_pair
    loss_s, m_s, g_s = loss_and_grads(model, lambda: stock.get_batch_loss_metrics(model, batch))
    ours.args.nll_scope = "full"
    loss_o, m_o, g_o = loss_and_grads(model, lambda: ours.get_batch_loss_metrics(model, batch))
    torch.testing.assert_close(loss_o, loss_s, atol=1e-5, rtol=0)
    for key in ("nll_loss", "log_odds_ratio", "logps/chosen", "logps/rejected", "rewards/margins"):
        assert m_o[key] == pytest.approx(m_s[key], abs=1e-5), key
    assert_grads_close(g_o, g_s)


def test_orpo_completion_scope_nll_is_completion_cross_entropy(orpo_pair):
    model, stock, ours, batch = orpo_pair
    ours.args.nll_scope = "completion"
    with torch.no_grad():
        logps_c, logps_r, *_, nll = ours.concatenated_forward(model, batch)
        stock_c, stock_r, *_, stock_nll = stock.concatenated_forward(model, batch)
    torch.testing.assert_close(logps_c, stock_c, atol=1e-5, rtol=0)
    torch.testing.assert_close(logps_r, stock_r, atol=1e-5, rtol=0)
    assert abs(nll.item() - stock_nll.item()) > 1e-4, (
        "completion NLL equals the prompt+response NLL"
    )

    def by_hand():
        # Cross-entropy over the chosen completion tokens only (prompt and padding labelled -100),
        # pooled over the batch; the odds-ratio term from stock TRL's full-vocabulary forward.
        logits = model(
            batch["chosen_input_ids"],
            attention_mask=batch["chosen_attention_mask"],
            use_cache=False,
        ).logits
        labels = batch["chosen_labels"]
        hand_nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=-100,
        )
        chosen, rejected, *_ = stock.concatenated_forward(model, batch)
        odds_term, *_, log_odds_ratio, _ = stock.odds_ratio_loss(chosen, rejected)
        return hand_nll - odds_term.mean(), {
            "nll_loss": hand_nll.item(),
            "log_odds_ratio": log_odds_ratio.item(),
        }

    loss_h, m_h, g_h = loss_and_grads(model, by_hand)
    loss_o, m_o, g_o = loss_and_grads(model, lambda: ours.get_batch_loss_metrics(model, batch))
    torch.testing.assert_close(loss_o, loss_h, atol=1e-5, rtol=0)
    assert m_o["nll_loss"] == pytest.approx(m_h["nll_loss"], abs=1e-5)
    assert m_o["log_odds_ratio"] == pytest.approx(m_h["log_odds_ratio"], abs=1e-5)
    assert_grads_close(g_o, g_h)


# --------------------------------------------------------------------------- DPO's fused LM head on the CPU


def test_dpo_compact_lm_head_equals_stock_and_projects_only_completions(
    tiny_model_and_tokenizer, tiny_pref_rows, tmp_path, monkeypatch
):
    """``compact_fused_lm_head`` gives stock DPO's loss and gradients while projecting only the completion
    positions onto the vocabulary (stock TRL projects every position off Triton devices)."""
    from datasets import Dataset
    from trl import DPOTrainer
    from trl.kernels import ChunkedLogProbFunction

    compact_fused_lm_head = trainers.compact_fused_lm_head

    model, tokenizer = tiny_model_and_tokenizer
    rows = [r for r in tiny_pref_rows if r["lang"] in ("en", "zh")][:4]
    torch.manual_seed(0)
    model = _random_lora(model)
    args = trainers.AlignedDPOConfig(
        output_dir=str(tmp_path / "dpo"),
        per_device_train_batch_size=4,
        max_length=2048,
        beta=0.1,
        remove_unused_columns=False,
        report_to="none",
        use_cpu=True,
        gradient_checkpointing=False,
        precompute_ref_log_probs=False,
    )
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    projected = []
    apply = ChunkedLogProbFunction.apply

    def spy(hidden, *rest):
        projected.append(hidden.shape[0])
        return apply(hidden, *rest)

    monkeypatch.setattr(ChunkedLogProbFunction, "apply", spy)
    model.train()

    def loss_grads():
        model.zero_grad(set_to_none=True)
        loss = trainer._compute_loss(model, dict(batch), return_outputs=False)
        loss = loss[0] if isinstance(loss, tuple) else loss
        loss.backward()
        return loss.detach(), {
            n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad
        }

    loss_s, g_s = loss_grads()
    stock_rows = list(projected)
    projected.clear()
    with compact_fused_lm_head():
        loss_c, g_c = loss_grads()
    n_completion = int(batch["completion_mask"][:, 1:].sum())
    n_positions = batch["input_ids"].shape[0] * (batch["input_ids"].shape[1] - 1)
    assert stock_rows == [n_positions, n_positions]  # policy and reference, every position
    assert projected == [n_completion, n_completion] and n_completion < n_positions / 4
    torch.testing.assert_close(loss_c, loss_s, atol=1e-6, rtol=0)
    assert g_s and all(g.abs().max() > 0 for g in g_s.values())
    assert_grads_close(g_c, g_s, atol=1e-6)


# --------------------------------------------------------------------------- two processes


@pytest.mark.slow
@pytest.mark.parametrize(
    ("batching", "method", "steps", "grad_accum"),
    [("aligned", "orpo", 2, 2), ("uncoupled", "dpo", 1, 1)],
)
def test_two_processes_keep_groups_whole(
    batching, method, steps, grad_accum, tiny_profile, tiny_model_dir, tmp_path
):
    out = tmp_path / "run"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])),
        XLALIGN_CACHE=str(tiny_profile.cache_path),
        TRL_EXPERIMENTAL_SILENCE="1",
        OMP_NUM_THREADS="1",
    )
    # cpu_2proc.yaml says MULTI_CPU, which `accelerate launch` runs as ONE process unless mpirun is
    # configured; --multi_gpu selects the torchrun launcher, and use_cpu keeps both ranks on gloo/CPU.
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "configs/accelerate/cpu_2proc.yaml"), "--multi_gpu",
        str(REPO / "scripts/train_2proc.py"), str(out), batching, method,
        "--steps", str(steps), "--grad-accum", str(grad_accum),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    assert sorted(p.name for p in out.glob("batches.rank*.jsonl")) == [
        "batches.rank0.jsonl",
        "batches.rank1.jsonl",
    ]
    rows = read_batch_logs(out)
    summary = verify_batch_log(rows, batching, 3)
    assert summary == {"micro_batches": steps * 2 * grad_accum, "ranks": [0, 1], "steps": steps}
    for step in range(steps):
        entries = [r for r in rows if r["step"] == step]
        assert Counter(r["rank"] for r in entries) == Counter({0: grad_accum, 1: grad_accum})
        if batching == "aligned":
            assert all(len(set(r["sample_ids"])) == 1 for r in entries)
            groups = [{r["sample_ids"][0] for r in entries if r["rank"] == rank} for rank in (0, 1)]
            assert not groups[0] & groups[1], f"a group was split across ranks at step {step}"
            assert len({r["sample_ids"][0] for r in entries}) == len(entries)
    examples = [
        (s, lang) for r in rows for s, lang in zip(r["sample_ids"], r["langs"], strict=True)
    ]
    assert len(set(examples)) == len(examples), "two ranks trained on the same example"
    assert len([e for e in read_jsonl(out / "train_log.jsonl") if "loss" in e]) == steps


# --------------------------------------------------------------------------- resume


class Interrupted(Exception):
    pass


class InterruptAfterSave(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupted(f"stopped after saving step {self.step}")


class StepRecorder(TrainerCallback):
    def __init__(self):
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def load_adapter(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_resume_matches_uninterrupted_run(tiny_profile, tiny_pref_rows, tmp_path):
    assert tiny_profile.lora.dropout == 0.0
    profile = with_train(tiny_profile, method="orpo", max_steps=4, save_steps=2)

    model, tok = load_model(profile)
    full = train_preference(profile, tiny_pref_rows, tmp_path / "a", model=model, tokenizer=tok)
    assert full.steps == 4

    out = tmp_path / "b"
    model, tok = load_model(profile)
    with pytest.raises(Interrupted):
        train_preference(
            profile,
            tiny_pref_rows,
            out,
            model=model,
            tokenizer=tok,
            callbacks=[InterruptAfterSave(2)],
        )
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]

    # A directory with checkpoints: no silent restart, and no resume under another config.
    with pytest.raises(FileExistsError, match="checkpoints"):
        train_preference(profile, tiny_pref_rows, out)
    other = with_train(profile, learning_rate=2e-3)
    with pytest.raises(ValueError, match="train.learning_rate"):
        train_preference(other, tiny_pref_rows, out, resume=True)

    model, tok = load_model(profile)
    recorder = StepRecorder()
    resumed = train_preference(
        profile, tiny_pref_rows, out, model=model, tokenizer=tok, resume=True, callbacks=[recorder]
    )
    assert resumed.steps == 4 and recorder.steps == [3, 4], (
        "the resumed run did not start at step 3"
    )

    a, b = load_adapter(full.adapter_dir), load_adapter(resumed.adapter_dir)
    at_2 = load_adapter(out / "checkpoint-2")
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)
    assert any((a[n] - at_2[n]).abs().max() > 1e-6 for n in a), (
        "steps 3-4 did not change the adapter"
    )

    # Same data order after the resume: the batch logs (kept across the resume) match step by step.
    def composition(run: Path) -> list[tuple]:
        return [(r["step"], r["sample_ids"], r["langs"]) for r in read_batch_logs(run)]

    assert composition(out) == composition(tmp_path / "a")
    assert [r["step"] for r in read_batch_logs(out)] == [0, 1, 2, 3]


class InterruptAtStepEnd(TrainerCallback):
    """A kill between checkpoints: step ``step`` has run and logged, and no checkpoint holds it."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupted(f"killed after step {self.step}")


def test_resume_bookkeeping_and_finished_runs_are_final(tiny_profile, tiny_pref_rows, tmp_path):
    """After a kill past the last checkpoint, the logs hold each step once and the result counts the
    whole run; a half-written checkpoint is skipped; a finished run is reused, never retrained."""
    profile = with_train(tiny_profile, method="orpo", max_steps=4, save_steps=2)
    model, tok = load_model(profile)
    full = train_preference(profile, tiny_pref_rows, tmp_path / "a", model=model, tokenizer=tok)

    out = tmp_path / "b"
    model, tok = load_model(profile)
    with pytest.raises(Interrupted):
        train_preference(
            profile, tiny_pref_rows, out, model=model, tokenizer=tok,
            callbacks=[InterruptAtStepEnd(3)],
        )  # fmt: skip
    logged = [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert 3 in logged  # the killed segment logged step 3, which checkpoint-2 does not hold
    # A kill while saving checkpoint-3 left it without trainer state.
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "adapter_model.safetensors").write_bytes(b"torn")

    model, tok = load_model(profile)
    recorder = StepRecorder()
    resumed = train_preference(
        profile, tiny_pref_rows, out, model=model, tokenizer=tok, resume=True, callbacks=[recorder]
    )
    assert recorder.steps == [3, 4]  # from checkpoint-2, not the torn checkpoint-3
    steps = [
        json.loads(x)["step"]
        for x in (out / "train_log.jsonl").read_text().splitlines()
        if '"loss"' in x
    ]
    assert steps == [1, 2, 3, 4]
    assert [r["step"] for r in read_batch_logs(out)] == [0, 1, 2, 3]
    assert resumed.tokens == full.tokens > 0
    assert resumed.metrics["train_loss"] == pytest.approx(full.metrics["train_loss"], rel=1e-4)
    assert resumed.wall_time_s > 0

    # Finished: a rerun trains nothing and leaves adapter and result untouched.
    result_file, adapter = out / "train_result.json", out / "adapter" / "adapter_model.safetensors"
    before = (result_file.read_bytes(), adapter.stat().st_mtime_ns)
    recorder = StepRecorder()
    again = train_preference(profile, tiny_pref_rows, out, resume=True, callbacks=[recorder])
    assert recorder.steps == [] and again.steps == 4
    assert (result_file.read_bytes(), adapter.stat().st_mtime_ns) == before
    with pytest.raises(ValueError, match="train.learning_rate"):
        train_preference(with_train(profile, learning_rate=2e-3), tiny_pref_rows, out)


def test_orpo_shared_prompt_equals_concatenated_completion_forward(orpo_pair, monkeypatch):
    """Encoding each prompt once (``train.share_prompt``) changes no loss, metric or gradient."""
    model, stock, ours, batch = orpo_pair
    ours.args.nll_scope = "completion"
    ours.args.share_prompt = False
    loss_a, m_a, g_a = loss_and_grads(model, lambda: ours.get_batch_loss_metrics(model, batch))
    calls = []
    real = trainers.shared_prompt_logits

    def counting(*args, **kwargs):
        calls.append(len(args[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainers, "shared_prompt_logits", counting)
    ours.args.share_prompt = True
    loss_b, m_b, g_b = loss_and_grads(model, lambda: ours.get_batch_loss_metrics(model, batch))
    assert calls == [batch["chosen_labels"].shape[0]]
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=0)
    for key in ("nll_loss", "log_odds_ratio", "logps/chosen", "logps/rejected", "rewards/margins"):
        assert m_b[key] == pytest.approx(m_a[key], abs=1e-5), key
    assert_grads_close(g_b, g_a)


def test_dpo_shared_prompt_equals_stock_loss_metrics_and_gradients(
    tiny_model_and_tokenizer, tiny_pref_rows, tmp_path, monkeypatch
):
    """Our DPO loss with each prompt encoded once equals TRL's ``_compute_loss`` (values, gradients and
    logged metrics) on a batch whose prompts and completions differ in length."""
    from datasets import Dataset

    model, tokenizer = tiny_model_and_tokenizer
    pos = [r for r in tiny_pref_rows if r["sample_id"].endswith(".pos")][:2]
    neg = [r for r in tiny_pref_rows if r["sample_id"].endswith(".neg") and r["lang"] != "en"][:2]
    rows = pos + neg
    torch.manual_seed(0)
    model = _random_lora(model)
    args = trainers.AlignedDPOConfig(
        output_dir=str(tmp_path / "dpo"),
        per_device_train_batch_size=4,
        max_length=2048,
        beta=0.1,
        loss_type=["sigmoid"],
        remove_unused_columns=False,
        report_to="none",
        use_cpu=True,
        gradient_checkpointing=False,
        precompute_ref_log_probs=False,
    )
    trainer = trainers.AlignedDPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    # TRL keeps a copy of a passed-in adapter as the reference ("ref"); move the policy away from it.
    assert "ref" in model.peft_config
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B.default" in name:
                p.add_(0.5 * torch.randn_like(p))
    comp = batch["completion_mask"].sum(-1)
    assert len(set(comp.tolist())) > 1 and len(set(batch["attention_mask"].sum(-1).tolist())) > 2
    model.train()
    calls = []
    real = trainers.shared_prompt_logits
    monkeypatch.setattr(
        trainers, "shared_prompt_logits", lambda *a, **k: calls.append(1) or real(*a, **k)
    )

    def run(share: bool):
        trainer.args.share_prompt = share
        trainer._metrics["train"].clear()
        model.zero_grad(set_to_none=True)
        loss = trainer._compute_loss(model, dict(batch), return_outputs=False)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.detach(), {k: v[-1] for k, v in trainer._metrics["train"].items()}, grads

    with trainers.compact_fused_lm_head():
        loss_s, m_s, g_s = run(False)
    assert calls == []
    loss_o, m_o, g_o = run(True)
    assert calls == [1, 1]  # policy and reference
    torch.testing.assert_close(loss_o, loss_s, atol=1e-6, rtol=0)
    assert abs(m_s["rewards/margins"]) > 0
    assert m_o.keys() >= {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "logits/chosen",
        "logits/rejected",
        "entropy",
        "mean_token_accuracy",
    }
    for key, value in m_s.items():
        if key != "num_tokens":
            assert m_o[key] == pytest.approx(value, abs=1e-4), key
    assert_grads_close(g_o, g_s, atol=1e-6)


def test_cpu_training_returns_freed_heap_pages_after_every_step(orpo_pair):
    import platform

    from xlalign.training.trainers import ReleaseFreedMemoryCallback, release_freed_memory

    _, stock, ours, _ = orpo_pair
    kinds = [type(cb) for cb in ours.callback_handler.callbacks]
    assert kinds.count(ReleaseFreedMemoryCallback) == 1
    assert ReleaseFreedMemoryCallback not in [type(cb) for cb in stock.callback_handler.callbacks]
    if platform.libc_ver()[0] == "glibc":
        assert release_freed_memory() is True


def test_a_later_process_trains_on_the_frozen_states_an_earlier_one_kept(
    tiny_profile, tiny_pref_rows, tmp_path, monkeypatch
):
    """``frozen_cache_dir``: notebook 05's kernel reads the states notebook 03's trainings computed
    instead of recomputing them, and trains to the same losses."""
    from xlalign.training import frozen_cache as fc

    profile = derive(
        with_train(
            tiny_profile,
            method="orpo",
            max_steps=2,
            reuse_frozen=True,
            share_prompt=True,
            orpo_nll_scope="completion",
        ),
        lora={"top_layers": 1},
    )
    cache = tmp_path / "frozen-train"
    losses, stores = [], []
    for name in ("first", "second"):
        monkeypatch.setattr(fc, "_REGISTRY", {})  # a new process: no store in memory
        result = train_preference(profile, tiny_pref_rows, tmp_path / name, frozen_cache_dir=cache)
        (store,) = fc._REGISTRY.values()
        stores.append(store)
        losses.append([e["loss"] for e in read_jsonl(result.train_log) if "loss" in e])
    first, second = stores
    assert (
        first.directory.parent == cache and first.misses > 0 and any(cache.rglob("*.safetensors"))
    )
    assert second.misses == 0 and second.hits >= first.misses  # every state read back from disk
    assert losses[1] == pytest.approx(losses[0], abs=1e-6) and len(losses[0]) == 2


def test_a_run_keeps_its_trainings_frozen_states_apart_from_its_evaluations(tmp_path, monkeypatch):
    """Evaluations make their states under inference mode; a training in the same process must not
    take those tensors from memory (autograd refuses them), so trainings keep their own directory."""
    from xlalign.config import load_profile
    from xlalign.experiments import steps
    from xlalign.runs import start_run
    from xlalign.training import run as train_run

    seen = {}

    def fake(profile, dataset, out, resume=False, frozen_cache_dir=None, **kw):
        seen["dir"] = frozen_cache_dir
        raise RuntimeError("stop here")

    monkeypatch.setattr(train_run, "train_preference", fake)
    run = start_run(load_profile("smoke"), tmp_path / "run")
    data = SimpleNamespace(train_dataset=lambda: [])
    with pytest.raises(RuntimeError, match="stop here"):
        steps.train(load_profile("smoke"), run, "orpo-aligned", data)
    assert seen["dir"] == run.path / "cache" / "frozen-train" == steps.train_cache_dir(run)
