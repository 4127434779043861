"""xlalign.training.frozen_cache: reusing the frozen lower layers' states changes no logit, loss or gradient.

Tolerances (fp32): values atol 1e-5, gradients atol 1e-5 / rtol 1e-4 -- the same as the shared-prompt
tests, i.e. the float noise that a different padding (batch composition) gives the uncached path too.
"""

from __future__ import annotations

import gc

import pytest
import torch

from xlalign.training import frozen_cache as fc
from xlalign.training.shared_prompt import shared_prompt_logits, token_logps

# Prompts longer than the tiny Gemma's sliding window (5), so that local and global layers differ.
PROMPTS = [[2, 17, 23, 9, 41, 8, 11, 12, 30], [2, 7, 3, 99], [2, 12, 13, 14, 15, 16, 19]]
COMPLETIONS = [
    [30, 31, 2],
    [44],
    [50, 51],
    [60, 2],
    [70, 71, 72, 73],
    [80],
]  # chosen x3, rejected x3


def tiny_gemma3(n_layers: int = 6, vocab_size: int = 128):
    """A random Gemma-3 text model: sliding-window and global layers, two rotary bases, soft-capping."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=5,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * (n_layers // 3),
        max_position_embeddings=128,
        final_logit_softcapping=30.0,
        query_pre_attn_scalar=16,
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    return Gemma3ForCausalLM(cfg).float().eval()


def lora_top(model, top: int):
    """Random (non-zero) LoRA on q/v of the top ``top`` layers: the rest stays frozen."""
    from peft import LoraConfig, get_peft_model

    n = model.config.num_hidden_layers
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
        layers_to_transform=list(range(n - top, n)),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


@pytest.fixture(params=["gemma3", "llama"])
def adapted(request, tiny_model_and_tokenizer):
    if request.param == "gemma3":
        return lora_top(tiny_gemma3(), top=2), 4  # layers 0-3 frozen (both attention kinds)
    model, _ = tiny_model_and_tokenizer
    return lora_top(model, top=1), model.config.num_hidden_layers - 1


def _logps_and_grads(model):
    model.zero_grad(set_to_none=True)
    logits, targets, mask = shared_prompt_logits(model, PROMPTS, COMPLETIONS, 0)
    lp = token_logps(logits, targets, mask)
    lp.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return lp.detach(), grads


def test_reused_states_give_the_same_logps_and_gradients(adapted, tmp_path):
    model, boundary = adapted
    model.train()
    assert fc.safe_boundary(model) == boundary
    fc.detach(model)
    lp_ref, g_ref = _logps_and_grads(model)
    store = fc.attach(model, directory=tmp_path)
    assert store is not None and store.boundary == boundary
    lp_fill, g_fill = _logps_and_grads(model)  # first use: computed and stored
    assert store.misses == len(PROMPTS) and store.hits == 0
    lp_hit, g_hit = _logps_and_grads(model)  # second use: every entry from memory
    assert store.misses == len(PROMPTS) and store.hits > 0
    assert g_ref and all(g.abs().max() > 0 for g in g_ref.values())
    for lp, grads in ((lp_fill, g_fill), (lp_hit, g_hit)):
        torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=1e-5)
        assert grads.keys() == g_ref.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], g_ref[name], atol=1e-5, rtol=1e-4, msg=name)


def test_bypassed_layers_do_not_run_on_a_hit(adapted):
    model, boundary = adapted
    dec = fc.decoder(model)
    store = fc.attach(model)
    with torch.no_grad():
        shared_prompt_logits(model, PROMPTS, COMPLETIONS, 0)
    calls = []
    handles = [
        layer.register_forward_pre_hook(lambda m, a, i=i: calls.append(i))
        for i, layer in enumerate(dec.layers)
    ]
    try:
        with torch.no_grad():
            shared_prompt_logits(model, PROMPTS, COMPLETIONS, 0)
    finally:
        for h in handles:
            h.remove()
    assert store.hits > 0
    assert (
        calls and min(calls) == boundary
    )  # the prefill and the continuation start at the boundary
    assert len(dec.layers) == model.config.num_hidden_layers  # the stack is restored


def test_states_are_shared_across_model_objects_and_processes_via_disk(tmp_path):
    """A second load of the same weights finds the first one's entries (memory, then disk)."""
    a = lora_top(tiny_gemma3(), 2)
    b = lora_top(tiny_gemma3(), 2)  # the same seed: the same base weights, another object
    sa = fc.attach(a, directory=tmp_path)
    with torch.no_grad():
        shared_prompt_logits(a, PROMPTS, COMPLETIONS, 0)
    assert fc.attach(b, directory=tmp_path) is sa  # one store per fingerprint in a process
    fc.forget_all()  # as in a new process: only the files remain
    sb = fc.attach(b, directory=tmp_path)
    with torch.no_grad():
        shared_prompt_logits(b, PROMPTS, COMPLETIONS, 0)
    assert sb.misses == 0 and sb.hits > 0 and sb.rebuilt == 0


