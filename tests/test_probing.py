"""Tests for xlalign.evaluation.probing: hidden states of the tiny model, and linear probes."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from xlalign.evaluation.decisions import POOLED
from xlalign.evaluation.probing import (
    PROBE_COLUMNS,
    hidden_states,
    linear_probe,
    probe_by_layer,
    probe_prompts,
)
from xlalign.probe.build import ANSWER_ABSENT, ANSWER_PRESENT

try:
    from xlalign.lm import encode
except ImportError:
    from xlalign.evaluation.scoring import encode


@pytest.fixture(scope="module")
def model_tok(tiny_profile, tiny_model_dir, tiny_tokenizer):
    """One tiny-random model for the module: these tests only read it."""
    from xlalign.models import load_model

    model, _ = load_model(tiny_profile)
    return model.eval(), tiny_tokenizer


PROMPTS = [
    "QUESTION: who wrote it?\nCONTEXTS:\n[1] A long passage about many things.\nOUTPUT:\n",
    "Short one.\n",
    "Another prompt of a middling length, with a few more words.\n",
]


def direct_last_states(model, tok, prompt):
    """hidden_states[L][:, -1] of ``model(...)`` on one unpadded prompt, no helper involved."""
    ids = torch.tensor([encode(tok, prompt)])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    return [h[0, -1].float().numpy() for h in out.hidden_states]


def test_shapes_per_layer(model_tok):
    model, tok = model_tok
    states = hidden_states(model, tok, PROMPTS, layers=[0, 1, 2], batch_size=2)
    assert sorted(states) == [0, 1, 2]
    for arr in states.values():
        assert arr.shape == (len(PROMPTS), model.config.hidden_size)
        assert arr.dtype == np.float32
    assert not np.allclose(states[1], states[2])  # the layers are really different


def test_equals_direct_forward_on_single_prompt(model_tok):
    model, tok = model_tok
    expected = direct_last_states(model, tok, PROMPTS[0])
    states = hidden_states(model, tok, PROMPTS[:1], layers=[0, 1, 2])
    for layer in (0, 1, 2):
        np.testing.assert_allclose(states[layer][0], expected[layer], atol=1e-5)


def test_padding_does_not_change_states(model_tok):
    model, tok = model_tok
    long, short = PROMPTS[0], PROMPTS[1]
    assert len(encode(tok, long)) > len(encode(tok, short)) + 5
    batch = hidden_states(model, tok, [long, short], layers=[1, 2], batch_size=2)
    for i, prompt in enumerate((long, short)):
        alone = hidden_states(model, tok, [prompt], layers=[1, 2], batch_size=1)
        for layer in (1, 2):
            np.testing.assert_allclose(batch[layer][i], alone[layer][0], atol=1e-5)


def test_batch_size_does_not_change_order(model_tok):
    model, tok = model_tok
    a = hidden_states(model, tok, PROMPTS, layers=[2], batch_size=1)[2]
    b = hidden_states(model, tok, PROMPTS, layers=[2], batch_size=3)[2]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_batches_longest_first_and_returns_rows_in_prompt_order(model_tok):
    """Batches hold prompts of similar length (less padding); row i still belongs to prompt i."""
    model, tok = model_tok
    prompts = [PROMPTS[1], PROMPTS[0], PROMPTS[2], PROMPTS[1] + " More words here."]
    widths = []

    def record(module, args, kwargs):
        widths.append(tuple(kwargs["input_ids"].shape))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        batched = hidden_states(model, tok, prompts, layers=[1, 2], batch_size=2)
    finally:
        handle.remove()
    lengths = sorted((len(encode(tok, p)) for p in prompts), reverse=True)
    assert widths == [(2, lengths[0]), (2, lengths[2])]  # unsorted: widths l[0], l[1]
    for i, prompt in enumerate(prompts):
        expected = direct_last_states(model, tok, prompt)
        for layer in (1, 2):
            np.testing.assert_allclose(batched[layer][i], expected[layer], atol=1e-5)


def test_rejects_layers_out_of_range(model_tok):
    model, tok = model_tok
    with pytest.raises(ValueError, match="0..2"):
        hidden_states(model, tok, PROMPTS, layers=[3])
    with pytest.raises(ValueError):
        hidden_states(model, tok, PROMPTS, layers=[])


def test_restores_training_mode(model_tok):
    model, tok = model_tok
    model.train()
    try:
        hidden_states(model, tok, PROMPTS[:1], layers=[1])
        assert model.training
    finally:
        model.eval()


# ---------------------------------------------------------------- linear probe


def synthetic(n, d=20, shift=3.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2 == 0
    X = rng.normal(size=(n, d))
    X[:, 0] += shift * y
    return X, y


def test_linear_probe_separable_features():
    train_X, train_y = synthetic(200, seed=0)
    test_X, test_y = synthetic(100, seed=1)
    fit = linear_probe(train_X, train_y, test_X, test_y, C=0.1, seed=0)
    assert fit.auroc > 0.95 and fit.accuracy > 0.85
    assert fit.auroc == pytest.approx(roc_auc_score(test_y, fit.scores))
    assert fit.scores.shape == (100,) and (fit.n_train, fit.n_test) == (200, 100)
    assert np.array_equal(fit.pred, fit.scores > 0)


def test_linear_probe_noise_is_near_chance():
    train_X, train_y = synthetic(200, shift=0.0, seed=0)
    test_X, test_y = synthetic(400, shift=0.0, seed=1)
    fit = linear_probe(train_X, train_y, test_X, test_y)
    assert abs(fit.auroc - 0.5) < 0.1


def test_linear_probe_accepts_label_strings():
    train_X, train_y = synthetic(60, seed=0)
    test_X, test_y = synthetic(40, seed=1)
    as_text = lambda y: np.where(y, ANSWER_PRESENT, ANSWER_ABSENT)  # noqa: E731
    a = linear_probe(train_X, as_text(train_y), test_X, as_text(test_y))
    b = linear_probe(train_X, train_y, test_X, test_y)
    assert a.auroc == b.auroc and a.accuracy == b.accuracy


def test_linear_probe_rejects_one_class():
    X, _ = synthetic(10)
    with pytest.raises(ValueError, match="one class"):
        linear_probe(X, np.ones(10), X, np.arange(10) % 2)


# ---------------------------------------------------------------- probe_by_layer


def test_probe_prompts_renders_raw_rows_only(tiny_tokenizer):
    raw = {"prompt": "Q?", "label": ANSWER_PRESENT, "lang": "en"}
    pref = {"prompt": "Q?\n", "chosen": ANSWER_PRESENT, "label": ANSWER_PRESENT, "lang": "en"}
    assert probe_prompts([raw, pref], tiny_tokenizer, "plain") == ["Q?\n", "Q?\n"]


def test_probe_by_layer_table(model_tok, tiny_pref_rows):
    model, tok = model_tok
    queries = sorted({r["query_id"] for r in tiny_pref_rows})
    held_out = set(queries[::3])  # whole queries (pos and neg sample) out, in every language
    train = [r for r in tiny_pref_rows if r["query_id"] not in held_out]
    test = [r for r in tiny_pref_rows if r["query_id"] in held_out]
    assert {r["label"] for r in test} == {ANSWER_PRESENT, ANSWER_ABSENT}
    table = probe_by_layer(model, tok, train, test, layers=[1, 2], n_resamples=50, seed=0)
    langs = list(dict.fromkeys(r["lang"] for r in test))
    assert list(table.columns) == list(PROBE_COLUMNS)
    assert table["layer"].tolist() == [1] * (len(langs) + 1) + [2] * (len(langs) + 1)
    assert table["lang"].tolist() == ([POOLED, *langs]) * 2
    assert (table["n_train"] == len(train)).all()
    pooled = table[table["lang"] == POOLED].set_index("layer")
    assert (pooled["n_test"] == len(test)).all()
    per_lang = table[table["lang"] != POOLED].groupby("layer")["n_test"].sum()
    assert (per_lang == len(test)).all()
    # the pooled row is the probe refitted by hand on the same hidden states
    y = lambda rows: [r["label"] == ANSWER_PRESENT for r in rows]  # noqa: E731
    h_train = hidden_states(model, tok, [r["prompt"] for r in train], [2])[2]
    h_test = hidden_states(model, tok, [r["prompt"] for r in test], [2])[2]
    fit = linear_probe(h_train, y(train), h_test, y(test), C=0.1, seed=0)
    assert pooled.loc[2, "auroc"] == pytest.approx(fit.auroc)
    assert pooled.loc[2, "accuracy"] == pytest.approx(fit.accuracy)
    ok = table.dropna(subset=["ci_low"])
    assert ((ok["ci_low"] <= ok["auroc"]) & (ok["auroc"] <= ok["ci_high"])).all()