def test_entries_of_another_model_prompt_or_layer_count_are_rebuilt_not_used(tmp_path, caplog):
    model = lora_top(tiny_gemma3(), 2)
    store = fc.attach(model, directory=tmp_path)
    with torch.no_grad():
        ref = shared_prompt_logits(model, PROMPTS, COMPLETIONS, 0)[0]
    files = sorted(store.directory.glob("*.safetensors"))
    assert len(files) == len(PROMPTS) + sum(len(c) > 1 for c in COMPLETIONS)
    from safetensors import safe_open
    from safetensors.torch import save_file

    def rewrite(path, **changes):
        with safe_open(str(path), framework="pt") as f:
            meta, ids, states = f.metadata(), f.get_tensor("ids"), f.get_tensor("states")
        tensors = {"ids": changes.pop("ids", ids), "states": changes.pop("states", states)}
        save_file(tensors, str(path), metadata={**meta, **changes})

    # Each file swapped for a wrong entry: other prompt ids, another model, another layer count,
    # damaged bytes, states of another shape.
    prompt_files = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            if h.metadata()["n_prefix"] == "0":
                prompt_files[tuple(h.get_tensor("ids").tolist())] = f
    p0, p1, p2 = (prompt_files[tuple(p)] for p in PROMPTS)
    with safe_open(str(p0), framework="pt") as h:
        wrong_ids = h.get_tensor("ids").clone()
    wrong_ids[-1] += 1
    rewrite(p0, ids=wrong_ids)
    rewrite(p1, fingerprint="0" * 64)
    rewrite(p2, boundary="3")
    others = [f for f in files if f not in (p0, p1, p2)]
    others[0].write_bytes(others[0].read_bytes()[:40])
    with safe_open(str(others[1]), framework="pt") as h:
        s = h.get_tensor("states")
    rewrite(others[1], states=torch.zeros(s.shape[0] + 1, s.shape[1]))
    fc.forget_all()
    store = fc.attach(model, directory=tmp_path)
    with caplog.at_level("WARNING"), torch.no_grad():
        again = shared_prompt_logits(model, PROMPTS, COMPLETIONS, 0)[0]
    assert store.rebuilt == 5
    text = caplog.text
    for why in (
        "ids is",
        "fingerprint is",
        "boundary (frozen layer count) is",
        "unreadable",
        "shape",
    ):
        assert why in text, why
    torch.testing.assert_close(again, ref, atol=1e-5, rtol=1e-5)
    # the rebuilt files are good again
    fc.forget_all()
    store = fc.attach(model, directory=tmp_path)
    with torch.no_grad():
        shared_prompt_logits(model, PROMPTS, COMPLETIONS, 0)
    assert store.rebuilt == 0 and store.misses == 0


def test_the_fingerprint_names_weights_dtype_and_layer_count():
    a, b = tiny_gemma3(), tiny_gemma3()
    assert fc.fingerprint(a, 4) == fc.fingerprint(b, 4)
    assert fc.fingerprint(a, 4) != fc.fingerprint(a, 3)
    with torch.no_grad():
        b.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3
    b._xl_frozen_fp = {}
    assert fc.fingerprint(a, 4) != fc.fingerprint(b, 4)
    # a change above the boundary is not part of what the states depend on
    c = tiny_gemma3()
    with torch.no_grad():
        c.model.layers[5].mlp.down_proj.weight[0, 0] += 1e-3
    assert fc.fingerprint(a, 4) == fc.fingerprint(c, 4)


def test_reuse_does_not_apply_where_lower_layers_are_trained_or_dropped_out():
    model = lora_top(tiny_gemma3(), 6)  # every layer adapted
    assert fc.safe_boundary(model) == 0 and fc.attach(model) is None
    model = lora_top(tiny_gemma3(), 2)
    fc.attach(model)
    fc.decoder(model).embed_tokens.weight.requires_grad_(True)
    assert fc.attached(model) is None  # checked at every use
    model = lora_top(tiny_gemma3(), 2)
    model.base_model.model.model.layers[1].self_attn.q_proj.weight.requires_grad_(True)
    assert fc.safe_boundary(model) == 1
    # A freshly loaded model's parameters require gradients: reuse applies where none are computed
    # (scoring), not where they are (a reused state carries none).
    g = tiny_gemma3()
    assert all(p.requires_grad for p in g.parameters())
    assert fc.safe_boundary(g) == 0
    with torch.no_grad():
        assert fc.safe_boundary(g) == 6 and fc.attach(g, boundary=4) is not None
    assert fc.attached(g) is None
    g.config.attention_dropout = 0.1
    g.train()
    assert fc.safe_boundary(g) == 0


@pytest.mark.parametrize("kind", ["gemma3", "llama"])
def test_scores_equal_the_uncached_path(kind, tiny_model_and_tokenizer, tmp_path):
    """score_prompts with a store attached: the same first-token and whole-answer log-probs, for the
    base model (boundary given) and for an adapted one; the second pass reads every prompt's states."""
    from xlalign.evaluation.scoring import SCORE_COLUMNS, score_prompts

    base, tok = tiny_model_and_tokenizer
    if kind == "gemma3":
        base = tiny_gemma3(vocab_size=len(tok))
    boundary = base.config.num_hidden_layers - 1
    prompts = [
        "Passage: the river floods every spring. Question: when does it flood? Answer:",
        "Passage: 東京は日本の首都です。 Question: what is the capital? Answer:",
        "Q: ok? Answer:",
    ]
    for model in (base, lora_top(base, 1)):
        model.eval()
        fc.detach(model)
        ref = score_prompts(model, tok, prompts, batch_size=2)
        store = fc.attach(model, boundary=boundary, directory=tmp_path)
        assert store is not None
        first = score_prompts(model, tok, prompts, batch_size=3)
        second = score_prompts(model, tok, prompts, batch_size=2)
        assert store.hits >= len(prompts)
        for got in (first, second):
            for a, b in zip(got, ref, strict=True):
                assert a["pred"] == b["pred"]
                for col in SCORE_COLUMNS:
                    assert a[col] == pytest.approx(b[col], abs=1e-5), col
        fc.detach(model)


# Preference rows written here (not the probe's: the test needs lengths, not documents); prompts and
# answers differ in length, answers share no first token.
PAIR_ROWS = [
    dict(prompt="Passage: the river floods every spring. Question: when? Answer:",
         chosen=" Yes, answer is present.", rejected=" I don't know", sample_id="g1", lang="en"),
    dict(prompt="Passage: 東京は日本の首都です。 Question: capital? Answer:",
         chosen=" I don't know", rejected=" Yes, answer is present.", sample_id="g1", lang="zh"),
    dict(prompt="Passage: la lune. Question: quoi? Answer:",
         chosen=" Yes, answer is present.", rejected=" I don't know", sample_id="g1", lang="fr"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "kind"), [("dpo", "llama"), ("orpo", "llama"), ("orpo", "gemma3")]
)
def test_trainer_losses_metrics_and_gradients_equal_the_uncached_path(
    method, kind, tiny_model_and_tokenizer, tmp_path
):
    """``reuse_frozen``: DPO's (policy and reference) and ORPO's loss, logged metrics and gradients
    equal those without reuse, on the first use (states computed) and on the second (read)."""
    from datasets import Dataset

    from xlalign.training import trainers

    model, tok = tiny_model_and_tokenizer
    if kind == "gemma3":
        model = tiny_gemma3(vocab_size=len(tok))
    torch.manual_seed(0)
    model = lora_top(model, 1)
    common = dict(
        output_dir=str(tmp_path / method),
        per_device_train_batch_size=3,
        max_length=2048,
        beta=0.1,
        remove_unused_columns=False,
        report_to="none",
        use_cpu=True,
        gradient_checkpointing=False,
        reuse_frozen=True,
        frozen_cache_dir=str(tmp_path / "frozen"),
    )
    rows = PAIR_ROWS
    if method == "dpo":
        args = trainers.AlignedDPOConfig(
            **common, loss_type=["sigmoid"], precompute_ref_log_probs=False
        )
        cls = trainers.AlignedDPOTrainer
    else:
        args = trainers.AlignedORPOConfig(
            **common, nll_scope="completion", max_completion_length=32
        )
        cls = trainers.AlignedORPOTrainer
    trainer = cls(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok
    )
    store = trainer.xl_frozen
    assert store is not None and store.boundary == model.config.num_hidden_layers - 1
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    if method == "dpo":
        with torch.no_grad():  # move the policy away from its reference copy
            for name, p in model.named_parameters():
                if "lora_B.default" in name:
                    p.add_(0.5 * torch.randn_like(p))
    model.train()

    def run():
        model.zero_grad(set_to_none=True)
        if method == "dpo":
            trainer._metrics["train"].clear()
            loss = trainer._compute_loss(model, dict(batch), return_outputs=False)
            metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
        else:
            loss, metrics = trainer.get_batch_loss_metrics(model, dict(batch))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.detach(), metrics, grads

    fc.detach(model)
    ref = run()
    fc.attach(model, directory=tmp_path / "frozen")
    fill = run()
    # DPO's reference pass reads what the policy pass stored: 3 prompts + 6 answers.
    assert store.misses == len(rows) and store.hits == (3 * len(rows) if method == "dpo" else 0)
    hit = run()
    assert store.misses == len(rows) and store.hits > len(rows)
    assert ref[2] and all(g.abs().max() > 0 for g in ref[2].values())
    for loss, metrics, grads in (fill, hit):
        torch.testing.assert_close(loss, ref[0], atol=1e-6, rtol=0)
        assert metrics.keys() == ref[1].keys()
        for key, value in ref[1].items():
            assert float(metrics[key]) == pytest.approx(float(value), abs=1e-5), key
        for name in grads:
            torch.testing.assert_close(grads[name], ref[2][name], atol=1e-5, rtol=1e-4, msg=name)


def test_attach_for_profile_follows_train_reuse_frozen_and_lora_top_layers(tiny_profile, tmp_path):
    from xlalign.config import derive

    model = tiny_gemma3()
    on = derive(tiny_profile, train={"reuse_frozen": True}, lora={"top_layers": 2})
    assert fc.attach_for_profile(model, derive(on, train={"reuse_frozen": False})) is None
    assert fc.attach_for_profile(model, derive(on, lora={"top_layers": 0})) is None  # all adapted
    store = fc.attach_for_profile(model, on, run_dir=tmp_path)
    assert store is not None and store.boundary == 4
    assert store.directory.parent == tmp_path / "cache" / "frozen"


def test_a_reused_training_step_leaves_no_reference_cycles():
    """Everything a reused step allocates is freed by reference counting: nothing waits for the cyclic
    garbage collector, which does not see tensor memory and may run rarely during a long training."""
    model = lora_top(tiny_gemma3(), 2)
    model.train()
    assert fc.attach(model) is not None
    gc.collect()
    gc.disable()
    try:
        for _ in range(2):  # a fill, then hits
            logits, targets, mask = shared_prompt_logits(model, PROMPTS, COMPLETIONS, 0)
            token_logps(logits, targets, mask).sum().backward()
            del logits, targets, mask
        gc.set_debug(gc.DEBUG_SAVEALL)
        found = gc.collect()
        left = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()
    assert found == 0, f"{found} objects in reference cycles: {sorted(set(left))}"


def test_entries_are_kept_in_slabs_and_the_oldest_slab_is_dropped_first(monkeypatch):
    """Entries are copies in a few large slabs (outside the C heap's small blocks); past max_bytes the
    oldest slab goes with all its entries, and a later lookup computes them again."""
    monkeypatch.setattr(fc, "SLAB_BYTES", 4 * 32 * 4)  # 4 rows of hidden size 32, fp32
    model = lora_top(tiny_gemma3(), 2)
    store = fc.FrozenStates(4, "fp", max_bytes=2 * fc.SLAB_BYTES)
    prompts = [[5 + i, 6 + i] for i in range(5)]  # 2 rows each: two entries fill a slab
    with torch.no_grad():
        got, _ = store.states(model, prompts, [], [], 0)
        want, _, _ = fc.lower_states(model, 4, prompts, 0, "cpu")
    for s, w in zip(got, want, strict=True):
        torch.testing.assert_close(s, w)
    assert len(store._slabs) == 2 and store._bytes == 2 * fc.SLAB_BYTES  # 3 slabs made, 1 dropped
    kept = [k for k in store._mem]
    assert kept == [(tuple(p), None) for p in prompts[2:]]
    first, second = (store._mem[(tuple(p), None)] for p in prompts[2:4])
    assert first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr()  # one slab
    with torch.no_grad():
        again, _ = store.states(model, prompts[:1], [], [], 0)
    assert store.misses == 6 and (tuple(prompts[0]), None) in store._mem
    torch.testing.assert_close(again[0], want[0])
